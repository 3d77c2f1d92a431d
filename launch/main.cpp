// The `condense` executable: train, prepare, eval, generate, info, import, export, score, prune.
// Library code throws; this is the one place that catches, prints "error: <message>" and exits
// non-zero.
#include <ATen/Parallel.h>
#include <CLI/CLI.hpp>
#include <c10/util/Exception.h>
#include <c10/util/Logging.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <cctype>
#include <cmath>
#include <filesystem>
#include <iostream>
#include <thread>

#include "comm/mpi_runtime.h"
#include "compressors/masks.h"
#include "core/error.h"
#include "core/hash.h"
#include "core/log.h"
#include "data/loader.h"
#include "data/token_store.h"
#include "formats/compressed_context.h"
#include "formats/inference_model.h"
#include "io/atomic_file.h"
#include "launch/context_commands.h"
#include "launch/io_commands.h"
#include "launch/prune_command.h"
#include "model/generate.h"
#include "model/huge_pages.h"
#include "model/kv_cache.h"
#include "recipes/pretrain.h"
#include "recipes/recipe.h"
#include "recipes/recipe_parser.h"
#include "text/bpe_tokenizer.h"
#include "text/chat_format.h"
#include "trainer/checkpoint.h"
#include "trainer/device.h"
#include "trainer/lm_loss.h"

