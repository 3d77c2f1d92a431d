// Token store: a corpus tokenized once and kept in one HDF5 file, with its tokenizer inside,
// so training runs never re-tokenize and can prove which vocabulary their ids come from.
//
// Layout (format "condense-tokens-v1"):
//   train/ids, val/ids                int32, documents concatenated, each as <s> ids </s>
//   train/doc_offsets, val/doc_offsets int64, start of each document plus the final end
//   tokenizer                         uint8, Tokenizer::serialized() (sentencepiece or BPE)
//   root attributes: format, tokenizer_sha256, vocab_size, corpus, corpus_sha256,
//                    num_documents, seed, val_fraction, num_train_documents, num_val_documents
//
// Reproducible: the same corpus text (corpus_sha256: the documents, each followed by a NUL),
// options and tokenizer give the same file bit for bit on any machine: no time stamps inside
// (io/hdf5_file.cpp), no dependence on the core count. What differs between machines is the
// corpus itself (a different dict-gcide or fortunes package version): compare corpus_sha256.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "data/corpus.h"
#include "text/tokenizer.h"

namespace condense {

inline constexpr const char* kTokenStoreFormat = "condense-tokens-v1";

struct PrepareOptions {
  CorpusSpec corpus;
  std::string tokenizer_path;  // existing .model; empty: train one on the corpus
  int64_t vocab_size = 4096;   // when training
  double val_fraction = 0.02;  // in [0, 1): share of documents held out, by document
  int64_t seed = 1234;         // split and tokenizer sampling
  std::string out_path;        // the .h5 to write (atomically)
  int threads = 0;             // encoding threads; 0: the machine's cores (at most 16). The
                               // output does not depend on it (documents are encoded
                               // independently and concatenated in corpus order).
  // Control pieces written in the text (Phi-3's <|user|>, Mistral v0.3's [INST]) become their ids
  // (Tokenizer::encode_special, as llama.cpp parses special tokens), for text already in a chat
  // format; otherwise a sentencepiece vocabulary encodes them as text. Byte-level BPE parses its
  // special tokens either way.
  bool parse_special = false;
};

// Reads the corpus, trains or loads the tokenizer, splits documents into train/val (document
// i is in val iff a hash of (seed, i) falls below val_fraction; at least one val document when
// val_fraction > 0), encodes them on all cores and writes the store atomically. Deterministic:
// the same options and corpus give the same file bit for bit. Throws if either split would be empty of documents
// (train always; val when val_fraction > 0).
void prepare_token_store(const PrepareOptions& options);

// 0..n-1 in bit-reversed order (see TokenStore::held_out_ids; bench/bench_common.py has the
// same for the Python peers).
std::vector<int64_t> held_out_order(int64_t n);

// Whether document `index` goes to validation under (seed, val_fraction), before the
// at-least-one rule. Exposed for tests and tools.
bool is_validation_document(int64_t seed, int64_t index, double val_fraction);

class TokenStore {
 public:
  // Validates the format attribute and that the stored tokenizer's hash matches the recorded
  // tokenizer_sha256; errors name the file.
  static TokenStore open(const std::string& path);

  // All ids of a split ("train" | "val"): int32, 1-D, CPU. Reads the file each call.
  at::Tensor ids(const std::string& split) const;
  // Document boundaries of a split: int64, num_documents + 1 entries.
  at::Tensor doc_offsets(const std::string& split) const;
  // The validation split as validation, eval and calibration read it: its documents (each
  // <s> ids </s>) in bit-reversed order of their index (n = 8: 0 4 2 6 1 5 3 7; for other n the
  // next power of two's order without the indices >= n; held_out_order()). The split follows
  // corpus order (GCIDE's alphabet), and validation scores the stream's first windows while
  // calibration reads its last: in bit-reversed order both sample the whole split evenly and
  // stay disjoint. (In corpus order the 8 validation batches of a quickstart run covered the
  // entries "100th" to "all-mains", 2.7% of the split, and read 0.2 nats above the whole split.)
  at::Tensor held_out_ids() const;
  // What decides which documents are held out: the corpus (its SHA-256 and document count),
  // val_fraction and the split seed, from the file's attributes, as one line for messages.
  std::string split_signature() const;
  const Tokenizer& tokenizer() const { return tokenizer_; }
  std::string tokenizer_sha256() const { return sha256_; }
  int64_t vocab_size() const { return tokenizer_.vocab_size(); }
  const std::string& path() const { return path_; }
  // Throws "tokenizer mismatch: <path> was tokenized with <sha> but <what> uses <expected>"
  // unless expected_sha256 equals this store's tokenizer hash.
  void check_tokenizer(const std::string& expected_sha256, const std::string& what) const;

 private:
  TokenStore(std::string path, Tokenizer tokenizer, std::string sha256)
      : path_(std::move(path)), tokenizer_(std::move(tokenizer)), sha256_(std::move(sha256)) {}
  std::string dataset(const std::string& split, const char* name) const;

  std::string path_;
  Tokenizer tokenizer_;
  std::string sha256_;
};

}  // namespace condense
