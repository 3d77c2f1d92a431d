// Tests for the tokenizer (text/tokenizer) and data/: corpus readers on the real Debian
// corpora, token store preparation and validation, and the sharded resumable batch loader.
#include <ftw.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <ATen/ATen.h>

#include "core/error.h"
#include "core/hash.h"
#include "data/corpus.h"
#include "data/loader.h"
#include "data/token_store.h"
#include "io/atomic_file.h"
#include "io/hdf5_file.h"
#include "text/tokenizer.h"

namespace condense {
namespace fs = std::filesystem;
namespace {

// Recursive delete without std::filesystem::remove_all: the torch 2.11 wheel's libtorch.so
// exports its own std::filesystem::remove_all, which binds ahead of libstdc++'s and segfaults.
void remove_tree(const fs::path& path) {
  auto remove_one = [](const char* p, const struct stat*, int, struct FTW*) { return ::remove(p); };
  nftw(path.c_str(), remove_one, 16, FTW_DEPTH | FTW_PHYS);
}

// A fresh directory per test, removed afterwards.
class TempDir {
 public:
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = fs::temp_directory_path() /
            ("condense_test_data_" + std::to_string(getpid()) + "_" + info->name());
    remove_tree(path_);
    fs::create_directories(path_);
  }
  ~TempDir() { remove_tree(path_); }
  std::string file(const std::string& name) const { return (path_ / name).string(); }
 private:
  fs::path path_;
};

void write_file(const std::string& path, const std::string& text) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream(path, std::ios::binary) << text;
}

// Runs f, expects condense::Error, and returns its message.
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "expected condense::Error";
  return "";
}

const std::vector<std::string>& fortunes() {
  static const std::vector<std::string> docs = read_corpus({"fortunes", "", 2000});
  return docs;
}

const Tokenizer& small_tokenizer() {
  static const Tokenizer tok = Tokenizer::train(fortunes(), {500, 300000, 7});
  return tok;
}

std::vector<int32_t> to_vector(const at::Tensor& t) {
  at::Tensor c = t.to(at::kInt).contiguous();
  return std::vector<int32_t>(c.data_ptr<int32_t>(), c.data_ptr<int32_t>() + c.numel());
}

}  // namespace

// ---------------------------------------------------------------------------- tokenizer

TEST(Tokenizer, LlamaConventions) {
  const Tokenizer& tok = small_tokenizer();
  EXPECT_EQ(tok.vocab_size(), 500);
  EXPECT_EQ(tok.unk_id(), 0);
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_EQ(tok.eos_id(), 2);
  EXPECT_EQ(tok.piece(0), "<unk>");
  EXPECT_EQ(tok.piece(1), "<s>");
  EXPECT_EQ(tok.piece(2), "</s>");
  EXPECT_TRUE(tok.is_unknown(0));
  EXPECT_TRUE(tok.is_control(1) && tok.is_control(2));
  EXPECT_TRUE(tok.is_byte(3));
  EXPECT_EQ(tok.piece(3), "<0x00>");
  EXPECT_EQ(tok.piece(3 + 255), "<0xFF>");
  EXPECT_FALSE(tok.is_byte(300));
  EXPECT_THROW(tok.piece(500), Error);
  EXPECT_THROW(tok.decode({1, 500}), Error);
}

