// Atomic replacement of a file: write to a temporary sibling, fsync it, rename it over the
// target, fsync the directory. A crash at any point leaves either the old file or the new
// one, never a torn file.
#pragma once
#include <functional>
#include <string>

namespace condense {

// Calls write(tmp_path) to produce the new content, then publishes it at `path`.
// If write throws, the temporary file is removed and the target is untouched.
void write_file_atomically(const std::string& path,
                           const std::function<void(const std::string& tmp_path)>& write);
// Convenience for small text files (the "latest" pointer, JSON).
void write_text_atomically(const std::string& path, const std::string& text);
void fsync_path(const std::string& path);  // file or directory
std::string read_text_file(const std::string& path);  // throws naming the file

}  // namespace condense
