// Byte-level BPE encode/decode, see bpe_tokenizer.h. Merges work on token ids: the pair
// (left id, right id) maps to (rank, merged id), so a word never builds strings while merging.
#include "text/bpe_tokenizer.h"

#include <algorithm>
#include <array>
#include <queue>
#include <unordered_map>

#include "core/error.h"
#include "core/hash.h"
#include "text/byte_unicode.h"
#include "text/unicode_nfc.h"
#include "text/utf8.h"

namespace condense {

struct BpeTokenizer::State {
  BpeVocabulary vocab;
  Pretokenizer pretokenizer;
  std::string serialized;
  std::string source;
  std::unordered_map<std::string, int32_t> token_to_id;
  struct Merge {
    int32_t rank, result;
  };
  std::unordered_map<uint64_t, Merge> merges;  // key: left id << 32 | right id
  std::array<int32_t, 256> byte_ids{};         // -1: the vocabulary has no symbol for the byte
  struct Added {
    std::string text;
    int32_t id;
    bool always;  // user-defined: matched even when special tokens are not parsed
  };
  std::array<std::vector<Added>, 256> added;  // by first byte, longest first
  bool nfc = false;                           // vocab.normalizer == "nfc"
};

namespace {

uint64_t pair_key(int32_t l, int32_t r) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(l)) << 32) | static_cast<uint32_t>(r);
}

}  // namespace

BpeTokenizer::BpeTokenizer(BpeVocabulary v, const std::string& source) : state_(nullptr) {
  const size_t n = v.tokens.size();
  CONDENSE_CHECK(n > 0 && n <= INT32_MAX, "{}: BPE vocabulary has {} tokens", source, n);
  if (v.token_types.empty()) v.token_types.assign(n, static_cast<int32_t>(BpeTokenType::kNormal));
  CONDENSE_CHECK(v.token_types.size() == n, "{}: {} token types for {} tokens", source,
                 v.token_types.size(), n);
  for (const auto* id : {&v.bos_id, &v.eos_id, &v.pad_id, &v.unk_id}) {
    CONDENSE_CHECK(!*id || (**id >= 0 && static_cast<size_t>(**id) < n),
                   "{}: special token id {} outside the vocabulary of {}", source, id->value_or(-1),
                   n);
  }
  const bool unk_rule = v.missing_byte == MissingByte::kUnk || v.missing_byte == MissingByte::kUnkFused;
  CONDENSE_CHECK(!unk_rule || v.unk_id, "{}: bytes without a symbol become the unknown token, but "
                 "the vocabulary names none", source);
  CONDENSE_CHECK(v.normalizer.empty() || v.normalizer == "nfc", "{}: normalizer '{}' (valid: nfc, "
                 "or none)", source, v.normalizer);
  auto st = std::make_shared<State>(State{v, Pretokenizer::by_name(v.pre_tokenizer), {}, source});
  st->nfc = v.normalizer == "nfc";
  st->token_to_id.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    const int32_t type = v.token_types[i];
    CONDENSE_CHECK(type >= 1 && type <= 6, "{}: token {} ('{}') has type {} (valid: 1..6)", source,
                   i, v.tokens[i], type);
    st->token_to_id[v.tokens[i]] =
        static_cast<int32_t>(i);  // a duplicate: the last id wins, as in llama.cpp
    const auto t = static_cast<BpeTokenType>(type);
    const bool special = t == BpeTokenType::kControl || t == BpeTokenType::kUnknown;
    if ((special || t == BpeTokenType::kUserDefined) && !v.tokens[i].empty()) {
      st->added[static_cast<uint8_t>(v.tokens[i][0])].push_back(
          {v.tokens[i], static_cast<int32_t>(i), t == BpeTokenType::kUserDefined});
    }
  }
  for (auto& list : st->added) {
    std::stable_sort(list.begin(), list.end(), [](const State::Added& a, const State::Added& b) {
      return a.text.size() > b.text.size();
    });
  }
  for (int b = 0; b < 256; ++b) {
    const auto it = st->token_to_id.find(byte_level_encode(std::string(1, static_cast<char>(b))));
    st->byte_ids[b] = it == st->token_to_id.end() ? -1 : it->second;
  }
  // Where every byte has a symbol the rule is never applied: kept at the default, so that such a
  // vocabulary serializes (and hashes) the same whether or not its file named an unk_token.
  if (std::all_of(st->byte_ids.begin(), st->byte_ids.end(), [](int32_t id) { return id >= 0; }))
    st->vocab.missing_byte = MissingByte::kBlockAndDrop;
  st->serialized = serialize_bpe_vocabulary(st->vocab);
  st->merges.reserve(v.merges.size());
  for (size_t r = 0; r < v.merges.size(); ++r) {
    const std::string& m = v.merges[r];
    // Split at the first space after the first character, as llama.cpp does.
    const size_t sp = m.find(' ', 1);
    CONDENSE_CHECK(sp != std::string::npos && sp + 1 < m.size(),
                   "{}: merge {} ('{}') is not two tokens separated by a space", source, r, m);
    const std::string left = m.substr(0, sp), right = m.substr(sp + 1);
    const auto l = st->token_to_id.find(left), rt = st->token_to_id.find(right),
               res = st->token_to_id.find(left + right);
    CONDENSE_CHECK(
        l != st->token_to_id.end() && rt != st->token_to_id.end() && res != st->token_to_id.end(),
        "{}: merge {} ('{}'): '{}' is not in the vocabulary", source, r, m,
        l == st->token_to_id.end()    ? left
        : rt == st->token_to_id.end() ? right
                                      : left + right);
    // A repeated pair keeps its first (lowest) rank, as in llama.cpp.
    st->merges.emplace(pair_key(l->second, rt->second),
                       State::Merge{static_cast<int32_t>(r), res->second});
  }
  state_ = std::move(st);
}