namespace condense {
namespace {

// `condense eval`'s own options (the KV options are shared with generate).
struct EvalArgs {
  std::string checkpoint, dataset;
  int64_t batches = 16, skip = 0;
  // > 0: override the checkpoint recipe's windows, so that checkpoints from different recipes
  // can be compared on the same held-out tokens.
  int64_t seq_len = 0, batch_size = 0;
  // A checkpoint or run directory of the uncompressed model: eval then also reports how far the
  // evaluated model's next-token distributions are from it on the same tokens (fidelity, which a
  // loss below the reference's cannot show).
  std::string reference;
};

// Per-token agreement with a reference model's next-token distributions, summed over batches.
struct Fidelity {
  double kl = 0;          // sum over positions of KL(reference || model), nats
  double agree = 0;       // positions whose argmax tokens are the same
  int64_t positions = 0;
  // [B, T, V] logits of both models; one window at a time in double (a [T, V] double
  // softmax of a 49k vocabulary at T = 1024 is 0.4 GB). Models of one tokenizer padded to other
  // sizes (Qwen2.5's 0.5B and 7B) are compared over the tokenizer's `pieces` rows.
  void add(const at::Tensor& reference_logits, const at::Tensor& logits, int64_t pieces) {
    const bool same = reference_logits.size(-1) == logits.size(-1);
    for (int64_t b = 0; b < logits.size(0); ++b) {
      at::Tensor r = same ? reference_logits[b] : reference_logits[b].narrow(-1, 0, pieces);
      at::Tensor m = same ? logits[b] : logits[b].narrow(-1, 0, pieces);
      at::Tensor lr = r.to(at::kDouble).log_softmax(-1);
      at::Tensor lm = m.to(at::kDouble).log_softmax(-1);
      kl += (lr.exp() * (lr - lm)).sum().item<double>();
      agree += (r.argmax(-1) == m.argmax(-1)).sum().item<double>();
      positions += logits[b].numel() / logits.size(-1);
    }
  }
};

// kv_cache "int8": every window runs through an int8 KV cache in the cache's chunks
// (model/kv_cache.h), so the loss is what decoding with that cache would score.
int cmd_eval(const EvalArgs& e, const std::string& kv_cache, int64_t kv_rank, double kv_budget,
             const std::string& kv_granularity, int64_t kv_window) {
  const KVCacheOptions kv = parse_kv_cache(kv_cache, "--kv-cache");
  const int64_t seq_len = e.seq_len, batch_size = e.batch_size, batches = e.batches, skip = e.skip;
  const std::string& dataset = e.dataset;
  std::string path = resolve_checkpoint_path(e.checkpoint);
  Checkpoint ckpt = Checkpoint::open(path);
  RunConfig cfg = parse_recipe(ckpt.recipe_yaml(), path + ":recipe");
  CONDENSE_CHECK(seq_len >= 0 && batch_size >= 0, "--seq-len and --batch-size must be >= 0 (0: "
                 "the recipe's), got {} and {}", seq_len, batch_size);
  if (seq_len > 0) {
    CONDENSE_CHECK(seq_len <= ckpt.config().max_position_embeddings, "--seq-len {} exceeds the "
                   "model's max_position_embeddings {}", seq_len, ckpt.config().max_position_embeddings);
    cfg.data.seq_len = seq_len;
  }
  if (batch_size > 0) cfg.data.batch_size = batch_size;
  CONDENSE_CHECK(kv_rank == 0 || kv_budget == 0, "give --kv-rank or --kv-budget, not both");
  CONDENSE_CHECK(skip >= 0, "--skip-batches must be >= 0, got {}", skip);
  // The weights (and the reference's) are read and checked before the store, which may have to
  // be tokenized first (minutes, and a file in the cache) for a checkpoint that is refused.
  LlamaForCausalLM model = load_inference_model(ckpt);
  LlamaForCausalLM reference{nullptr};
  std::string reference_path, reference_tokenizer;
  if (!e.reference.empty()) {
    reference_path = resolve_checkpoint_path(e.reference);
    const Checkpoint ref = Checkpoint::open(reference_path);
    reference_tokenizer = sha256_hex(ref.tokenizer_bytes());
    reference = load_inference_model(ref);
    reference->to(model->lm_head_weight().device());
    reference->eval();
  }
  TokenStore store = open_checkpoint_store(ckpt, path, dataset);
  if (reference) {
    store.check_tokenizer(reference_tokenizer, reference_path);
    CONDENSE_CHECK(reference->config().vocab_size >= store.vocab_size(), "--reference {}: {} "
                   "embedding rows for a tokenizer of {} pieces", reference_path,
                   reference->config().vocab_size, store.vocab_size());
  }
  set_kv_rank(model, kv_rank, path);
  set_kv_budget(model, kv_budget, kv_granularity, ckpt, path, dataset);
  set_kv_window(model, kv_window, path);
  model->eval();
  const at::Tensor held_out = store.held_out_ids();
  auto val = validation_batches(held_out, cfg.data.seq_len, cfg.data.batch_size,
                                batches > 0 ? skip + batches : 0, 0, 1);
  CONDENSE_CHECK(!val.empty(), "{}: validation split has no full window of {} tokens", store.path(),
                 cfg.data.seq_len);
  CONDENSE_CHECK(skip < static_cast<int64_t>(val.size()), "--skip-batches {}: the validation split "
                 "of {} has only {} batches of {} x {} tokens", skip, store.path(), val.size(),
                 cfg.data.batch_size, cfg.data.seq_len);
  val.erase(val.begin(), val.begin() + skip);
  const int64_t batch_tokens = val.empty() ? 0 : val[0].inputs.numel();
  warn_past_half("eval", skip * batch_tokens, (skip + static_cast<int64_t>(val.size())) * batch_tokens + 1,
                 held_out.numel(), /*first_half=*/true);
  at::NoGradGuard no_grad;
  double total = 0, kv_bytes = 0;
  Fidelity fidelity;
  for (const Batch& b : val) {
    if (kv.type == KVCacheType::kFp && !reference) {
      total += causal_lm_loss(model, b).item<double>();
      continue;
    }
    at::Tensor w = model->lm_head_weight();
    at::Tensor inputs = b.inputs.to(w.device());
    at::Tensor logits;
    if (kv.type == KVCacheType::kFp) {
      logits = model->forward(inputs);
    } else {
      KVCache cache(model->config(), b.inputs.size(0), b.inputs.size(1), w.options(), kv);
      logits = model->logits(prefill(model, inputs, cache));
      kv_bytes = cache.bytes_per_token();
    }
    total += at::cross_entropy_loss(logits.flatten(0, 1).to(at::kFloat), b.targets.to(w.device()).flatten())
                 .item<double>();
    if (reference) fidelity.add(reference->forward(inputs), logits, store.vocab_size());
  }
  double loss = total / val.size();
  int64_t tokens = static_cast<int64_t>(val.size()) * cfg.data.batch_size * cfg.data.seq_len;
  if (kv.type == KVCacheType::kFp) kv_bytes = kv_bytes_per_token(model);
  // KL per position and top-1 agreement against the reference on the same positions.
  const std::string against =
      reference ? fmt::format(", \"reference\": \"{}\", \"kl_from_reference\": {:.6g}, "
                              "\"top1_agreement\": {:.6f}",
                              reference_path, fidelity.kl / fidelity.positions,
                              fidelity.agree / fidelity.positions)
                : "";
  std::cout << fmt::format("{{\"checkpoint\": \"{}\", \"step\": {}, \"val_loss\": {:.6f}, "
                           "\"perplexity\": {:.4f}, \"tokens\": {}, \"kv_cache\": \"{}\", "
                           "\"kv_bytes_per_token\": {:.1f}{}}}\n",
                           path, ckpt.state().step, loss, std::exp(loss), tokens, kv_cache, kv_bytes,
                           against);
  return 0;
}

struct ChatArgs {
  std::string user, system;
  std::string format = "auto";  // --chat-format
  bool show_prompt = false;
  // Compressed context before the prompt (launch/context_commands.h).
  std::string context_file, context_vectors;
};

int cmd_generate(const std::string& ckpt_arg, std::string prompt, SamplingOptions opt,
                 const ChatArgs& chat, const std::string& kv_cache, bool ignore_eos, bool print_ids,
                 int64_t kv_rank, double kv_budget, const std::string& kv_granularity,
                 const std::string& calib_data, int64_t kv_window) {
  const KVCacheOptions kv = parse_kv_cache(kv_cache, "--kv-cache");
  // Every sampling option in its range before anything loads.
  CONDENSE_CHECK(opt.max_new_tokens >= 1, "--max-new-tokens {}: must be at least 1", opt.max_new_tokens);
  CONDENSE_CHECK(std::isfinite(opt.temperature) && opt.temperature >= 0,
                 "--temperature {}: must be >= 0 (0: greedy)", opt.temperature);
  CONDENSE_CHECK(opt.top_k >= 0, "--top-k {}: must be >= 0 (0: off)", opt.top_k);
  CONDENSE_CHECK(opt.top_p > 0 && opt.top_p <= 1, "--top-p {}: valid is (0, 1] (1: off)", opt.top_p);
  CONDENSE_CHECK(kv_rank >= 0, "--kv-rank {}: must be >= 0 (0: full rank)", kv_rank);
  CONDENSE_CHECK(kv_rank == 0 || kv_budget == 0, "give --kv-rank or --kv-budget, not both");
  CONDENSE_CHECK(kv_budget >= 0 && kv_budget <= 1, "--kv-budget {}: valid is (0, 1] (0: off)", kv_budget);
  std::string path = resolve_checkpoint_path(ckpt_arg);
  Checkpoint ckpt = Checkpoint::open(path);
  Tokenizer tok = Tokenizer::from_serialized(ckpt.tokenizer_bytes(), path + ":tokenizer");
  const bool has_context = !chat.context_file.empty() || !chat.context_vectors.empty();
  const int given = static_cast<int>(!prompt.empty()) + static_cast<int>(!chat.user.empty());
  CONDENSE_CHECK(given == 1 || (given == 0 && has_context), "generate needs exactly one of --prompt "
                 "and --chat (with --context or --context-vectors, --prompt may be left out)");
  const bool chatting = !chat.user.empty();
  bool named_format = false;  // llama2 / mistral: <s>, then the text with control pieces parsed
  std::vector<int32_t> chat_ids;  // phi3, gemma: the prompt's ids, built turn by turn
  if (chatting) {
    ChatPrompt cp;
    if (tok.bpe() && chat.format != "llama2" && chat.format != "mistral" && chat.format != "phi3" &&
        chat.format != "gemma") {
      cp = chat_prompt(tok.bpe()->vocab(), chat.system, chat.user, path);
      CONDENSE_CHECK(chat.format == "auto" || chat.format == cp.format, "--chat-format {}: this "
                     "vocabulary's chat format is {}", chat.format, cp.format);
    } else {
      std::string format = chat.format;
      if (format == "auto") {  // Phi-3, Gemma and Mistral v0.3 name their turns with pieces
        bool inst = false, end = false;
        for (int id = 0; id < tok.vocab_size(); ++id) {
          inst |= tok.token_type(id) == 3 && tok.piece(id) == "[INST]";
          end |= tok.token_type(id) == 3 && tok.piece(id) == "[/INST]";
        }
        const bool phi3 = has_phi3_turns(tok), gemma = has_gemma_turns(tok);
        CONDENSE_CHECK(phi3 || gemma || (inst && end), "{}: a sentencepiece vocabulary keeps no chat "
                       "template; name the model's format with --chat-format llama2|mistral|phi3|gemma", path);
        format = phi3 ? "phi3" : gemma ? "gemma" : "mistral";
      }
      if (format == "phi3" || format == "gemma") {
        CONDENSE_CHECK(!tok.bpe(), "{}: --chat-format {} is a sentencepiece format; this vocabulary is a "
                       "byte-level BPE (its own format: --chat-format auto)", path, format);
        cp = format == "phi3" ? phi3_chat_prompt(tok, chat.system, chat.user)
                              : gemma_chat_prompt(tok, chat.system, chat.user);
        chat_ids = cp.ids;
        // its <s> left out after a compressed context (gemma's text shows none)
        if (has_context && format == "phi3") cp.text = cp.text.substr(3);
      } else {
        cp = chat_prompt_named(format, chat.system, chat.user);
        named_format = true;
      }
    }
    prompt = cp.text;
    opt.stop_id = cp.stop_id;
    if (chat.show_prompt) std::cerr << "chat prompt (" << cp.format << "):\n" << cp.text << "\n";
  }
  LlamaForCausalLM model = load_inference_model(ckpt);
  // Decoding streams every weight once per token: on huge pages it streams faster.
  if (int64_t moved = place_on_huge_pages(*model); moved > 0)
    spdlog::debug("{:.0f} MB of weights on transparent huge pages", moved / 1e6);
  set_kv_rank(model, kv_rank, path);
  set_kv_budget(model, kv_budget, kv_granularity, ckpt, path, calib_data);
  set_kv_window(model, kv_window, path);
  // A rendered chat prompt carries its own <|begin_of_text|> where the format has one; after a
  // compressed context the prompt continues it directly, as in training (no <bos>).
  CompressedContext context = context_for(path, model, tok, chat.context_file, chat.context_vectors);
  std::vector<int32_t> prompt_ids;
  if (!chat_ids.empty()) {  // its <s> left out after a compressed context, as for the others
    prompt_ids.assign(chat_ids.begin() + (has_context ? 1 : 0), chat_ids.end());
  } else if (named_format) {
    CONDENSE_CHECK(tok.bos_id() >= 0, "{}: --chat-format {} needs a vocabulary with <s>", path, chat.format);
    if (!has_context) prompt_ids.push_back(tok.bos_id());
    for (int32_t id : tok.encode_special(prompt)) prompt_ids.push_back(id);
  } else {
    prompt_ids = chatting || has_context ? tok.encode(prompt) : tok.prompt_ids(prompt);
  }
  if (chatting && chat.show_prompt) std::cerr << "prompt ids: " << fmt::format("{}", fmt::join(prompt_ids, " ")) << "\n";
  CONDENSE_CHECK(!prompt_ids.empty() || has_context, "--prompt is empty and this vocabulary adds "
                 "no <bos>: give the model something to continue");
  std::vector<int64_t> ids(prompt_ids.begin(), prompt_ids.end());
  opt.eos_id = ignore_eos ? -1 : tok.eos_id();
  if (!ignore_eos) opt.more_stop_ids = config_stop_ids(model->config());
  opt.vocab_limit = tok.vocab_size();  // embedding rows past the tokenizer's are never drawn
  // generate() stops at the model's context; say so up front (--ignore-eos runs are often
  // timings of a fixed token count).
  const int64_t positions = static_cast<int64_t>(ids.size()) + (has_context ? context.embeds.size(0) : 0);
  // The last token generated is not fed back, so it needs no position of its own.
  const int64_t room = model->config().max_position_embeddings - positions + 1;
  if (room > 0 && opt.max_new_tokens > room)
    spdlog::warn("--max-new-tokens {}: the prompt takes {} of the model's {} positions, so at most "
                 "{} tokens will be generated", opt.max_new_tokens, positions,
                 model->config().max_position_embeddings, room);
  GenerationResult r = generate(model, ids, opt, kv, context.embeds);
  if (has_context)
    spdlog::info("context: {} tokens compressed into {} positions", context.tokens,
                 context.embeds.size(0));
  std::vector<int32_t> out(r.tokens.begin(), r.tokens.end());
  if (!out.empty() && (out.back() == tok.eos_id() || is_stop_token(opt, out.back()))) out.pop_back();
  std::cout << (chatting ? "" : prompt) << tok.decode(out) << "\n";
  if (print_ids) spdlog::info("ids: {}", fmt::join(r.tokens, " "));
  spdlog::info("{} tokens: prefill {} tokens in {:.3f}s, decode {:.1f} tokens/s; {} KV cache, "
               "{:.0f} bytes per token, {:.3f} MB held at the end; {} decode", r.tokens.size(),
               ids.size() + (has_context ? context.embeds.size(0) : 0), r.prefill_seconds,
               r.decode_tokens_per_s(), kv_cache, r.kv_bytes_per_token, r.kv_bytes_held / 1e6, r.decode_path);
  return 0;
}

int cmd_info(const std::string& ckpt_arg) {
  std::string path = resolve_checkpoint_path(ckpt_arg);
  Checkpoint ckpt = Checkpoint::open(path);
  LlamaConfig c = ckpt.config();
  TrainingState st = ckpt.state();
  RunConfig cfg = parse_recipe(ckpt.recipe_yaml(), path + ":recipe");
  Tokenizer tok = Tokenizer::from_serialized(ckpt.tokenizer_bytes(), path + ":tokenizer");
  std::cout << fmt::format(
      "checkpoint   {}\nrecipe       kind {}, name {}, hash {}\nstep         {} of {} "
      "({} tokens seen)\nmodel        {:.3f}M parameters: {} layers, hidden {}, intermediate {}, "
      "heads {} (kv {}), head_dim {}, vocab {}, tied {}{}\ntokenizer    {}, {} pieces, "
      "sha256 {}\n",
      path, cfg.kind, cfg.name, recipe_hash(cfg).substr(0, 16), st.step, cfg.train.steps,
      st.tokens_seen, c.num_parameters() / 1e6, c.num_hidden_layers, c.hidden_size,
      c.intermediate_size, c.num_attention_heads, c.kv_heads(), c.head_size(), c.vocab_size,
      c.tie_word_embeddings,
      attention_extras(c).empty() ? "" : ", " + attention_extras(c),
      tok.bpe() ? "byte-level BPE (pre-tokenizer " + tok.bpe()->vocab().pre_tokenizer + ")"
                : tok.kind(),
      tok.vocab_size(), tok.sha256().substr(0, 16));
  // LongRoPE's two factor lists are summarized (Phi-3.5's are 48 numbers each).
  const std::string scaling =
      c.rope_scaling.type.empty() ? std::string()
      : c.rope_scaling.type == "longrope"
          ? fmt::format(", scaling longrope (short factors up to {} positions, attention factor {})",
                        c.rope_scaling.original_max_position_embeddings, c.rope_scaling.attention_factor)
          : ", scaling " + to_hf_json(c)["rope_scaling"].dump();
  const std::string partial = c.rotary_dim() == c.head_size()
                                  ? std::string()
                                  : fmt::format(", over {} of {} channels per head", c.rotary_dim(), c.head_size());
  const std::string local = c.gemma == 3 && c.sliding_window > 0
                                ? fmt::format("; windowed layers theta {} unscaled", c.rope_local_theta)
                                : std::string();
  std::cout << fmt::format("rope         theta {}{}{}{}\n", c.rope_theta, scaling, partial, local);
  if (c.is_gemma())
    std::cout << fmt::format("gemma        GeGLU, norms after each branch, embeddings x {:.4f}, attention "
                             "scale 1/sqrt({})\n", c.embedding_scale(),
                             c.query_pre_attn_scalar > 0 ? c.query_pre_attn_scalar : static_cast<double>(c.head_size()));
  if (c.attn_logit_softcapping > 0 || c.final_logit_softcapping > 0)
    std::cout << fmt::format("soft caps    attention scores {}, logits {} (0: none)\n", c.attn_logit_softcapping,
                             c.final_logit_softcapping);
  if (c.sliding_window > 0) {
    int64_t windowed = 0;
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) windowed += c.window(l) > 0;
    std::cout << fmt::format("attention    sliding window {} positions in {} of {} layers (context {})\n",
                             c.sliding_window, windowed, c.num_hidden_layers, c.max_position_embeddings);
  }
  // What compression left in it: pruning masks and recovery adapters (merged by every command).
  std::cout << fmt::format("masks        {}\n", WeightMasks::from_file(ckpt.file()).describe());
  if (ckpt.file().has("lora/kind")) {
    int64_t kind = ckpt.file().read_tensor("lora/kind").item<int64_t>();
    int64_t count = 0;
    for (const std::string& name : ckpt.file().datasets())
      count += name.rfind("lora.", 0) == 0 && name.size() > 2 && name.compare(name.size() - 2, 2, ".A") == 0;
    std::cout << fmt::format("adapters     {} on {} matrices (merged by eval, generate, score, export)\n",
                             kind == 0 ? "lora" : kind == 1 ? "masklora" : "scalelora", count);
  }
  return 0;
}

int run(int argc, char** argv) {
  CLI::App app{"condense: train, compress and export Llama-style models"};
  app.require_subcommand(1);
  bool verbose = false;
  app.add_flag("-v,--verbose", verbose, "debug logging");

  auto* train = app.add_subcommand("train", "run a YAML recipe");
  std::string recipe;
  std::vector<std::string> overrides;
  RunOptions run_opts;
  train->add_option("recipe", recipe, "recipe file (.yaml)")->required();
  train->add_option("overrides", overrides, "section.key=value overrides");
  train->add_flag("--resume", run_opts.resume,
                  "continue from the run's latest checkpoint (start fresh if there is none)");
  bool print_only = false;
  train->add_flag("--print-recipe", print_only, "print the resolved recipe and exit");

  auto* prep = app.add_subcommand("prepare", "tokenize a corpus into an HDF5 token store");
  PrepareOptions po;
  prep->add_option("--corpus", po.corpus.kind, "gcide | fortunes | dir")->default_val("gcide");
  prep->add_option("--path", po.corpus.path, "corpus location (required for dir)");
  prep->add_option("--max-documents", po.corpus.max_documents, "N documents spread evenly over the corpus (0: all)")->default_val(0);
  prep->add_option("--tokenizer", po.tokenizer_path, "an existing tokenizer (default: train one): a "
                   "sentencepiece .model, tokenizer.json, a model's GGUF, or a checkpoint / token store (.h5)");
  prep->add_option("--vocab-size", po.vocab_size, "size of a trained tokenizer")->default_val(4096);
  prep->add_option("--val-fraction", po.val_fraction, "documents held out")->default_val(0.02);
  prep->add_option("--seed", po.seed, "split and sampling seed")->default_val(1234);
  prep->add_option("--out", po.out_path, "output .h5")->required();
  prep->add_option("--threads", po.threads, "encoding threads (0: all cores, at most 16); the "
                   "store is the same bit for bit whatever the count")->default_val(0);
  prep->add_flag("--parse-special", po.parse_special, "control pieces written in the text (<|user|>, "
                 "[INST]) become their ids, for text already in a chat format (sentencepiece; "
                 "byte-level BPE parses its special tokens anyway)");
  std::string save_tokenizer;
  prep->add_option("--save-tokenizer", save_tokenizer, "also write the tokenizer .model here");

  auto* eval = app.add_subcommand("eval", "validation loss and perplexity of a checkpoint");
  std::string ckpt;
  EvalArgs ea;
  eval->add_option("checkpoint", ea.checkpoint, "checkpoint file or run directory")->required();
  eval->add_option("--data", ea.dataset, "token store (default: the checkpoint recipe's)");
  eval->add_option("--batches", ea.batches, "validation batches (<= 0: all)")->default_val(16);
  eval->add_option("--skip-batches", ea.skip, "start after this many validation batches (e.g. "
                   "past the windows a training run validated on, for text nothing was chosen "
                   "by)")->default_val(0);
  eval->add_option("--seq-len", ea.seq_len, "window length (0: the checkpoint recipe's)")->default_val(0);
  eval->add_option("--batch-size", ea.batch_size, "windows per batch (0: the recipe's)")->default_val(0);
  eval->add_option("--reference", ea.reference, "checkpoint or run directory of the uncompressed "
                   "model: also report kl_from_reference (mean KL(reference || this) per position, "
                   "nats) and top1_agreement on the same tokens");
  std::string kv_cache = "fp";
  const char* kv_help = "KV cache storage: fp (the model's dtype) or int8 (KIVI layout: keys per "
                        "channel in groups of 32 positions, values per token)";
  eval->add_option("--kv-cache", kv_cache, std::string(kv_help) + "; int8 scores every window "
                   "through the cache, as decoding would")->default_val("fp");
  int64_t kv_rank = 0;
  const char* rank_help = "rank of the checkpoint's KV-cache projections (prune --method "
                          "kv-project): keys and values cached in R of head_dim coordinates (0: full)";
  eval->add_option("--kv-rank", kv_rank, rank_help)->default_val(0);
  double kv_budget = 0;
  const char* budget_help = "share of the full-rank KV cache the checkpoint's KV projections may "
                            "cache (0: off): ranks from calibration sensitivity on the last "
                            "validation windows of the token store";
  eval->add_option("--kv-budget", kv_budget, budget_help)->default_val(0);
  std::string kv_granularity = "layer";
  const char* granularity_help = "--kv-budget: one key and one value rank per layer (layer), or "
                                 "per KV head (head: 3 calibration forwards per head instead of "
                                 "per layer; a layer's heads are cached packed)";
  eval->add_option("--kv-granularity", kv_granularity, granularity_help)->default_val("layer");
  int64_t kv_window = 0;
  const char* window_help = "CSKV checkpoints: the last W positions before each query read "
                            "exact keys and values (W - 1 kept in full beside the latents; 0: off)";
  eval->add_option("--kv-window", kv_window, window_help)->default_val(0);

  auto* gen = app.add_subcommand("generate", "generate text from a checkpoint with a KV cache");
  std::string prompt;
  SamplingOptions so;
  gen->add_option("checkpoint", ckpt, "checkpoint file or run directory")->required();
  ChatArgs chat;
  gen->add_option("--prompt", prompt, "prompt text, continued as is");
  gen->add_option("--chat", chat.user, "a user message, sent in the vocabulary's chat format "
                  "(ChatML or Llama 3; Llama 2 and Mistral with --chat-format); prints the "
                  "assistant's reply");
  gen->add_option("--system", chat.system, "--chat: the system message (default: the chat "
                  "template's own, if it writes one)");
  gen->add_option("--chat-format", chat.format, "--chat: auto (the vocabulary's: ChatML or Llama 3 "
                  "for byte-level BPE; for sentencepiece, phi3 with <|user|> / <|end|> pieces, "
                  "gemma with <start_of_turn> / <end_of_turn>, mistral with [INST] pieces), or "
                  "llama2 / mistral / phi3 / gemma for sentencepiece vocabularies (Llama 2 chat, "
                  "Mistral Instruct, Phi-3, Gemma), which keep no template")
      ->default_val("auto");
  gen->add_flag("--show-prompt", chat.show_prompt, "--chat: print the rendered prompt and its ids to stderr");
  gen->add_option("--context", chat.context_file, "a text file compressed by the checkpoint's "
                  "context compressor and read before the prompt");
  gen->add_option("--context-vectors", chat.context_vectors, "compressed context written by "
                  "`condense compress` (for this decoder: checked), read before the prompt");
  int64_t gen_threads = 0;
  gen->add_option("--threads", gen_threads, "intra-op threads (0: all cores)")->default_val(0);
  gen->add_option("--max-new-tokens", so.max_new_tokens)->default_val(64);
  gen->add_option("--temperature", so.temperature, "0: greedy")->default_val(0.0);
  gen->add_option("--top-k", so.top_k, "0: off")->default_val(0);
  gen->add_option("--top-p", so.top_p, "1: off")->default_val(1.0);
  gen->add_option("--seed", so.seed)->default_val(0);
  gen->add_option("--kv-cache", kv_cache, kv_help)->default_val("fp");
  gen->add_option("--kv-rank", kv_rank, rank_help)->default_val(0);
  gen->add_option("--kv-budget", kv_budget, budget_help)->default_val(0);
  gen->add_option("--kv-granularity", kv_granularity, granularity_help)->default_val("layer");
  gen->add_option("--kv-window", kv_window, window_help)->default_val(0);
  std::string calib_data;
  gen->add_option("--data", calib_data, "--kv-budget: token store for the calibration (default: "
                  "the checkpoint recipe's)");
  bool ignore_eos = false;
  gen->add_flag("--ignore-eos", ignore_eos, "keep generating past the end-of-text token (for "
                "timing a fixed number of tokens)");
  bool print_ids = false;
  gen->add_flag("--print-ids", print_ids, "log the generated token ids (comparisons with other "
                "runtimes)");
  gen->add_flag("--aten-decode", so.aten_decode, "decode with the general ATen forward instead of "
                "the fast float32 decoder (comparisons; hooks and int8 caches always use it)");

  auto* info = app.add_subcommand("info", "describe a checkpoint");
  info->add_option("checkpoint", ckpt, "checkpoint file or run directory")->required();

  IoCommandArgs io_args;  // import, export, score (launch/io_commands.h)
  add_io_commands(app, io_args);
  PruneArgs prune_args;
  add_prune_command(app, prune_args);
  ContextArgs context_args;
  add_context_commands(app, context_args);

  try {
    app.parse(argc, argv);
  } catch (const CLI::Success& e) {  // --help and friends: print and exit 0
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    // A mistyped command reads as "a subcommand is required" in CLI11's words: name it instead.
    std::string message = e.what();
    if (argc > 1) {
      const std::string first = argv[1];
      bool known = first.rfind('-', 0) == 0 && (first == "-h" || first == "--help" || first == "-v" ||
                                                first == "--verbose");
      for (const CLI::App* sub : app.get_subcommands({})) known |= sub->get_name() == first;
      if (!known) {
        std::string names;
        for (const CLI::App* sub : app.get_subcommands({}))
          names += (names.empty() ? "" : ", ") + sub->get_name();
        message = fmt::format("unknown command '{}'; commands: {}", first, names);
      }
    }
    const CLI::App* where = &app;
    for (const CLI::App* sub : app.get_subcommands({}))
      if (sub->parsed()) where = sub;
    // CLI11 checks required arguments before unexpected ones, so `train --bogus` would read
    // "recipe is required": name the unknown option instead (a negative number is a value).
    if (dynamic_cast<const CLI::RequiredError*>(&e) != nullptr && where != &app) {
      for (int i = 2; i < argc; ++i) {
        std::string token = argv[i];
        if (token == "--") break;
        const bool long_name = token.rfind("--", 0) == 0 && token.size() > 2;
        const bool short_name =
            token.size() == 2 && token[0] == '-' && std::isalpha(static_cast<unsigned char>(token[1]));
        if (!long_name && !short_name) continue;  // values, numbers, combined short flags
        token = token.substr(0, token.find('='));
        if (where->get_option_no_throw(token) == nullptr && app.get_option_no_throw(token) == nullptr) {
          message = fmt::format("unknown option '{}'", token);
          break;
        }
      }
    }
    fail("{} (see `condense {}--help`)", message,
         where == &app ? "" : where->get_name() + " ");
  }
  init_logging(0, 1, verbose);

  if (train->parsed()) {
    RunConfig cfg = load_recipe(recipe, overrides);
    if (print_only) {
      std::cout << to_yaml(cfg);
      return 0;
    }
    return run_recipe(cfg, run_opts);
  }
  if (prep->parsed()) {
    check_new_output(po.out_path);  // before the corpus is read (prepare_token_store replaces)
    if (!save_tokenizer.empty()) {
      check_new_output(save_tokenizer);
      CONDENSE_CHECK(std::filesystem::weakly_canonical(save_tokenizer) !=
                         std::filesystem::weakly_canonical(po.out_path),
                     "--save-tokenizer {} is the --out store itself", save_tokenizer);
    }
    prepare_token_store(po);
    if (!save_tokenizer.empty()) TokenStore::open(po.out_path).tokenizer().save(save_tokenizer);
    spdlog::info("wrote {}", po.out_path);
    return 0;
  }
  if (int rc = run_io_command(io_args); rc >= 0) return rc;
  if (int rc = run_prune_command(prune_args); rc >= 0) return rc;
  if (int rc = run_context_command(context_args); rc >= 0) return rc;
  if (eval->parsed()) return cmd_eval(ea, kv_cache, kv_rank, kv_budget, kv_granularity, kv_window);
  if (gen->parsed()) {
    set_intra_op_threads(gen_threads, "--threads");
    return cmd_generate(ckpt, prompt, so, chat, kv_cache, ignore_eos, print_ids, kv_rank, kv_budget,
                        kv_granularity, calib_data, kv_window);
  }
  if (info->parsed()) return cmd_info(ckpt);
  return 1;
}

}  // namespace
}  // namespace condense

