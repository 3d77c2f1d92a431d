// Pre-tokenizer regexes run with PCRE2, see pretokenizer.h.
#define PCRE2_CODE_UNIT_WIDTH 8
#include "text/pretokenizer.h"

#include <fmt/format.h>
#include <pcre2.h>

#include <utility>

#include "core/error.h"

namespace condense {
namespace {

// GPT-2's regex (openai/gpt-2 encoder.py); llama.cpp's LLAMA_VOCAB_PRE_TYPE_GPT2.
constexpr const char* kGpt2 =
    R"re('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S))re";
// Llama 3's tokenizer.json regex with llama.cpp's rewrite of (?i:'s|...) into explicit ASCII
// case pairs (llama.cpp PR 6920), which keeps 'ſ (U+017F) from matching as 's.
constexpr const char* kLlama3 =
    R"re((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)re";
// Qwen2's: Llama 3's with single digits.
constexpr const char* kQwen2 =
    R"re((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)re";

// GPT-4o's (tiktoken's o200k_base; Phi-4-mini, Llama 4): a word is an optional non-letter
// lead, then upper/titlecase letters and marks followed by lowercase ones (or the reverse), so
// "HelloWorld" is two pieces, with its English contraction as a suffix; digits in threes;
// punctuation runs take a following '/' or newlines. As its tokenizer.json writes it, with the
// contractions' (?i:...) in ASCII case pairs as in kLlama3. (llama.cpp runs a rewrite of it
// without the \p{Lu}-style classes, for its own regex engine; on tests/python's 3853 texts both
// give the ids `tokenizers` gives.)
constexpr const char* kGpt4o =
    R"re([^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+)re";

struct Entry {
  const char* name;
  std::vector<std::string> regexes;
};

const std::vector<Entry>& table() {
  static const std::vector<Entry> t = {
      {"gpt2", {kGpt2}},
      {"llama-bpe", {kLlama3}},
      // Every digit its own piece first (HF: Digits(individual_digits=True)), then GPT-2's.
      {"smollm", {R"re(\p{N})re", kGpt2}},
      {"qwen2", {kQwen2}},
      {"gpt-4o", {kGpt4o}},
  };
  return t;
}

// \s -> \p{White_Space}, \S -> \P{White_Space}; other escapes are copied as they are.
std::string translate_whitespace(const std::string& re) {
  std::string out;
  for (size_t i = 0; i < re.size(); ++i) {
    if (re[i] == '\\' && i + 1 < re.size()) {
      const char c = re[i + 1];
      if (c == 's') {
        out += R"(\p{White_Space})";
      } else if (c == 'S') {
        out += R"(\P{White_Space})";
      } else {
        out += re.substr(i, 2);
      }
      ++i;
    } else {
      out.push_back(re[i]);
    }
  }
  return out;
}

std::string pcre2_message(int code) {
  PCRE2_UCHAR buf[256];
  pcre2_get_error_message(code, buf, sizeof buf);
  return reinterpret_cast<const char*>(buf);
}

struct CodeDeleter {
  void operator()(pcre2_code* c) const { pcre2_code_free(c); }
};
struct MatchDataDeleter {
  void operator()(pcre2_match_data* m) const { pcre2_match_data_free(m); }
};

}  // namespace

struct Pretokenizer::Compiled {
  std::vector<std::unique_ptr<pcre2_code, CodeDeleter>> codes;
  std::vector<std::string> patterns;  // as compiled, for error messages
};

std::vector<std::string> Pretokenizer::names() {
  std::vector<std::string> out;
  for (const auto& e : table()) out.emplace_back(e.name);
  return out;
}

std::vector<std::string> Pretokenizer::regexes(const std::string& name) {
  for (const auto& e : table()) {
    if (name == e.name) return e.regexes;
  }
  fail("unknown BPE pre-tokenizer '{}' (known: {})", name, fmt::join(names(), ", "));
}

Pretokenizer Pretokenizer::by_name(const std::string& name) {
  auto compiled = std::make_shared<Compiled>();
  for (const auto& re : regexes(name)) {
    const std::string pattern = translate_whitespace(re);
    int err = 0;
    PCRE2_SIZE err_offset = 0;
    pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                     PCRE2_UTF | PCRE2_UCP, &err, &err_offset, nullptr);
    CONDENSE_CHECK(code, "pre-tokenizer '{}': PCRE2 rejects /{}/ at offset {}: {}", name, pattern,
                   err_offset, pcre2_message(err));
    compiled->codes.emplace_back(code);
    // JIT is an optimization only: where it is unavailable pcre2_match interprets the pattern.
    pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
    compiled->patterns.push_back(pattern);
  }
  return Pretokenizer(name, std::move(compiled));
}

std::vector<std::string_view> Pretokenizer::split(std::string_view text) const {
  std::vector<std::string_view> pieces;
  if (text.empty()) return pieces;
  pieces.push_back(text);
  for (size_t r = 0; r < compiled_->codes.size(); ++r) {
    const pcre2_code* code = compiled_->codes[r].get();
    std::unique_ptr<pcre2_match_data, MatchDataDeleter> md(
        pcre2_match_data_create_from_pattern(code, nullptr));
    CONDENSE_CHECK(md, "pre-tokenizer '{}': out of memory", name_);
    std::vector<std::string_view> next;
    next.reserve(pieces.size() * 2);
    for (std::string_view piece : pieces) {
      // Each piece is a subject of its own: lookahead never sees past its end, as in llama.cpp
      // and Hugging Face's Sequence of pre-tokenizers.
      const auto* subject = reinterpret_cast<PCRE2_SPTR>(piece.data());
      size_t done = 0;  // piece[0, done) has been emitted
      size_t start = 0;
      while (start < piece.size()) {
        // The first search validates the UTF-8; later ones start on a character boundary.
        const uint32_t opts = start == 0 ? 0 : PCRE2_NO_UTF_CHECK;
        int rc = pcre2_match(code, subject, piece.size(), start, opts, md.get(), nullptr);
        if (rc == PCRE2_ERROR_JIT_STACKLIMIT) {  // a huge run: the interpreter has no such limit
          rc = pcre2_match(code, subject, piece.size(), start, opts | PCRE2_NO_JIT, md.get(),
                           nullptr);
        }
        if (rc == PCRE2_ERROR_NOMATCH) break;
        CONDENSE_CHECK(rc >= 0, "pre-tokenizer '{}': matching /{}/ failed: {}", name_,
                       compiled_->patterns[r], pcre2_message(rc));
        const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.get());
        const size_t b = ov[0], e = ov[1];
        if (b > done) {  // the text between two matches is a piece too
          next.push_back(piece.substr(done, b - done));
          done = b;
        }
        if (e > b) {
          next.push_back(piece.substr(b, e - b));
          done = e;
          start = e;
        } else {
          // An empty match (none of the known regexes has one) must still move forward by a
          // whole character.
          start = e + 1;
          while (start < piece.size() && (static_cast<uint8_t>(piece[start]) & 0xC0) == 0x80)
            ++start;
        }
      }
      if (done < piece.size()) next.push_back(piece.substr(done));
    }
    pieces = std::move(next);
  }
  return pieces;
}

}  // namespace condense
