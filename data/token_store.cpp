// Token store: preparation (corpus -> split -> tokenizer -> ids -> HDF5) and validated reading.
// Encoding runs on all cores over contiguous chunks of documents; results are concatenated in
// document order, so the output does not depend on the thread count.
#include "data/token_store.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <exception>
#include <optional>
#include <thread>

#include <ATen/ATen.h>

#include "data/tokenizer_file.h"
#include "core/error.h"
#include "core/hash.h"
#include "core/random.h"
#include "core/log.h"
#include "io/atomic_file.h"
#include "io/hdf5_file.h"

namespace condense {
namespace {

using Clock = std::chrono::steady_clock;

// Uniform in [0, 1) from (seed, index).
double document_draw(int64_t seed, int64_t index) {
  uint64_t h = mix64(mix64(static_cast<uint64_t>(seed) + 0x9E3779B97F4A7C15ull) ^
                     (static_cast<uint64_t>(index) * 0xD1B54A32D192ED03ull));
  return static_cast<double>(h >> 11) * 0x1.0p-53;
}

// Encodes documents [0, n) as <s> ids </s>, the document as a prompt starts (Tokenizer::
// prompt_ids: <s> only where the tokenizer adds one, not for SmolLM2's or Qwen2's, and never a
// <s> that is the </s>) followed by the separator, in parallel over contiguous chunks.
std::vector<std::vector<int32_t>> encode_documents(const Tokenizer& tok,
                                                   const std::vector<std::string>& docs,
                                                   int requested_threads, bool parse_special) {
  std::vector<std::vector<int32_t>> out(docs.size());
  size_t threads = requested_threads > 0
                       ? static_cast<size_t>(requested_threads)
                       : std::clamp<size_t>(std::thread::hardware_concurrency(), 1, 16);
  threads = std::min(threads, std::max<size_t>(1, docs.size() / 64));
  std::atomic<int64_t> done{0};
  auto start = Clock::now();
  auto work = [&](size_t t) {
    size_t lo = docs.size() * t / threads, hi = docs.size() * (t + 1) / threads;
    auto last_log = Clock::now();
    for (size_t i = lo; i < hi; ++i) {
      std::vector<int32_t> ids = parse_special ? tok.encode_special(docs[i]) : tok.encode(docs[i]);
      out[i].reserve(ids.size() + 2);
      // A bos that is the eos (<|endoftext|> in llama.cpp's Qwen2 files) would double the
      // separator.
      if (tok.adds_bos() && tok.bos_id() >= 0 && tok.bos_id() != tok.eos_id()) out[i].push_back(tok.bos_id());
      out[i].insert(out[i].end(), ids.begin(), ids.end());
      out[i].push_back(tok.eos_id());
      int64_t n = ++done;
      if (t == 0 && Clock::now() - last_log > std::chrono::seconds(5)) {
        last_log = Clock::now();
        double s = std::chrono::duration<double>(last_log - start).count();
        spdlog::info("token store: encoded {}/{} documents ({:.0f} documents/s)", n,
                     docs.size(), n / s);
      }
    }
  };
  std::vector<std::exception_ptr> errors(threads);
  auto guarded = [&](size_t t) {
    try {
      work(t);
    } catch (...) {
      errors[t] = std::current_exception();
    }
  };
  std::vector<std::thread> pool;
  for (size_t t = 1; t < threads; ++t) pool.emplace_back(guarded, t);
  guarded(0);
  for (std::thread& th : pool) th.join();
  for (const std::exception_ptr& e : errors)
    if (e) std::rethrow_exception(e);
  return out;
}

// SHA-256 of the documents, each followed by a NUL (so ["ab"] and ["a", "b"] differ).
std::string corpus_hash(const std::vector<std::string>& docs) {
  std::string all;
  size_t total = 0;
  for (const std::string& d : docs) total += d.size() + 1;
  all.reserve(total);
  for (const std::string& d : docs) {
    all += d;
    all.push_back('\0');
  }
  return sha256_hex(all);
}

struct Split {
  at::Tensor ids;          // int32
  at::Tensor doc_offsets;  // int64
};

Split concatenate(const std::vector<std::vector<int32_t>>& encoded,
                  const std::vector<int64_t>& members) {
  int64_t total = 0;
  for (int64_t i : members) total += static_cast<int64_t>(encoded[i].size());
  Split s{at::empty({total}, at::kInt),
          at::empty({static_cast<int64_t>(members.size()) + 1}, at::kLong)};
  int32_t* ids = s.ids.data_ptr<int32_t>();
  int64_t* offsets = s.doc_offsets.data_ptr<int64_t>();
  int64_t pos = 0;
  for (size_t k = 0; k < members.size(); ++k) {
    const std::vector<int32_t>& doc = encoded[members[k]];
    offsets[k] = pos;
    std::copy(doc.begin(), doc.end(), ids + pos);
    pos += static_cast<int64_t>(doc.size());
  }
  offsets[members.size()] = pos;
  return s;
}

}  // namespace

bool is_validation_document(int64_t seed, int64_t index, double val_fraction) {
  return document_draw(seed, index) < val_fraction;
}

void prepare_token_store(const PrepareOptions& o) {
  CONDENSE_CHECK(!o.out_path.empty(), "prepare: out_path is empty");
  // Option checks come before the corpus is read (a minute for GCIDE).
  CONDENSE_CHECK(o.val_fraction >= 0.0 && o.val_fraction < 1.0,
                 "prepare: val_fraction {} must be in [0, 1)", o.val_fraction);
  CONDENSE_CHECK(o.threads >= 0, "prepare: threads {} must be >= 0 (0: all cores)", o.threads);
  CONDENSE_CHECK(!o.tokenizer_path.empty() || o.vocab_size >= kMinTrainedVocabSize,
                 "prepare: vocab_size {} must be at least {} (256 byte pieces + <unk> <s> </s>)",
                 o.vocab_size, kMinTrainedVocabSize);
  CONDENSE_CHECK(o.corpus.max_documents >= 0, "prepare: max_documents {} must be >= 0 (0: all)",
                 o.corpus.max_documents);
  std::vector<std::string> docs = read_corpus(o.corpus);
  const int64_t n = static_cast<int64_t>(docs.size());
  const std::string corpus_sha256 = corpus_hash(docs);

  std::vector<int64_t> train, val;
  int64_t best = -1;  // the lowest draw: the validation document if none falls below
  for (int64_t i = 0; i < n; ++i) {
    (is_validation_document(o.seed, i, o.val_fraction) ? val : train).push_back(i);
    if (best < 0 || document_draw(o.seed, i) < document_draw(o.seed, best)) best = i;
  }
  if (o.val_fraction > 0 && val.empty()) {
    val.push_back(best);
    train.erase(std::find(train.begin(), train.end(), best));
  }
  CONDENSE_CHECK(!train.empty(), "prepare: corpus {} has {} document(s): too few to hold out "
                 "{} for validation and keep any for training", o.corpus.kind, n, val.size());

  std::optional<Tokenizer> tok;
  if (o.tokenizer_path.empty()) {
    std::vector<std::string> train_docs;
    train_docs.reserve(train.size());
    for (int64_t i : train) train_docs.push_back(docs[i]);  // val text stays unseen
    tok = Tokenizer::train(train_docs, TokenizerTrainOptions{o.vocab_size, 300000, o.seed});
  } else {
    tok = load_tokenizer_file(o.tokenizer_path);
  }
  // Documents end with </s>, which is what separates them in the training stream; <s> starts
  // them only where the vocabulary has one.
  CONDENSE_CHECK(tok->eos_id() >= 0, "{}: the tokenizer has no end-of-text id (eos), which "
                 "separates documents in a token store", tok->source());

  auto start = Clock::now();
  std::vector<std::vector<int32_t>> encoded = encode_documents(*tok, docs, o.threads, o.parse_special);
  double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  Split train_split = concatenate(encoded, train);
  Split val_split = concatenate(encoded, val);
  encoded.clear();
  spdlog::info("token store: encoded {} documents in {:.1f} s ({:.0f} documents/s): {} train "
               "tokens in {} documents, {} val tokens in {} documents",
               n, seconds, n / std::max(seconds, 1e-9), train_split.ids.numel(), train.size(),
               val_split.ids.numel(), val.size());

  write_file_atomically(o.out_path, [&](const std::string& tmp) {
    H5File f = H5File::create(tmp);
    f.write_tensor("train/ids", train_split.ids);
    f.write_tensor("train/doc_offsets", train_split.doc_offsets);
    f.write_tensor("val/ids", val_split.ids);
    f.write_tensor("val/doc_offsets", val_split.doc_offsets);
    f.write_bytes("tokenizer", tok->serialized());
    f.set_attr("", "format", std::string(kTokenStoreFormat));
    f.set_attr("", "tokenizer_sha256", tok->sha256());
    f.set_attr("", "vocab_size", tok->vocab_size());
    f.set_attr("", "corpus", o.corpus.kind);
    f.set_attr("", "corpus_sha256", corpus_sha256);
    f.set_attr("", "num_documents", n);
    f.set_attr("", "num_train_documents", static_cast<int64_t>(train.size()));
    f.set_attr("", "num_val_documents", static_cast<int64_t>(val.size()));
    f.set_attr("", "seed", o.seed);
    f.set_attr("", "val_fraction", o.val_fraction);
    if (o.parse_special) f.set_attr("", "parse_special", int64_t{1});
    f.close();
  });
  spdlog::info("token store: wrote {} (corpus sha256 {}, tokenizer sha256 {})", o.out_path,
               corpus_sha256.substr(0, 16), tok->sha256().substr(0, 16));
}

TokenStore TokenStore::open(const std::string& path) {
  H5File f = H5File::open_read(path);
  CONDENSE_CHECK(f.has_attr("", "format"), "{}: not a token store (no 'format' attribute; "
                 "expected '{}')", path, kTokenStoreFormat);
  std::string format = f.attr_string("", "format");
  CONDENSE_CHECK(format == kTokenStoreFormat, "{}: format is '{}', expected '{}'", path, format,
                 kTokenStoreFormat);
  for (const char* name : {"train/ids", "train/doc_offsets", "val/ids", "val/doc_offsets",
                           "tokenizer"})
    CONDENSE_CHECK(f.has(name), "{}: missing dataset '{}'", path, name);
  CONDENSE_CHECK(f.has_attr("", "tokenizer_sha256"), "{}: missing attribute 'tokenizer_sha256'",
                 path);
  std::string recorded = f.attr_string("", "tokenizer_sha256");
  std::string bytes = f.read_bytes("tokenizer");
  std::string actual = sha256_hex(bytes);
  CONDENSE_CHECK(actual == recorded, "{}: stored tokenizer hashes to {} but the file records {} "
                 "(corrupt file?)", path, actual, recorded);
  Tokenizer tok = Tokenizer::from_serialized(bytes, path + ": tokenizer");
  return TokenStore(path, std::move(tok), actual);
}

std::string TokenStore::dataset(const std::string& split, const char* name) const {
  CONDENSE_CHECK(split == "train" || split == "val", "{}: unknown split '{}' (valid: train|val)",
                 path_, split);
  return split + "/" + name;
}

at::Tensor TokenStore::ids(const std::string& split) const {
  const std::string name = dataset(split, "ids");
  at::Tensor ids = H5File::open_read(path_).read_tensor(name);
  // A corrupt id would otherwise end a run many steps later inside the embedding lookup
  // ("index out of range in self"), naming nothing.
  CONDENSE_CHECK(ids.scalar_type() == at::kInt && ids.dim() == 1,
                 "{}: dataset '{}' is not a 1-D int32 array", path_, name);
  if (ids.numel() > 0) {
    const auto [min, max] = at::aminmax(ids);
    const int64_t lo = min.item<int64_t>(), hi = max.item<int64_t>();
    CONDENSE_CHECK(lo >= 0 && hi < vocab_size(), "{}: dataset '{}' holds token ids in [{}, {}], "
                   "outside the tokenizer's [0, {}) (corrupt file?)", path_, name, lo, hi,
                   vocab_size());
  }
  return ids;
}

at::Tensor TokenStore::doc_offsets(const std::string& split) const {
  return H5File::open_read(path_).read_tensor(dataset(split, "doc_offsets"));
}

std::vector<int64_t> held_out_order(int64_t n) {
  CONDENSE_CHECK(n >= 0, "held_out_order: negative count {}", n);
  int bits = 0;
  while ((int64_t{1} << bits) < n) ++bits;
  std::vector<int64_t> order;
  order.reserve(n);
  for (int64_t i = 0; i < (int64_t{1} << bits); ++i) {
    int64_t r = 0;
    for (int b = 0; b < bits; ++b) r |= ((i >> b) & 1) << (bits - 1 - b);
    if (r < n) order.push_back(r);
  }
  return order;
}

std::string TokenStore::split_signature() const {
  H5File f = H5File::open_read(path_);
  for (const char* key : {"corpus_sha256", "num_documents", "val_fraction", "seed"})
    CONDENSE_CHECK(f.has_attr("", key), "{}: missing attribute '{}'", path_, key);
  return fmt::format("corpus {}, {} documents, val_fraction {}, split seed {}",
                     f.attr_string("", "corpus_sha256").substr(0, 12), f.attr_int("", "num_documents"),
                     f.attr_double("", "val_fraction"), f.attr_int("", "seed"));
}

at::Tensor TokenStore::held_out_ids() const {
  at::Tensor ids = this->ids("val"), offsets = doc_offsets("val");
  const int64_t docs = offsets.numel() - 1;
  if (docs <= 0) return ids;
  const int64_t* off = offsets.data_ptr<int64_t>();
  CONDENSE_CHECK(off[0] == 0 && off[docs] == ids.numel(), "{}: val/doc_offsets runs from {} to {}, "
                 "expected 0 to the {} ids of val/ids", path_, off[0], off[docs], ids.numel());
  at::Tensor out = at::empty_like(ids);
  const int32_t* src = ids.data_ptr<int32_t>();
  int32_t* dst = out.data_ptr<int32_t>();
  for (int64_t d : held_out_order(docs)) {
    CONDENSE_CHECK(off[d] <= off[d + 1], "{}: val/doc_offsets decreases at document {}", path_, d);
    dst = std::copy(src + off[d], src + off[d + 1], dst);
  }
  return out;
}

void TokenStore::check_tokenizer(const std::string& expected_sha256,
                                 const std::string& what) const {
  // SHA-256 of zero bytes: `what` stores no tokenizer (an import without one).
  CONDENSE_CHECK(expected_sha256 != "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                 "{} has no tokenizer (imported without one), so it cannot be checked against {}; "
                 "import it again with --tokenizer T.model", what, path_);
  CONDENSE_CHECK(expected_sha256 == sha256_,
                 "tokenizer mismatch: {} was tokenized with {} but {} uses {}", path_, sha256_,
                 what, expected_sha256);
}

}  // namespace condense
