// Recipe parser: the walk over the YAML document and overrides through the binding tables
// (recipes/recipe_sections.h), the final range checks and the resolved-recipe emitter.
// Range checks run once after the file and all overrides are applied, so that cross-field rules
// (min_lr <= lr) do not depend on key order; each key remembers where it was last set.
#include "recipes/recipe_parser.h"

#include <fmt/format.h>
#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <sstream>

#include "core/error.h"
#include "core/hash.h"
#include "recipes/recipe_sections.h"
#include "recipes/yaml_binder.h"

namespace condense {
namespace {

std::string at(const std::string& source, const YAML::Mark& mark) {
  if (mark.is_null() || mark.line < 0) return source;
  return fmt::format("{}:{}", source, mark.line + 1);
}

std::string trim(const std::string& s) {
  size_t b = s.find_first_not_of(" \t");
  if (b == std::string::npos) return "";
  size_t e = s.find_last_not_of(" \t");
  return s.substr(b, e - b + 1);
}

// Binds every key of a RunConfig; holds references into it, so it must not outlive it.
class RecipeBinder {
 public:
  explicit RecipeBinder(RunConfig& c)
      : top_(top_level_keys(c)), sections_(recipe_sections(c)) {}
  RecipeBinder(const RecipeBinder&) = delete;
  RecipeBinder& operator=(const RecipeBinder&) = delete;

  void apply_document(const YAML::Node& root, const std::string& source) {
    if (!root.IsDefined() || root.IsNull()) return;  // empty document: all defaults
    if (!root.IsMap()) {
      fail("{}: a recipe is a mapping with keys {}; got {}", at(source, root.Mark()),
           top_key_list(), describe_node(root));
    }
    for_each_key(root, source, "", [&](const std::string& key, const YAML::Node& value,
                                       const std::string& where) {
      if (const FieldBinding* f = top_.find(key)) return set(top_, *f, value, where);
      const SectionBinding* s = find_section(key);
      if (!s) fail("{}: unknown key '{}'; valid top-level keys: {}", where, key, top_key_list());
      apply_section(*s, value, source, where);
    });
  }

  // A section's mapping: its fields, and nested sections (comm.compression) as sub-mappings.
  void apply_section(const SectionBinding& s, const YAML::Node& value, const std::string& source,
                     const std::string& where) {
    if (value.IsNull()) return;  // `train:` with nothing under it
    if (!value.IsMap()) {
      fail("{}: key '{}' expects a mapping with keys {}; got {}", where, s.name, keys_of(s),
           describe_node(value));
    }
    for_each_key(value, source, s.name + ".", [&](const std::string& sub, const YAML::Node& v,
                                                  const std::string& sub_where) {
      if (const FieldBinding* f = s.find(sub)) return set(s, *f, v, sub_where);
      if (const SectionBinding* nested = find_section(s.name + "." + sub))
        return apply_section(*nested, v, source, sub_where);
      fail("{}: unknown key '{}.{}'; valid keys in '{}': {}", sub_where, s.name, sub, s.name,
           keys_of(s));
    });
  }

  void apply_override(const std::string& text) {
    const std::string where = fmt::format("override '{}'", text);
    size_t eq = text.find('=');
    std::string key = trim(text.substr(0, eq));
    if (eq == std::string::npos || key.empty()) {
      fail("{}: expected the form section.key=value (e.g. train.lr=1e-3) or key=value "
           "(e.g. name=run1)", where);
    }
    YAML::Node value;
    try {
      value = YAML::Load(text.substr(eq + 1));
    } catch (const YAML::Exception& e) {
      fail("{}: the value is not valid YAML: {}", where, e.msg);
    }
    size_t dot = key.rfind('.');
    if (dot == std::string::npos) {
      if (const FieldBinding* f = top_.find(key)) return set(top_, *f, value, where);
    }
    if (const SectionBinding* whole = find_section(key)) {
      fail("{}: '{}' is a section; override one of its keys as {}.<key>=value; valid keys in "
           "'{}': {}", where, key, key, key, keys_of(*whole));
    }
    if (dot == std::string::npos) {
      fail("{}: unknown key '{}'; valid top-level keys: {}", where, key, top_key_list());
    }
    std::string head = key.substr(0, dot);
    const SectionBinding* s = find_section(head);
    if (!s) {
      std::string first = key.substr(0, key.find('.'));
      if (!find_section(first))
        fail("{}: unknown key '{}'; valid top-level keys: {}", where, first, top_key_list());
      fail("{}: unknown key '{}'; valid keys in '{}': {}", where, key, first,
           keys_of(*find_section(first)));
    }
    const FieldBinding* f = s->find(key.substr(dot + 1));
    if (!f) fail("{}: unknown key '{}'; valid keys in '{}': {}", where, key, head, keys_of(*s));
    set(*s, *f, value, where);
  }

