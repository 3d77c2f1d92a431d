// NFC, see unicode_nfc.h. The algorithm is UAX #15's: decompose every code point fully (the
// one-level mappings applied until none is left), sort each run of non-starters by combining
// class (stable), then compose each character with the last starter when nothing between them
// blocks it (a character of class 0, or of a class not lower than its own).
#include "text/unicode_nfc.h"

#include <algorithm>
#include <cstdint>
#include <vector>

#include "text/utf8.h"

namespace condense {
namespace {

struct CombiningClass {
  uint32_t cp;
  uint8_t ccc;
};
struct Decomposition {
  uint32_t cp, first, second;  // second 0: a singleton
};
struct Composition {
  uint64_t key;  // (first << 21) | second
  uint32_t composite;
};

#include "text/unicode_nfc_data.inc"

// Hangul syllables decompose to jamo arithmetically (Unicode 3.12).
constexpr uint32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
constexpr uint32_t kLCount = 19, kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount,
                   kSCount = kLCount * kNCount;

int combining_class(uint32_t cp) {
  if (cp < 0x300) return 0;
  auto it = std::lower_bound(std::begin(kCombiningClass), std::end(kCombiningClass), cp,
                             [](const CombiningClass& c, uint32_t v) { return c.cp < v; });
  return it != std::end(kCombiningClass) && it->cp == cp ? it->ccc : 0;
}

void decompose(uint32_t cp, std::vector<uint32_t>& out) {
  if (cp >= kSBase && cp < kSBase + kSCount) {
    const uint32_t s = cp - kSBase;
    out.push_back(kLBase + s / kNCount);
    out.push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount != 0) out.push_back(kTBase + s % kTCount);
    return;
  }
  if (cp >= 0xC0) {
    auto it = std::lower_bound(std::begin(kDecomposition), std::end(kDecomposition), cp,
                               [](const Decomposition& d, uint32_t v) { return d.cp < v; });
    if (it != std::end(kDecomposition) && it->cp == cp) {
      decompose(it->first, out);
      if (it->second != 0) decompose(it->second, out);
      return;
    }
  }
  out.push_back(cp);
}

// The primary composite of (a, b), or 0 when there is none.
uint32_t compose(uint32_t a, uint32_t b) {
  if (a >= kLBase && a < kLBase + kLCount && b >= kVBase && b < kVBase + kVCount)
    return kSBase + ((a - kLBase) * kVCount + (b - kVBase)) * kTCount;
  if (a >= kSBase && a < kSBase + kSCount && (a - kSBase) % kTCount == 0 && b > kTBase &&
      b < kTBase + kTCount)
    return a + (b - kTBase);
  const uint64_t key = (uint64_t{a} << 21) | b;
  auto it = std::lower_bound(std::begin(kComposition), std::end(kComposition), key,
                             [](const Composition& c, uint64_t v) { return c.key < v; });
  return it != std::end(kComposition) && it->key == key ? it->composite : 0;
}

void normalize_run(std::string_view run, std::string& out) {
  std::vector<uint32_t> cps;
  for (size_t pos = 0; pos < run.size();) {
    const size_t len = utf8_sequence_length(run, pos);
    decompose(decode_utf8(run, pos, len), cps);
    pos += len;
  }
  std::vector<int> classes(cps.size());
  for (size_t i = 0; i < cps.size(); ++i) classes[i] = combining_class(cps[i]);
  // Canonical ordering: insertion sort inside each run of non-starters (stable).
  for (size_t i = 1; i < cps.size(); ++i)
    for (size_t j = i; j > 0 && classes[j] != 0 && classes[j - 1] > classes[j]; --j) {
      std::swap(cps[j], cps[j - 1]);
      std::swap(classes[j], classes[j - 1]);
    }
  // Canonical composition.
  std::vector<uint32_t> composed;
  composed.reserve(cps.size());
  size_t starter = 0;
  bool has_starter = false;
  int last_class = -1;  // class of the last character kept after the starter (-1: none yet)
  for (size_t i = 0; i < cps.size(); ++i) {
    const int cc = classes[i];
    if (has_starter && (last_class == -1 || (last_class != 0 && last_class < cc))) {
      if (uint32_t c = compose(composed[starter], cps[i]); c != 0) {
        composed[starter] = c;
        continue;
      }
    }
    if (cc == 0) {
      starter = composed.size();
      has_starter = true;
      last_class = -1;
    } else {
      last_class = cc;
    }
    composed.push_back(cps[i]);
  }
  for (uint32_t cp : composed) append_utf8(out, cp);
}

}  // namespace

std::string nfc(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t pos = 0;
  while (pos < s.size()) {
    // A maximal run of valid UTF-8 is normalized whole (a base and its marks stay together).
    const size_t end = utf8_valid_run_end(s, pos);
    if (end > pos) {
      std::string_view run = s.substr(pos, end - pos);
      if (std::all_of(run.begin(), run.end(), [](char c) { return static_cast<unsigned char>(c) < 0x80; }))
        out.append(run);  // ASCII text is NFC
      else
        normalize_run(run, out);
      pos = end;
    } else {
      out.push_back(s[pos++]);  // not UTF-8: kept as is
    }
  }
  return out;
}

const char* nfc_unicode_version() { return kUnicodeVersion; }

}  // namespace condense
