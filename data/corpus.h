// Corpus readers: turn a source of real text into a list of documents, always in the same
// order, so that tokenizers, splits and token stores built from it are reproducible.
//   gcide     Debian dict-gcide (dictzip = gzip); one document per dictionary entry, entries
//             located through the dictd index that sits next to the .dict.dz file.
//   fortunes  a fortune directory; one document per fortune (entries separated by "%").
//   dir       every .txt and .md file under a directory, sorted by path; one document per file.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace condense {

struct CorpusSpec {
  std::string kind;           // gcide | fortunes | dir
  std::string path;           // empty: the kind's default (required for dir)
  int64_t max_documents = 0;  // > 0: keep N documents spread evenly over the corpus
};

// Default location of a corpus kind ("" for kinds without one).
std::string default_corpus_path(const std::string& kind);

// Reads the corpus. Documents are non-empty and keep their text faithfully (only trailing
// whitespace is trimmed). Throws naming the kind or path on an unknown kind, a missing path,
// an unreadable file or an empty corpus.
std::vector<std::string> read_corpus(const CorpusSpec& spec);

}  // namespace condense