BpeTokenizer BpeTokenizer::from_gguf_fields(BpeVocabulary fields, const std::string& source) {
  std::string& pre = fields.pre_tokenizer;
  if (pre == "gpt-2") pre = "gpt2";  // convert_hf_to_gguf.py writes GPT-2's as "gpt-2"
  if (pre == "llama3" || pre == "llama-v3") pre = "llama-bpe";
  if (pre == "llama-bpe")
    fields.ignore_merges = true;  // llama.cpp sets it for Llama 3 vocabularies
  return BpeTokenizer(std::move(fields), source);
}

BpeTokenizer BpeTokenizer::from_serialized(const std::string& bytes, const std::string& source) {
  return BpeTokenizer(deserialize_bpe_vocabulary(bytes, source), source);
}

void BpeTokenizer::encode_word(std::string_view bytes, std::vector<int32_t>& out) const {
  const State& st = *state_;
  if (bytes.empty()) return;
  if (st.vocab.ignore_merges) {
    const auto it = st.token_to_id.find(byte_level_encode(bytes));
    if (it != st.token_to_id.end()) {
      out.push_back(it->second);
      return;
    }
  }
  struct Sym {
    int32_t id;  // -1: a byte without a symbol (kBlockAndDrop), never merged, dropped
    int prev, next;
  };
  // One symbol per byte; a byte without a symbol as the vocabulary's MissingByte rule says.
  std::vector<Sym> syms;
  syms.reserve(bytes.size());
  bool after_unk = false;  // the previous symbol is the unk of a byte without a symbol
  for (const char c : bytes) {
    int32_t id = st.byte_ids[static_cast<uint8_t>(c)];
    const bool missing = id < 0;
    if (missing) {
      const MissingByte rule = st.vocab.missing_byte;
      if (rule == MissingByte::kUnkFused && after_unk) continue;
      if (rule != MissingByte::kBlockAndDrop) id = *st.vocab.unk_id;
    }
    after_unk = missing;
    syms.push_back({id, 0, 0});
  }
  if (syms.empty()) return;
  for (size_t i = 0; i < syms.size(); ++i) {
    syms[i].prev = static_cast<int>(i) - 1;
    syms[i].next = i + 1 < syms.size() ? static_cast<int>(i) + 1 : -1;
  }
  struct Cand {
    int32_t rank;
    int left, right;
    int32_t left_id, right_id, result;
    bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
  };
  std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> queue;
  auto consider = [&](int l, int r) {
    if (l < 0 || r < 0 || syms[l].id < 0 || syms[r].id < 0) return;
    const auto it = st.merges.find(pair_key(syms[l].id, syms[r].id));
    if (it != st.merges.end())
      queue.push({it->second.rank, l, r, syms[l].id, syms[r].id, it->second.result});
  };
  for (size_t i = 0; i + 1 < syms.size(); ++i)
    consider(static_cast<int>(i), static_cast<int>(i) + 1);
  while (!queue.empty()) {
    const Cand c = queue.top();
    queue.pop();
    Sym& l = syms[c.left];
    Sym& r = syms[c.right];
    // Stale: one side has merged since (a symbol's token only ever grows, so its id never
    // comes back) or they are no longer neighbours.
    if (l.id != c.left_id || r.id != c.right_id || l.next != c.right) continue;
    l.id = c.result;
    l.next = r.next;
    if (r.next >= 0) syms[r.next].prev = c.left;
    r.id = -2;  // merged away
    r.next = r.prev = -1;
    consider(l.prev, c.left);
    consider(c.left, l.next);
  }
  for (int i = 0; i >= 0; i = syms[i].next) {
    if (syms[i].id >= 0) out.push_back(syms[i].id);
  }
}

