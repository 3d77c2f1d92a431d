// The recipe's binding tables: one SectionBinding per RunConfig section, one line per struct
// field in struct order, with each key's range and the cross-field rules that belong to it
// (recipes/yaml_binder.h). recipes/recipe_parser.cpp walks documents and overrides through them.
#pragma once
#include <vector>

#include "recipes/run_config.h"
#include "recipes/yaml_binder.h"

namespace condense {

// The top-level keys: kind, name, out_dir, init. Bound to `c` (references into it).
SectionBinding top_level_keys(RunConfig& c);
// Every section (model, data, train, ..., and the nested ones such as comm.compression),
// bound to `c`: the tables must not outlive it.
std::vector<SectionBinding> recipe_sections(RunConfig& c);

}  // namespace condense
