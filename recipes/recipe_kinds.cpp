// Recipe kinds: the names in the recipe table (recipes/recipe.cpp), for the parser's checks.
#include "recipes/recipe_kinds.h"

#include "recipes/recipe.h"

namespace condense {

const std::vector<std::string>& recipe_kind_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> out;
    for (const RecipeKind& k : recipe_kinds()) out.emplace_back(k.name);
    return out;
  }();
  return names;
}

}  // namespace condense