TEST(Tokenizer, RoundTripAsciiUtf8AndByteFallback) {
  const Tokenizer& tok = small_tokenizer();
  for (const std::string& text :
       {std::string("Hello, world!  Two  spaces,\ttabs\nand new lines.\n"), std::string(" lead"),
        std::string("12345 digits 2024"), std::string("naïve café — ünïcödé ✓"),
        std::string("日本語のテキスト 🙂"), std::string("")}) {
    std::vector<int32_t> ids = tok.encode(text);
    EXPECT_EQ(tok.decode(ids), text) << text;
    for (int32_t id : ids) EXPECT_NE(id, tok.unk_id()) << text;
  }
  // Characters absent from the training text come out as <0xNN> byte pieces.
  std::vector<int32_t> ids = tok.encode("日");
  int bytes = 0;
  for (int32_t id : ids) bytes += tok.is_byte(id);
  EXPECT_EQ(bytes, 3);  // three UTF-8 bytes
  // Digits one per piece: Tokenizer.TrainedBpeSplitsDigitsOnePerPiece (test_text.cpp).
  std::vector<int32_t> framed = tok.encode("hi there");
  framed.insert(framed.begin(), tok.bos_id());
  framed.push_back(tok.eos_id());
  EXPECT_EQ(tok.decode(framed), "hi there");  // <s> and </s> decode to nothing
}

TEST(Tokenizer, TrainingIsDeterministicAndSerializes) {
  const Tokenizer& a = small_tokenizer();
  Tokenizer b = Tokenizer::train(fortunes(), {500, 300000, 7});
  EXPECT_EQ(a.serialized(), b.serialized());
  EXPECT_EQ(a.sha256(), b.sha256());
  EXPECT_EQ(a.sha256(), sha256_hex(a.serialized()));
  // Sampling lines (max_sentences) is deterministic too, and differs by seed.
  Tokenizer s1 = Tokenizer::train(fortunes(), {400, 3000, 1});
  Tokenizer s2 = Tokenizer::train(fortunes(), {400, 3000, 1});
  EXPECT_EQ(s1.serialized(), s2.serialized());

  Tokenizer c = Tokenizer::from_serialized(a.serialized(), "bytes");
  EXPECT_EQ(c.sha256(), a.sha256());
  TempDir dir;
  a.save(dir.file("tok.model"));
  Tokenizer d = Tokenizer::load(dir.file("tok.model"));
  EXPECT_EQ(d.sha256(), a.sha256());
  EXPECT_EQ(sha256_hex(read_text_file(dir.file("tok.model"))), a.sha256());
  std::string text = fortunes()[17];
  EXPECT_EQ(d.encode(text), a.encode(text));
  for (int id = 0; id < a.vocab_size(); id += 37) EXPECT_EQ(d.score(id), a.score(id));
}

// sentencepiece's BPE trainer gives different vocabularies for different thread counts (the
// Debian bookworm library: 1, 2 and 4 threads give three different models), each repeatable.
// So the thread count is pinned (TokenizerTrainOptions::threads, never the machine's core
// count), and no scheduling race reaches the result: repeated runs agree at 1 and 4 threads.
TEST(Tokenizer, TrainingIsRepeatableAtEachThreadCount) {
  std::string by_threads[2];
  int k = 0;
  for (int threads : {1, 4}) {
    TokenizerTrainOptions o{400, 3000, 1};
    o.threads = threads;
    by_threads[k] = Tokenizer::train(fortunes(), o).serialized();
    EXPECT_EQ(Tokenizer::train(fortunes(), o).serialized(), by_threads[k]) << threads;
    ++k;
  }
  EXPECT_NE(by_threads[0], by_threads[1]) << "sentencepiece no longer depends on its thread "
                                             "count: the pin in TokenizerTrainOptions can go";
  EXPECT_EQ(TokenizerTrainOptions{}.threads, 2);  // what every token store so far was built with
}

TEST(Tokenizer, BadFilesNameThePath) {
  TempDir dir;
  std::string missing = dir.file("missing.model");
  EXPECT_NE(error_of([&] { Tokenizer::load(missing); }).find(missing), std::string::npos);
  std::string corrupt = dir.file("corrupt.model");
  write_file(corrupt, "this is not a protobuf \x01\x02\x03");
  EXPECT_NE(error_of([&] { Tokenizer::load(corrupt); }).find(corrupt), std::string::npos);
  EXPECT_THROW(Tokenizer::train({"tiny"}, {100, 10, 1}), Error);  // below 256 bytes + 3
  std::string msg = error_of([] { Tokenizer::train({"tiny text"}, {300, 10, 1}); });
  EXPECT_NE(msg.find("vocab_size 300"), std::string::npos) << msg;  // sentencepiece refuses
}

