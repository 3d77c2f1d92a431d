// Recipe sections of the learned compressors, as plain structs (parsed in
// recipes/recipe_parser.cpp like every other section).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace condense {

// `recovery:` of a finetune / distill recipe: what trains after pruning.
struct RecoveryConfig {
  // full: every model parameter (masks kept); lora: LoRA adapters only, merged at export;
  // perp: the norms (+ embeddings and LM head with train_embeddings) and MaskLoRA or ScaleLoRA
  // adapters on the pruned matrices (Zimmer et al., PERP), which keep the sparsity on merge;
  // kv_project: only the KV-cache projections of init (compressors/kv_project.h), MatryoshkaKV
  // training with ranks sampled per head from {d/4, d/2, 3d/4, d}; cskv: only the low-rank K/V
  // factors of init (compressors/cskv.h), on CSKV's layer-wise reconstruction loss (kind
  // finetune) or end to end on the distillation loss (kind distill).
  std::string method = "full";
  std::string adapter = "masklora";  // perp: masklora | scalelora
  int64_t rank = 8;
  double alpha = 16;                 // LoRA scale alpha / rank
  // Regexes (full match) over weight names that get adapters; empty: the masked matrices (perp)
  // or every q/k/v/o/gate/up/down projection (lora).
  std::vector<std::string> targets;
  bool train_embeddings = false;     // perp: also embed_tokens (and lm_head when untied)
  // Which training windows recovery uses (compressors/recovery_data.h): all, random or paser
  // (the teacher-vs-pruned divergence spread over clusters; needs distill.teacher).
  std::string selection = "all";
  double budget = 0.2;               // share of the candidates kept (random, paser)
  int64_t candidates = 2000;         // windows scored; 0: the whole split
  int64_t clusters = 8;              // paser
  int64_t kv_rank = 0;               // kv_project: the rank validation uses (0: head_dim / 2)
  // cskv: CSKV's exact window of recent positions during training and validation (0: none);
  // give the same --kv-window at inference (compressors/cskv.h).
  int64_t kv_window = 0;
};

// `kv:` of the kv_heads and kv_project recipe kinds (recipes/kv_compress.h): how the init
// checkpoint's KV cache is compressed before training heals it. The training itself is the
// distill kind's (recovery:, distill:), with the init as the teacher unless distill.teacher
// names another.
struct KVConfig {
  int64_t heads = 0;            // kv_heads: the new num_key_value_heads (required)
  // kv_heads: svd | mean (default svd); kv_project with recovery.method cskv: whiten | asvd | svd
  // (default whiten); MatryoshkaKV (recovery.method kv_project) has one init (PCA).
  std::string init;
  int64_t key_rank = 0;         // cskv: width of the cached key latent per layer (required)
  int64_t value_rank = 0;       // cskv: the value latent's (0: key_rank)
  int64_t calib_windows = 32;   // the last windows of the run's validation split
  int64_t calib_seq_len = 0;    // 0: data.seq_len
};

// `distill:` logit (and optionally hidden-state) distillation from a frozen teacher.
struct DistillConfig {
  std::string teacher;               // checkpoint; empty: no distillation
  double kd_ratio = 1.0;             // weight of KD; 1 - kd_ratio goes to cross-entropy
  double temperature = 1.0;
  bool temperature_squared = true;   // multiply KD by T^2 (Hinton et al. 2015)
  int64_t top_k = 0;                 // > 0: the teacher's top-k logits only
  int64_t chunk = 1024;              // tokens per logits chunk (neither model's full logits exist)
  std::string hidden_loss = "none";  // none | mse | cosine
  double hidden_weight = 1.0;
  // "s:t" pairs: student hidden state s against teacher hidden state t (0 = embeddings,
  // i + 1 = output of layer i); empty with a hidden loss: every student layer's output against
  // the teacher's at the same relative depth.
  std::vector<std::string> hidden_layers;
};

}  // namespace condense

// `context:` of a context_compressor recipe (compressors/context_compressor.h): a trainable
// compressor that hands the frozen decoder (init) a few vectors in place of a chunk of tokens.
// Training windows of data.seq_len tokens are laid out as [prefix_len plain tokens][chunk_len
// tokens compressed][the rest: continuation, with loss].
struct ContextConfig {
  std::string method = "arc";           // arc (ARC-style encoder) | compllm (segment compression)
                                        // | xrag (one vector from a retriever's embedding)
  int64_t pooling_factor = 4;           // tokens per compressed vector (CompLLM's rate C)
  int64_t chunk_len = 64;               // tokens compressed per window
  int64_t prefix_len = 0;               // plain tokens before the compressed chunk
  // arc
  int64_t encoder_layers = 2;           // the decoder's first layers, copied into the encoder
  int64_t bottleneck = 0;               // projector's inner width (0: the decoder's hidden size)
  double reconstruction_share = 0.2;    // share of steps that train reconstruction
  // compllm
  int64_t segment_len = 20;             // S: tokens per independently compressed segment
  int64_t lora_rank = 8;                // adapters of the compression pass
  double lora_alpha = 16;
  double kd_ratio = 1.0;                // KL weight; 1 - kd_ratio goes to cross-entropy
  // Any method: a context_compressor checkpoint of the same method whose trained tensors start
  // this run (xRAG stage 2 after stage 1; ARC fine-tuned at 4x after pretraining at 8x).
  std::string start_from;
  // Documents with embeddings (compressors/context_documents.h): xRAG's training data; the
  // task every method is scored on by `context-eval --documents`.
  std::string documents;
  int64_t held_out = 256;               // the file's last documents: validation, never trained on
  int64_t answer_len = 16;              // answer tokens scored at most
  std::string task_template = "Background: {context}\nQuestion: Which word does this define?\nAnswer:";
  // xrag (chunk_len: document tokens scored in the paraphrase stage)
  int64_t embedding_dim = 0;            // the retriever's width (0: the documents file's)
  int64_t stage = 1;                    // 1: paraphrase; 2: task, NLL + kl_weight x KL
  double kl_weight = 2.0;
  std::string paraphrase_template = "Background: {context} means the same as";
};
