// Tests for text/: GPT-2's byte-to-unicode table in closed form, UTF-8 validation, the
// pre-tokenizer regexes on hand-checked splits, BPE merges applied by rank on a tiny
// hand-made vocabulary, added tokens never split, decode(encode(x)) == x on arbitrary bytes,
// serialization, and every refusal (unknown pre-tokenizer, bad merges, malformed tokenizer.json
// with the key named). Exactness against llama.cpp and tokenizers on a real vocabulary is
// tests/python/test_bpe_tokenizer.py.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "core/error.h"
#include "text/tokenizer.h"
#include "text/bpe_tokenizer.h"
#include "text/byte_unicode.h"
#include "text/chat_format.h"
#include "text/pretokenizer.h"
#include "text/sentencepiece_proto.h"
#include "text/unicode_nfc.h"
#include "text/utf8.h"

namespace condense {
namespace {

std::string bl(const std::string& bytes) { return byte_level_encode(bytes); }

// 256 byte symbols (id = byte), then `extra` normal tokens; merges written "left|right" in raw
// bytes.
BpeVocabulary tiny(const std::vector<std::string>& extra, const std::vector<std::string>& merges,
                   const std::string& pre = "gpt2") {
  BpeVocabulary v;
  for (int b = 0; b < 256; ++b) v.tokens.push_back(bl(std::string(1, static_cast<char>(b))));
  for (const auto& e : extra) v.tokens.push_back(bl(e));
  v.token_types.assign(v.tokens.size(), 1);
  for (const auto& m : merges) {
    const size_t sp = m.find('|');
    v.merges.push_back(bl(m.substr(0, sp)) + " " + bl(m.substr(sp + 1)));
  }
  v.pre_tokenizer = pre;
  return v;
}

int32_t id_of(const BpeTokenizer& t, const std::string& bytes) {
  return t.token_id(bl(bytes)).value();
}

std::vector<std::string> pieces(const std::string& pre, const std::string& text) {
  std::vector<std::string> out;
  for (auto p : Pretokenizer::by_name(pre).split(text)) out.emplace_back(p);
  return out;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(ByteUnicode, ClosedForm) {
  std::set<uint32_t> seen;
  uint32_t next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable =
        (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    const uint32_t cp = byte_to_code_point(static_cast<uint8_t>(b));
    EXPECT_EQ(cp, printable ? static_cast<uint32_t>(b) : next++) << b;
    EXPECT_EQ(code_point_to_byte(cp), static_cast<uint8_t>(b));
    seen.insert(cp);
  }
  EXPECT_EQ(seen.size(), 256u);
  EXPECT_EQ(next, 256u + 68u);
  EXPECT_EQ(byte_level_encode(" "), "\xC4\xA0");   // 'Ġ' U+0120
  EXPECT_EQ(byte_level_encode("\n"), "\xC4\x8A");  // 'Ċ' U+010A
  EXPECT_FALSE(code_point_to_byte(0x20).has_value());
  std::string all;
  for (int b = 0; b < 256; ++b) all.push_back(static_cast<char>(b));
  EXPECT_EQ(byte_level_decode(byte_level_encode(all)), all);
}

TEST(Utf8, ValidatesRfc3629) {
  EXPECT_EQ(utf8_sequence_length("a", 0), 1u);
  EXPECT_EQ(utf8_sequence_length("\xC3\xA9", 0), 2u);
  EXPECT_EQ(utf8_sequence_length("\xF0\x9F\x98\x80", 0), 4u);
  EXPECT_EQ(utf8_sequence_length("\xC0\x80", 0), 0u);          // overlong
  EXPECT_EQ(utf8_sequence_length("\xED\xA0\x80", 0), 0u);      // surrogate
  EXPECT_EQ(utf8_sequence_length("\xF4\x90\x80\x80", 0), 0u);  // past U+10FFFF
  EXPECT_EQ(utf8_sequence_length("\xE2\x82", 0), 0u);          // truncated
  EXPECT_EQ(utf8_sequence_length("\x80", 0), 0u);
}

TEST(Pretokenizer, KnownSplits) {
  using V = std::vector<std::string>;
  EXPECT_EQ(pieces("gpt2", "Hello world's  123!!\n\n x"),
            (V{"Hello", " world", "'s", " ", " 123", "!!", "\n\n", " x"}));
  EXPECT_EQ(pieces("gpt2", "caf\xC3\xA9 \xCE\xB1\xCE\xB2 \xE4\xB8\xAD\xE6\x96\x87"),
            (V{"caf\xC3\xA9", " \xCE\xB1\xCE\xB2", " \xE4\xB8\xAD\xE6\x96\x87"}));
  // smollm: every digit alone first, then GPT-2's regex inside each piece.
  EXPECT_EQ(pieces("smollm", "abc 123 x"), (V{"abc", " ", "1", "2", "3", " x"}));
  // llama-bpe: digits in threes, newlines kept together, a letter run takes one leading symbol.
  EXPECT_EQ(pieces("llama-bpe", "12345 Hello\n\n(world) I'M"),
            (V{"123", "45", " Hello", "\n\n", "(world", ")", " I", "'M"}));
  EXPECT_EQ(pieces("qwen2", "2024"), (V{"2", "0", "2", "4"}));
  EXPECT_TRUE(pieces("gpt2", "").empty());
}

TEST(Pretokenizer, UnknownNameRefusedListingValidOnes) {
  const std::string msg = error_of([] { Pretokenizer::by_name("bloom"); });
  EXPECT_NE(msg.find("unknown BPE pre-tokenizer 'bloom'"), std::string::npos) << msg;
  EXPECT_NE(msg.find("gpt2, llama-bpe, smollm"), std::string::npos) << msg;
  EXPECT_NE(error_of([] { BpeTokenizer(tiny({}, {}, "nope"), "t"); }).find("'nope'"),
            std::string::npos);
}

TEST(BpeTokenizer, MergesApplyByRank) {
  // Same tokens, two rank orders: "abc" ends as [a, bc] when "b c" ranks first, [abc] when
  // "a b" does (and then "ab c" applies).
  const BpeTokenizer bc_first(tiny({"ab", "bc", "abc"}, {"b|c", "a|b", "ab|c"}), "t1");
  const BpeTokenizer ab_first(tiny({"ab", "bc", "abc"}, {"a|b", "b|c", "ab|c"}), "t2");
  EXPECT_EQ(bc_first.encode("abc"), (std::vector<int32_t>{'a', id_of(bc_first, "bc")}));
  EXPECT_EQ(ab_first.encode("abc"), (std::vector<int32_t>{id_of(ab_first, "abc")}));
  // Equal ranks merge leftmost first.
  const BpeTokenizer aa(tiny({"aa"}, {"a|a"}), "t3");
  EXPECT_EQ(aa.encode("aaa"), (std::vector<int32_t>{id_of(aa, "aa"), 'a'}));
  EXPECT_EQ(aa.encode("aaaa"), (std::vector<int32_t>{id_of(aa, "aa"), id_of(aa, "aa")}));
  // Merges never cross pre-token boundaries: " a" is its own pre-token.
  EXPECT_EQ(aa.encode("a a"), (std::vector<int32_t>{'a', ' ', 'a'}));
}

TEST(BpeTokenizer, IgnoreMergesTakesWholeWords) {
  BpeVocabulary v = tiny({"ab", "abc"}, {"a|b"});
  EXPECT_EQ(BpeTokenizer(v, "t").encode("abc"), (std::vector<int32_t>{256, 'c'}));
  v.ignore_merges = true;
  EXPECT_EQ(BpeTokenizer(v, "t").encode("abc"), (std::vector<int32_t>{257}));
}

TEST(BpeTokenizer, AddedTokensAreNeverSplit) {
  BpeVocabulary v = tiny({"ab"}, {"a|b"});
  const int32_t ctl = static_cast<int32_t>(v.tokens.size()), user = ctl + 1, longer = ctl + 2;
  v.tokens.insert(v.tokens.end(), {"<|x|>", "<u>", "<|x|>!"});
  v.token_types.insert(v.token_types.end(), {3, 4, 3});
  const BpeTokenizer t(v, "t");
  EXPECT_EQ(t.encode("ab<|x|>ab<u>"), (std::vector<int32_t>{256, ctl, 256, user}));
  EXPECT_EQ(t.encode("<|x|>!a"), (std::vector<int32_t>{longer, 'a'}));  // longest wins
  // Control tokens are plain text unless special tokens are parsed; user-defined always match.
  const auto plain = t.encode("<|x|><u>", false);
  EXPECT_EQ(plain.back(), user);
  EXPECT_EQ(plain.size(), 6u);  // the 5 bytes of "<|x|>" (pieces "<|", "x", "|>"), then <u>
  EXPECT_EQ(t.decode(t.encode("ab<|x|>ab<u>")), "ab<|x|>ab<u>");
  EXPECT_EQ(t.decode({ctl, 'a'}, /*render_special=*/false), "a");
}

TEST(Tokenizer, BpeKindBehindTheModelInterface) {
  BpeVocabulary v = tiny({"ab", " t", "he"}, {"a|b", " |t", "h|e"});
  const int32_t eos = static_cast<int32_t>(v.tokens.size());
  v.tokens.push_back("<|endoftext|>");
  v.token_types.push_back(3);
  v.eos_id = eos;
  const BpeTokenizer bpe(v, "tiny");
  const Tokenizer t = Tokenizer::from_bpe(bpe);
  EXPECT_EQ(t.kind(), "bpe");
  ASSERT_NE(t.bpe(), nullptr);
  EXPECT_EQ(t.vocab_size(), eos + 1);
  EXPECT_EQ(t.eos_id(), eos);
  EXPECT_EQ(t.bos_id(), -1);
  EXPECT_TRUE(t.is_control(eos));
  EXPECT_FALSE(t.is_control(256));
  EXPECT_EQ(t.piece(257), bl(" t"));
  const std::string text = "ab the\n\xC3\xA9";
  EXPECT_EQ(t.encode(text), bpe.encode(text));
  EXPECT_EQ(t.decode(t.encode(text)), text);
  // Control tokens are recognized in text and decode to nothing, as sentencepiece's do.
  EXPECT_EQ(t.encode("ab<|endoftext|>").back(), eos);
  EXPECT_EQ(t.decode({256, eos}), "ab");
  // Checkpoints and token stores keep serialized(); it comes back as the same kind and hash.
  const Tokenizer back = Tokenizer::from_serialized(t.serialized(), "checkpoint");
  EXPECT_EQ(back.kind(), "bpe");
  EXPECT_EQ(back.sha256(), t.sha256());
  EXPECT_EQ(back.encode(text), t.encode(text));
  EXPECT_NE(error_of([&] { t.piece(eos + 1); }).find("out of range"), std::string::npos);
  // Bytes that are neither kind are refused naming their source.
  EXPECT_NE(error_of([] { Tokenizer::from_serialized("junk", "x.h5"); }).find("x.h5"),
            std::string::npos);
}

TEST(Tokenizer, TrainedBpeSplitsDigitsOnePerPiece) {
  // Text where a few numbers recur: sentencepiece's BPE trainer without split_digits merges
  // them (this corpus at vocabulary 300 gives the piece "▁20" in "2024", checked with
  // the sentencepiece package), so a piece with two digits means the option is lost.
  const std::vector<std::string> words = {"alpha", "beta", "gamma", "delta", "river", "stone", "window"};
  std::vector<std::string> lines;
  for (int i = 0; i < 2000; ++i)
    lines.push_back("in " + std::to_string(2000 + i % 30) + " the " + words[i % words.size()] + " met " +
                    words[(i * 3) % words.size()] + " at " + std::to_string(i % 1000));
  const Tokenizer t = Tokenizer::train(lines, {300, 100000, 7});
  const std::vector<int32_t> ids = t.encode("in 2024 the 1999 31415 987");
  EXPECT_GE(ids.size(), 18u);
  for (int32_t id : ids) {
    const std::string piece = t.piece(id);
    EXPECT_LE(std::count_if(piece.begin(), piece.end(), [](char c) { return c >= '0' && c <= '9'; }), 1) << piece;
  }
}

TEST(SentencepieceProto, TablesRebuildTheModelTheyCameFrom) {
  // A trained model's own pieces, scores and types, written as a ModelProto by condense, load in
  // sentencepiece and encode every text as the original does; reading the pieces back gives the
  // tables written. (The comparison with llama.cpp on GGUF tables is
  // tests/python/test_gguf_sentencepiece.py.)
  std::vector<std::string> lines;
  const std::vector<std::string> words = {"river", "stone", "Window", "caf\xc3\xa9", "2024", "  ", "x-y"};
  for (int i = 0; i < 1500; ++i)
    lines.push_back(words[i % 7] + " " + words[(i * 3) % 7] + words[(i * 5) % 7] + " " + std::to_string(i));
  const Tokenizer original = Tokenizer::train(lines, {300, 100000, 7});
  SentencepieceTables t;
  for (int id = 0; id < original.vocab_size(); ++id) {
    t.pieces.push_back(original.piece(id));
    t.scores.push_back(original.score(id));
    t.types.push_back(original.token_type(id));
  }
  EXPECT_EQ(std::count(t.types.begin(), t.types.end(), 6), 256);
  EXPECT_EQ(std::count(t.types.begin(), t.types.end(), 3), 2);
  const Tokenizer rebuilt = Tokenizer::from_serialized(sentencepiece_model_proto(t, "test"), "rebuilt");
  EXPECT_NE(rebuilt.sha256(), original.sha256());  // other trainer fields: a new model's bytes
  EXPECT_EQ(rebuilt.bos_id(), 1);
  EXPECT_EQ(rebuilt.eos_id(), 2);
  EXPECT_EQ(rebuilt.unk_id(), 0);
  for (const std::string& text : {std::string("river stone 1234"), std::string("  Window\tcaf\xc3\xa9\n\xe4\xb8\xad"),
                                  std::string(""), std::string(" x-y  2024 "), lines[17]})
    EXPECT_EQ(rebuilt.encode(text), original.encode(text)) << text;
  const SentencepieceTables back = read_sentencepiece_tables(rebuilt.serialized(), "rebuilt");
  EXPECT_EQ(back.pieces, t.pieces);
  EXPECT_EQ(back.scores, t.scores);
  EXPECT_EQ(back.types, t.types);
  // Without a space prefix (tokenizer.ggml.add_space_prefix false) the first word has no U+2581.
  t.add_dummy_prefix = false;
  const Tokenizer bare = Tokenizer::from_serialized(sentencepiece_model_proto(t, "test"), "bare");
  EXPECT_TRUE(rebuilt.adds_space_prefix() && original.adds_space_prefix());
  EXPECT_FALSE(bare.adds_space_prefix());
  EXPECT_EQ(bare.decode(bare.encode("river")), "river");
  EXPECT_NE(bare.piece(bare.encode("river")[0]).rfind("\xe2\x96\x81", 0), 0u);
  // Truncated bytes are refused naming the source.
  const std::string bytes = rebuilt.serialized();
  EXPECT_THROW(
      {
        try {
          read_sentencepiece_tables(bytes.substr(0, 3), "half.model");  // inside piece 0
        } catch (const Error& e) {
          EXPECT_NE(std::string(e.what()).find("half.model: truncated sentencepiece model"), std::string::npos)
              << e.what();
          throw;
        }
      },
      Error);
}

TEST(ChatFormat, ChatMlAndLlama3FromTheVocabulary) {
  BpeVocabulary chatml = tiny({}, {});
  chatml.tokens.insert(chatml.tokens.end(), {"<|im_start|>", "<|im_end|>"});
  chatml.token_types.insert(chatml.token_types.end(), {3, 3});
  ChatPrompt c = chat_prompt(chatml, "Be brief.", "Hi?", "v");
  EXPECT_EQ(c.format, "chatml");
  EXPECT_EQ(c.stop_id, 257);
  EXPECT_EQ(c.text, "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi?<|im_end|>\n"
                    "<|im_start|>assistant\n");
  // No system message: none, unless the template writes a literal default (newline as a
  // character or as an escape).
  EXPECT_EQ(chat_prompt(chatml, "", "Hi?", "v").text.rfind("<|im_start|>user", 0), 0u);
  for (const std::string nl : {"\n", "\\n"}) {
    chatml.chat_template = "{{ '<|im_start|>system" + nl + "You are X.<|im_end|>" + nl + "' }}";
    EXPECT_EQ(chat_prompt(chatml, "", "Hi?", "v").text.rfind("<|im_start|>system\nYou are X.<|im_end|>", 0), 0u);
  }
  BpeVocabulary llama3 = tiny({}, {});
  for (const char* t : {"<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"}) {
    llama3.tokens.push_back(t);
    llama3.token_types.push_back(3);
  }
  ChatPrompt l = chat_prompt(llama3, "", "Hi?", "v");
  EXPECT_EQ(l.format, "llama3");
  EXPECT_EQ(l.stop_id, 259);
  EXPECT_EQ(l.text, "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi?<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\n");
  EXPECT_NE(error_of([] { chat_prompt(tiny({}, {}), "", "Hi", "plain.h5"); }).find("plain.h5"),
            std::string::npos);
}

TEST(BpeTokenizer, RoundTripsArbitraryBytes) {
  const BpeTokenizer t(tiny({"ab", "th", " t", " th", "the", " the", "\xC3\xA9"},
                            {"a|b", " |t", " t|h", "t|h", "th|e", " th|e", "\xC3|\xA9"}),
                       "t");
  EXPECT_EQ(t.encode(" the"), (std::vector<int32_t>{t.token_id(bl(" the")).value()}));
  std::vector<std::string> samples = {
      "",
      " ",
      "\n\n\n",
      "   leading and trailing   ",
      "caf\xC3\xA9 \xCF\x80\xE2\x89\x88"
      "3.14 \xF0\x9F\x98\x80!",
      "\xFF\xFE invalid \xC0\x80 bytes \xED\xA0\x80 end\xE2\x82",
      "tab\tand\r\nCRLF 'quotes' don't",
  };
  std::mt19937 rng(7);
  for (int i = 0; i < 300; ++i) {
    std::string s(rng() % 64, '\0');
    for (char& c : s) c = static_cast<char>(rng() % 256);
    samples.push_back(s);
  }
  for (const auto& s : samples) EXPECT_EQ(t.decode(t.encode(s)), s);
  EXPECT_TRUE(t.can_encode(samples.back()));
}

// A byte without a symbol (0x04 here), under each MissingByte rule: llama.cpp's drops it where
// it stands, so "a" and "b" on either side do not merge; tokenizers' with an unk_token emits
// that token, once per byte or once per run (fuse_unk). The rule survives serialization, and
// the default leaves the serialized bytes as they were before the rule existed.
TEST(BpeTokenizer, BytesWithoutSymbolsFollowTheVocabularysRule) {
  // "!\x04!" is one pre-token (punctuation and a control character): the two '!' would merge.
  BpeVocabulary v = tiny({"!!"}, {"!|!"});
  v.tokens[4] = "<unused4>";  // byte 0x04 has no symbol any more
  v.token_types[4] = 5;
  v.tokens.push_back("<unk>");
  v.token_types.push_back(2);
  v.unk_id = 257;
  const BpeTokenizer drop(v, "t");
  EXPECT_FALSE(drop.can_encode("a\x04z"));
  EXPECT_TRUE(drop.can_encode("az"));
  EXPECT_EQ(drop.encode("a\x04z"), (std::vector<int32_t>{'a', 'z'}));
  EXPECT_EQ(drop.encode("!!"), (std::vector<int32_t>{256}));
  EXPECT_EQ(drop.encode("!\x04\x04!"), (std::vector<int32_t>{'!', '!'}));  // not merged to "!!"
  const std::string default_bytes = drop.serialized();

  v.missing_byte = MissingByte::kUnk;
  const BpeTokenizer unk(v, "t");
  EXPECT_EQ(unk.encode("!\x04\x04!"), (std::vector<int32_t>{'!', 257, 257, '!'}));
  v.missing_byte = MissingByte::kUnkFused;
  const BpeTokenizer fused(v, "t");
  EXPECT_EQ(fused.encode("!\x04\x04!\x04"), (std::vector<int32_t>{'!', 257, '!', 257}));

  const BpeTokenizer back = BpeTokenizer::from_serialized(fused.serialized(), "back");
  EXPECT_EQ(back.vocab().missing_byte, MissingByte::kUnkFused);
  EXPECT_EQ(back.encode("!\x04\x04!"), fused.encode("!\x04\x04!"));
  EXPECT_NE(unk.sha256(), drop.sha256());
  EXPECT_NE(unk.sha256(), fused.sha256());
  // The default's bytes end with the chat template, as before the rule existed.
  EXPECT_EQ(default_bytes.size() + 4, unk.serialized().size());
  EXPECT_EQ(unk.serialized().compare(0, default_bytes.size(), default_bytes), 0);
  v.unk_id.reset();
  EXPECT_NE(error_of([&] { BpeTokenizer(v, "t"); }).find("names none"), std::string::npos);
}

TEST(BpeTokenizer, BadVocabulariesRefused) {
  EXPECT_NE(error_of([] {
              BpeTokenizer(tiny({}, {"a|q"}), "t");
            }).find("merge 0 ('a q'): 'aq' is not in the vocabulary"),
            std::string::npos);
  BpeVocabulary v = tiny({}, {});
  v.merges = {"ab"};
  EXPECT_NE(error_of([&] { BpeTokenizer(v, "t"); }).find("merge 0 ('ab') is not two tokens"),
            std::string::npos);
  v = tiny({}, {});
  v.eos_id = 999;
  EXPECT_NE(error_of([&] { BpeTokenizer(v, "t"); }).find("id 999 outside"), std::string::npos);
  v = tiny({}, {});
  v.token_types[3] = 9;
  EXPECT_NE(error_of([&] { BpeTokenizer(v, "t"); }).find("type 9"), std::string::npos);
  const BpeTokenizer ok(tiny({}, {}), "t");
  EXPECT_NE(error_of([&] { ok.decode({256}); }).find("token id 256 outside"), std::string::npos);
}

TEST(BpeTokenizer, SerializationRoundTripsAndIsStable) {
  BpeVocabulary v = tiny({"ab"}, {"a|b"}, "smollm");
  v.tokens.push_back("<|end|>");
  v.token_types.push_back(3);
  v.eos_id = 257;
  v.chat_template = "{{ messages }}";
  const BpeTokenizer a(v, "a");
  const BpeTokenizer b = BpeTokenizer::from_serialized(a.serialized(), "b");
  EXPECT_EQ(b.serialized(), a.serialized());
  EXPECT_EQ(b.sha256(), a.sha256());
  EXPECT_EQ(b.sha256().size(), 64u);
  EXPECT_EQ(b.eos_id(), 257);
  EXPECT_FALSE(b.bos_id().has_value());
  EXPECT_EQ(b.vocab().chat_template, "{{ messages }}");
  EXPECT_EQ(b.pretokenizer().name(), "smollm");
  EXPECT_EQ(b.encode("ab 12<|end|>"), a.encode("ab 12<|end|>"));
  v.merges.clear();
  EXPECT_NE(BpeTokenizer(v, "c").sha256(), a.sha256());
  const std::string bytes = a.serialized();
  EXPECT_NE(error_of([&] {
              BpeTokenizer::from_serialized(bytes.substr(0, bytes.size() - 3), "cut");
            }).find("cut: truncated"),
            std::string::npos);
  EXPECT_NE(
      error_of([] { BpeTokenizer::from_serialized("hello", "x"); }).find("not a condense BPE"),
      std::string::npos);
}

// UAX #15's own cases: composition, reordering by combining class, blocking, Hangul, singletons
// and composition exclusions (tests/python/test_unicode_nfc.py checks every code point).
TEST(UnicodeNfc, ClosedForms) {
  EXPECT_EQ(nfc("cafe\u0301"), "caf\u00e9");
  EXPECT_EQ(nfc("plain ASCII"), "plain ASCII");
  EXPECT_EQ(nfc("\u212b"), "\u00c5");                  // Angstrom sign: a singleton
  EXPECT_EQ(nfc("a\u0307\u0323"), "\u1ea1\u0307");   // dot below (220) sorts before dot above (230)
  EXPECT_EQ(nfc("e\u0302\u0323"), "\u1ec7");         // reordered, then both compose
  EXPECT_EQ(nfc("a\u0301\u0301"), "\u00e1\u0301");   // the second acute is blocked by the first
  EXPECT_EQ(nfc("\u1100\u1161\u11a8"), "\uac01");   // Hangul L V T -> LVT
  EXPECT_EQ(nfc("\uac00\u11a8"), "\uac01");          // LV + T
  EXPECT_EQ(nfc("\u0958"), "\u0915\u093c");          // composition exclusion stays decomposed
  EXPECT_EQ(nfc("\u0344"), "\u0308\u0301");          // non-starter decomposition
  EXPECT_EQ(nfc("\u0301a"), "\u0301a");               // a leading mark composes with nothing
  EXPECT_EQ(nfc(std::string("e\xcc\x81\xff\xcc\x81")), "\u00e9\xff\xcc\x81");  // not UTF-8: kept
}

// A tokenizer.json normalizer (Qwen2's NFC) is part of the vocabulary: encoded first, serialized,
// and it changes the hash.
TEST(BpeTokenizer, NfcNormalizerAppliesBeforePretokenizingAndSerializes) {
  BpeVocabulary v = tiny({}, {}, "gpt2");
  v.tokens.push_back("<|end|>");
  v.token_types.push_back(3);
  const BpeTokenizer plain(v, "plain");
  v.normalizer = "nfc";
  const BpeTokenizer a(v, "a");
  const BpeTokenizer b = BpeTokenizer::from_serialized(a.serialized(), "b");
  EXPECT_EQ(b.vocab().normalizer, "nfc");
  EXPECT_NE(a.sha256(), plain.sha256());
  EXPECT_EQ(b.encode("cafe\u0301<|end|>e\u0301"), plain.encode("caf\u00e9<|end|>\u00e9"));
  EXPECT_NE(plain.encode("cafe\u0301"), plain.encode("caf\u00e9"));
  EXPECT_EQ(b.decode(b.encode("e\u0301")), "\u00e9");
  v.normalizer = "nfkc";
  EXPECT_NE(error_of([&] { BpeTokenizer(v, "d"); }).find("normalizer 'nfkc'"), std::string::npos);
}

TEST(BpeTokenizer, GgufFieldsUseLlamaCppConventions) {
  BpeVocabulary v = tiny({"ab", "abc"}, {"a|b"}, "llama3");
  const BpeTokenizer t = BpeTokenizer::from_gguf_fields(v, "gguf");
  EXPECT_EQ(t.pretokenizer().name(), "llama-bpe");
  EXPECT_TRUE(t.vocab().ignore_merges);
  v.pre_tokenizer = "gpt-2";
  EXPECT_EQ(BpeTokenizer::from_gguf_fields(v, "gguf").pretokenizer().name(), "gpt2");
}

class TokenizerJson : public ::testing::Test {
 protected:
  std::filesystem::path dir =
      std::filesystem::temp_directory_path() / ("condense-text-" + std::to_string(::getpid()));
  void SetUp() override { std::filesystem::create_directories(dir); }
  void TearDown() override { std::filesystem::remove_all(dir); }
  std::string write(const std::string& json, const std::string& name = "tokenizer.json") {
    const auto p = (dir / name).string();
    std::ofstream(p) << json;
    return p;
  }
  // A valid tokenizer.json around `model`/`pre`: vocab of a, b, c, Ġ and "ab".
  static std::string doc(
      const std::string& merges,
      const std::string& pre =
          R"({"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true})",
      const std::string& extra = "") {
    return R"({"version":"1.0","added_tokens":[{"id":5,"content":"<|end|>","special":true}],)"
           R"("normalizer":null,"pre_tokenizer":)" +
           pre + R"(,"decoder":{"type":"ByteLevel"},)" + extra +
           R"("model":{"type":"BPE","dropout":null,"unk_token":null,"continuing_subword_prefix":null,)"
           R"("end_of_word_suffix":null,"fuse_unk":false,"byte_fallback":false,)"
           R"("vocab":{"a":0,"b":1,"c":2,"\u0120":3,"ab":4,"<|end|>":5},"merges":)" +
           merges + "}}";
  }
};

TEST_F(TokenizerJson, LoadsBothMergeFormsAndConfig) {
  write(R"({"eos_token":"<|end|>","bos_token":{"content":"<|end|>"},"chat_template":"T"})",
        "tokenizer_config.json");
  for (const std::string merges : {R"(["a b"])", R"([["a","b"]])"}) {
    const BpeTokenizer t = BpeTokenizer::from_tokenizer_json(write(doc(merges)));
    EXPECT_EQ(t.vocab_size(), 6);
    EXPECT_EQ(t.pretokenizer().name(), "gpt2");
    EXPECT_EQ(t.encode("ab c<|end|>"), (std::vector<int32_t>{4, 3, 2, 5}));
    EXPECT_EQ(t.token_type(5), BpeTokenType::kControl);
    EXPECT_EQ(t.eos_id(), 5);
    EXPECT_EQ(t.bos_id(), 5);
    EXPECT_EQ(t.vocab().chat_template, "T");
  }
  const std::string smollm =
      R"({"type":"Sequence","pretokenizers":[{"type":"Digits","individual_digits":true},)"
      R"({"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":true}]})";
  EXPECT_EQ(
      BpeTokenizer::from_tokenizer_json(write(doc(R"(["a b"])", smollm))).pretokenizer().name(),
      "smollm");
}

TEST_F(TokenizerJson, MalformedRefusedNamingTheKey) {
  auto err = [&](const std::string& json) {
    return error_of([&] { BpeTokenizer::from_tokenizer_json(write(json)); });
  };
  EXPECT_NE(err("{not json").find("not valid JSON"), std::string::npos);
  EXPECT_NE(err(R"({"pre_tokenizer":null})").find("has no 'model'"), std::string::npos);
  EXPECT_NE(
      err(R"({"model":{"type":"BPE"},"pre_tokenizer":{"type":"ByteLevel"}})").find("'model.vocab'"),
      std::string::npos);
  EXPECT_NE(err(R"({"model":{"type":"WordPiece"}})").find("model.type is 'WordPiece'"),
            std::string::npos);
  EXPECT_NE(err(doc(R"([["a"]])")).find("model.merges[0]"), std::string::npos);
  EXPECT_NE(err(doc(R"(["a q"])")).find("merge 0 ('a q')"), std::string::npos);
  const std::string msg = err(doc(R"(["a b"])", R"({"type":"Whitespace"})"));
  EXPECT_NE(msg.find(R"(pre_tokenizer {"type":"Whitespace"} is not one condense knows)"),
            std::string::npos)
      << msg;
  EXPECT_NE(
      err(doc(R"(["a b"])", R"({"type":"ByteLevel","add_prefix_space":true,"use_regex":true})"))
          .find("pre_tokenizer"),
      std::string::npos);
  std::string nfkc = doc("[]");  // NFC is read (Qwen2's); other normalizers are refused
  nfkc.replace(nfkc.find(R"("normalizer":null)"), 17, R"("normalizer":{"type":"NFKC"})");
  EXPECT_NE(err(nfkc).find("normalizer {\"type\":\"NFKC\"} is not supported"), std::string::npos) << err(nfkc);
  EXPECT_NE(err(R"({"added_tokens":[{"id":9,"content":"x"}],"pre_tokenizer":{"type":"ByteLevel"},)"
                R"("model":{"type":"BPE","vocab":{"a":0},"merges":[]}})")
                .find("no token with id 1"),
            std::string::npos);
  std::string strip = doc(R"(["a b"])");
  strip.replace(strip.find(R"("special":true)"), 14, R"("special":true,"lstrip":true)");
  EXPECT_NE(err(strip).find("added token '<|end|>' has lstrip set"), std::string::npos);
  EXPECT_NE(error_of([&] {
              BpeTokenizer::from_tokenizer_json((dir / "missing.json").string());
            }).find("cannot open"),
            std::string::npos);
}

}  // namespace
}  // namespace condense
