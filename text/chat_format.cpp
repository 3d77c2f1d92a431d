#include "text/chat_format.h"

#include <algorithm>
#include <optional>

#include "core/error.h"

namespace condense {
namespace {

std::optional<int32_t> find_token(const BpeVocabulary& v, const std::string& text) {
  for (size_t i = 0; i < v.tokens.size(); ++i)
    if (v.tokens[i] == text) return static_cast<int32_t>(i);
  return std::nullopt;
}

// The literal default system message of a ChatML template, if it writes one:
// "{{ '<|im_start|>system\n...<|im_end|>\n' }}", the newline written either as a character or
// as a \n escape (both occur in published templates).
std::string default_chatml_system(const std::string& tmpl) {
  const std::string open = "'<|im_start|>system";
  size_t a = tmpl.find(open);
  if (a == std::string::npos) return "";
  a += open.size();
  if (tmpl.compare(a, 1, "\n") == 0) a += 1;
  else if (tmpl.compare(a, 2, "\\n") == 0) a += 2;
  else return "";
  const size_t b = tmpl.find("<|im_end|>", a);
  if (b == std::string::npos) return "";
  std::string s = tmpl.substr(a, b - a);
  // Only a plain literal counts (no Jinja expression or quote inside).
  if (s.find('{') != std::string::npos || s.find('\'') != std::string::npos) return "";
  return s;
}

// The id of control piece `piece` in `tok`, or -1.
int32_t control_id(const Tokenizer& tok, const std::string& piece) {
  for (int id = 0; id < tok.vocab_size(); ++id)
    if (tok.token_type(id) == 3 && tok.piece(id) == piece) return id;
  return -1;
}

// The byte length of the whitespace code point at s[i], or 0: Unicode White_Space (Rust's
// char::is_whitespace), and with `python` also U+001C..U+001F, which Python's str.isspace adds.
size_t whitespace_at(const std::string& s, size_t i, bool python) {
  const unsigned char c = static_cast<unsigned char>(s[i]);
  if (c == ' ' || (c >= 0x09 && c <= 0x0D) || (python && c >= 0x1C && c <= 0x1F)) return 1;
  if (c == 0xC2 && i + 1 < s.size()) {  // U+0085, U+00A0
    const unsigned char d = static_cast<unsigned char>(s[i + 1]);
    return d == 0x85 || d == 0xA0 ? 2 : 0;
  }
  if ((c == 0xE1 || c == 0xE2 || c == 0xE3) && i + 2 < s.size()) {
    const uint32_t cp = ((c & 0x0Fu) << 12) | ((static_cast<unsigned char>(s[i + 1]) & 0x3Fu) << 6) |
                        (static_cast<unsigned char>(s[i + 2]) & 0x3Fu);
    const bool white = cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
                       cp == 0x202F || cp == 0x205F || cp == 0x3000;
    return white ? 3 : 0;
  }
  return 0;
}

// `s` without its leading Unicode White_Space (what a `tokenizers` added token with rstrip consumes
// after itself).
std::string lstrip(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const size_t len = whitespace_at(s, i, false);
    if (len == 0) break;
    i += len;
  }
  return s.substr(i);
}

// Python's str.strip() (Jinja's trim filter): whitespace off both ends.
std::string py_strip(const std::string& s) {
  size_t begin = 0, end = s.size();
  while (begin < end) {
    const size_t len = whitespace_at(s, begin, true);
    if (len == 0) break;
    begin += len;
  }
  while (end > begin) {
    size_t start = end - 1;  // the last code point's first byte
    while (start > begin && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
    if (whitespace_at(s, start, true) != end - start) break;
    end = start;
  }
  return s.substr(begin, end - begin);
}

// The id of Gemma's turn piece `piece` (control or user-defined), or -1.
int32_t turn_piece_id(const Tokenizer& tok, const std::string& piece) {
  for (int id = 0; id < tok.vocab_size(); ++id)
    if ((tok.token_type(id) == 3 || tok.token_type(id) == 4) && tok.piece(id) == piece) return id;
  return -1;
}

}  // namespace

bool has_phi3_turns(const Tokenizer& tok) {
  for (const char* piece : {"<|user|>", "<|assistant|>", "<|end|>"})
    if (control_id(tok, piece) < 0) return false;
  return true;
}

ChatPrompt phi3_chat_prompt(const Tokenizer& tok, const std::string& system, const std::string& user) {
  ChatPrompt p;
  p.format = "phi3";
  auto need = [&](const char* piece) {
    const int32_t id = control_id(tok, piece);
    CONDENSE_CHECK(id >= 0, "{}: --chat-format phi3 needs the control piece {} (Phi-3's turns)",
                   tok.source(), piece);
    return id;
  };
  CONDENSE_CHECK(tok.bos_id() >= 0, "{}: --chat-format phi3 needs a vocabulary with <s>", tok.source());
  p.ids.push_back(tok.bos_id());
  p.text = "<s>";
  auto turn = [&](const char* role, const std::string& content) {
    p.ids.push_back(need(role));
    for (int32_t id : tok.encode(lstrip(content))) p.ids.push_back(id);
    p.ids.push_back(need("<|end|>"));
    p.text += std::string(role) + "\n" + content + "<|end|>\n";
  };
  if (!system.empty()) turn("<|system|>", system);
  turn("<|user|>", user);
  p.ids.push_back(need("<|assistant|>"));
  p.text += "<|assistant|>\n";
  p.stop_id = need("<|end|>");
  return p;
}

std::string gemma_chat_text(const std::string& system, const std::string& user) {
  const std::string first = system.empty() ? "" : system + "\n\n";
  return "<start_of_turn>user\n" + first + py_strip(user) + "<end_of_turn>\n<start_of_turn>model\n";
}

bool has_gemma_turns(const Tokenizer& tok) {
  return turn_piece_id(tok, "<start_of_turn>") >= 0 && turn_piece_id(tok, "<end_of_turn>") >= 0;
}

ChatPrompt gemma_chat_prompt(const Tokenizer& tok, const std::string& system, const std::string& user) {
  ChatPrompt p;
  p.format = "gemma";
  const int32_t start = turn_piece_id(tok, "<start_of_turn>"), end = turn_piece_id(tok, "<end_of_turn>");
  CONDENSE_CHECK(start >= 0 && end >= 0, "{}: --chat-format gemma needs the pieces <start_of_turn> and "
                 "<end_of_turn> (Gemma's turns)", tok.source());
  CONDENSE_CHECK(tok.bos_id() >= 0, "{}: --chat-format gemma needs a vocabulary with <bos>", tok.source());
  p.text = gemma_chat_text(system, user);
  p.ids.push_back(tok.bos_id());
  // The rendered text split at the two turn tokens, each part between them encoded alone.
  size_t at = 0;
  while (at < p.text.size()) {
    const size_t s = p.text.find("<start_of_turn>", at), e = p.text.find("<end_of_turn>", at);
    const size_t next = std::min(s, e);
    if (next > at)
      for (int32_t id : tok.encode(p.text.substr(at, next - at))) p.ids.push_back(id);
    if (next == std::string::npos) break;
    p.ids.push_back(next == s ? start : end);
    at = next + std::string(next == s ? "<start_of_turn>" : "<end_of_turn>").size();
  }
  p.stop_id = end;
  return p;
}

ChatPrompt chat_prompt(const BpeVocabulary& v, const std::string& system, const std::string& user,
                       const std::string& source) {
  ChatPrompt p;
  if (auto end = find_token(v, "<|im_end|>"); end && find_token(v, "<|im_start|>")) {
    p.format = "chatml";
    p.stop_id = *end;
    const std::string sys = system.empty() ? default_chatml_system(v.chat_template) : system;
    if (!sys.empty()) p.text += "<|im_start|>system\n" + sys + "<|im_end|>\n";
    p.text += "<|im_start|>user\n" + user + "<|im_end|>\n<|im_start|>assistant\n";
    return p;
  }
  if (auto eot = find_token(v, "<|eot_id|>"); eot && find_token(v, "<|start_header_id|>")) {
    p.format = "llama3";
    p.stop_id = *eot;
    auto turn = [](const std::string& role, const std::string& content) {
      return "<|start_header_id|>" + role + "<|end_header_id|>\n\n" + content + "<|eot_id|>";
    };
    p.text = "<|begin_of_text|>";
    if (!system.empty()) p.text += turn("system", system);
    p.text += turn("user", user) + "<|start_header_id|>assistant<|end_header_id|>\n\n";
    return p;
  }
  fail("{}: --chat needs an instruction-tuned vocabulary with ChatML (<|im_start|>, <|im_end|>) "
       "or Llama 3 (<|start_header_id|>, <|eot_id|>) tokens; this one has neither (use --prompt)",
       source);
}

ChatPrompt chat_prompt_named(const std::string& format, const std::string& system,
                             const std::string& user) {
  ChatPrompt p;
  p.format = format;
  if (format == "llama2") {
    p.text = system.empty() ? "[INST] " + user + " [/INST]"
                            : "[INST] <<SYS>>\n" + system + "\n<</SYS>>\n\n" + user + " [/INST]";
    return p;
  }
  if (format == "mistral") {
    p.text = "[INST] " + (system.empty() ? user : system + "\n\n" + user) + "[/INST]";
    return p;
  }
  fail("--chat-format {}: not a format (chatml and llama3 for byte-level BPE vocabularies, "
       "llama2, mistral, phi3 and gemma for sentencepiece ones)", format);
}

}  // namespace condense