std::vector<int32_t> BpeTokenizer::encode(std::string_view text, bool parse_special) const {
  const State& st = *state_;
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 1);
  // Plain text (between added tokens): valid UTF-8 runs go through the pre-tokenizer, each run
  // of invalid bytes is one pre-token of its own.
  auto plain = [&](std::string_view s) {
    size_t pos = 0;
    while (pos < s.size()) {
      size_t end = utf8_valid_run_end(s, pos);
      if (end > pos) {
        std::string_view run = s.substr(pos, end - pos);
        std::string normalized;
        if (st.nfc) {
          normalized = nfc(run);
          run = normalized;
        }
        for (std::string_view word : st.pretokenizer.split(run)) encode_word(word, out);
      }
      pos = end;
      while (end < s.size() && utf8_sequence_length(s, end) == 0) ++end;
      if (end > pos) encode_word(s.substr(pos, end - pos), out);
      pos = end;
    }
  };
  size_t start = 0;
  for (size_t i = 0; i < text.size();) {
    const State::Added* hit = nullptr;
    for (const auto& a : st.added[static_cast<uint8_t>(text[i])]) {
      if ((a.always || parse_special) && text.compare(i, a.text.size(), a.text) == 0) {
        hit = &a;
        break;
      }
    }
    if (!hit) {
      ++i;
      continue;
    }
    plain(text.substr(start, i - start));
    out.push_back(hit->id);
    i += hit->text.size();
    start = i;
  }
  plain(text.substr(start));
  return out;
}

bool BpeTokenizer::can_encode(std::string_view text) const {
  // Conservative: a byte without a symbol anywhere in the text counts, even inside an added token.
  for (char c : text) {
    if (state_->byte_ids[static_cast<uint8_t>(c)] < 0) return false;
  }
  return true;
}

std::string BpeTokenizer::decode(const std::vector<int32_t>& ids, bool render_special) const {
  std::string out;
  for (int32_t id : ids) {
    check_id(id);
    const std::string& t = state_->vocab.tokens[id];
    switch (token_type(id)) {
      case BpeTokenType::kNormal:
        out += byte_level_decode(t);
        break;
      case BpeTokenType::kByte:
        if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>') {
          out.push_back(static_cast<char>(std::stoi(t.substr(3, 2), nullptr, 16)));
        } else {
          out += byte_level_decode(t);
        }
        break;
      case BpeTokenType::kUserDefined:
        out += t;
        break;
      case BpeTokenType::kControl:
      case BpeTokenType::kUnknown:
        if (render_special) out += t;
        break;
      case BpeTokenType::kUnused:
        break;
    }
  }
  return out;
}

int64_t BpeTokenizer::vocab_size() const {
  return static_cast<int64_t>(state_->vocab.tokens.size());
}

void BpeTokenizer::check_id(int32_t id) const {
  CONDENSE_CHECK(id >= 0 && id < vocab_size(), "{}: token id {} outside the vocabulary of {}",
                 state_->source, id, vocab_size());
}

const std::string& BpeTokenizer::token(int32_t id) const {
  check_id(id);
  return state_->vocab.tokens[id];
}

BpeTokenType BpeTokenizer::token_type(int32_t id) const {
  check_id(id);
  return static_cast<BpeTokenType>(state_->vocab.token_types[id]);
}

std::optional<int32_t> BpeTokenizer::token_id(const std::string& token) const {
  const auto it = state_->token_to_id.find(token);
  if (it == state_->token_to_id.end()) return std::nullopt;
  return it->second;
}

const BpeVocabulary& BpeTokenizer::vocab() const { return state_->vocab; }
const Pretokenizer& BpeTokenizer::pretokenizer() const { return state_->pretokenizer; }
const std::string& BpeTokenizer::serialized() const { return state_->serialized; }
std::string BpeTokenizer::sha256() const { return sha256_hex(state_->serialized); }
const std::string& BpeTokenizer::source() const { return state_->source; }

}  // namespace condense
