// Recipe kinds: the names a recipe's `kind` may take. The parser checks `kind` against this
// list and names it in its error; the recipe table that runs each kind defines it.
#pragma once
#include <string>
#include <vector>

namespace condense {

// Valid values of RunConfig::kind, in the order error messages list them.
const std::vector<std::string>& recipe_kind_names();

}  // namespace condense
