// Corpus readers. GCIDE is split with its dictd index (headword, base64 offset, base64 length
// per line): splitting on layout alone misfires on GCIDE's stray unindented "[1913 Webster]"
// lines and on the banner that runs straight into the first entry. The index gives exact entry
// boundaries; the 00-database-* entries (header, licence banner) and their aliases are skipped.
#include "data/corpus.h"

#include <zlib.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <filesystem>
#include <string_view>
#include <utility>

#include "core/error.h"
#include "core/log.h"
#include "io/atomic_file.h"

namespace condense {
namespace fs = std::filesystem;
namespace {

std::string_view trim_trailing(std::string_view s) {
  size_t end = s.find_last_not_of(" \t\r\n");
  return end == std::string_view::npos ? std::string_view() : s.substr(0, end + 1);
}

// Valid UTF-8 stays as is; each invalid byte becomes U+FFFD (GCIDE has a few stray cp1252
// bytes), so every document is valid UTF-8 and decode(encode(doc)) == doc holds.
std::string to_utf8(std::string_view s) {
  auto cont = [&](size_t i) { return i < s.size() && (static_cast<uint8_t>(s[i]) & 0xC0) == 0x80; };
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    uint8_t c = static_cast<uint8_t>(s[i]);
    size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    bool ok = n > 0 && (n < 2 || c >= 0xC2) && (n < 4 || c <= 0xF4);
    for (size_t k = 1; ok && k < n; ++k) ok = cont(i + k);
    if (ok && n == 3) {
      uint8_t d = static_cast<uint8_t>(s[i + 1]);
      ok = !(c == 0xE0 && d < 0xA0) && !(c == 0xED && d >= 0xA0);  // overlong, surrogate
    }
    if (ok && n == 4) {
      uint8_t d = static_cast<uint8_t>(s[i + 1]);
      ok = !(c == 0xF0 && d < 0x90) && !(c == 0xF4 && d >= 0x90);
    }
    if (ok) {
      out.append(s.data() + i, n);
      i += n;
    } else {
      out.append("\xEF\xBF\xBD");
      i += 1;
    }
  }
  return out;
}

// max_documents > 0 keeps n items spread evenly over the corpus, in corpus order: item
// floor(i * size / n) for i < n. The first n would be a slice of it (GCIDE's entries are in
// alphabetical order, so the first n are the start of the alphabet), and a store shrunk for a
// quick run should read like the whole corpus. Deterministic, so the store is reproducible.
template <typename T>
std::vector<T> evenly_spaced(std::vector<T> items, int64_t n) {
  const auto size = static_cast<int64_t>(items.size());
  if (n <= 0 || n >= size) return items;
  std::vector<T> kept;
  kept.reserve(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) kept.push_back(std::move(items[static_cast<size_t>(i * size / n)]));
  return kept;
}

// Keeps a document without its leading blank lines and trailing whitespace.
void add_document(std::vector<std::string>& docs, std::string_view text) {
  text = trim_trailing(text);
  size_t first = text.find_first_not_of(" \t\r\n");
  if (first == std::string_view::npos) return;
  size_t line_start = text.rfind('\n', first);
  if (line_start != std::string_view::npos) text.remove_prefix(line_start + 1);
  if (text.empty()) return;
  bool ascii = std::all_of(text.begin(), text.end(), [](char c) { return (c & 0x80) == 0; });
  docs.push_back(ascii ? std::string(text) : to_utf8(text));
}

std::string read_gzip(const std::string& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  CONDENSE_CHECK(f != nullptr, "{}: cannot open", path);
  gzbuffer(f, 1 << 20);
  std::string out;
  std::vector<char> chunk(1 << 22);
  while (true) {
    int n = gzread(f, chunk.data(), static_cast<unsigned>(chunk.size()));
    if (n < 0) {
      int err = 0;
      std::string msg = gzerror(f, &err);
      gzclose(f);
      fail("{}: gzip read error: {}", path, msg);
    }
    if (n == 0) break;
    out.append(chunk.data(), n);
  }
  gzclose(f);
  return out;
}

int64_t decode_b64(std::string_view s, const std::string& where) {
  CONDENSE_CHECK(!s.empty() && s.size() <= 10, "{}: bad base64 number '{}'", where, s);
  int64_t v = 0;
  for (char c : s) {
    int d = c >= 'A' && c <= 'Z' ? c - 'A' : c >= 'a' && c <= 'z' ? c - 'a' + 26
          : c >= '0' && c <= '9' ? c - '0' + 52 : c == '+' ? 62 : c == '/' ? 63 : -1;
    CONDENSE_CHECK(d >= 0, "{}: bad base64 number '{}'", where, s);
    v = v * 64 + d;
  }
  return v;
}

std::string gcide_index_path(const std::string& dict_path) {
  for (const char* suffix : {".dict.dz", ".dict"}) {
    std::string_view p(dict_path), sfx(suffix);
    if (p.size() > sfx.size() && p.substr(p.size() - sfx.size()) == sfx)
      return std::string(p.substr(0, p.size() - sfx.size())) + ".index";
  }
  fail("{}: expected a dictd file named *.dict.dz or *.dict (with its .index alongside)",
       dict_path);
}

std::vector<std::string> read_gcide(const std::string& path) {
  std::string index_path = gcide_index_path(path);
  CONDENSE_CHECK(fs::is_regular_file(index_path), "{}: missing dictd index {} next to it", path,
                 index_path);
  std::string text = read_gzip(path);
  std::string index = read_text_file(index_path);
  // (offset, length) of each entry; headwords sharing an entry give duplicate pairs.
  std::vector<std::pair<int64_t, int64_t>> entries, header_entries;
  size_t pos = 0;
  int64_t line_no = 0;
  while (pos < index.size()) {
    size_t end = index.find('\n', pos);
    if (end == std::string::npos) end = index.size();
    std::string_view line(index.data() + pos, end - pos);
    pos = end + 1;
    ++line_no;
    if (line.empty()) continue;
    size_t t1 = line.find('\t'), t2 = line.find('\t', t1 + 1);
    std::string where = fmt::format("{} line {}", index_path, line_no);
    CONDENSE_CHECK(t1 != std::string_view::npos && t2 != std::string_view::npos,
                   "{}: expected 'headword<TAB>offset<TAB>length'", where);
    std::string_view head = line.substr(0, t1);
    bool header = head.substr(0, 11) == "00-database" || head.substr(0, 10) == "00database";
    size_t t3 = line.find('\t', t2 + 1);  // some indexes carry a 4th column
    int64_t off = decode_b64(line.substr(t1 + 1, t2 - t1 - 1), where);
    int64_t len = decode_b64(line.substr(t2 + 1, t3 == std::string_view::npos ? t3 : t3 - t2 - 1),
                             where);
    CONDENSE_CHECK(off + len <= static_cast<int64_t>(text.size()),
                   "{}: entry [{}, {}) lies past the end of {} ({} bytes): index and dictionary "
                   "do not match", where, off, off + len, path, text.size());
    (header ? header_entries : entries).emplace_back(off, len);
  }
  std::sort(entries.begin(), entries.end());
  entries.erase(std::unique(entries.begin(), entries.end()), entries.end());
  // Header entries also carry alias headwords (00-gcide-*, 00-web1913-*): drop by position.
  std::sort(header_entries.begin(), header_entries.end());
  entries.erase(std::remove_if(entries.begin(), entries.end(),
                               [&](const std::pair<int64_t, int64_t>& e) {
                                 return std::binary_search(header_entries.begin(),
                                                           header_entries.end(), e);
                               }),
                entries.end());
  std::vector<std::string> docs;
  docs.reserve(entries.size());
  for (const auto& [off, len] : entries) add_document(docs, std::string_view(text).substr(off, len));
  return docs;
}

void split_fortunes(const std::string& text, std::vector<std::string>& docs) {
  size_t start = 0, pos = 0;
  while (pos <= text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    std::string_view line = trim_trailing(std::string_view(text).substr(pos, end - pos));
    if (line == "%") {
      add_document(docs, std::string_view(text).substr(start, pos - start));
      start = end + 1;
    }
    pos = end + 1;
  }
  if (start < text.size()) add_document(docs, std::string_view(text).substr(start));
}

std::vector<std::string> read_fortunes(const std::string& path) {
  std::vector<fs::path> files;
  for (const fs::directory_entry& e : fs::directory_iterator(path)) {
    std::string ext = e.path().extension().string();
    if (e.is_symlink() || !e.is_regular_file() || !ext.empty()) continue;  // .dat, .u8 -> dup
    files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());
  std::vector<std::string> docs;
  for (const fs::path& f : files) split_fortunes(read_text_file(f.string()), docs);
  return docs;
}

std::vector<std::string> read_dir(const std::string& path) {
  std::vector<fs::path> files;
  for (const fs::directory_entry& e : fs::recursive_directory_iterator(path)) {
    std::string ext = e.path().extension().string();
    for (char& c : ext) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (e.is_regular_file() && (ext == ".txt" || ext == ".md")) files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());
  std::vector<std::string> docs;
  for (const fs::path& f : files) add_document(docs, read_text_file(f.string()));
  return docs;
}

}  // namespace