  // Range and choice checks over the final values; errors point at where the key was last set.
  void validate(const std::string& source) const {
    auto check = [&](const SectionBinding& s) {
      for (const auto& f : s.fields) {
        std::string problem = f.check();
        if (problem.empty()) continue;
        std::string key = s.full_key(f.key);
        auto it = origins_.find(key);
        if (it != origins_.end()) fail("{}: key '{}' {}", it->second, key, problem);
        fail("{}: key '{}' {} (left at its default)", source, key, problem);
      }
    };
    check(top_);
    for (const auto& s : sections_) check(s);
  }

  std::string emit() const {
    std::string out;
    for (const auto& f : top_.fields) out += fmt::format("{}: {}\n", f.key, f.emit());
    for (const auto& s : sections_)
      if (s.name.find('.') == std::string::npos) emit_section(s, s.name, "", out);
    return out;
  }

 private:
  template <typename Fn>
  static void for_each_key(const YAML::Node& map, const std::string& source,
                           const std::string& prefix, Fn&& fn) {
    std::map<std::string, int> first_line;  // yaml-cpp keeps duplicate keys; we refuse them
    for (const auto& kv : map) {
      const YAML::Node k = kv.first;
      std::string where = at(source, k.Mark());
      if (!k.IsScalar()) fail("{}: keys must be plain names, got {}", where, describe_node(k));
      std::string key = k.Scalar();
      auto [seen, inserted] = first_line.emplace(key, k.Mark().line + 1);
      if (!inserted) {
        fail("{}: duplicate key '{}{}' (first given at line {})", where, prefix, key, seen->second);
      }
      fn(key, kv.second, where);
    }
  }

  void set(const SectionBinding& s, const FieldBinding& f, const YAML::Node& value,
           const std::string& where) {
    std::string key = s.full_key(f.key);
    f.set(value, where, key);
    origins_[key] = where;
  }

  const SectionBinding* find_section(const std::string& name) const {
    for (const auto& s : sections_) {
      if (s.name == name) return &s;
    }
    return nullptr;
  }

  std::string top_key_list() const {
    std::string keys = top_.key_list();
    for (const auto& s : sections_)
      if (s.name.find('.') == std::string::npos) keys += ", " + s.name;
    return keys;
  }

  // Whether `nested` is a direct sub-section of `parent` (comm.sync of comm, not comm.sync.outer).
  static bool is_child(const SectionBinding& parent, const SectionBinding& nested) {
    const std::string prefix = parent.name + ".";
    return nested.name.rfind(prefix, 0) == 0 &&
           nested.name.find('.', prefix.size()) == std::string::npos;
  }

  // A section as YAML under `indent`: its fields, then its sub-sections, recursively.
  void emit_section(const SectionBinding& s, const std::string& key, const std::string& indent,
                    std::string& out) const {
    out += indent + key + ":\n";
    for (const auto& f : s.fields) out += fmt::format("{}  {}: {}\n", indent, f.key, f.emit());
    for (const auto& nested : sections_)
      if (is_child(s, nested))
        emit_section(nested, nested.name.substr(s.name.size() + 1), indent + "  ", out);
  }

  // A section's fields followed by its sub-sections ("backend, ..., compression, sync").
  std::string keys_of(const SectionBinding& s) const {
    std::string keys = s.key_list();
    for (const auto& nested : sections_)
      if (is_child(s, nested)) keys += ", " + nested.name.substr(s.name.size() + 1);
    return keys;
  }