// ---------------------------------------------------------------------------- corpora

TEST(Corpus, Gcide) {
  const std::vector<std::string> all = read_corpus({"gcide", "", 0});
  ASSERT_GT(all.size(), 100000u);
  const std::vector<std::string> head(all.begin(), all.begin() + 40);
  // Entry "0" opens with the dictionary's epigraph; the rest open with their headword line.
  EXPECT_EQ(head[0].rfind("      A dictionary containing", 0), 0u) << head[0];
  EXPECT_NE(head[0].find("--Locke.\n0 \\0\\ adj."), std::string::npos) << head[0];
  EXPECT_EQ(head[1].rfind("1 \\1\\ adj.", 0), 0u) << head[1];
  bool found = false;
  for (const std::string& d : head) {
    EXPECT_EQ(d.find("00-database"), std::string::npos);
    EXPECT_EQ(d.find("Begin file"), std::string::npos);
    EXPECT_EQ(d.find("GNU General Public License"), std::string::npos);
    EXPECT_TRUE(&d == &head[0] || d[0] != ' ') << d;
    found = found || d.rfind("100th \\100th\\ adj.", 0) == 0;
  }
  EXPECT_TRUE(found);
  int abandon = 0;
  for (const std::string& d : all) abandon += d.rfind("Abandon \\A*ban\"don\\", 0) == 0;
  EXPECT_GE(abandon, 1);
}

// max_documents keeps documents spread evenly over the corpus, in its order: for GCIDE (in
// alphabetical order) a sample from the epigraph (entry "0") to the end of the alphabet.
TEST(Corpus, MaxDocumentsSpreadsTheSampleOverTheCorpus) {
  const std::vector<std::string> all = read_corpus({"gcide", "", 0}), sample = read_corpus({"gcide", "", 40});
  ASSERT_EQ(sample.size(), 40u);
  for (size_t i = 0; i < 40; ++i) EXPECT_EQ(sample[i], all[i * all.size() / 40]) << i;
  EXPECT_EQ(sample.front(), all.front());
  EXPECT_GE(std::tolower(static_cast<unsigned char>(sample.back()[0])), 'w') << sample.back().substr(0, 40);
  const std::vector<std::string> every = read_corpus({"fortunes", "", 0});  // more than there are
  EXPECT_EQ(read_corpus({"fortunes", "", static_cast<int64_t>(every.size()) + 5}), every);
}

TEST(Corpus, Fortunes) {
  const std::vector<std::string>& docs = fortunes();
  ASSERT_EQ(docs.size(), 2000u);
  for (const std::string& d : docs) {
    EXPECT_FALSE(d.empty());
    EXPECT_EQ(d.find("\n%\n"), std::string::npos);
    EXPECT_NE(d.back(), '\n');
  }
  EXPECT_EQ(read_corpus({"fortunes", "", 2000}), docs);  // deterministic order
}

TEST(Corpus, DirectoryOfTextFiles) {
  TempDir dir;
  write_file(dir.file("b.txt"), "bee\n\n");
  write_file(dir.file("a.md"), "# A\n\ntext");
  write_file(dir.file("sub/c.txt"), "sea");
  write_file(dir.file("sub/ignored.bin"), "binary");
  write_file(dir.file("empty.txt"), "  \n");
  write_file(dir.file("latin1.txt"), "\n\n  caf\xe9 ok \xc3\xa9");  // one invalid byte
  std::vector<std::string> docs = read_corpus({"dir", dir.file(""), 0});
  EXPECT_EQ(docs, (std::vector<std::string>{"# A\n\ntext", "bee", "  caf\xEF\xBF\xBD ok \xc3\xa9",
                                            "sea"}));
  // Two of the four documents, spread: the first and the third.
  EXPECT_EQ(read_corpus({"dir", dir.file(""), 2}), (std::vector<std::string>{docs[0], docs[2]}));
}

