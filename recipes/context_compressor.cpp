#include "recipes/context_compressor.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>

#include <optional>

#include "compressors/context_compressor.h"
#include "compressors/context_documents.h"
#include "compressors/context_xrag.h"
#include "compressors/context_sequence.h"
#include "compressors/lora.h"
#include "core/error.h"
#include "recipes/recipe_parser.h"
#include "recipes/run_setup.h"
#include "trainer/checkpoint.h"

namespace condense {

namespace {

// context.start_from: the trained tensors of another run of the same method (checked before
// the run directory is written).
StoredTensors start_from_tensors(const std::string& method, const std::string& from) {
  const std::string path = resolve_checkpoint_path(from);
  Checkpoint ckpt = Checkpoint::open(path);
  RunConfig other = parse_recipe(ckpt.recipe_yaml(), path + ":recipe");
  CONDENSE_CHECK(other.kind == "context_compressor" && other.context.method == method,
                 "context.start_from {}: a run of kind {} (method {}), expected a context_compressor "
                 "run of method {}", path, other.kind, other.context.method, method);
  spdlog::info("context compressor starts from {} (step {})", path, ckpt.state().step);
  return compressor_tensors(ckpt.file());
}

// xRAG's documents: the file's last context.held_out for validation, the rest for training,
// each laid out one per window so that Batch::rows are document indices.
struct XragDocuments {
  XragData data;
  DataStreams streams;
};
XragDocuments xrag_documents(const DocumentSet& set, const RunConfig& cfg, const Tokenizer& tok) {
  const ContextConfig& cc = cfg.context;
  const int64_t n = set.size(), train = n - cc.held_out;
  XragDocuments out;
  out.data.paraphrase = split_template(cc.paraphrase_template, tok, "context.paraphrase_template");
  out.data.task = split_template(cc.task_template, tok, "context.task_template");
  out.data.pad = tok.eos_id() >= 0 ? tok.eos_id() : 0;
  out.data.train = std::make_shared<TokenizedDocuments>(
      tokenize_documents(set, tok, 0, train, cc.chunk_len, cc.answer_len));
  out.data.val = std::make_shared<TokenizedDocuments>(
      tokenize_documents(set, tok, train, n, cc.chunk_len, cc.answer_len));
  const int32_t pad = static_cast<int32_t>(out.data.pad);
  out.streams = {document_stream(*out.data.train, cfg.data.seq_len, pad),
                 document_stream(*out.data.val, cfg.data.seq_len, pad), cc.documents};
  return out;
}

}  // namespace

int run_context_compressor(const RunConfig& cfg_in, const RunOptions& options) {
  CONDENSE_CHECK(!cfg_in.init.empty(), "kind context_compressor needs init: the checkpoint of the "
                 "frozen decoder (e.g. runs/teacher)");
  RunConfig resolved = cfg_in;
  ContextConfig& cc = resolved.context;
  const bool xrag = cc.method == "xrag";
  const ContextLayout layout{cc.prefix_len, cc.chunk_len};
  std::optional<DocumentSet> documents;
  if (xrag) {
    CONDENSE_CHECK(!cc.documents.empty(), "context.method xrag needs context.documents: an HDF5 file of "
                   "documents and their embeddings (tools/embed_documents.py writes one)");
    documents = DocumentSet::read(cc.documents);
    const int64_t width = documents->embeddings.size(1);
    if (cc.embedding_dim == 0) cc.embedding_dim = width;
    CONDENSE_CHECK(cc.embedding_dim == width, "context.embedding_dim {} does not match {}: its embeddings "
                   "are {} wide ({})", cc.embedding_dim, cc.documents, width, documents->embedding_model);
    CONDENSE_CHECK(documents->size() > cc.held_out, "{} holds {} documents; context.held_out {} leaves "
                   "none to train on", cc.documents, documents->size(), cc.held_out);
    CONDENSE_CHECK(cc.stage == 1 || documents->has_answers(), "context.stage 2 needs documents with "
                   "answers; {} has none (answers/*; tools/gcide_headwords.py makes a set)", cc.documents);
    CONDENSE_CHECK(cc.chunk_len <= resolved.data.seq_len, "context.chunk_len {} (document tokens) must fit "
                   "data.seq_len {} (one document per window)", cc.chunk_len, resolved.data.seq_len);
  } else {
    layout.check(resolved.data.seq_len, "kind context_compressor");
  }
  // Everything the recipe can get wrong is checked before start_run writes the run directory.
  Checkpoint init = Checkpoint::open(resolve_checkpoint_path(resolved.init));
  torch::manual_seed(static_cast<uint64_t>(resolved.train.seed));
  LlamaForCausalLM decoder(init.config());
  init.load_model(decoder);
  merge_stored_adapters(decoder, init.file());
  for (auto& p : decoder->parameters()) p.requires_grad_(false);
  std::shared_ptr<ContextCompressor> compressor = make_context_compressor(decoder, cc);
  std::optional<StoredTensors> from;
  if (!cc.start_from.empty()) {
    from = start_from_tensors(cc.method, cc.start_from);
    compressor->load(*from);  // shapes checked now; loaded again after calibration below
  }
  std::optional<XragDocuments> xdocs;
  if (xrag) {
    Tokenizer tok = Tokenizer::from_serialized(init.tokenizer_bytes(), init.file().path() + ":tokenizer");
    xdocs = xrag_documents(*documents, resolved, tok);
  }

  RunSetup run = start_run(resolved, options, [&](RunSetup& r) { r.cfg.model = init.config(); });
  const RunConfig& cfg = run.cfg;
  if (!run.device.is_cpu()) {
    decoder->to(run.device);
    compressor->to(run.device);
  }
  // Output scales from the first training chunk (a resumed run restores the trained tensors
  // over them; context.start_from replaces them).
  auto* x = dynamic_cast<XragCompressor*>(compressor.get());
  if (x) x->attach(xdocs->data);
  at::Tensor first = run.store->ids("train").narrow(0, layout.prefix, layout.chunk);
  compressor->calibrate(decoder, first.to(at::kLong).unsqueeze(0).to(run.device));
  if (from) compressor->load(*from);
  Trainable t;
  t.model = decoder;
  t.modules = compressor->named();
  int64_t n = 0;
  for (const auto& p : t.modules) n += p.second.numel();
  spdlog::info("context compressor {}; {} tokens -> {} positions; {:.3f}M trained parameters, decoder "
               "{} frozen ({:.2f}M)", compressor->describe(), layout.chunk,
               compressor->positions(layout.chunk), n / 1e6, cfg.init, cfg.model.num_parameters() / 1e6);
  t.loss = [compressor, layout](LlamaForCausalLM& m, const Batch& b) {
    return compressor->loss(m, b, layout);
  };
  if (x) {
    spdlog::info("xRAG documents: {} ({} for training, the last {} held out; embeddings {} wide from {})",
                 cc.documents, xdocs->data.train->size(), xdocs->data.val->size(), cc.embedding_dim,
                 documents->embedding_model.empty() ? "an unnamed model" : documents->embedding_model);
    // Validation: the stage's NLL on held-out documents.
    std::shared_ptr<const TokenizedDocuments> val = xdocs->data.val;
    t.eval_loss = [compressor, x, val](LlamaForCausalLM& m, const Batch& b) { return x->nll(m, *val, b.rows); };
    // Paraphrases and answers differ in length: batches weigh by their tokens.
    std::shared_ptr<const TokenizedDocuments> train_docs = xdocs->data.train;
    t.tokens = [compressor, x, train_docs](const Batch& b) { return x->target_tokens(*train_docs, b.rows); };
    t.eval_tokens = [compressor, x, val](const Batch& b) { return x->target_tokens(*val, b.rows); };
    train_run(run, std::move(t), {}, &xdocs->streams);
    return 0;
  }
  // Validation: the continuation loss with compressed context, the same for every method.
  t.eval_loss = [compressor, layout](LlamaForCausalLM& m, const Batch& b) {
    at::Tensor context = compressor->context(m, b.inputs.narrow(1, layout.prefix, layout.chunk));
    SequenceParts s = continuation_with(m, b.inputs, b.targets, layout, context);
    return tail_nll(m, s.parts, s.targets);
  };
  train_run(run, std::move(t));
  return 0;
}

}  // namespace condense
