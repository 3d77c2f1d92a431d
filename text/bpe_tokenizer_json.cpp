// BpeTokenizer::from_tokenizer_json: reads a Hugging Face tokenizer.json (the `tokenizers`
// package's format) into a BpeVocabulary. Only what condense reproduces exactly is accepted:
// model.type "BPE" without dropout, subword prefixes or byte fallback, no normalizer, and a
// pre-tokenizer that is one of the known byte-level combinations; anything else is refused
// naming what was found. Added tokens become control (special: true) or user-defined tokens,
// as llama.cpp's convert_hf_to_gguf.py maps them.
#include <fmt/format.h>

#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "text/bpe_tokenizer.h"

namespace condense {
namespace {

using Json = nlohmann::json;

// The regexes Llama 3, Qwen2 and GPT-4o write in their tokenizer.json Split pre-tokenizer (llama.cpp
// runs its ASCII-case rewrite of them; see pretokenizer.cpp).
constexpr const char* kLlama3Split =
    R"re((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)re";
constexpr const char* kQwen2Split =
    R"re((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)re";
// GPT-4o's (o200k_base), as Phi-4-mini's tokenizer.json writes it.
constexpr const char* kGpt4oSplit =
    R"re([^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)re";

std::string brief(const Json& j) {
  std::string s = j.dump();
  return s.size() > 300 ? s.substr(0, 300) + "..." : s;
}

bool is_byte_level(const Json& j, bool use_regex) {
  return j.is_object() && j.value("type", "") == "ByteLevel" &&
         !j.value("add_prefix_space", false) && j.value("use_regex", true) == use_regex;
}

// The pre-tokenizer name for a tokenizer.json pre_tokenizer, or "" if it is none condense knows.
std::string pre_tokenizer_name(const Json& p) {
  if (is_byte_level(p, true)) return "gpt2";
  if (!p.is_object() || p.value("type", "") != "Sequence" || !p.contains("pretokenizers"))
    return "";
  const Json& seq = p["pretokenizers"];
  if (!seq.is_array() || seq.size() != 2) return "";
  const Json& first = seq[0];
  if (first.value("type", "") == "Digits" && first.value("individual_digits", false) &&
      is_byte_level(seq[1], true)) {
    return "smollm";
  }
  if (first.value("type", "") == "Split" && first.value("behavior", "") == "Isolated" &&
      !first.value("invert", false) && first.contains("pattern") && first["pattern"].is_object() &&
      first["pattern"].contains("Regex") && is_byte_level(seq[1], false)) {
    const std::string re = first["pattern"]["Regex"].get<std::string>();
    if (re == kLlama3Split) return "llama-bpe";
    if (re == kQwen2Split) return "qwen2";
    if (re == kGpt4oSplit) return "gpt-4o";
  }
  return "";
}

const Json& require(const Json& j, const char* key, const std::string& where,
                    const std::string& path) {
  CONDENSE_CHECK(j.is_object() && j.contains(key), "{}: tokenizer.json has no '{}{}'", path, where,
                 key);
  return j[key];
}

// The special tokens the post_processor puts around a text: what transformers' fast tokenizers
// (and `tokenizers` with add_special_tokens) add, Llama 3's <|begin_of_text|> among them. Only
// TemplateProcessing's "[bos] $A [eos]" shapes have a BpeVocabulary form (add_bos/add_eos with
// bos_id/eos_id); ByteLevel post-processing only moves offsets. false: the file has none.
bool read_post_processor(const Json& root, BpeVocabulary& v, const std::string& path) {
  if (!root.contains("post_processor") || root["post_processor"].is_null()) return false;
  std::vector<const Json*> steps = {&root["post_processor"]};
  if (root["post_processor"].value("type", "") == "Sequence") {
    steps.clear();
    for (const Json& p : require(root["post_processor"], "processors", "post_processor.", path))
      steps.push_back(&p);
  }
  bool found = false;
  for (const Json* p : steps) {
    const std::string type = p->value("type", "");
    if (type == "ByteLevel") continue;
    CONDENSE_CHECK(type == "TemplateProcessing", "{}: tokenizer.json post_processor type '{}' is "
                   "not supported (ByteLevel, TemplateProcessing)", path, type);
    const Json& single = require(*p, "single", "post_processor.", path);
    std::vector<std::string> before, after;
    bool seen_text = false;
    for (const Json& item : single) {
      if (item.contains("Sequence")) {
        CONDENSE_CHECK(!seen_text && item["Sequence"].value("id", "") == "A", "{}: tokenizer.json "
                       "post_processor.single must hold the text ($A) once", path);
        seen_text = true;
      } else {
        const Json& special = require(item, "SpecialToken", "post_processor.single[].", path);
        (seen_text ? after : before).push_back(special.value("id", ""));
      }
    }
    CONDENSE_CHECK(seen_text && before.size() <= 1 && after.size() <= 1, "{}: tokenizer.json "
                   "post_processor.single {} is not '[bos] $A [eos]', which condense can follow",
                   path, brief(single));
    // A SpecialToken's id is a key of special_tokens, whose "ids" are what is added.
    const Json& specials = require(*p, "special_tokens", "post_processor.", path);
    auto id_of = [&](const std::string& key) -> int32_t {
      const bool one = specials.contains(key) && specials[key].contains("ids") &&
                       specials[key]["ids"].is_array() && specials[key]["ids"].size() == 1 &&
                       specials[key]["ids"][0].is_number_integer();
      CONDENSE_CHECK(one, "{}: tokenizer.json post_processor.special_tokens['{}'] must add exactly "
                     "one id", path, key);
      const int64_t id = specials[key]["ids"][0].get<int64_t>();
      CONDENSE_CHECK(id >= 0 && id < static_cast<int64_t>(v.tokens.size()), "{}: tokenizer.json "
                     "post_processor adds id {}, outside the vocabulary of {}", path, id,
                     v.tokens.size());
      return static_cast<int32_t>(id);
    };
    v.add_bos = !before.empty();
    v.add_eos = !after.empty();
    if (v.add_bos) v.bos_id = id_of(before[0]);
    if (v.add_eos) v.eos_id = id_of(after[0]);
    found = true;
  }
  return found;
}

// A token named in tokenizer_config.json: a string or {"content": ...}.
std::optional<std::string> config_token(const Json& config, const char* key) {
  if (!config.contains(key) || config[key].is_null()) return std::nullopt;
  const Json& v = config[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content")) return v["content"].get<std::string>();
  return std::nullopt;
}

Json read_json(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  CONDENSE_CHECK(in, "cannot open {}", path);
  std::stringstream buf;
  buf << in.rdbuf();
  try {
    return Json::parse(buf.str());
  } catch (const Json::exception& e) {
    fail("{}: not valid JSON: {}", path, e.what());
  }
}

}  // namespace

BpeTokenizer BpeTokenizer::from_tokenizer_json(const std::string& path) {
  const Json root = read_json(path);
  BpeVocabulary v;
  try {
    const Json& model = require(root, "model", "", path);
    const std::string type = model.value("type", "");
    CONDENSE_CHECK(type == "BPE", "{}: tokenizer.json model.type is '{}'; only 'BPE' is supported",
                   path, type);
    for (const char* key : {"dropout", "continuing_subword_prefix", "end_of_word_suffix"}) {
      CONDENSE_CHECK(!model.contains(key) || model[key].is_null() || model[key] == "",
                     "{}: tokenizer.json model.{} is {}; condense's BPE has none", path, key,
                     brief(model[key]));
    }
    CONDENSE_CHECK(!model.value("byte_fallback", false),
                   "{}: tokenizer.json model.byte_fallback is true (a sentencepiece-style BPE, not "
                   "byte-level)",
                   path);
    // Byte-level BPEs have no normalizer, except NFC (Qwen2).
    if (root.contains("normalizer") && !root["normalizer"].is_null()) {
      const Json& norm = root["normalizer"];
      CONDENSE_CHECK(norm.is_object() && norm.value("type", "") == "NFC", "{}: tokenizer.json "
                     "normalizer {} is not supported (none or NFC)", path, brief(norm));
      v.normalizer = "nfc";
    }
    const Json& pre = require(root, "pre_tokenizer", "", path);
    v.pre_tokenizer = pre_tokenizer_name(pre);
    CONDENSE_CHECK(
        !v.pre_tokenizer.empty(),
        "{}: tokenizer.json pre_tokenizer {} is not one condense knows (known: ByteLevel = gpt2, "
        "Digits + ByteLevel = smollm, Split(Llama 3 regex) + ByteLevel = llama-bpe, "
        "Split(Qwen2 regex) + ByteLevel = qwen2, Split(GPT-4o regex) + ByteLevel = gpt-4o)",
        path, brief(pre));
    if (root.contains("decoder") && !root["decoder"].is_null()) {
      const std::string d = root["decoder"].value("type", "");
      CONDENSE_CHECK(d == "ByteLevel",
                     "{}: tokenizer.json decoder.type is '{}', expected 'ByteLevel'", path, d);
    }
    v.ignore_merges = model.value("ignore_merges", false);

    std::map<int64_t, std::pair<std::string, int32_t>> by_id;  // id -> (text, type)
    const Json& vocab = require(model, "vocab", "model.", path);
    CONDENSE_CHECK(vocab.is_object(), "{}: tokenizer.json model.vocab is not an object", path);
    for (const auto& [text, id] : vocab.items()) {
      CONDENSE_CHECK(id.is_number_integer(),
                     "{}: tokenizer.json model.vocab['{}'] is not an integer id", path, text);
      by_id[id.get<int64_t>()] = {text, static_cast<int32_t>(BpeTokenType::kNormal)};
    }
    if (root.contains("added_tokens") && root["added_tokens"].is_array()) {
      for (const Json& a : root["added_tokens"]) {
        const Json& id = require(a, "id", "added_tokens[].", path);
        const Json& content = require(a, "content", "added_tokens[].", path);
        // Whitespace stripping around an added token changes the ids; refused rather than ignored.
        for (const char* key : {"lstrip", "rstrip", "single_word"}) {
          CONDENSE_CHECK(!a.value(key, false),
                         "{}: tokenizer.json added token '{}' has {} set, which condense does not "
                         "implement",
                         path, content.get<std::string>(), key);
        }
        // Added tokens are matched in the raw text; one matched in normalized text would differ.
        CONDENSE_CHECK(v.normalizer.empty() || !a.value("normalized", false), "{}: tokenizer.json "
                       "added token '{}' is matched after normalization (normalized: true), which "
                       "condense does not implement", path, content.get<std::string>());
        const auto type =
            a.value("special", false) ? BpeTokenType::kControl : BpeTokenType::kUserDefined;
        by_id[id.get<int64_t>()] = {content.get<std::string>(), static_cast<int32_t>(type)};
      }
    }
    CONDENSE_CHECK(!by_id.empty(), "{}: tokenizer.json model.vocab is empty", path);
    int64_t expect = 0;
    for (const auto& [id, entry] : by_id) {
      CONDENSE_CHECK(id == expect, "{}: tokenizer.json has no token with id {} (ids must be 0..{})",
                     path, expect, by_id.rbegin()->first);
      v.tokens.push_back(entry.first);
      v.token_types.push_back(entry.second);
      ++expect;
    }
    const Json& merges = require(model, "merges", "model.", path);
    CONDENSE_CHECK(merges.is_array(), "{}: tokenizer.json model.merges is not an array", path);
    for (size_t i = 0; i < merges.size(); ++i) {
      const Json& m = merges[i];
      if (m.is_string()) {
        v.merges.push_back(m.get<std::string>());
      } else {  // newer tokenizers write ["a", "b"]
        CONDENSE_CHECK(
            m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string(),
            "{}: tokenizer.json model.merges[{}] is {}, expected \"a b\" or [\"a\", \"b\"]", path,
            i, brief(m));
        v.merges.push_back(m[0].get<std::string>() + " " + m[1].get<std::string>());
      }
    }
    auto id_of = [&](const std::string& text) -> std::optional<int32_t> {
      for (size_t i = 0; i < v.tokens.size(); ++i) {
        if (v.tokens[i] == text) return static_cast<int32_t>(i);
      }
      return std::nullopt;
    };
    // tokenizers' rule for a byte without a symbol when the model names an unk_token: that
    // token (one per run of such bytes with fuse_unk). Without one, llama.cpp's (MissingByte).
    if (model.contains("unk_token") && model["unk_token"].is_string()) {
      const std::string unk = model["unk_token"].get<std::string>();
      v.unk_id = id_of(unk);
      CONDENSE_CHECK(v.unk_id, "{}: tokenizer.json model.unk_token '{}' is not in the vocabulary",
                     path, unk);
      v.missing_byte = model.value("fuse_unk", false) ? MissingByte::kUnkFused : MissingByte::kUnk;
    }
    const bool template_adds = read_post_processor(root, v, path);
    // bos/eos/pad and the chat template live in tokenizer_config.json, when it is there (a
    // post_processor's own bos / eos stay: they are what encoding adds).
    const size_t slash = path.find_last_of('/');
    const std::string config_path =
        (slash == std::string::npos ? std::string() : path.substr(0, slash + 1)) +
        "tokenizer_config.json";
    if (std::ifstream(config_path).good()) {
      const Json config = read_json(config_path);
      if (auto t = config_token(config, "bos_token"); t && !(template_adds && v.add_bos))
        v.bos_id = id_of(*t);
      if (auto t = config_token(config, "eos_token"); t && !(template_adds && v.add_eos))
        v.eos_id = id_of(*t);
      if (auto t = config_token(config, "pad_token")) v.pad_id = id_of(*t);
      // The model's unk_token is the one encoding emits; the config's only fills a gap.
      if (auto t = config_token(config, "unk_token"); t && !v.unk_id) v.unk_id = id_of(*t);
      if (config.contains("chat_template") && config["chat_template"].is_string()) {
        v.chat_template = config["chat_template"].get<std::string>();
      }
      // A post_processor decides where there is one, as for transformers' PreTrainedTokenizerFast;
      // LlamaTokenizerFast rebuilds it from add_bos_token / add_eos_token instead.
      const bool llama_class = config.value("tokenizer_class", "") == "LlamaTokenizerFast";
      if (!template_adds || llama_class) {
        v.add_bos = config.value("add_bos_token", template_adds ? v.add_bos : false);
        v.add_eos = config.value("add_eos_token", template_adds ? v.add_eos : false);
      }
    }
  } catch (const Json::exception& e) {
    fail("{}: malformed tokenizer.json: {}", path, e.what());
  }
  return BpeTokenizer(std::move(v), path);
}

namespace {

Json byte_level(bool use_regex) {
  return {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true},
          {"use_regex", use_regex}};
}

// The tokenizer.json pre_tokenizer whose name pre_tokenizer_name() reads back.
Json pre_tokenizer_json(const std::string& name) {
  if (name == "gpt2") return byte_level(true);
  if (name == "smollm")
    return {{"type", "Sequence"},
            {"pretokenizers", {{{"type", "Digits"}, {"individual_digits", true}}, byte_level(true)}}};
  const char* re = name == "llama-bpe" ? kLlama3Split
                   : name == "qwen2"   ? kQwen2Split
                   : name == "gpt-4o"  ? kGpt4oSplit
                                       : nullptr;
  CONDENSE_CHECK(re != nullptr, "tokenizer.json: no Hugging Face form for pre-tokenizer '{}'", name);
  Json split = {{"type", "Split"}, {"pattern", {{"Regex", re}}}, {"behavior", "Isolated"},
                {"invert", false}};
  return {{"type", "Sequence"}, {"pretokenizers", {split, byte_level(false)}}};
}

// What read_post_processor() reads back: a TemplateProcessing adding bos / eos when the
// vocabulary does, so that transformers' PreTrainedTokenizerFast (which does not read
// add_bos_token) and `tokenizers` add them as condense does; none otherwise.
Json post_processor_json(const BpeVocabulary& v) {
  if (!(v.add_bos && v.bos_id) && !(v.add_eos && v.eos_id)) return nullptr;
  Json single = Json::array(), pair = Json::array(), special = Json::object();
  auto add = [&](const std::optional<int32_t>& id, bool on, int type_id, Json& seq) {
    if (!on || !id) return;
    const std::string& t = v.tokens[*id];
    seq.push_back({{"SpecialToken", {{"id", t}, {"type_id", type_id}}}});
    special[t] = {{"id", t}, {"ids", {*id}}, {"tokens", {t}}};
  };
  auto around = [&](const char* text, int type_id, Json& seq) {  // [bos] text [eos]
    add(v.bos_id, v.add_bos, type_id, seq);
    seq.push_back({{"Sequence", {{"id", text}, {"type_id", type_id}}}});
    add(v.eos_id, v.add_eos, type_id, seq);
  };
  around("A", 0, single);
  around("A", 0, pair);
  around("B", 1, pair);
  return {{"type", "TemplateProcessing"}, {"single", single}, {"pair", pair},
          {"special_tokens", special}};
}

}  // namespace

std::string BpeTokenizer::to_tokenizer_json() const {
  const BpeVocabulary& v = vocab();
  Json vocab_json = Json::object(), added = Json::array();
  for (size_t id = 0; id < v.tokens.size(); ++id) {
    const auto type = v.token_types.empty() ? BpeTokenType::kNormal
                                            : static_cast<BpeTokenType>(v.token_types[id]);
    if (type == BpeTokenType::kControl || type == BpeTokenType::kUserDefined) {
      added.push_back({{"id", id}, {"content", v.tokens[id]}, {"single_word", false},
                       {"lstrip", false}, {"rstrip", false}, {"normalized", false},
                       {"special", type == BpeTokenType::kControl}});
    }
    vocab_json[v.tokens[id]] = id;  // added tokens are in the model vocabulary too, as HF writes
  }
  Json merges = Json::array();
  for (const std::string& m : v.merges) {
    const size_t sp = m.find(' ');
    merges.push_back({m.substr(0, sp), m.substr(sp + 1)});
  }
  Json root = {{"version", "1.0"},
               {"truncation", nullptr},
               {"padding", nullptr},
               {"added_tokens", added},
               {"normalizer", v.normalizer == "nfc" ? Json{{"type", "NFC"}} : Json(nullptr)},
               {"pre_tokenizer", pre_tokenizer_json(v.pre_tokenizer)},
               {"post_processor", post_processor_json(v)},
               {"decoder", byte_level(true)},
               {"model",
                {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr},
                 {"continuing_subword_prefix", nullptr}, {"end_of_word_suffix", nullptr},
                 {"fuse_unk", v.missing_byte == MissingByte::kUnkFused}, {"byte_fallback", false},
                 {"ignore_merges", v.ignore_merges}, {"vocab", vocab_json}, {"merges", merges}}}};
  // model.unk_token decides what tokenizers does with a byte without a symbol (the unknown
  // token, or removed before merging): set only where condense emits the unknown token too. A
  // vocabulary from GGUF (llama.cpp drops such a byte where it stands, which tokenizers has no
  // setting for) is written without one, the nearer rule, and reads back as itself.
  if (v.missing_byte == MissingByte::kUnk || v.missing_byte == MissingByte::kUnkFused)
    root["model"]["unk_token"] = v.tokens[*v.unk_id];
  return root.dump(1, ' ', false, Json::error_handler_t::strict) + "\n";
}

std::string BpeTokenizer::to_tokenizer_config_json(int64_t model_max_length) const {
  const BpeVocabulary& v = vocab();
  Json c = {{"tokenizer_class", "PreTrainedTokenizerFast"},
            {"add_bos_token", v.add_bos},
            {"add_eos_token", v.add_eos},
            {"clean_up_tokenization_spaces", false},
            {"model_max_length", model_max_length}};
  auto token = [&](const char* key, const std::optional<int32_t>& id) {
    if (id) c[key] = v.tokens[*id];
  };
  token("bos_token", v.bos_id);
  token("eos_token", v.eos_id);
  token("pad_token", v.pad_id);
  token("unk_token", v.unk_id);
  if (!v.chat_template.empty()) c["chat_template"] = v.chat_template;
  return c.dump(2) + "\n";
}

}  // namespace condense