TEST(Corpus, BadInputsAreNamed) {
  EXPECT_NE(error_of([] { read_corpus({"wiki", "", 0}); }).find("gcide|fortunes|dir"),
            std::string::npos);
  TempDir dir;
  std::string missing = dir.file("nope");
  EXPECT_NE(error_of([&] { read_corpus({"dir", missing, 0}); }).find(missing), std::string::npos);
  EXPECT_NE(error_of([&] { read_corpus({"gcide", missing + ".dict.dz", 0}); }).find(missing),
            std::string::npos);
  EXPECT_NE(error_of([&] { read_corpus({"dir", dir.file(""), 0}); }).find("no documents"),
            std::string::npos);
}

// ---------------------------------------------------------------------------- token store

// 300 fortunes, tokenized by the small tokenizer (saved into `dir`), `val_fraction` held out.
PrepareOptions fortunes_store(TempDir& dir, double val_fraction, const std::string& out) {
  small_tokenizer().save(dir.file("tok.model"));
  PrepareOptions o;
  o.corpus = {"fortunes", "", 300};
  o.tokenizer_path = dir.file("tok.model");
  o.val_fraction = val_fraction;
  o.out_path = dir.file(out);
  return o;
}

TEST(TokenStore, PrepareSplitsByDocumentDeterministically) {
  TempDir dir;
  PrepareOptions o = fortunes_store(dir, 0.1, "a.h5");
  o.seed = 5;
  prepare_token_store(o);
  o.out_path = dir.file("b.h5");
  prepare_token_store(o);
  TokenStore a = TokenStore::open(dir.file("a.h5"));
  TokenStore b = TokenStore::open(dir.file("b.h5"));
  EXPECT_TRUE(at::equal(a.ids("train"), b.ids("train")));
  EXPECT_TRUE(at::equal(a.ids("val"), b.ids("val")));
  EXPECT_EQ(a.tokenizer_sha256(), small_tokenizer().sha256());
  EXPECT_EQ(a.vocab_size(), 500);
  EXPECT_EQ(a.ids("train").scalar_type(), at::kInt);

  // Each split is its documents, in corpus order, each as <s> ids </s>.
  const std::vector<std::string> docs = read_corpus(o.corpus);
  const Tokenizer& tok = a.tokenizer();
  size_t next_train = 0, next_val = 0, seen = 0;
  std::vector<std::vector<int32_t>> split_docs[2];
  for (int s = 0; s < 2; ++s) {
    std::vector<int32_t> ids = to_vector(a.ids(s ? "val" : "train"));
    at::Tensor off = a.doc_offsets(s ? "val" : "train");
    ASSERT_EQ(off[0].item<int64_t>(), 0);
    ASSERT_EQ(off[-1].item<int64_t>(), static_cast<int64_t>(ids.size()));
    for (int64_t k = 0; k + 1 < off.numel(); ++k) {
      int64_t lo = off[k].item<int64_t>(), hi = off[k + 1].item<int64_t>();
      ASSERT_GE(hi - lo, 2);
      EXPECT_EQ(ids[lo], tok.bos_id());
      EXPECT_EQ(ids[hi - 1], tok.eos_id());
      split_docs[s].emplace_back(ids.begin() + lo + 1, ids.begin() + hi - 1);
      for (int32_t id : split_docs[s].back()) EXPECT_FALSE(tok.is_control(id));
    }
  }
  ASSERT_FALSE(split_docs[1].empty());
  ASSERT_EQ(split_docs[0].size() + split_docs[1].size(), 300u);
  for (int64_t i = 0; i < 300; ++i) {
    bool val = is_validation_document(5, i, 0.1);
    auto& list = split_docs[val ? 1 : 0];
    size_t& k = val ? next_val : next_train;
    ASSERT_LT(k, list.size());
    EXPECT_EQ(tok.decode(list[k++]), docs[i]);
    ++seen;
  }
  EXPECT_EQ(next_train, split_docs[0].size());
  EXPECT_EQ(next_val, split_docs[1].size());

  H5File f = H5File::open_read(dir.file("a.h5"));
  EXPECT_EQ(f.attr_string("", "format"), "condense-tokens-v1");
  EXPECT_EQ(f.attr_string("", "corpus"), "fortunes");
  EXPECT_EQ(f.attr_int("", "num_documents"), 300);
  EXPECT_EQ(f.attr_int("", "seed"), 5);
  EXPECT_EQ(f.attr_int("", "vocab_size"), 500);
  EXPECT_DOUBLE_EQ(f.attr_double("", "val_fraction"), 0.1);
}