std::string default_corpus_path(const std::string& kind) {
  if (kind == "gcide") return "/usr/share/dictd/gcide.dict.dz";
  if (kind == "fortunes") return "/usr/share/games/fortunes";
  return "";
}

std::vector<std::string> read_corpus(const CorpusSpec& spec) {
  const std::string& kind = spec.kind;
  CONDENSE_CHECK(kind == "gcide" || kind == "fortunes" || kind == "dir",
                 "unknown corpus kind '{}' (valid: gcide|fortunes|dir)", kind);
  std::string path = spec.path.empty() ? default_corpus_path(kind) : spec.path;
  CONDENSE_CHECK(!path.empty(), "corpus kind '{}' needs a path", kind);
  CONDENSE_CHECK(spec.max_documents >= 0, "corpus: max_documents {} must be >= 0 (0: all)",
                 spec.max_documents);
  auto start = std::chrono::steady_clock::now();
  std::vector<std::string> docs;
  if (kind == "gcide") {
    CONDENSE_CHECK(fs::is_regular_file(path),
                   "gcide corpus: {}: no such file (install Debian's dict-gcide)", path);
    docs = read_gcide(path);
  } else {
    CONDENSE_CHECK(fs::is_directory(path), "{} corpus: {}: {}", kind, path,
                   fs::exists(path) ? "not a directory (this corpus reads a directory of text files)"
                                    : "no such directory");
    docs = kind == "fortunes" ? read_fortunes(path) : read_dir(path);
  }
  const size_t read = docs.size();
  docs = evenly_spaced(std::move(docs), spec.max_documents);
  CONDENSE_CHECK(!docs.empty(), "{} corpus: {}: no documents found", kind, path);
  size_t bytes = 0;
  for (const std::string& d : docs) bytes += d.size();
  double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  spdlog::info("corpus {}: {} documents{}, {:.1f} MB from {} in {:.2f} s", kind, docs.size(),
               docs.size() < read ? fmt::format(" (an evenly spaced sample of {})", read) : "",
               bytes / 1e6, path, seconds);
  return docs;
}

}  // namespace condense
