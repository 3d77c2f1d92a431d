// YAML binder: strict scalar conversions (no yaml-cpp as<T>, which accepts "1.5" for an int
// after a fashion and reports no key), range checks and round-trip emission of field values.
#include "recipes/yaml_binder.h"

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <cctype>
#include <charconv>
#include <cmath>
#include <optional>
#include <string_view>
#include <system_error>
#include <utility>

#include "core/error.h"

namespace condense {
namespace {

// Untagged plain scalars carry yaml-cpp's non-specific tag "?"; quoted ones carry "!".
bool is_plain(const YAML::Node& n) { return n.IsScalar() && n.Tag() == "?"; }

[[noreturn]] void type_error(const std::string& where, const std::string& full_key,
                             const char* expected, const YAML::Node& value) {
  fail("{}: key '{}' expects {}, got {}", where, full_key, expected, describe_node(value));
}

// Strips one leading '+' (std::from_chars rejects it) unless a sign follows.
std::optional<std::string_view> strip_plus(std::string_view s) {
  if (!s.empty() && s[0] == '+') {
    s.remove_prefix(1);
    if (!s.empty() && (s[0] == '-' || s[0] == '+')) return std::nullopt;
  }
  if (s.empty()) return std::nullopt;
  return s;
}

template <typename T>
bool parse_number(std::string_view text, T& out, bool& out_of_range) {
  out_of_range = false;
  auto s = strip_plus(text);
  if (!s) return false;
  const char* end = s->data() + s->size();
  auto [ptr, ec] = std::from_chars(s->data(), end, out);
  if (ptr != end) return false;
  if (ec == std::errc::result_out_of_range) out_of_range = true;
  return ec == std::errc() || out_of_range;
}

bool only_chars(std::string_view s, std::string_view allowed) {
  return s.find_first_not_of(allowed) == std::string_view::npos;
}

bool is_reserved_word(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  for (const char* w : {"true", "false", "null", "yes", "no", "on", "off", "y", "n"}) {
    if (s == w) return true;
  }
  return false;
}

}  // namespace

bool Range::contains(double v) const {
  bool above = lo_open ? v > lo : v >= lo;
  bool below = hi_open ? v < hi : v <= hi;
  return above && below;
}

std::string Range::describe() const {
  bool has_lo = std::isfinite(lo), has_hi = std::isfinite(hi);
  if (has_lo && has_hi) {
    return fmt::format("in {}{}, {}{}", lo_open ? "(" : "[", lo, hi, hi_open ? ")" : "]");
  }
  if (has_lo) return fmt::format("{} {}", lo_open ? ">" : ">=", lo);
  if (has_hi) return fmt::format("{} {}", hi_open ? "<" : "<=", hi);
  return "";
}

Range any_value() { return Range{}; }
Range positive() {
  Range r;
  r.lo = 0;
  r.lo_open = true;
  return r;
}
Range at_least(double lo) {
  Range r;
  r.lo = lo;
  return r;
}
Range unit_interval() {
  Range r;
  r.lo = 0;
  r.hi = 1;
  r.lo_open = true;
  return r;
}

Range between(double lo, double hi) {
  Range r;
  r.lo = lo;
  r.hi = hi;
  return r;
}

Range fraction() {
  Range r;
  r.lo = 0;
  r.hi = 1;
  r.hi_open = true;
  return r;
}

const FieldBinding* SectionBinding::find(const std::string& key) const {
  for (const auto& f : fields) {
    if (f.key == key) return &f;
  }
  return nullptr;
}

std::string SectionBinding::key_list() const {
  std::vector<std::string> keys;
  for (const auto& f : fields) keys.push_back(f.key);
  return join(keys, ", ");
}

std::string SectionBinding::full_key(const std::string& key) const {
  return name.empty() ? key : name + "." + key;
}

FieldBinding bind_int(const std::string& key, int64_t& field, Range range) {
  FieldBinding b;
  b.key = key;
  b.set = [&field](const YAML::Node& v, const std::string& where, const std::string& full_key) {
    int64_t parsed = 0;
    bool out_of_range = false;
    if (!is_plain(v) || !only_chars(v.Scalar(), "+-0123456789") ||
        !parse_number(v.Scalar(), parsed, out_of_range)) {
      type_error(where, full_key, "an integer", v);
    }
    if (out_of_range) type_error(where, full_key, "a 64-bit integer", v);
    field = parsed;
  };
  b.emit = [&field] { return fmt::format("{}", field); };
  b.check = [&field, range]() -> std::string {
    if (range.contains(static_cast<double>(field))) return "";
    return fmt::format("must be {}, got {}", range.describe(), field);
  };
  return b;
}

FieldBinding bind_real(const std::string& key, double& field, Range range) {
  FieldBinding b;
  b.key = key;
  b.set = [&field](const YAML::Node& v, const std::string& where, const std::string& full_key) {
    double parsed = 0;
    bool out_of_range = false;
    if (!is_plain(v) || !only_chars(v.Scalar(), "+-.0123456789eE") ||
        !parse_number(v.Scalar(), parsed, out_of_range)) {
      type_error(where, full_key, "a number", v);
    }
    if (out_of_range || !std::isfinite(parsed)) type_error(where, full_key, "a finite number", v);
    field = parsed;
  };
  b.emit = [&field] { return format_real(field); };
  b.check = [&field, range]() -> std::string {
    if (range.contains(field)) return "";
    return fmt::format("must be {}, got {}", range.describe(), field);
  };
  return b;
}

FieldBinding bind_bool(const std::string& key, bool& field) {
  FieldBinding b;
  b.key = key;
  b.set = [&field](const YAML::Node& v, const std::string& where, const std::string& full_key) {
    const std::string s = is_plain(v) ? v.Scalar() : std::string();
    if (s == "true" || s == "True" || s == "TRUE") {
      field = true;
    } else if (s == "false" || s == "False" || s == "FALSE") {
      field = false;
    } else {
      type_error(where, full_key, "true or false", v);
    }
  };
  b.emit = [&field] { return std::string(field ? "true" : "false"); };
  b.check = [] { return std::string(); };
  return b;
}

FieldBinding bind_string(const std::string& key, std::string& field,
                         std::vector<std::string> choices) {
  FieldBinding b;
  b.key = key;
  b.set = [&field](const YAML::Node& v, const std::string& where, const std::string& full_key) {
    if (v.IsNull()) {  // `out_dir:` with no value reads as the empty string
      field.clear();
    } else if (v.IsScalar()) {
      field = v.Scalar();
    } else {
      type_error(where, full_key, "a string", v);
    }
  };
  b.emit = [&field] { return format_string(field); };
  b.check = [&field, choices = std::move(choices)]() -> std::string {
    if (choices.empty()) return "";
    for (const auto& c : choices) {
      if (c == field) return "";
    }
    return fmt::format("must be one of: {}; got '{}'", join(choices, ", "), field);
  };
  return b;
}

FieldBinding bind_string_list(const std::string& key, std::vector<std::string>& field) {
  FieldBinding b;
  b.key = key;
  b.set = [&field](const YAML::Node& v, const std::string& where, const std::string& full_key) {
    if (v.IsNull()) {  // `trainable:` with nothing: the empty list
      field.clear();
      return;
    }
    if (!v.IsSequence()) type_error(where, full_key, "a list of strings, e.g. [a, b]", v);
    std::vector<std::string> items;
    for (const auto& item : v) {
      if (!item.IsScalar()) type_error(where, full_key, "a list of strings, e.g. [a, b]", item);
      items.push_back(item.Scalar());
    }
    field = std::move(items);
  };
  b.emit = [&field] {
    std::vector<std::string> quoted;
    for (const auto& s : field) quoted.push_back(format_string(s));
    return "[" + join(quoted, ", ") + "]";
  };
  b.check = [] { return std::string(); };
  return b;
}

std::string describe_node(const YAML::Node& node) {
  if (!node.IsDefined() || node.IsNull()) return "nothing (null)";
  if (node.IsMap()) return "a mapping";
  if (node.IsSequence()) return "a sequence";
  if (node.Tag() == "?") return "'" + node.Scalar() + "'";
  if (node.Tag() == "!") return "the quoted string '" + node.Scalar() + "'";
  return "'" + node.Scalar() + "' tagged " + node.Tag();
}

std::string format_real(double v) {
  if (std::isnan(v)) return ".nan";
  if (std::isinf(v)) return v > 0 ? ".inf" : "-.inf";
  // fmt's "{}" is the shortest text that reads back to the same double ("0.003", "1e-05").
  // A ".0" is added where it has no point so that YAML 1.1 readers see a float too.
  std::string s = fmt::format("{}", v);
  size_t e = s.find_first_of("eE");
  std::string mantissa = s.substr(0, e);
  std::string exponent = e == std::string::npos ? "" : s.substr(e);
  if (mantissa.find('.') == std::string::npos) mantissa += ".0";
  return mantissa + exponent;
}

std::string format_string(const std::string& s) {
  // Plain only when no YAML reader could take it for anything but this string.
  bool plain = !s.empty() &&
               (std::isalpha(static_cast<unsigned char>(s[0])) || s[0] == '_' || s[0] == '/') &&
               only_chars(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_./-") &&
               !is_reserved_word(s);
  if (plain) return s;
  std::string out = "\"";
  for (char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      case '\r': out += "\\r"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
          out += fmt::format("\\x{:02x}", static_cast<unsigned char>(c));
        } else {
          out += c;  // UTF-8 bytes pass through
        }
    }
  }
  return out + "\"";
}

std::string join(const std::vector<std::string>& items, const std::string& sep) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) {
    if (i) out += sep;
    out += items[i];
  }
  return out;
}

}  // namespace condense