int main(int argc, char** argv) {
  // Debian's libsentencepiece defines its own FLAGS_minloglevel (a 32-byte absl::Flag); libc10
  // loads first and defines a 4-byte int of that name, so the dynamic linker binds sentencepiece
  // to c10's, and the flag's constructor overwrites the next bytes, c10's
  // FLAGS_caffe2_use_fatal_for_enforce among them (found with a watchpoint). With it set, every
  // failed CAFFE_ENFORCE (an allocation too large, for one) aborted the process with SIGABRT
  // instead of throwing: restore c10's default so those errors reach the catch below. The byte
  // is inside sentencepiece's object's vtable pointer, which nothing reads (its flags are
  // static objects, destroyed by a direct call).
  FLAGS_caffe2_use_fatal_for_enforce = false;
  // The one catch. Under mpirun a rank that fails alone would leave the others blocked in a
  // collective: abort the whole job, naming the rank.
  auto end_job = [](const char* message) {
    int world = condense::mpi_world_size();
    std::string who = world > 1 ? fmt::format("[rank {}] ", condense::mpi_world_rank()) : "";
    std::cerr << who << "error: " << message << std::endl;
    condense::abort_world(1);
    return 1;
  };
  try {
    return condense::run(argc, argv);
  } catch (const c10::Error& e) {
    return end_job(e.what_without_backtrace());  // without LibTorch's 25-frame C++ backtrace
  } catch (const std::exception& e) {
    return end_job(e.what());
  }
}
