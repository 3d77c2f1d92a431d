#include "compressors/context_documents.h"

#include <ATen/ATen.h>

#include <algorithm>

#include "core/error.h"
#include "core/shape.h"
#include "io/hdf5_file.h"

namespace condense {
namespace {

constexpr const char* kFormat = "condense-documents/1";

// The texts of `group`/bytes cut at `group`/offsets, checked against `count` (-1: any).
std::vector<std::string> read_texts(const H5File& f, const std::string& group, int64_t count) {
  const std::string bytes_name = group + "/bytes", offsets_name = group + "/offsets";
  CONDENSE_CHECK(f.has(bytes_name) && f.has(offsets_name), "{}: missing '{}' or '{}' (write the file "
                 "with tools/embed_documents.py)", f.path(), bytes_name, offsets_name);
  at::Tensor bytes = f.read_tensor(bytes_name), offsets = f.read_tensor(offsets_name);
  CONDENSE_CHECK(bytes.dim() == 1 && bytes.scalar_type() == at::kByte, "{}: '{}' must be 1-D uint8, "
                 "got {} {}", f.path(), bytes_name, c10::toString(bytes.scalar_type()), shape_str(bytes.sizes()));
  CONDENSE_CHECK(offsets.dim() == 1 && offsets.size(0) >= 2 && !at::isFloatingType(offsets.scalar_type()),
                 "{}: '{}' must be 1-D integers [N + 1] with N >= 1, got {}", f.path(), offsets_name,
                 shape_str(offsets.sizes()));
  offsets = offsets.to(at::kLong).contiguous();
  const int64_t n = offsets.size(0) - 1, total = bytes.size(0);
  CONDENSE_CHECK(count < 0 || n == count, "{}: '{}' holds {} entries, expected {} (one per embedding)",
                 f.path(), offsets_name, n, count);
  const int64_t* o = offsets.data_ptr<int64_t>();
  CONDENSE_CHECK(o[0] == 0 && o[n] == total, "{}: '{}' must start at 0 and end at {} (the bytes' "
                 "length), got {} .. {}", f.path(), offsets_name, total, o[0], o[n]);
  const char* b = total > 0 ? reinterpret_cast<const char*>(bytes.data_ptr<uint8_t>()) : "";
  for (int64_t i = 0; i < n; ++i)  // all checked before any is read: every span lies in the bytes
    CONDENSE_CHECK(o[i] <= o[i + 1], "{}: '{}' decreases at entry {} ({} > {})", f.path(), offsets_name,
                   i, o[i], o[i + 1]);
  std::vector<std::string> out;
  out.reserve(n);
  for (int64_t i = 0; i < n; ++i) out.emplace_back(b + o[i], static_cast<size_t>(o[i + 1] - o[i]));
  return out;
}

std::vector<int64_t> cut(const std::vector<int32_t>& ids, int64_t max_len) {
  const size_t n = std::min(ids.size(), static_cast<size_t>(max_len));
  return std::vector<int64_t>(ids.begin(), ids.begin() + n);
}

}  // namespace

DocumentSet DocumentSet::read(const std::string& path) {
  H5File f = H5File::open_read(path);
  CONDENSE_CHECK(f.has_attr("", "format") && f.attr_string("", "format") == kFormat,
                 "{}: not a documents file (root attribute format must be '{}'); write one with "
                 "tools/embed_documents.py", path, kFormat);
  CONDENSE_CHECK(f.has("embeddings"), "{}: missing dataset 'embeddings' [N, d]", path);
  DocumentSet s;
  s.path = path;
  s.embedding_model = f.has_attr("", "embedding_model") ? f.attr_string("", "embedding_model") : "";
  at::Tensor e = f.read_tensor("embeddings");
  CONDENSE_CHECK(e.dim() == 2 && e.size(0) >= 1 && e.size(1) >= 1 && at::isFloatingType(e.scalar_type()),
                 "{}: 'embeddings' must be floating [N, d] with N, d >= 1, got {} {}", path,
                 c10::toString(e.scalar_type()), shape_str(e.sizes()));
  s.embeddings = e.to(at::kFloat).contiguous();
  CONDENSE_CHECK(at::isfinite(s.embeddings).all().item<bool>(), "{}: 'embeddings' holds NaN or Inf", path);
  s.texts = read_texts(f, "documents", e.size(0));
  if (f.has("answers/offsets") || f.has("answers/bytes")) s.answers = read_texts(f, "answers", e.size(0));
  return s;
}

std::vector<int32_t> word_initial_ids(const Tokenizer& tok, const std::string& text) {
  const size_t first = text.find_first_not_of(' ');
  if (first == std::string::npos) return {};
  const std::string word = text.substr(first);
  if (word[0] == '\n' || word[0] == '\r' || word[0] == '\t' || tok.kind() != "bpe") return tok.encode(word);
  return tok.encode(" " + word);
}

TokenizedDocuments tokenize_documents(const DocumentSet& set, const Tokenizer& tok, int64_t begin,
                                      int64_t end, int64_t max_text, int64_t max_answer) {
  CONDENSE_CHECK(0 <= begin && begin < end && end <= set.size(), "{}: documents [{}, {}) are outside "
                 "its {} documents", set.path, begin, end, set.size());
  CONDENSE_CHECK(max_text >= 1 && max_answer >= 1, "document lengths must be >= 1 (got {} and {})",
                 max_text, max_answer);
  TokenizedDocuments out;
  out.embeddings = set.embeddings.narrow(0, begin, end - begin);
  for (int64_t i = begin; i < end; ++i) {
    out.texts.push_back(cut(word_initial_ids(tok, set.texts[i]), max_text));
    CONDENSE_CHECK(!out.texts.back().empty(), "{}: document {} is empty", set.path, i);
    if (!set.has_answers()) continue;
    out.answers.push_back(cut(word_initial_ids(tok, set.answers[i]), max_answer));
    CONDENSE_CHECK(!out.answers.back().empty(), "{}: the answer of document {} is empty", set.path, i);
  }
  return out;
}

at::Tensor document_stream(const TokenizedDocuments& docs, int64_t window, int32_t pad) {
  at::Tensor s = at::full({docs.size() * window + 1}, pad, at::kInt);
  int32_t* p = s.data_ptr<int32_t>();
  for (int64_t i = 0; i < docs.size(); ++i) {
    const std::vector<int64_t>& t = docs.texts[i];
    const int64_t n = std::min<int64_t>(static_cast<int64_t>(t.size()), window);
    std::copy(t.begin(), t.begin() + n, p + i * window);
  }
  return s;
}

at::Tensor padded_rows(const std::vector<std::vector<int64_t>>& ids, const at::Tensor& rows, int64_t pad) {
  at::Tensor r = rows.to(at::kCPU, at::kLong).contiguous();
  const int64_t b = r.size(0);
  size_t longest = 0;
  for (int64_t i = 0; i < b; ++i) {
    const int64_t row = r.data_ptr<int64_t>()[i];
    CONDENSE_CHECK(row >= 0 && row < static_cast<int64_t>(ids.size()), "row {} is outside the {} documents",
                   row, ids.size());
    longest = std::max(longest, ids[row].size());
  }
  at::Tensor out = at::full({b, static_cast<int64_t>(longest)}, pad, at::kLong);
  for (int64_t i = 0; i < b; ++i) {
    const std::vector<int64_t>& t = ids[r.data_ptr<int64_t>()[i]];
    std::copy(t.begin(), t.end(), out.data_ptr<int64_t>() + i * static_cast<int64_t>(longest));
  }
  return out;
}

}  // namespace condense