// Validation and calibration read the held-out documents in bit-reversed index order: a
// permutation whose first and last quarters each sample the whole split evenly and are disjoint.
TEST(TokenStore, HeldOutOrderSpreadsPrefixAndSuffix) {
  EXPECT_EQ(held_out_order(8), (std::vector<int64_t>{0, 4, 2, 6, 1, 5, 3, 7}));
  EXPECT_EQ(held_out_order(5), (std::vector<int64_t>{0, 4, 2, 1, 3}));
  EXPECT_EQ(held_out_order(1), (std::vector<int64_t>{0}));
  EXPECT_TRUE(held_out_order(0).empty());
  for (int64_t n : {2, 3, 7, 100, 1000, 1025}) {
    std::vector<int64_t> order = held_out_order(n);
    std::vector<int64_t> sorted = order;
    std::sort(sorted.begin(), sorted.end());
    std::vector<int64_t> iota(n);
    std::iota(iota.begin(), iota.end(), 0);
    ASSERT_EQ(sorted, iota) << n;  // a permutation
    if (n < 100) continue;
    // The first and the last quarter: no gap between chosen documents above 4 x the even
    // spacing (the next power of two / the count), whereas corpus order's first quarter leaves
    // the last three quarters out.
    const int64_t q = n / 4;
    int64_t pow2 = 1;
    while (pow2 < n) pow2 *= 2;
    for (bool tail : {false, true}) {
      std::vector<int64_t> part(tail ? order.end() - q : order.begin(),
                                tail ? order.end() : order.begin() + q);
      std::sort(part.begin(), part.end());
      int64_t gap = std::max(part.front(), n - 1 - part.back());
      for (size_t i = 1; i < part.size(); ++i) gap = std::max(gap, part[i] - part[i - 1]);
      EXPECT_LE(gap, 4 * pow2 / q) << n << (tail ? " tail" : " head");
    }
  }
}

TEST(TokenStore, HeldOutIdsAreTheValDocumentsInHeldOutOrder) {
  TempDir dir;
  const PrepareOptions o = fortunes_store(dir, 0.2, "s.h5");
  prepare_token_store(o);
  TokenStore s = TokenStore::open(o.out_path);
  std::vector<int32_t> ids = to_vector(s.ids("val"));
  at::Tensor off = s.doc_offsets("val");
  const int64_t docs = off.numel() - 1;
  ASSERT_GT(docs, 20);
  std::vector<int32_t> expected;
  for (int64_t d : held_out_order(docs))
    expected.insert(expected.end(), ids.begin() + off[d].item<int64_t>(),
                    ids.begin() + off[d + 1].item<int64_t>());
  EXPECT_EQ(to_vector(s.held_out_ids()), expected);
  EXPECT_NE(expected, ids);  // reordered
}

