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
// Refuses, before any work, an output file that cannot be published at `path`: one that exists
// already (condense never overwrites a user's file: a refused command changes nothing) or
// whose directory is missing, not a directory, or not writable. Throws naming `path`.
void check_new_output(const std::string& path);
// Refuses, before anything is written, a directory that cannot be created or written: its
// nearest existing ancestor must be a writable directory (a file in the way or a read-only
// parent would otherwise fail at the first checkpoint, after the run directory was made).
// `key` names the setting in the message ("checkpoint.dir").
void check_creatable_dir(const std::string& dir, const std::string& key);
std::string read_text_file(const std::string& path);  // throws naming the file

}  // namespace condense
