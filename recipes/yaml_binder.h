// YAML binder: ties recipe keys to struct fields, one table row per field, so that parsing,
// strict type checks, range checks, the list of valid keys in errors and the emitted resolved
// recipe all come from the same table. Used only by recipes/recipe_parser.cpp.
//
// Errors are condense::Error with messages of the form
//   "<where>: key '<section.key>' expects an integer, got 'abc'"
// where <where> is "file.yaml:12" (1-based line) or "override 'train.lr=1'".
#pragma once
#include <cstdint>
#include <functional>
#include <limits>
#include <string>
#include <vector>

namespace YAML {
class Node;
}

namespace condense {

// A numeric interval for range checks; open or closed at each end, unbounded by default.
struct Range {
  double lo = -std::numeric_limits<double>::infinity();
  double hi = std::numeric_limits<double>::infinity();
  bool lo_open = false;
  bool hi_open = false;

  bool contains(double v) const;
  std::string describe() const;  // "> 0", ">= 256", "in [0, 1)"; empty when unbounded
};

Range any_value();
Range positive();                 // > 0
Range at_least(double lo);        // >= lo
Range fraction();                 // [0, 1)
Range unit_interval();            // (0, 1]
Range between(double lo, double hi);  // [lo, hi]

// One key of a section. `set` parses a YAML value into the field (type errors throw, naming
// `where` and `full_key`); `emit` prints the field as a YAML scalar that `set` reads back
// exactly; `check` returns "" when the current value is valid, else what it must be, e.g.
// "must be > 0, got 0". Checks run after all values and overrides are in, so a check may
// look at other fields.
struct FieldBinding {
  std::string key;
  std::function<void(const YAML::Node& value, const std::string& where,
                     const std::string& full_key)> set;
  std::function<std::string()> emit;
  std::function<std::string()> check;
};

// A named group of keys ("train"); the top-level scalars form a section named "".
struct SectionBinding {
  std::string name;
  std::vector<FieldBinding> fields;

  const FieldBinding* find(const std::string& key) const;
  std::string key_list() const;  // "steps, lr, min_lr, ..."
  std::string full_key(const std::string& key) const;  // "train.lr", or "name" at top level
};

FieldBinding bind_int(const std::string& key, int64_t& field, Range range = any_value());
FieldBinding bind_real(const std::string& key, double& field, Range range = any_value());
FieldBinding bind_bool(const std::string& key, bool& field);
// An empty `choices` accepts any string; otherwise the value must be one of them.
FieldBinding bind_string(const std::string& key, std::string& field,
                         std::vector<std::string> choices = {});

// A YAML sequence of strings ([a, b]); emitted as a flow sequence of YAML-quoted strings.
FieldBinding bind_string_list(const std::string& key, std::vector<std::string>& field);

// Scalar text helpers, shared with the parser's error messages and emitter.
std::string describe_node(const YAML::Node& node);  // "'abc'", "a mapping", "nothing (null)"
std::string format_real(double v);     // shortest text that round-trips: 0.003, 1.0e-05, 10000.0
std::string format_string(const std::string& s);  // plain when safe, else double-quoted YAML
std::string join(const std::vector<std::string>& items, const std::string& sep);

}  // namespace condense