// Two builds give the same file bit for bit (no HDF5 time stamps, no dependence on the number
// of encoding threads), and the file records a hash of the corpus text it came from.
TEST(TokenStore, SameFileBitForBitWhateverTheThreads) {
  TempDir dir;
  PrepareOptions o;
  o.corpus = {"fortunes", "", 300};
  o.vocab_size = 400;
  o.val_fraction = 0.1;
  o.threads = 1;
  o.out_path = dir.file("one.h5");
  prepare_token_store(o);
  // HDF5's time stamps have one-second resolution: a second apart, a stamped file would differ.
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  o.threads = 4;  // 300 documents: 4 chunks of 75
  o.out_path = dir.file("four.h5");
  prepare_token_store(o);
  std::string one = read_text_file(dir.file("one.h5")), four = read_text_file(dir.file("four.h5"));
  EXPECT_GT(one.size(), 1000u);
  EXPECT_TRUE(one == four) << "token stores differ in bytes (sizes " << one.size() << ", "
                           << four.size() << ")";
  std::string joined;
  for (const std::string& d : read_corpus(o.corpus)) joined += d + std::string(1, '\0');
  EXPECT_EQ(H5File::open_read(dir.file("one.h5")).attr_string("", "corpus_sha256"),
            sha256_hex(joined));
}

TEST(TokenStore, TrainsATokenizerAndKeepsOneValDocument) {
  TempDir dir;
  write_file(dir.file("c/one.txt"), "The first document, about cats and dogs.");
  write_file(dir.file("c/two.txt"), "The second document: 42 birds sing at 7 am.");
  write_file(dir.file("c/three.md"), "A third one, in *markdown*, with ümlauts.");
  PrepareOptions o;
  o.corpus = {"dir", dir.file("c"), 0};
  o.vocab_size = 300;
  o.val_fraction = 1e-9;  // nothing falls below: the lowest draw is moved to val
  o.out_path = dir.file("s.h5");
  prepare_token_store(o);
  TokenStore s = TokenStore::open(o.out_path);
  EXPECT_EQ(s.doc_offsets("val").numel(), 2);
  EXPECT_EQ(s.doc_offsets("train").numel(), 3);
  EXPECT_EQ(s.vocab_size(), 300);
  o.val_fraction = 0;
  prepare_token_store(o);
  EXPECT_EQ(TokenStore::open(o.out_path).ids("val").numel(), 0);
}

TEST(TokenStore, OpenValidates) {
  TempDir dir;
  std::string text = dir.file("not.h5");
  write_file(text, "plain text");
  EXPECT_NE(error_of([&] { TokenStore::open(text); }).find(text), std::string::npos);
  std::string wrong = dir.file("wrong.h5");
  {
    H5File f = H5File::create(wrong);
    f.set_attr("", "format", std::string("condense-checkpoint-v1"));
    f.close();
  }
  std::string msg = error_of([&] { TokenStore::open(wrong); });
  EXPECT_NE(msg.find(wrong), std::string::npos);
  EXPECT_NE(msg.find("condense-tokens-v1"), std::string::npos);
  // A tokenizer whose bytes do not match the recorded hash.
  std::string tampered = dir.file("tampered.h5");
  {
    H5File f = H5File::create(tampered);
    f.set_attr("", "format", std::string("condense-tokens-v1"));
    for (const char* split : {"train", "val"}) {
      f.write_tensor(std::string(split) + "/ids", at::zeros({4}, at::kInt));
      f.write_tensor(std::string(split) + "/doc_offsets", at::zeros({1}, at::kLong));
    }
    f.write_bytes("tokenizer", small_tokenizer().serialized());
    f.set_attr("", "tokenizer_sha256", std::string(64, '0'));
    f.close();
  }
  EXPECT_NE(error_of([&] { TokenStore::open(tampered); }).find(tampered), std::string::npos);
}

TEST(TokenStore, CheckTokenizerMismatch) {
  TempDir dir;
  PrepareOptions o;
  o.corpus = {"fortunes", "", 50};
  small_tokenizer().save(dir.file("tok.model"));
  o.tokenizer_path = dir.file("tok.model");
  o.out_path = dir.file("s.h5");
  prepare_token_store(o);
  TokenStore s = TokenStore::open(o.out_path);
  s.check_tokenizer(small_tokenizer().sha256(), "the model");
  std::string other(64, 'a');
  EXPECT_EQ(error_of([&] { s.check_tokenizer(other, "checkpoint x.h5"); }),
            "tokenizer mismatch: " + o.out_path + " was tokenized with " +
                small_tokenizer().sha256() + " but checkpoint x.h5 uses " + other);
  EXPECT_THROW(s.ids("test"), Error);
}