  SectionBinding top_;                          // kind, name, out_dir, init
  std::vector<SectionBinding> sections_;        // model, data, ..., and nested ones (comm.compression)
  std::map<std::string, std::string> origins_;  // dotted key -> where it was last set
};

// Where each YAML document starts, and where its content starts, read with yaml-cpp's event
// parser. Reason: yaml-cpp 0.7's LoadAll never returns on some invalid input (a lone ",": every
// call parses an empty document at the same position), allocating until memory runs out
// (found by tests/fuzz/fuzz_recipe.cpp). Reading events instead, a document that starts where
// the previous one did is caught, and reading stops at the second document.
class DocumentMarks : public YAML::EventHandler {
 public:
  struct Document {
    YAML::Mark start, content;
    bool has_content = false;
  };
  std::vector<Document> documents;

  void OnDocumentStart(const YAML::Mark& m) override { documents.push_back({m, m, false}); }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark& m, YAML::anchor_t) override { content(m); }
  void OnAlias(const YAML::Mark& m, YAML::anchor_t) override { content(m); }
  void OnScalar(const YAML::Mark& m, const std::string&, YAML::anchor_t,
                const std::string&) override { content(m); }
  void OnSequenceStart(const YAML::Mark& m, const std::string&, YAML::anchor_t,
                       YAML::EmitterStyle::value) override { content(m); }
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark& m, const std::string&, YAML::anchor_t,
                  YAML::EmitterStyle::value) override { content(m); }
  void OnMapEnd() override {}

 private:
  void content(const YAML::Mark& m) {
    if (!documents.empty() && !documents.back().has_content) {
      documents.back().content = m;
      documents.back().has_content = true;
    }
  }
};

// The recipe's one YAML document (none for a text without any). Throws YAML::Exception for
// invalid YAML, and fails naming the source for a second document or a parser that makes no
// progress.
std::optional<YAML::Node> load_one_document(const std::string& yaml_text,
                                            const std::string& source_name) {
  std::istringstream in(yaml_text);
  YAML::Parser parser(in);
  DocumentMarks marks;
  while (marks.documents.size() < 2 && parser.HandleNextDocument(marks)) {
  }
  const auto& docs = marks.documents;
  if (docs.size() > 1) {
    const YAML::Mark& second = docs[1].content;
    if (docs[1].start.pos <= docs[0].start.pos) {
      fail("{}:{}:{}: invalid YAML: '{}' cannot start a value", source_name, second.line + 1,
           second.column + 1,
           second.pos >= 0 && static_cast<size_t>(second.pos) < yaml_text.size()
               ? yaml_text.substr(second.pos, 1) : std::string());
    }
    fail("{}: a recipe is one YAML document, found more than one", at(source_name, second));
  }
  if (docs.empty()) return std::nullopt;
  return YAML::Load(yaml_text);
}

}  // namespace

RunConfig parse_recipe(const std::string& yaml_text, const std::string& source_name,
                       const std::vector<std::string>& overrides) {
  RunConfig config;
  RecipeBinder binder(config);
  std::optional<YAML::Node> doc;
  try {
    doc = load_one_document(yaml_text, source_name);
  } catch (const YAML::Exception& e) {
    if (e.mark.is_null()) fail("{}: invalid YAML: {}", source_name, e.msg);
    fail("{}:{}:{}: invalid YAML: {}", source_name, e.mark.line + 1, e.mark.column + 1, e.msg);
  }
  try {
    if (doc) binder.apply_document(*doc, source_name);
    for (const auto& o : overrides) binder.apply_override(o);
  } catch (const YAML::Exception& e) {  // not expected: node access on a well-formed tree
    fail("{}: {}", source_name, e.what());
  }
  binder.validate(source_name);
  return config;
}

RunConfig load_recipe(const std::string& path, const std::vector<std::string>& overrides) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    fail("recipe '{}' does not exist or is not a regular file", path);
  }
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  CONDENSE_CHECK(in.good() || in.eof(), "cannot read recipe '{}'", path);
  return parse_recipe(text.str(), path, overrides);
}

std::string to_yaml(const RunConfig& config) {
  RunConfig copy = config;
  return RecipeBinder(copy).emit();
}

std::string recipe_hash(const RunConfig& config) { return sha256_hex(to_yaml(config)); }

}  // namespace condense
