#include "trainer/checkpoint.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <unistd.h>

#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <spdlog/spdlog.h>

#include "core/error.h"
#include "core/finite.h"
#include "core/shape.h"
#include "io/atomic_file.h"

namespace condense {
namespace fs = std::filesystem;
namespace {

constexpr const char* kFormat = "condense-checkpoint-v1";

bool is_model_tensor(const std::string& name) {
  return name.rfind("model.", 0) == 0 || name.rfind("lm_head.", 0) == 0;
}

std::vector<std::pair<int64_t, std::string>> list_checkpoints(const std::string& dir) {
  std::vector<std::pair<int64_t, std::string>> out;
  if (!fs::is_directory(dir)) return out;
  static const std::regex pattern("step_([0-9]+)\\.h5");
  for (const auto& e : fs::directory_iterator(dir)) {
    std::smatch m;
    std::string name = e.path().filename().string();
    if (std::regex_match(name, m, pattern)) out.emplace_back(std::stoll(m[1]), e.path().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

CheckpointManager::CheckpointManager(std::string dir, int64_t keep)
    : dir_(std::move(dir)), keep_(keep) {}

void CheckpointManager::remove_stale_temporaries() const {
  // A process killed while writing leaves .step_NNNNNN.h5.tmp.<pid> (io/atomic_file.h). One
  // writer per directory (rank 0 of one job, holding the run lock on it: recipes/run_setup.cpp),
  // so any such file not this process's is stale.
  static const std::regex pattern("\\.step_[0-9]+\\.h5\\.tmp\\.([0-9]+)");
  const std::string mine = std::to_string(::getpid());
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir_, ec)) {
    std::smatch m;
    const std::string name = e.path().filename().string();
    if (!std::regex_match(name, m, pattern) || m[1] == mine) continue;
    fs::remove(e.path(), ec);
    if (ec) spdlog::warn("could not remove {} (left by an interrupted checkpoint): {}",
                         e.path().string(), ec.message());
    else spdlog::info("removed {}, left by an interrupted checkpoint", e.path().string());
  }
}

void write_checkpoint(const std::string& path, LlamaForCausalLM& model, const Optimizer* optimizer,
                      const TrainingState& st, const std::string& recipe_yaml,
                      const std::string& tokenizer_bytes,
                      const std::map<std::string, at::Tensor>& extra) {
  // Refuse before writing anything when the filesystem cannot hold the file: HDF5 running out
  // of space halfway leaves a file it cannot close (io/hdf5_file.cpp).
  int64_t bytes = 64 * 1024 + static_cast<int64_t>(recipe_yaml.size() + tokenizer_bytes.size());
  for (const auto& p : model->named_parameters()) bytes += p.value().nbytes();
  if (optimizer)
    for (const auto& [key, t] : optimizer->state()) bytes += t.nbytes();
  for (const auto& [name, t] : extra) bytes += t.nbytes();
  const fs::path dir = fs::path(path).has_parent_path() ? fs::path(path).parent_path() : fs::path(".");
  std::error_code ec;
  const fs::space_info space = fs::space(dir, ec);
  CONDENSE_CHECK(ec || static_cast<int64_t>(space.available) >= bytes,
                 "cannot write checkpoint {}: it needs about {:.1f} MB and {} has {:.1f} MB free; "
                 "free space, lower checkpoint.keep or point checkpoint.dir elsewhere (nothing was "
                 "written; the previous checkpoints are intact)",
                 path, bytes / 1e6, dir.string(), space.available / 1e6);
  write_file_atomically(path, [&](const std::string& tmp) {
    H5File f = H5File::create(tmp);
    for (const auto& p : model->named_parameters()) f.write_tensor(p.key(), p.value());
    // Fault injection for tests/python/test_kill_resume.py: killed halfway through the file of
    // step CONDENSE_TEST_KILL_IN_CHECKPOINT (the temporary file stays behind, as after a crash).
    if (const char* kill_at = std::getenv("CONDENSE_TEST_KILL_IN_CHECKPOINT"))
      if (std::atoll(kill_at) == st.step) std::raise(SIGKILL);
    if (optimizer)
      for (const auto& [key, t] : optimizer->state()) f.write_tensor("optimizer/" + key, t);
    at::Tensor rng;
    {
      auto gen = at::detail::getDefaultCPUGenerator();
      std::lock_guard<std::mutex> lock(gen.mutex());
      rng = gen.get_state();
    }
    f.write_tensor("rng/torch_cpu", rng);
    for (const auto& [name, t] : extra) f.write_tensor(name, t);
    f.write_string("recipe", recipe_yaml);
    f.write_string("config", to_hf_json(model->config()).dump(2));
    f.write_bytes("tokenizer", tokenizer_bytes);
    f.set_attr("", "format", std::string(kFormat));
    f.set_attr("", "step", st.step);
    f.set_attr("", "tokens_seen", st.tokens_seen);
    f.set_attr("", "loader_epoch", st.cursor.epoch);
    f.set_attr("", "loader_position", st.cursor.position);
    if (st.world_size > 0) f.set_attr("", "world_size", st.world_size);
    if (!st.data_split.empty()) f.set_attr("", "data_split", st.data_split);
    f.close();
  });
}

std::string CheckpointManager::save(LlamaForCausalLM& model, const Optimizer* optimizer,
                                    const TrainingState& st, const std::string& recipe_yaml,
                                    const std::string& tokenizer_bytes,
                                    const std::map<std::string, at::Tensor>& extra) {
  fs::create_directories(dir_);
  remove_stale_temporaries();
  std::string name = fmt::format("step_{:06d}.h5", st.step);
  std::string path = (fs::path(dir_) / name).string();
  write_checkpoint(path, model, optimizer, st, recipe_yaml, tokenizer_bytes, extra);
  try {
    write_text_atomically((fs::path(dir_) / "latest").string(), name + "\n");
  } catch (const Error&) {
    // Unless the rename went through and only the directory's fsync failed, `latest` still
    // names the previous checkpoint: take back the one it does not know, so that no checkpoint
    // newer than `latest` is left behind for a resumed run to find.
    std::error_code ec;
    std::string named;
    try {
      named = read_text_file((fs::path(dir_) / "latest").string());
    } catch (const Error&) {
    }
    if (named.rfind(name, 0) != 0) fs::remove(path, ec);
    throw;
  }
  // Keep the newest `keep` up to this step. Files of later steps belong to a future this run
  // abandoned (it resumed from an earlier checkpoint, e.g. after `latest` could not be written):
  // they are neither counted nor removed here, and this run replaces them as it reaches them.
  std::vector<std::pair<int64_t, std::string>> older;
  for (auto& c : list_checkpoints(dir_)) {
    if (c.first < st.step) older.push_back(std::move(c));
    else if (c.first > st.step && warned_newer_.insert(c.second).second)
      spdlog::warn("{} is newer than this run's step {} (left by a run resumed from an earlier "
                   "checkpoint); kept, and replaced when this run reaches that step", c.second, st.step);
  }
  for (size_t i = 0; i + keep_ < older.size() + 1; ++i) {
    std::error_code ec;
    fs::remove(older[i].second, ec);
    if (ec) spdlog::warn("could not remove old checkpoint {}: {}", older[i].second, ec.message());
  }
  return path;
}

std::optional<std::string> CheckpointManager::latest() const {
  fs::path pointer = fs::path(dir_) / "latest";
  if (fs::exists(pointer)) {
    std::string name = read_text_file(pointer.string());
    while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
    if (name.empty()) {
      // Written atomically, so only a hand edit or a damaged disk empties it: the newest
      // checkpoint of the directory is what it named.
      spdlog::warn("{} is empty; using the newest step_*.h5 in {}", pointer.string(), dir_);
    } else {
      fs::path p = fs::path(dir_) / name;
      CONDENSE_CHECK(fs::exists(p), "{} points at {}, which does not exist", pointer.string(),
                     p.string());
      return p.string();
    }
  }
  auto all = list_checkpoints(dir_);
  if (all.empty()) return std::nullopt;
  return all.back().second;
}

Checkpoint Checkpoint::open(const std::string& path) {
  H5File f = H5File::open_read(path);
  CONDENSE_CHECK(f.has_attr("", "format") && f.attr_string("", "format") == kFormat,
                 "{}: not a condense checkpoint (missing or wrong 'format' attribute)", path);
  return Checkpoint(std::move(f));
}

LlamaConfig Checkpoint::config() const {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(file_.read_string("config"));
  } catch (const nlohmann::json::exception& e) {
    fail("{}: 'config' is not valid JSON: {}", file_.path(), e.what());
  }
  return from_hf_json(j, file_.path() + ":config");
}

std::string Checkpoint::recipe_yaml() const { return file_.read_string("recipe"); }
std::string Checkpoint::tokenizer_bytes() const { return file_.read_bytes("tokenizer"); }

TrainingState Checkpoint::state() const {
  TrainingState s;
  s.step = file_.attr_int("", "step");
  s.tokens_seen = file_.attr_int("", "tokens_seen");
  s.cursor.epoch = file_.attr_int("", "loader_epoch");
  s.cursor.position = file_.attr_int("", "loader_position");
  if (file_.has_attr("", "world_size")) s.world_size = file_.attr_int("", "world_size");
  if (file_.has_attr("", "data_split")) s.data_split = file_.attr_string("", "data_split");
  return s;
}

void Checkpoint::check_like(const at::Tensor& t, const at::Tensor& like, const std::string& name,
                            const char* who) const {
  CONDENSE_CHECK(t.sizes() == like.sizes(), "{}: tensor '{}' has shape {}, {} expects {}",
                 file_.path(), name, shape_str(t.sizes()), who, shape_str(like.sizes()));
  CONDENSE_CHECK(t.scalar_type() == like.scalar_type(), "{}: tensor '{}' has dtype {}, {} expects {}",
                 file_.path(), name, c10::toString(t.scalar_type()), who,
                 c10::toString(like.scalar_type()));
  check_finite(t, file_.path(), name);
}

void Checkpoint::load_model(LlamaForCausalLM& model) const {
  at::NoGradGuard no_grad;
  std::set<std::string> expected;
  for (auto& p : model->named_parameters()) {
    const std::string& name = p.key();
    expected.insert(name);
    CONDENSE_CHECK(file_.has(name), "{}: missing tensor '{}'", file_.path(), name);
    at::Tensor t = file_.read_tensor(name);
    check_like(t, p.value(), name, "the model");
    p.value().copy_(t);
  }
  for (const std::string& name : file_.datasets())
    CONDENSE_CHECK(!is_model_tensor(name) || expected.count(name),
                   "{}: unexpected tensor '{}' for this model config", file_.path(), name);
}

void Checkpoint::load_optimizer(Optimizer& optimizer) const {
  std::map<std::string, at::Tensor> state;
  for (const auto& entry : optimizer.state()) {
    const std::string& key = entry.first;
    CONDENSE_CHECK(file_.has("optimizer/" + key),
                   "{}: missing optimizer state '{}' (was the checkpoint written with another "
                   "train.optimizer?)", file_.path(), key);
    at::Tensor t = file_.read_tensor("optimizer/" + key);
    check_like(t, entry.second, "optimizer/" + key, "the optimizer");
    state[key] = t;
  }
  optimizer.load_state(state);
}

void Checkpoint::restore_rng(int rank) const {
  std::string per_rank = "rng/torch_cpu_rank" + std::to_string(rank);
  const std::string name = file_.has(per_rank) ? per_rank : "rng/torch_cpu";
  at::Tensor rng = file_.read_tensor(name);
  auto gen = at::detail::getDefaultCPUGenerator();
  std::lock_guard<std::mutex> lock(gen.mutex());
  // LibTorch's own check throws a c10::Error that names neither the file nor the dataset.
  const int64_t expected = gen.get_state().numel();
  CONDENSE_CHECK(rng.scalar_type() == at::kByte && rng.dim() == 1 && rng.numel() == expected,
                 "{}: dataset '{}' must be the CPU generator's state, {} uint8 bytes; got {} {} "
                 "(corrupt file?)", file_.path(), name, expected, c10::toString(rng.scalar_type()),
                 shape_str(rng.sizes()));
  try {
    gen.set_state(rng);
  } catch (const c10::Error& e) {
    fail("{}: dataset '{}' is not a valid CPU generator state: {}", file_.path(), name,
         e.what_without_backtrace());
  }
}

std::string resolve_checkpoint_path(const std::string& arg) {
  if (fs::is_directory(arg)) {
    for (const std::string& dir : {arg, (fs::path(arg) / "checkpoints").string()}) {
      auto latest = CheckpointManager(dir, 1).latest();
      if (latest) return *latest;
    }
    fail("{}: no checkpoint found in this directory or its checkpoints/ subdirectory", arg);
  }
  return arg;
}

LlamaForCausalLM load_model(const std::string& checkpoint_path) {
  Checkpoint ckpt = Checkpoint::open(checkpoint_path);
  LlamaForCausalLM model(ckpt.config());
  ckpt.load_model(model);
  return model;
}

}  // namespace condense
