// condense checkpoint <-> GGUF for llama.cpp's `llama` architecture (layout and traps in
// DESIGN.md "Formats"; names as llama.cpp's convert_hf_to_gguf.py writes them:
// token_embd, blk.N.attn_q ... ffn_down, output_norm, output). Hugging Face's RoPE rotates
// the two halves of each head while llama.cpp's llama rotates adjacent pairs, so q_proj and
// k_proj rows are permuted per head on export, gguf_row[h*hd + 2i + j] = hf_row[h*hd + j*hd/2 + i],
// and un-permuted on load. A model with q/k/v biases (LlamaConfig::qkv_bias) goes as llama.cpp's
// `qwen2` architecture instead (qwen2.* keys, blk.N.attn_q.bias ..., NEOX RoPE: not permuted),
// and GGUF files of either architecture load (as do qwen3, smollm3, phi3 and gemma3:
// gguf_architecture() in gguf_llama.cpp). The sentencepiece tokenizer goes in as tokenizer.ggml.model
// "llama" with pieces, scores and token types (1 normal, 2 unknown, 3 control, 4 user defined,
// 5 unused padding, 6 byte). Norm weights (1-D) stay F32 in every type, as llama.cpp's converter keeps
// them; a Q8_0 export stores a matrix whose rows are not a multiple of 32 as F16.
#pragma once
#include <cstdint>
#include <string>

#include <ATen/core/Tensor.h>

#include "model/llama.h"

namespace condense {

// HF row order -> llama.cpp row order for a q/k weight [n_head * head_dim, in]; and back.
at::Tensor permute_qk_for_gguf(const at::Tensor& w, int64_t n_head);
at::Tensor unpermute_qk_from_gguf(const at::Tensor& w, int64_t n_head);
// "model.layers.3.mlp.up_proj.weight" -> "blk.3.ffn_up.weight"; throws for unknown names.
// gemma: llama.cpp's gemma3 names (post_attention_layernorm is the attention output's
// post_attention_norm there, pre/post_feedforward_layernorm its ffn_norm / post_ffw_norm).
std::string gguf_tensor_name(const std::string& hf_name, bool gemma = false);

struct GgufExportStats {
  uint64_t bytes_written = 0;  // file size
  uint64_t weight_bytes = 0;   // the checkpoint's float32 tensor data converted
  double seconds = 0;
};

// type: "f32" | "f16" | "bf16" | "q8_0". The checkpoint must hold a tokenizer.
GgufExportStats export_gguf(const std::string& checkpoint_path, const std::string& out_path,
                            const std::string& type);

// Rebuilds a float32 model from a GGUF file written by export_gguf (or llama.cpp's converter
// with the same types): config from llama.* metadata, weights dequantized and un-permuted.

// `tokenizer_bytes`, when given, receives the tokenizer (Tokenizer::serialized() bytes) as
// data/tokenizer_file.h's gguf_tokenizer_bytes reads it: the sentencepiece model stored by
// condense's export, the byte-level BPE of tokenizer.ggml.model "gpt2" (Llama 3, SmolLM, Qwen),
// or llama.cpp's sentencepiece tables ("llama": Llama 2, Mistral) rebuilt into a sentencepiece
// model; left unchanged for a file with another tokenizer model or none. A vocabulary condense
// cannot hold (sentencepiece tables without any unknown piece, repeated pieces, ...) leaves it
// unchanged too, with the reason in `tokenizer_problem`: the weights still load.
LlamaForCausalLM load_gguf_model(const std::string& path, std::string* tokenizer_bytes = nullptr,
                                 std::string* tokenizer_problem = nullptr);

struct ImportStats;
// `condense import model.gguf out.h5 [--tokenizer T]`: the model dequantized to float32 (every
// type the reader knows), q/k un-permuted, with the tokenizer T names (any file
// load_tokenizer_file reads) or else the file's own when one can be rebuilt (a warning gives the
// reason when not); written atomically, refusing to overwrite OUT.
ImportStats import_gguf(const std::string& path, const std::string& out_path,
                        const std::string& tokenizer_path = "");

}  // namespace condense
