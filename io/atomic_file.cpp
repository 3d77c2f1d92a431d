#include "io/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "core/error.h"

namespace condense {

void fsync_path(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY);
  CONDENSE_CHECK(fd >= 0, "cannot open {} to fsync: {}", path, std::strerror(errno));
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  CONDENSE_CHECK(rc == 0, "fsync {} failed: {}", path, std::strerror(err));
}

void check_new_output(const std::string& path) {
  namespace fs = std::filesystem;
  CONDENSE_CHECK(!fs::exists(path), "{}: already exists; refusing to overwrite it", path);
  const fs::path parent = fs::absolute(path).parent_path();
  CONDENSE_CHECK(fs::is_directory(parent), "{}: directory {} does not exist", path, parent.string());
  CONDENSE_CHECK(::access(parent.c_str(), W_OK) == 0, "{}: directory {} is not writable ({})", path,
                 parent.string(), std::strerror(errno));
}

void check_creatable_dir(const std::string& dir, const std::string& key) {
  namespace fs = std::filesystem;
  fs::path p = fs::absolute(dir);
  while (!fs::exists(p) && p.has_parent_path() && p != p.parent_path()) p = p.parent_path();
  CONDENSE_CHECK(fs::is_directory(p), "{}={}: cannot create it, {} is not a directory", key, dir,
                 p.string());
  CONDENSE_CHECK(::access(p.c_str(), W_OK) == 0, "{}={}: {} is not writable ({})", key, dir,
                 p.string(), std::strerror(errno));
}

void write_file_atomically(const std::string& path,
                           const std::function<void(const std::string&)>& write) {
  namespace fs = std::filesystem;
  fs::path target(path);
  fs::path dir = target.has_parent_path() ? target.parent_path() : fs::path(".");
  std::string tmp = (dir / ("." + target.filename().string() + ".tmp." +
                            std::to_string(::getpid()))).string();
  try {
    write(tmp);
    fsync_path(tmp);
  } catch (...) {
    std::error_code ec;
    fs::remove(tmp, ec);
    throw;
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    std::error_code ec;
    fs::remove(tmp, ec);
    fail("cannot rename {} to {}: {}", tmp, path, std::strerror(err));
  }
  fsync_path(dir.string());
}

void write_text_atomically(const std::string& path, const std::string& text) {
  write_file_atomically(path, [&](const std::string& tmp) {
    errno = 0;
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    CONDENSE_CHECK(out.good(), "cannot write {}: {}", tmp,
                   errno ? std::strerror(errno) : "cannot create the file");
    out << text;
    out.close();
    CONDENSE_CHECK(out.good(), "error writing {}: {}", tmp,
                   errno ? std::strerror(errno) : "write failed");
  });
}

std::string read_text_file(const std::string& path) {
  CONDENSE_CHECK(!std::filesystem::is_directory(path), "cannot read {}: it is a directory, "
                 "expected a file", path);
  std::ifstream in(path, std::ios::binary);
  CONDENSE_CHECK(in.good(), "cannot read {}: {}", path,
                 std::filesystem::exists(path) ? "permission or I/O error" : "no such file");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace condense