// ---------------------------------------------------------------------------- loader

namespace {

at::Tensor stream(int64_t n) { return at::arange(n, at::kInt); }

// Window index of each row (the stream is arange, so a row's first token / T).
std::vector<int64_t> windows_of(const Batch& b, int64_t seq_len) {
  std::vector<int64_t> w;
  for (int64_t r = 0; r < b.inputs.size(0); ++r)
    w.push_back(b.inputs[r][0].item<int64_t>() / seq_len);
  return w;
}

}  // namespace

TEST(Loader, WindowsTargetsAndDeterminism) {
  BatchLoader a(stream(1001), {10, 4, 42, 0, 1});
  BatchLoader b(stream(1001), {10, 4, 42, 0, 1});
  BatchLoader c(stream(1001), {10, 4, 43, 0, 1});
  EXPECT_EQ(a.windows_per_epoch(), 100);
  bool differs = false;
  for (int i = 0; i < 30; ++i) {
    Batch x = a.next(), y = b.next(), z = c.next();
    ASSERT_EQ(x.inputs.sizes(), (at::IntArrayRef{4, 10}));
    EXPECT_EQ(x.inputs.scalar_type(), at::kLong);
    EXPECT_TRUE(at::equal(x.inputs, y.inputs));
    EXPECT_TRUE(at::equal(x.targets, x.inputs + 1));
    EXPECT_TRUE(at::equal(x.inputs.select(1, 0).remainder(10), at::zeros({4}, at::kLong)));
    differs = differs || !at::equal(x.inputs, z.inputs);
  }
  EXPECT_TRUE(differs);
  EXPECT_NE(error_of([] { BatchLoader(stream(50), {10, 4, 0, 0, 2}); }).find("4 windows"),
            std::string::npos);
}

TEST(Loader, SubsetDrawsOnlyItsWindowsOncePerEpoch) {
  // stream(n) holds token i at position i, so a window's first input is 10 * its index.
  std::vector<int64_t> subset = {3, 7, 8, 20, 41, 42, 77, 99};
  LoaderOptions o{10, 2, 5, 0, 1, subset};
  BatchLoader loader(stream(1001), o);
  EXPECT_EQ(loader.windows_per_epoch(), 8);
  std::vector<int64_t> seen;
  for (int i = 0; i < 4; ++i) {
    Batch b = loader.next();
    for (int64_t r = 0; r < 2; ++r) seen.push_back(b.inputs[r][0].item<int64_t>() / 10);
  }
  std::sort(seen.begin(), seen.end());
  EXPECT_EQ(seen, subset);
  o.subset = {5, 6};
  o.batch_size = 4;
  EXPECT_NE(error_of([&] { BatchLoader(stream(1001), o); }).find("the chosen subset holds 2 windows"),
            std::string::npos);
  o.batch_size = 2;
  o.subset = {5, 100};
  EXPECT_NE(error_of([&] { BatchLoader(stream(1001), o); }).find("window 100 of the subset"),
            std::string::npos);
}

TEST(Loader, ShardsAreDisjointAndUnionEqualsLargerBatch) {
  const int64_t T = 8;
  BatchLoader r0(stream(T * 64 + 1), {T, 3, 9, 0, 2});
  BatchLoader r1(stream(T * 64 + 1), {T, 3, 9, 1, 2});
  BatchLoader one(stream(T * 64 + 1), {T, 6, 9, 0, 1});
  ASSERT_EQ(r0.batches_per_epoch(), 10);
  std::set<int64_t> epoch_windows;
  for (int i = 0; i < 10; ++i) {
    Batch a = r0.next(), b = r1.next(), u = one.next();
    EXPECT_TRUE(at::equal(at::cat({a.inputs, b.inputs}), u.inputs));
    EXPECT_TRUE(at::equal(at::cat({a.targets, b.targets}), u.targets));
    for (int64_t w : windows_of(a, T)) EXPECT_TRUE(epoch_windows.insert(w).second);
    for (int64_t w : windows_of(b, T)) EXPECT_TRUE(epoch_windows.insert(w).second);
  }
  EXPECT_EQ(epoch_windows.size(), 60u);  // 4 windows of the 64 skipped as an epoch tail
}

