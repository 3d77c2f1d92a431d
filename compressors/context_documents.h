// Documents with sentence embeddings from the user's retriever: what xRAG
// (compressors/context_xrag.h) trains on and what `condense context-eval --documents` scores
// every context compressor with (a task with an answer). tools/embed_documents.py writes the
// file ("condense-documents/1"):
//   embeddings                       float32 [N, d]   one vector per document
//   documents/bytes, documents/offsets   uint8 [bytes], int64 [N + 1]: UTF-8 texts, concatenated
//   answers/bytes, answers/offsets       optional, the same layout: what a question about the
//                                        document should be answered with (e.g. the headword a
//                                        GCIDE definition defines, tools/gcide_headwords.py)
//   root attributes: format, embedding_model (strings), normalized (int)
// Held-out documents are the last `held_out` of the file (the tools shuffle), the same for
// training and evaluation.
#pragma once
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "text/tokenizer.h"

namespace condense {

struct DocumentSet {
  std::string path, embedding_model;
  at::Tensor embeddings;                   // float32 [N, d]
  std::vector<std::string> texts, answers;  // answers: empty when the file has none

  // Reads and validates `path`; errors name the file and the dataset or attribute.
  static DocumentSet read(const std::string& path);
  int64_t size() const { return static_cast<int64_t>(texts.size()); }
  bool has_answers() const { return !answers.empty(); }
};

// The ids of `text` placed after other text as a new word ("Answer:" then the answer): leading
// spaces dropped, then sentencepiece marks the word start itself (its dummy prefix: "▁Apple")
// and byte-level BPE gets one space ("ĠApple"). Tokenizing " Apple" naively gives sentencepiece
// "▁▁" + "Apple", a pair it never saw in training. Text starting with a newline is kept as is.
std::vector<int32_t> word_initial_ids(const Tokenizer& tok, const std::string& text);

// Documents [begin, end) tokenized for a decoder (word_initial_ids): texts cut to at most max_text tokens,
// answers to max_answer (empty when the set has none). Throws naming the file and document
// when a text or answer tokenizes to nothing.
struct TokenizedDocuments {
  std::vector<std::vector<int64_t>> texts, answers;
  at::Tensor embeddings;  // float32 [end - begin, d]
  int64_t size() const { return static_cast<int64_t>(texts.size()); }
};
TokenizedDocuments tokenize_documents(const DocumentSet& set, const Tokenizer& tok, int64_t begin,
                                      int64_t end, int64_t max_text, int64_t max_answer);

// The token stream whose window i (of `window` tokens, data/loader.h) is document i: its text
// tokens, then `pad` to the end of the window; one token more at the end so that the last
// document makes a full window. The loader's Batch::rows are then document indices.
at::Tensor document_stream(const TokenizedDocuments& docs, int64_t window, int32_t pad);

// Rows [B] of `ids` padded to the longest with `pad` on the right: [B, L] int64.
at::Tensor padded_rows(const std::vector<std::vector<int64_t>>& ids, const at::Tensor& rows,
                       int64_t pad);

}  // namespace condense
