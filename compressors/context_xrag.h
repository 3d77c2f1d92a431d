// xRAG (Cheng et al. 2024, "xRAG: Extreme Context Compression for Retrieval-augmented
// Generation with One Token"): a document reaches the frozen decoder as ONE input vector, the
// projection of the sentence embedding a retriever already computed for it.
//
//   e [d] (the retriever's embedding; condense reads it, tools/embed_documents.py writes it)
//     -> Linear(d, hidden) -> GELU -> Linear(hidden, hidden) -> one decoder input vector,
//   spliced in place of the placeholder "{context}" of a prompt template.
//
// Only the projector trains. Stage 1 (paraphrase pretraining): the decoder reads
// context.paraphrase_template with the vector in place of the placeholder and is trained to say
// the document (NLL on its tokens). Stage 2 (context.stage 2, started from a stage-1 run with
// context.start_from): it reads context.task_template and answers; the loss is NLL on the
// answer plus context.kl_weight (2.0 in the paper) x forward KL from the same frozen decoder
// reading the document as text in place of the placeholder (self-distillation).
//
// Checkpoint names: xrag.projector.0.weight [hidden, d], xrag.projector.0.bias [hidden],
// xrag.projector.2.weight [hidden, hidden], xrag.projector.2.bias [hidden] (Hugging Face's
// nn.Sequential numbering: 1 is the GELU).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "compressors/context_compressor.h"
#include "compressors/context_documents.h"
#include "text/tokenizer.h"

namespace condense {

// A prompt template split at its one "{context}" placeholder: <bos> (when the tokenizer has one)
// and the text before it (trailing spaces dropped), and the text after it (a new word when it
// starts with a space: word_initial_ids), as ids.
struct PromptTemplate {
  std::vector<int64_t> before, after;
};
// Throws naming `key` unless `text` holds "{context}" exactly once.
PromptTemplate split_template(const std::string& text, const Tokenizer& tok, const std::string& key);
// The decoder's input parts for `context` [B, k, hidden] in place of the placeholder:
// {embed(before), context, embed(after)} (batch-broadcast), to be followed by the scored text.
std::vector<at::Tensor> splice_context(LlamaForCausalLM& decoder, const PromptTemplate& t,
                                       const at::Tensor& context);

struct XragOptions {
  int64_t embedding_dim = 384;  // d: the retriever's width (all-MiniLM-L6-v2: 384)
  int64_t stage = 1;            // 1: paraphrase; 2: task answers with self-distillation
  double kl_weight = 2.0;       // stage 2: NLL + kl_weight * KL
};

// What training reads: templates and documents tokenized for the decoder.
struct XragData {
  PromptTemplate paraphrase, task;
  std::shared_ptr<const TokenizedDocuments> train, val;
  int64_t pad = 0;  // any valid id: padding sits after every scored position
};

class XragCompressor : public ContextCompressor {
 public:
  // Projector drawn as LibTorch's Linear default (kaiming-uniform weights, zero biases here),
  // from the global generator. Throws naming the key when an option is out of range.
  XragCompressor(LlamaForCausalLM& decoder, XragOptions options);

  // Embeddings [B, d] -> [B, 1, hidden]. Throws when d differs from the projector's.
  at::Tensor project(const at::Tensor& embeddings) const;
  // Refused: xRAG reads the retriever's embeddings, not tokens (the error says how).
  at::Tensor context(LlamaForCausalLM& decoder, const at::Tensor& ids) override;
  int64_t positions(int64_t n) const override { return 1; }
  // The stage's loss on training documents batch.rows (needs attach()).
  at::Tensor loss(LlamaForCausalLM& decoder, const Batch& batch, const ContextLayout& layout) override;
  // The stage's NLL (paraphrase: the document's tokens; task: the answer's) on documents `rows`
  // of `docs`: what validation reports.
  at::Tensor nll(LlamaForCausalLM& decoder, const TokenizedDocuments& docs, const at::Tensor& rows);
  // The tokens nll / loss average over for documents `rows` of `docs`: the texts' (stage 1, the
  // paraphrase) or the answers' (stage 2): the trainer's weights for micro-batches and ranks
  // (Trainable::tokens).
  int64_t target_tokens(const TokenizedDocuments& docs, const at::Tensor& rows) const;
  std::vector<std::pair<std::string, at::Tensor>> named() const override;
  void load(const StoredTensors& stored) override;
  // Scales the output layer so projections of the first training embeddings have the RMS of
  // the decoder's token embeddings (needs attach()); `ids` is unused.
  void calibrate(LlamaForCausalLM& decoder, const at::Tensor& ids) override;
  void to(c10::Device device) override;
  void train(bool on) override {}
  std::string describe() const override;

  void attach(XragData data) { data_ = std::move(data); }
  const XragOptions& options() const { return options_; }
  // The stored projector's input width (0 when the file holds none).
  static int64_t stored_embedding_dim(const StoredTensors& stored);

 private:
  at::Tensor task_loss(LlamaForCausalLM& decoder, const TokenizedDocuments& docs, const at::Tensor& rows,
                       bool distill);
  std::pair<at::Tensor, at::Tensor> read_after(LlamaForCausalLM& decoder, const PromptTemplate& t,
                                               const TokenizedDocuments& docs,
                                               const std::vector<std::vector<int64_t>>& ids,
                                               const at::Tensor& rows) const;
  XragOptions options_;
  XragData data_;
  at::Tensor w1_, b1_, w2_, b2_;
};

}  // namespace condense
