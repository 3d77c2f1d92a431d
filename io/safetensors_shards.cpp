#include "io/safetensors_shards.h"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/atomic_file.h"

namespace condense {
namespace fs = std::filesystem;

std::vector<std::string> write_safetensors_shards(
    const std::string& dir, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
    uint64_t max_shard_bytes) {
  std::vector<std::vector<std::pair<std::string, at::Tensor>>> groups(1);
  uint64_t total = 0, current = 0;
  for (const auto& nt : tensors) {
    uint64_t bytes = nt.second.nbytes();
    if (!groups.back().empty() && current + bytes > max_shard_bytes) {
      groups.emplace_back();
      current = 0;
    }
    groups.back().push_back(nt);
    current += bytes;
    total += bytes;
  }
  std::vector<std::string> written;
  if (groups.size() == 1) {
    write_safetensors((fs::path(dir) / "model.safetensors").string(), groups[0]);
    written.push_back("model.safetensors");
    return written;
  }
  nlohmann::ordered_json map = nlohmann::ordered_json::object();
  for (size_t i = 0; i < groups.size(); ++i) {
    std::string name = fmt::format("model-{:05d}-of-{:05d}.safetensors", i + 1, groups.size());
    write_safetensors((fs::path(dir) / name).string(), groups[i]);
    for (const auto& nt : groups[i]) map[nt.first] = name;
    written.push_back(name);
  }
  nlohmann::ordered_json index = {{"metadata", {{"total_size", total}}}, {"weight_map", map}};
  write_text_atomically((fs::path(dir) / "model.safetensors.index.json").string(),
                        index.dump(2) + "\n");
  written.push_back("model.safetensors.index.json");
  return written;
}

SafetensorsShards SafetensorsShards::open(const std::string& dir) {
  SafetensorsShards s;
  s.dir_ = dir;
  fs::path index_path = fs::path(dir) / "model.safetensors.index.json";
  fs::path single = fs::path(dir) / "model.safetensors";
  // Both present (transformers' save_pretrained leaves an old index behind when it re-saves a
  // sharded model unsharded): model.safetensors is what transformers loads, so it is read here.
  if (!fs::exists(index_path) || fs::exists(single)) {
    CONDENSE_CHECK(fs::exists(single), "{}: no model.safetensors or model.safetensors.index.json",
                   dir);
    s.files_.push_back(SafetensorsFile::open(single.string()));
    for (const auto& e : s.files_[0].entries()) s.where_[e.name] = 0;
    return s;
  }
  nlohmann::json index;
  try {
    index = nlohmann::json::parse(read_text_file(index_path.string()));
  } catch (const nlohmann::json::exception& e) {
    fail("{}: not valid JSON: {}", index_path.string(), e.what());
  }
  CONDENSE_CHECK(index.is_object() && index.contains("weight_map") && index["weight_map"].is_object(),
                 "{}: missing 'weight_map' object", index_path.string());
  std::map<std::string, size_t> file_index;
  for (auto it = index["weight_map"].begin(); it != index["weight_map"].end(); ++it) {
    CONDENSE_CHECK(it.value().is_string(), "{}: weight_map['{}'] is not a file name",
                   index_path.string(), it.key());
    std::string file = it.value().get<std::string>();
    CONDENSE_CHECK(!file.empty() && file.find('/') == std::string::npos && file != "." && file != "..",
                   "{}: weight_map['{}'] = '{}' is not a file name in this directory",
                   index_path.string(), it.key(), file);
    if (!file_index.count(file)) {
      fs::path p = fs::path(dir) / file;
      CONDENSE_CHECK(fs::exists(p), "{}: shard {} is missing (it holds tensor '{}')",
                     index_path.string(), p.string(), it.key());
      file_index[file] = s.files_.size();
      s.files_.push_back(SafetensorsFile::open(p.string()));
    }
    size_t fi = file_index[file];
    CONDENSE_CHECK(s.files_[fi].has(it.key()), "{}: tensor '{}' is listed in the index but absent "
                   "from the shard", s.files_[fi].path(), it.key());
    s.where_[it.key()] = fi;
  }
  for (size_t fi = 0; fi < s.files_.size(); ++fi)
    for (const auto& e : s.files_[fi].entries()) {
      auto it = s.where_.find(e.name);
      CONDENSE_CHECK(it != s.where_.end(), "{}: tensor '{}' is not listed in {}",
                     s.files_[fi].path(), e.name, index_path.string());
      CONDENSE_CHECK(it->second == fi, "{}: tensor '{}' also appears in {}", s.files_[fi].path(),
                     e.name, s.files_[it->second].path());
    }
  return s;
}

std::vector<std::string> SafetensorsShards::names() const {
  std::vector<std::string> out;
  for (const auto& kv : where_) out.push_back(kv.first);
  return out;
}

const SafetensorsFile& SafetensorsShards::shard(const std::string& name) const {
  auto it = where_.find(name);
  CONDENSE_CHECK(it != where_.end(), "{}: no tensor '{}' in any shard", dir_, name);
  return files_[it->second];
}

const SafetensorsEntry& SafetensorsShards::entry(const std::string& name) const {
  return shard(name).entry(name);
}
const std::string& SafetensorsShards::file_of(const std::string& name) const {
  return shard(name).path();
}
at::Tensor SafetensorsShards::tensor(const std::string& name) const {
  return shard(name).tensor(name);
}

uint64_t SafetensorsShards::total_bytes() const {
  uint64_t total = 0;
  for (const auto& f : files_)
    for (const auto& e : f.entries()) total += e.end - e.begin;
  return total;
}

}  // namespace condense
