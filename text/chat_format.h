// Chat prompts for instruction-tuned byte-level BPE vocabularies, without a Jinja engine: the
// formats their chat templates render for one system turn and one user turn followed by
// the assistant's turn (add_generation_prompt), recognized by the vocabulary's special tokens:
//   chatml  (SmolLM, Qwen):  <|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}
//                            <|im_end|>\n<|im_start|>assistant\n           stop at <|im_end|>
//   llama3  (Llama 3.x):     <|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n
//                            {system}<|eot_id|><|start_header_id|>user<|end_header_id|>\n\n{user}
//                            <|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n
//                                                                      stop at <|eot_id|>
// The system turn is left out when `system` is empty, except that a ChatML template which
// writes a default system message (SmolLM2's "You are a helpful AI assistant named SmolLM...")
// gets that message, as rendering the template would.
#pragma once
#include <cstdint>
#include <string>

#include <vector>

#include "text/bpe_vocabulary.h"
#include "text/tokenizer.h"

namespace condense {

struct ChatPrompt {
  std::string format;  // "chatml" | "llama3" | "gemma" | "llama2" | "mistral" | "phi3"
  std::string text;    // the rendered prompt, special tokens written out
  int32_t stop_id = -1;  // the end-of-turn token
  // phi3, gemma on sentencepiece: the prompt's ids (<s> / <bos> first), built rather than encoded
  std::vector<int32_t> ids;
};

// Throws naming the vocabulary when it has neither format's special tokens.
ChatPrompt chat_prompt(const BpeVocabulary& vocab, const std::string& system,
                       const std::string& user, const std::string& source);

// Chat prompts for sentencepiece vocabularies (Llama 2, Mistral), which carry no chat template,
// by name, rendered as llama.cpp's built-in templates of those names render them:
//   llama2   (Llama 2 chat, llama.cpp "llama2-sys"): [INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST]
//            and without a system message [INST] {user} [/INST]
//   mistral  (Mistral Instruct, llama.cpp "mistral-v3"): [INST] {system}\n\n{user}[/INST]
//            ([INST] and [/INST] are control pieces of v0.3's vocabulary, plain text before)
// The model reads <s> before the text (Tokenizer::encode_special keeps control pieces written in
// it), and the reply ends at the vocabulary's eos (stop_id -1). Other names are refused.
ChatPrompt chat_prompt_named(const std::string& format, const std::string& system,
                             const std::string& user);

// Phi-3 / Phi-3.5 (a sentencepiece vocabulary with <|system|>, <|user|>, <|assistant|> and <|end|>
// control pieces: an import keeps them from tokenizer.json), as Phi-3-mini's chat template renders
// it (Phi-3.5's leaves out the <s>),
//   <s><|system|>\n{system}<|end|>\n<|user|>\n{user}<|end|>\n<|assistant|>\n     stop at <|end|>
// (no system turn when `system` is empty), with the ids Phi-3's Hugging Face tokenizer.json (what
// AutoTokenizer loads) and llama.cpp (which recognizes Phi-3 by name) give it: the turn tokens
// strip the whitespace after them (rstrip: the newlines and any Unicode White_Space), and each
// text between special tokens is encoded with sentencepiece's space prefix. (transformers' slow
// LlamaTokenizer with legacy=False leaves that prefix out: other ids.) The contents are encoded as
// text: a control piece written in them is not parsed (the template would). Throws naming a
// missing piece.
ChatPrompt phi3_chat_prompt(const Tokenizer& tok, const std::string& system, const std::string& user);
// Whether `tok` has Phi-3's turn pieces (what --chat-format auto picks phi3 by).
bool has_phi3_turns(const Tokenizer& tok);

// Gemma 2 / 3 instruction-tuned, as Gemma 3's chat template renders one system and one user turn:
//   <start_of_turn>user\n{system}\n\n{user}<end_of_turn>\n<start_of_turn>model\n
// (the system message opens the user turn, as Gemma has no system role; without one the turn is
// the user's alone), the user's text trimmed of surrounding whitespace (Jinja's trim: Python's
// str.strip), the system's kept as it is. Without the leading <bos>.
std::string gemma_chat_text(const std::string& system, const std::string& user);
// On a sentencepiece vocabulary with <start_of_turn> and <end_of_turn> pieces (control or
// user-defined): <bos>, then the turn tokens and the texts between them encoded one by one, as
// transformers' tokenizer (it splits at special tokens first) and llama.cpp (parse_special) encode
// the rendered prompt; stop at <end_of_turn>. Throws naming a missing piece.
ChatPrompt gemma_chat_prompt(const Tokenizer& tok, const std::string& system, const std::string& user);
// Whether `tok` has Gemma's turn pieces (what --chat-format auto picks gemma by).
bool has_gemma_turns(const Tokenizer& tok);

}  // namespace condense