TEST(Loader, EpochRolloverAndResume) {
  const int64_t T = 4;
  BatchLoader a(stream(T * 10 + 1), {T, 2, 3, 0, 2});  // 10 windows, global batch 4
  std::vector<int64_t> epoch0, epoch1;
  for (int i = 0; i < 4; ++i) {
    Batch b = a.next();
    auto w = windows_of(b, T);
    (i < 2 ? epoch0 : epoch1).insert((i < 2 ? epoch0 : epoch1).end(), w.begin(), w.end());
  }
  EXPECT_EQ(a.cursor().epoch, 1);
  EXPECT_EQ(a.cursor().position, 4 * 2);
  EXPECT_NE(epoch0, epoch1);
  EXPECT_EQ(epoch_permutation(10, 3, 0), epoch_permutation(10, 3, 0));
  EXPECT_NE(epoch_permutation(10, 3, 0), epoch_permutation(10, 3, 1));

  BatchLoader ref(stream(1001), {10, 3, 11, 1, 2});
  for (int i = 0; i < 7; ++i) ref.next();
  LoaderCursor saved = ref.cursor();
  std::vector<Batch> expected;
  for (int i = 0; i < 40; ++i) expected.push_back(ref.next());  // crosses epoch boundaries
  BatchLoader resumed(stream(1001), {10, 3, 11, 1, 2});
  resumed.restore(saved);
  for (int i = 0; i < 40; ++i) EXPECT_TRUE(at::equal(resumed.next().inputs, expected[i].inputs));
  EXPECT_EQ(resumed.cursor().epoch, ref.cursor().epoch);
  EXPECT_EQ(resumed.cursor().position, ref.cursor().position);
  EXPECT_GE(ref.cursor().epoch, 2);
  EXPECT_THROW(resumed.restore({0, 5}), Error);
}

TEST(Loader, ValidationBatches) {
  const int64_t T = 5;
  at::Tensor ids = stream(T * 23 + 1);  // 23 windows
  auto all = validation_batches(ids, T, 4, 0, 0, 1);
  ASSERT_EQ(all.size(), 5u);  // 23 / 4, partial batch dropped
  for (int64_t k = 0; k < static_cast<int64_t>(all.size()); ++k)
    EXPECT_EQ(windows_of(all[k], T),
              (std::vector<int64_t>{4 * k, 4 * k + 1, 4 * k + 2, 4 * k + 3}));
  auto r0 = validation_batches(ids, T, 2, 0, 0, 2);
  auto r1 = validation_batches(ids, T, 2, 0, 1, 2);
  ASSERT_EQ(r0.size(), 5u);
  ASSERT_EQ(r1.size(), 5u);
  for (size_t k = 0; k < 5; ++k) {
    EXPECT_TRUE(at::equal(at::cat({r0[k].inputs, r1[k].inputs}), all[k].inputs));
    EXPECT_TRUE(at::equal(r0[k].targets, r0[k].inputs + 1));
  }
  EXPECT_EQ(validation_batches(ids, T, 4, 2, 0, 1).size(), 2u);
  auto short_split = validation_batches(stream(T * 3 + 1), T, 4, 0, 1, 2);  // 3 windows
  ASSERT_EQ(short_split.size(), 1u);
  EXPECT_EQ(windows_of(short_split[0], T), (std::vector<int64_t>{1}));
  EXPECT_TRUE(validation_batches(stream(T), T, 4, 0, 0, 1).empty());
}

}  // namespace condense
