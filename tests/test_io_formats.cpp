// io/ formats: safetensors (reader, writer, shards with index) and GGUF (writer, reader,
// F16/BF16/Q8_0 codecs). Round trips are exact where the format is exact; every malformed input
// from the issue's list (truncation, header length past the end, bad JSON, overlapping, gapped or
// out-of-range offsets, unknown dtypes, byte counts that disagree with shapes, missing shards)
// must be a condense::Error naming the file, never a crash.
#include <gtest/gtest.h>
#include <hdf5.h>

#include <ATen/ATen.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/gguf_reader.h"
#include "io/gguf_writer.h"
#include "io/hdf5_file.h"
#include "io/safetensors.h"
#include "io/safetensors_shards.h"

namespace condense {
namespace {
namespace fs = std::filesystem;

fs::path temp_dir(const std::string& name) {
  fs::path d = fs::temp_directory_path() / ("condense_io_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

std::string read_all(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_all(const fs::path& p, const std::string& s) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out << s;
}

// A raw safetensors image from a header JSON string and `data_bytes` zero bytes.
std::string raw_safetensors(const std::string& header, size_t data_bytes) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
  return s + header + std::string(data_bytes, '\0');
}

void expect_error(const std::function<void()>& f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "expected an error containing '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(Safetensors, RoundTripIsExactAndAligned) {
  fs::path d = temp_dir("st_rt");
  std::vector<std::pair<std::string, at::Tensor>> ts = {
      {"b.half", at::randn({3, 5}).to(at::kHalf)},
      {"a.float", at::randn({7})},
      {"c.bf16", at::randn({2, 3, 4}).to(at::kBFloat16)},
      {"d.long", at::arange(5, at::kLong)},
      {"e.empty", at::empty({0, 4})},
  };
  std::string path = (d / "x.safetensors").string();
  write_safetensors(path, ts);
  SafetensorsFile f = SafetensorsFile::open(path);
  EXPECT_EQ(f.metadata().at("format"), "pt");
  ASSERT_EQ(f.entries().size(), ts.size());
  uint64_t data = 0;
  for (const auto& e : f.entries()) {
    EXPECT_EQ(e.begin % safetensors_dtype_size(e.dtype), 0u) << e.name;
    data += e.end - e.begin;
  }
  std::string bytes = read_all(path);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<uint8_t>(bytes[i]);
  EXPECT_EQ((8 + n) % 8, 0u);
  EXPECT_EQ(bytes.size(), 8 + n + data);
  for (const auto& [name, t] : ts) {
    at::Tensor back = f.tensor(name);
    EXPECT_EQ(back.scalar_type(), t.scalar_type()) << name;
    EXPECT_TRUE(back.equal(t)) << name;
  }
  // Python's safetensors reads the header with json: check it is a plain object.
  auto j = nlohmann::json::parse(bytes.substr(8, n));
  EXPECT_EQ(j["a.float"]["dtype"], "F32");
  fs::remove_all(d);
}

TEST(Safetensors, MalformedFilesAreClearErrors) {
  fs::path d = temp_dir("st_bad");
  auto check = [&](const std::string& image, const std::string& needle) {
    fs::path p = d / "bad.safetensors";
    write_all(p, image);
    expect_error([&] { SafetensorsFile::open(p.string()); }, needle);
    expect_error([&] { SafetensorsFile::open(p.string()); }, p.string());
  };
  const std::string ok = R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  check("abc", "truncated");
  check(raw_safetensors(ok, 8).substr(0, 20), "past the end");
  check(raw_safetensors("{not json", 0), "not valid JSON");
  check(raw_safetensors(ok, 4), "out of range");
  check(raw_safetensors(ok, 12), "file size");
  check(raw_safetensors(R"({"w":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]}})", 2),
        "unsupported dtype");
  check(raw_safetensors(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8),
        "needs 12 bytes");
  check(raw_safetensors(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                        R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12),
        "overlap");
  check(raw_safetensors(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8), "gap");
  check(raw_safetensors(R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8),
        "non-negative");
  check(raw_safetensors(R"([1,2])", 0), "JSON object");
  expect_error([&] { SafetensorsFile::open((d / "missing.safetensors").string()); }, "cannot open");
  fs::remove_all(d);
}

TEST(Safetensors, ShardsWithIndexAndTheirErrors) {
  fs::path d = temp_dir("st_shards");
  std::vector<std::pair<std::string, at::Tensor>> ts;
  for (int i = 0; i < 5; ++i) ts.emplace_back("t" + std::to_string(i), at::randn({64}));
  auto files = write_safetensors_shards(d.string(), ts, 600);  // 256 bytes each: 2 per shard
  ASSERT_EQ(files.size(), 4u);  // 3 shards + index
  EXPECT_EQ(files[0], "model-00001-of-00003.safetensors");
  auto index = nlohmann::json::parse(read_all(d / "model.safetensors.index.json"));
  EXPECT_EQ(index["metadata"]["total_size"], 5 * 256);
  SafetensorsShards s = SafetensorsShards::open(d.string());
  EXPECT_EQ(s.names().size(), 5u);
  for (const auto& [name, t] : ts) EXPECT_TRUE(s.tensor(name).equal(t));
  EXPECT_EQ(s.total_bytes(), 5u * 256);

  // A shard named by the index goes missing.
  fs::rename(d / files[2], d / "moved");
  expect_error([&] { SafetensorsShards::open(d.string()); }, "is missing");
  fs::rename(d / "moved", d / files[2]);
  // The index places a tensor in a shard that lacks it.
  index["weight_map"]["t0"] = files[1];
  write_all(d / "model.safetensors.index.json", index.dump());
  expect_error([&] { SafetensorsShards::open(d.string()); }, "absent from the shard");
  fs::remove_all(d);

  fs::path single = temp_dir("st_single");
  EXPECT_EQ(write_safetensors_shards(single.string(), ts, 1 << 20).size(), 1u);
  EXPECT_TRUE(SafetensorsShards::open(single.string()).tensor("t4").equal(ts[4].second));
  expect_error([&] { SafetensorsShards::open((single / "nothing").string()); }, "no model.safetensors");
  fs::remove_all(single);
}

TEST(GgufCodecs, HalfConversionsMatchLibTorch) {
  at::Tensor x = at::cat({at::randn({20000}) * 3, at::randn({2000}) * 1e-6, at::randn({200}) * 6e4,
                          at::tensor({0.f, -0.f, 65504.f, 65520.f, 1e-8f, 5.96e-8f})});
  at::Tensor h = x.to(at::kHalf), b = x.to(at::kBFloat16);
  const float* xp = x.data_ptr<float>();
  for (int64_t i = 0; i < x.numel(); ++i) {
    uint16_t hb, bb;
    std::memcpy(&hb, reinterpret_cast<const uint16_t*>(h.data_ptr()) + i, 2);
    std::memcpy(&bb, reinterpret_cast<const uint16_t*>(b.data_ptr()) + i, 2);
    ASSERT_EQ(f32_to_f16(xp[i]), hb) << "f16 of " << xp[i];
    ASSERT_EQ(f32_to_bf16(xp[i]), bb) << "bf16 of " << xp[i];
    ASSERT_EQ(f16_to_f32(hb), h[i].item<float>());
    ASSERT_EQ(bf16_to_f32(bb), b[i].item<float>());
  }
}

TEST(GgufCodecs, Q8_0ErrorIsBoundedByHalfAStep) {
  at::Tensor x = at::randn({64 * 32});
  std::vector<uint8_t> q(64 * kQ8_0BlockBytes);
  quantize_q8_0(x.data_ptr<float>(), x.numel(), q.data());
  std::vector<float> y(x.numel());
  dequantize_q8_0(q.data(), x.numel(), y.data());
  at::Tensor blocks = x.reshape({64, 32});
  at::Tensor yy = at::from_blob(y.data(), {64, 32});
  at::Tensor step = blocks.abs().amax(1, true) / 127;
  // Half a step from rounding plus the fp16 rounding of the scale (2^-11 relative, times 127).
  EXPECT_TRUE(((yy - blocks).abs() <= step * (0.5 + 127 * 0.0005) + 1e-7).all().item<bool>());
  EXPECT_LT((yy - blocks).abs().max().item<float>(), 0.02f);
}

TEST(Gguf, WriterReaderRoundTrip) {
  fs::path d = temp_dir("gguf_rt");
  std::string path = (d / "m.gguf").string();
  at::Tensor a = at::randn({3, 64}), b = at::randn({5}), c = at::randn({4, 32}), e = at::randn({2, 7});
  GgufWriter w;
  w.add_string("general.architecture", "llama");
  w.add_u32("llama.block_count", 2);
  w.add_f32("llama.rope.freq_base", 10000.f);
  w.add_bool("tokenizer.ggml.add_bos_token", true);
  w.add_string_array("tokenizer.ggml.tokens", {"<unk>", "<s>", "\xe2\x96\x81the"});
  w.add_f32_array("tokenizer.ggml.scores", {0.f, 0.f, -1.5f});
  w.add_i32_array("tokenizer.ggml.token_type", {2, 3, 1});
  w.add_tensor("a", a, GgmlType::kF16);
  w.add_tensor("b", b, GgmlType::kF32);
  w.add_tensor("c", c, GgmlType::kQ8_0);
  w.add_tensor("e", e, GgmlType::kBF16);
  expect_error([&] { w.add_tensor("bad", at::randn({2, 7}), GgmlType::kQ8_0); }, "multiple of 32");
  w.write(path);
  std::string img = read_all(path);
  EXPECT_EQ(img.size() % 32, 0u);
  GgufReader r(reinterpret_cast<const uint8_t*>(img.data()), img.size(), path);
  EXPECT_EQ(r.version(), 3u);
  EXPECT_EQ(r.get("general.architecture").value, "llama");
  EXPECT_EQ(r.get("llama.block_count").type, GgufValueType::kU32);
  EXPECT_EQ(r.get_uint("llama.block_count"), 2u);
  EXPECT_EQ(r.get("tokenizer.ggml.tokens").value[2], "\xe2\x96\x81the");
  EXPECT_EQ(r.get("tokenizer.ggml.token_type").array_type, GgufValueType::kI32);
  EXPECT_EQ(r.get("tokenizer.ggml.add_bos_token").value, true);
  EXPECT_EQ(r.tensor("a").ne, (std::vector<int64_t>{64, 3}));  // PyTorch shape reversed
  for (const auto& t : r.tensors()) EXPECT_EQ(t.offset % 32, 0u) << t.name;
  auto as_tensor = [&](const std::string& n) {
    std::vector<float> v = r.dequantize(r.tensor(n));
    return at::from_blob(v.data(), r.tensor(n).torch_shape(), at::kFloat).clone();
  };
  EXPECT_TRUE(as_tensor("a").equal(a.to(at::kHalf).to(at::kFloat)));
  EXPECT_TRUE(as_tensor("b").equal(b));
  EXPECT_TRUE(as_tensor("e").equal(e.to(at::kBFloat16).to(at::kFloat)));
  EXPECT_LT((as_tensor("c") - c).abs().max().item<float>(), 0.03f);
  fs::remove_all(d);
}

TEST(Gguf, MalformedFilesAreClearErrors) {
  fs::path d = temp_dir("gguf_bad");
  std::string path = (d / "m.gguf").string();
  GgufWriter w;
  w.add_string("general.architecture", "llama");
  w.add_tensor("t", at::randn({4, 32}), GgmlType::kF32);
  w.write(path);
  std::string img = read_all(path);
  auto parse = [&](const std::string& s) {
    GgufReader r(reinterpret_cast<const uint8_t*>(s.data()), s.size(), "bad.gguf");
  };
  parse(img);
  expect_error([&] { parse(img.substr(0, img.size() - 100)); }, "past the end");
  expect_error([&] { parse(img.substr(0, 30)); }, "truncated");
  expect_error([&] { parse("GGUX" + img.substr(4)); }, "bad magic");
  std::string v9 = img;
  v9[4] = 9;
  expect_error([&] { parse(v9); }, "version 9");
  // The tensor info: u64 name length 1, "t", u32 n_dims, u64 ne[2], u32 type, u64 offset.
  std::string unknown = img;
  size_t data_start = img.size() - 4 * 32 * 4;
  size_t name_pos = img.rfind(std::string("\x01\0\0\0\0\0\0\0t", 9), data_start);
  ASSERT_NE(name_pos, std::string::npos);
  size_t tpos = name_pos + 9 + 4 + 16;  // name, n_dims, ne[2]
  unknown[tpos] = 15;                   // Q8_K: ggml's intermediate type, never in a file
  expect_error([&] { parse(unknown); }, "ggml type 15 (Q8_K) is not supported");
  std::string misaligned = img;
  misaligned[tpos + 4] = 3;
  expect_error([&] { parse(misaligned); }, "alignment");
  fs::remove_all(d);
}

// A dataset whose dataspace claims more bytes than the file stores for it (a flipped dimension in
// a corrupt file; found by tests/fuzz/fuzz_hdf5_readers.cpp asking for 1.3 TB) is refused naming
// it, before anything is allocated; the same for a string dataset whose type claims too much.
TEST(Hdf5, DatasetsClaimingMoreThanTheFileStoresAreRefused) {
  fs::path d = temp_dir("h5_claims");
  const std::string path = (d / "claims.h5").string();
  {
    condense::H5File f = condense::H5File::create(path);
    f.write_tensor("ok", at::arange(6, at::kFloat));
    f.write_string("s", "hello");
    f.close();
  }
  {
    // Contiguous datasets allocated late and never written: the file stores 0 bytes for them.
    hid_t file = H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    ASSERT_GE(file, 0);
    hsize_t dims[2] = {hsize_t{1} << 20, hsize_t{1} << 18};  // 2^38 floats: 1 TiB
    hid_t space = H5Screate_simple(2, dims, nullptr);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    H5Pset_layout(dcpl, H5D_CONTIGUOUS);
    H5Pset_alloc_time(dcpl, H5D_ALLOC_TIME_LATE);
    hid_t ds = H5Dcreate2(file, "huge", H5T_NATIVE_FLOAT, space, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    ASSERT_GE(ds, 0);
    H5Dclose(ds);
    hid_t str = H5Tcopy(H5T_C_S1);
    H5Tset_size(str, size_t{1} << 30);  // 1 GiB (2^40 made HDF5 1.10 divide by zero)
    hid_t scalar = H5Screate(H5S_SCALAR);
    hid_t sds = H5Dcreate2(file, "long_string", str, scalar, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    ASSERT_GE(sds, 0);
    H5Dclose(sds);
    H5Sclose(scalar);
    H5Tclose(str);
    H5Pclose(dcpl);
    H5Sclose(space);
    H5Fclose(file);
  }
  condense::H5File f = condense::H5File::open_read(path);
  EXPECT_TRUE(at::equal(f.read_tensor("ok"), at::arange(6, at::kFloat)));
  EXPECT_EQ(f.read_string("s"), "hello");
  auto message = [&](auto&& read) -> std::string {
    try {
      read();
    } catch (const condense::Error& e) {
      return e.what();
    }
    return "(no error)";
  };
  std::string m = message([&] { f.read_tensor("huge"); });
  EXPECT_NE(m.find("dataset 'huge': claims 1099511627776 bytes but the file stores 0"),
            std::string::npos) << m;
  m = message([&] { f.read_slice("huge", 0, 4); });
  EXPECT_NE(m.find("dataset 'huge'"), std::string::npos) << m;  // 2-D: no slice read
  m = message([&] { f.read_string("long_string"); });
  EXPECT_NE(m.find("string 'long_string': claims 1073741824 bytes"), std::string::npos) << m;
  fs::remove_all(d);
}

}  // namespace
}  // namespace condense
