// Recipe parser: the one place YAML recipes become a RunConfig, strictly. Every key is
// optional (struct defaults apply); an unknown or duplicate key, a value of the wrong type or
// out of range is a condense::Error naming "<file>:<line>" (1-based) and the dotted key, and
// listing the valid keys or choices. Overrides ("train.lr=1e-3") are applied on top of the file
// with the same checks; their errors say "override 'train.lr=1e-3'" instead of a file line.
//
// to_yaml prints the fully resolved recipe, every field in struct order, and parses back to an
// identical config; recipe_hash is the SHA-256 of that text, compared across ranks and stored
// in checkpoints.
#pragma once
#include <string>
#include <vector>

#include "recipes/run_config.h"

namespace condense {

// `source_name` names the text in errors (usually its path).
RunConfig parse_recipe(const std::string& yaml_text, const std::string& source_name,
                       const std::vector<std::string>& overrides = {});

// Reads and parses the file at `path`; a missing or unreadable file is an error naming it.
RunConfig load_recipe(const std::string& path, const std::vector<std::string>& overrides = {});

// Resolved recipe as YAML; parse_recipe(to_yaml(c), ...) gives back c.
std::string to_yaml(const RunConfig& config);

// Lower-case hex SHA-256 of to_yaml(config).
std::string recipe_hash(const RunConfig& config);

}  // namespace condense
