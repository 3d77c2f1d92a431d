// Pre-tokenizers of byte-level BPE vocabularies, chosen by the names llama.cpp writes to GGUF
// (`tokenizer.ggml.pre`). A pre-tokenizer is a list of regexes applied in turn: each one splits
// every piece the previous one produced into its matches and the text between them (Hugging
// Face's Split with behavior "Isolated"; llama.cpp's unicode_regex_split), and BPE merges never
// cross a piece boundary. The regexes are llama.cpp's (src/llama-vocab.cpp, llm_tokenizer_bpe),
// run by PCRE2 in UTF + UCP mode (JIT-compiled when available) so \p{L} and \p{N} come from
// PCRE2's Unicode tables; \s and \S are read as the Unicode White_Space property, which is what
// llama.cpp and the `tokenizers` package mean by them (PCRE2's own \s also takes U+180E).
// Immutable after construction; split() is safe to call from several threads.
#pragma once
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace condense {

class Pretokenizer {
 public:
  // The pre-tokenizer called `name` ("gpt2", "llama-bpe", "smollm", "qwen2", "gpt-4o"); any other name
  // is an error listing these.
  static Pretokenizer by_name(const std::string& name);
  static std::vector<std::string> names();
  // llama.cpp's regexes for `name`, as written there (before the \s translation).
  static std::vector<std::string> regexes(const std::string& name);

  const std::string& name() const { return name_; }
  // Splits valid UTF-8 `text` into non-empty pieces that concatenate back to `text`. Text that
  // is not valid UTF-8 is the caller's to cut out first (an error here).
  std::vector<std::string_view> split(std::string_view text) const;

 private:
  struct Compiled;
  Pretokenizer(std::string name, std::shared_ptr<const Compiled> compiled)
      : name_(std::move(name)), compiled_(std::move(compiled)) {}

  std::string name_;
  std::shared_ptr<const Compiled> compiled_;
};

}  // namespace condense
