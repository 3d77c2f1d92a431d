// libFuzzer target for condense's HDF5 readers of user files: a token store (data/
// token_store.cpp: format attribute, datasets, the tokenizer inside and its hash) and a
// checkpoint (trainer/checkpoint.cpp: config, training state, tokenizer, RNG state, and for a
// small model the weights, checked against the config's shapes, dtypes and finiteness).
//
// Structure-aware: the input is not the file's bytes but a script of edits applied through the
// HDF5 library to a copy of a valid token store or checkpoint (CONDENSE_FUZZ_HDF5_BASE: a
// directory with store.h5 and checkpoint.h5, written by tests/python/test_fuzz_readers.py):
// delete an entry, replace a dataset by a tensor of another dtype, shape and contents (NaN and
// inf included), replace the config or recipe text, set a root attribute to another value or
// type. Every reader must then load or raise condense::Error; crashes, sanitizer reports and
// other exception types are bugs. Why not raw bytes: Debian's HDF5 1.10.8 itself overflows a
// heap buffer while decoding some corrupt attribute messages (a byte-level version of this
// target found one in H5O__attr_open_by_name within 30 s), which no reader above it can
// prevent; README ("Tests") records it. Built by tests/fuzz/run_fuzz.sh.
#include <fuzzer/FuzzedDataProvider.h>
#include <hdf5.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include <ATen/ATen.h>

#include "core/error.h"
#include "data/token_store.h"
#include "io/hdf5_file.h"
#include "trainer/checkpoint.h"

namespace {
namespace fs = std::filesystem;

// Every dataset and group name in the file, and the root attributes' names.
struct Names {
  std::vector<std::string> datasets, attributes;
};

herr_t collect(hid_t, const char* name, const H5O_info_t* info, void* data) {
  if (info->type == H5O_TYPE_DATASET) static_cast<Names*>(data)->datasets.push_back(name);
  return 0;
}

herr_t collect_attr(hid_t, const char* name, const H5A_info_t*, void* data) {
  static_cast<Names*>(data)->attributes.push_back(name);
  return 0;
}

Names names_in(const std::string& path) {
  Names n;
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  if (f < 0) std::abort();
  H5Ovisit(f, H5_INDEX_NAME, H5_ITER_NATIVE, collect, &n);
  H5Aiterate2(f, H5_INDEX_NAME, H5_ITER_NATIVE, nullptr, collect_attr, &n);
  H5Fclose(f);
  return n;
}

at::Tensor fuzzed_tensor(FuzzedDataProvider& in) {
  static const at::ScalarType kTypes[] = {at::kFloat, at::kDouble, at::kInt,  at::kLong,
                                          at::kByte,  at::kShort,  at::kBool, at::kBFloat16,
                                          at::kHalf};
  const at::ScalarType type = in.PickValueInArray(kTypes);
  std::vector<int64_t> shape(in.ConsumeIntegralInRange<int>(0, 3));
  for (int64_t& d : shape) d = in.ConsumeIntegralInRange<int64_t>(0, 40);
  at::Tensor t = at::zeros(shape, at::TensorOptions().dtype(type));
  std::vector<uint8_t> bytes = in.ConsumeBytes<uint8_t>(t.nbytes());
  if (!bytes.empty()) std::memcpy(t.data_ptr(), bytes.data(), bytes.size());
  if (type == at::kBool) t = t.ne(0);  // only 0/1 are valid bools
  return t;
}

// Applies one edit chosen by the input; false when the input is used up.
bool edit(FuzzedDataProvider& in, condense::H5File& f, const Names& names) {
  if (in.remaining_bytes() == 0) return false;
  const std::string dataset =
      names.datasets.empty() ? "x" : names.datasets[in.ConsumeIntegralInRange<size_t>(
                                         0, names.datasets.size() - 1)];
  const std::string attribute =
      names.attributes.empty() ? "format" : names.attributes[in.ConsumeIntegralInRange<size_t>(
                                                0, names.attributes.size() - 1)];
  switch (in.ConsumeIntegralInRange<int>(0, 5)) {
    case 0:
      f.remove(dataset);
      break;
    case 1:
      f.write_tensor(dataset, fuzzed_tensor(in));
      break;
    case 2:
      f.write_string(dataset, in.ConsumeRandomLengthString(4096));
      break;
    case 3:
      f.remove_attr("", attribute);
      break;
    case 4:
      f.set_attr("", attribute, in.ConsumeIntegral<int64_t>());
      break;
    case 5:
      f.set_attr("", attribute, in.ConsumeRandomLengthString(80));
      break;
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string base = [] {
    const char* dir = std::getenv("CONDENSE_FUZZ_HDF5_BASE");
    if (!dir) std::abort();  // run_fuzz.sh sets it
    return std::string(dir);
  }();
  static const std::string path = "fuzz_hdf5_" + std::to_string(getpid()) + ".h5";
  FuzzedDataProvider in(data, size);
  const bool store = in.ConsumeBool();
  const std::string source = base + (store ? "/store.h5" : "/checkpoint.h5");
  static const Names store_names = names_in(base + "/store.h5");
  static const Names checkpoint_names = names_in(base + "/checkpoint.h5");
  fs::copy_file(source, path, fs::copy_options::overwrite_existing);
  {
    condense::H5File f = condense::H5File::open_write(path);
    for (int i = 0; i < 8 && edit(in, f, store ? store_names : checkpoint_names); ++i) {
    }
    f.close();
  }
  try {
    condense::TokenStore s = condense::TokenStore::open(path);
    (void)s.ids("train").numel();
    (void)s.doc_offsets("val").numel();
    (void)s.tokenizer().vocab_size();
  } catch (const condense::Error&) {
  }
  try {
    condense::Checkpoint c = condense::Checkpoint::open(path);
    (void)c.tokenizer_bytes();
    (void)c.state();
    c.restore_rng(0);
    condense::LlamaConfig config = c.config();
    // The weights are loaded when the recorded model is small (an edited config may name one
    // too large to build).
    if (config.num_parameters() < 2'000'000) (void)condense::load_model(path);
  } catch (const condense::Error&) {
  }
  return 0;
}
