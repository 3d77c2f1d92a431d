// Tests for the metrics path: CRC-32C vectors (RFC 3720 / iSCSI), TFRecord framing of a
// written TensorBoard file parsed back here, metrics.jsonl content and append-on-resume,
// the disabled logger, and duration formatting. tests/python/test_tensorboard_events.py
// checks the same event files with TensorBoard's own reader.
#include <ftw.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <nlohmann/json.hpp>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/progress.h"
#include "io/tensorboard_writer.h"
#include "trainer/metrics_logger.h"

namespace condense {
namespace {
namespace fs = std::filesystem;

// Recursive delete without std::filesystem::remove_all: the torch wheel's libtorch.so exports
// its own std::filesystem::remove_all, which binds ahead of libstdc++'s and segfaults.
void remove_tree(const fs::path& path) {
  ::nftw(path.c_str(), [](const char* p, const struct stat*, int, struct FTW*) {
    return std::remove(p);
  }, 16, FTW_DEPTH | FTW_PHYS);
}

// A fresh directory per test, removed afterwards.
struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() /
           ("condense_metrics_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    remove_tree(path);
  }
  ~TempDir() { remove_tree(path); }
};

std::string read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

uint64_t le(const std::string& s, size_t at, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; ++i)
    v |= static_cast<uint64_t>(static_cast<unsigned char>(s[at + i])) << (8 * i);
  return v;
}

// Splits a TFRecord file into its payloads, checking every length and CRC on the way.
std::vector<std::string> read_records(const fs::path& p) {
  std::string bytes = read_bytes(p);
  std::vector<std::string> records;
  size_t at = 0;
  while (at < bytes.size()) {
    EXPECT_GE(bytes.size() - at, 12u) << "truncated header";
    if (bytes.size() - at < 12) break;
    uint64_t len = le(bytes, at, 8);
    EXPECT_EQ(le(bytes, at + 8, 4), masked_crc32c(bytes.data() + at, 8)) << "length crc";
    EXPECT_GE(bytes.size() - at - 12, len + 4) << "truncated record";
    if (bytes.size() - at - 12 < len + 4) break;
    std::string data = bytes.substr(at + 12, len);
    EXPECT_EQ(le(bytes, at + 12 + len, 4), masked_crc32c(data.data(), data.size())) << "data crc";
    records.push_back(data);
    at += 12 + len + 4;
  }
  return records;
}

std::vector<fs::path> event_files(const fs::path& dir) {
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().filename().string().rfind("events.out.tfevents.", 0) == 0)
      files.push_back(e.path());
  return files;
}

std::vector<nlohmann::ordered_json> read_jsonl(const fs::path& p) {
  std::ifstream in(p);
  std::vector<nlohmann::ordered_json> lines;
  for (std::string line; std::getline(in, line);)
    lines.push_back(nlohmann::ordered_json::parse(line));
  return lines;
}

}  // namespace

TEST(Crc32c, KnownVectors) {
  EXPECT_EQ(crc32c("", 0), 0x00000000u);
  EXPECT_EQ(crc32c("123456789", 9), 0xE3069283u);
  std::string zeros(32, '\0'), ones(32, '\xff');
  EXPECT_EQ(crc32c(zeros.data(), zeros.size()), 0x8A9136AAu);
  EXPECT_EQ(crc32c(ones.data(), ones.size()), 0x62A8AB43u);
  std::string inc;
  for (int i = 0; i < 32; ++i) inc.push_back(static_cast<char>(i));
  EXPECT_EQ(crc32c(inc.data(), inc.size()), 0x46DD794Eu);
  // Chaining equals one pass.
  EXPECT_EQ(crc32c("56789", 5, crc32c("1234", 4)), 0xE3069283u);
}

TEST(Crc32c, Masked) {
  uint32_t crc = 0xE3069283u;
  EXPECT_EQ(masked_crc32c("123456789", 9), ((crc >> 15) | (crc << 17)) + 0xa282ead8u);
  EXPECT_EQ(masked_crc32c("", 0), 0xa282ead8u);
}

TEST(TensorBoardWriter, RecordFraming) {
  TempDir tmp;
  fs::path dir = tmp.path / "nested" / "tb";
  {
    TensorBoardWriter writer(dir.string());
    EXPECT_EQ(fs::path(writer.path()).parent_path(), dir);
    writer.add_scalar("train/loss", 4.25, 1, 1000.5);
    writer.add_scalar("train/loss", -3.0, 300, 1001.5);
    writer.flush();
    EXPECT_EQ(read_records(writer.path()).size(), 3u);  // flushed while still open
  }
  auto files = event_files(dir);
  ASSERT_EQ(files.size(), 1u);
  auto records = read_records(files[0]);
  ASSERT_EQ(records.size(), 3u);
  EXPECT_NE(records[0].find("brain.Event:2"), std::string::npos);
  // Event{wall_time=1000.5, step=1, summary{value{tag, simple_value=4.25f}}} byte for byte.
  std::string expected;
  double wall = 1000.5;
  float value = 4.25f;
  uint64_t wall_bits;
  uint32_t value_bits;
  std::memcpy(&wall_bits, &wall, 8);
  std::memcpy(&value_bits, &value, 4);
  std::string value_msg = std::string("\x0a\x0a") + "train/loss" + "\x15" +
                          std::string(reinterpret_cast<const char*>(&value_bits), 4);
  std::string summary = "\x0a" + std::string(1, static_cast<char>(value_msg.size())) + value_msg;
  expected = "\x09" + std::string(reinterpret_cast<const char*>(&wall_bits), 8) + "\x10\x01" +
             "\x2a" + std::string(1, static_cast<char>(summary.size())) + summary;
  EXPECT_EQ(records[1], expected);
  // step 300 is a two-byte varint: 0xac 0x02.
  EXPECT_NE(records[2].find("\x10\xac\x02"), std::string::npos);
}

TEST(TensorBoardWriter, SameSecondWritersDoNotClobber) {
  TempDir tmp;
  TensorBoardWriter a(tmp.path.string()), b(tmp.path.string());
  EXPECT_NE(a.path(), b.path());
  a.add_scalar("x", 1, 1);
  b.add_scalar("x", 2, 2);
  a.flush();
  b.flush();
  EXPECT_EQ(event_files(tmp.path).size(), 2u);
}

TEST(MetricsLogger, JsonlAndTensorBoard) {
  TempDir tmp;
  {
    MetricsLogger logger(tmp.path.string(), true);
    EXPECT_TRUE(logger.enabled());
    logger.log(10, {{"loss", 4.5}, {"lr", 3e-3}, {"grad_norm", std::nan("")}});
    logger.log(20, {{"loss", 3.25}, {"overflow", std::numeric_limits<double>::infinity()}}, "eval");
    // Each line is on disk before flush() or destruction.
    EXPECT_EQ(read_jsonl(tmp.path / "metrics.jsonl").size(), 2u);
  }
  auto lines = read_jsonl(tmp.path / "metrics.jsonl");
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0]["step"], 10);
  EXPECT_EQ(lines[0]["split"], "train");
  EXPECT_DOUBLE_EQ(lines[0]["loss"].get<double>(), 4.5);
  EXPECT_DOUBLE_EQ(lines[0]["lr"].get<double>(), 3e-3);
  EXPECT_TRUE(lines[0]["grad_norm"].is_null());
  EXPECT_EQ(lines[0].size(), 5u);
  EXPECT_EQ(lines[0].begin().key(), "step");
  EXPECT_EQ(lines[1]["split"], "eval");
  EXPECT_TRUE(lines[1]["overflow"].is_null());
  auto files = event_files(tmp.path / "tensorboard");
  ASSERT_EQ(files.size(), 1u);
  auto records = read_records(files[0]);
  EXPECT_EQ(records.size(), 2u + 5u);  // file version, session start, five scalars
  EXPECT_NE(records[2].find("train/loss"), std::string::npos);
  EXPECT_NE(records[5].find("eval/loss"), std::string::npos);
}

TEST(MetricsLogger, AppendsAcrossRuns) {
  TempDir tmp;
  {
    MetricsLogger first(tmp.path.string(), true);
    first.log(1, {{"loss", 2.0}});
    first.log(2, {{"loss", 1.5}});
  }
  {
    MetricsLogger resumed(tmp.path.string(), true, /*start_step=*/2);
    resumed.log(3, {{"loss", 1.25}});
    resumed.flush();
  }
  auto lines = read_jsonl(tmp.path / "metrics.jsonl");
  ASSERT_EQ(lines.size(), 3u);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(lines[i]["step"], i + 1);
  EXPECT_DOUBLE_EQ(lines[2]["loss"].get<double>(), 1.25);
}

// A run that stopped after its last checkpoint (step 2) had logged steps 3 and 4 and was torn
// in the middle of a line: the resumed logger keeps steps 1-2 only, so step 3 is logged once.
TEST(MetricsLogger, ResumeDropsRecordsPastTheStartStep) {
  TempDir tmp;
  {
    MetricsLogger first(tmp.path.string(), true);
    for (int step = 1; step <= 4; ++step) first.log(step, {{"loss", 1.0 * step}});
    first.log(4, {{"loss", 9.0}}, "eval");
  }
  {
    std::ofstream torn(tmp.path / "metrics.jsonl", std::ios::app);
    torn << "{\"step\": 5, \"spl";
  }
  {
    MetricsLogger resumed(tmp.path.string(), true, /*start_step=*/2);
    resumed.log(3, {{"loss", 30.0}});
  }
  auto lines = read_jsonl(tmp.path / "metrics.jsonl");
  ASSERT_EQ(lines.size(), 3u);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(lines[i]["step"], i + 1);
  EXPECT_DOUBLE_EQ(lines[2]["loss"].get<double>(), 30.0);
  // The second event file starts with a SessionLog START at step 3 (Event field 7, status 1).
  auto files = event_files(tmp.path / "tensorboard");
  ASSERT_EQ(files.size(), 2u);
  bool found = false;
  for (const auto& f : files) {
    for (const std::string& r : read_records(f)) found |= r.find(std::string("\x10\x03\x3a\x02\x08\x01", 6)) != std::string::npos;
  }
  EXPECT_TRUE(found);
}

TEST(MetricsLogger, ReservedNamesRejected) {
  TempDir tmp;
  MetricsLogger logger(tmp.path.string(), true);
  EXPECT_THROW(logger.log(1, {{"step", 1.0}}), Error);
}

TEST(MetricsLogger, DisabledWritesNothing) {
  TempDir tmp;
  fs::path dir = tmp.path / "out";
  MetricsLogger logger(dir.string(), false);
  EXPECT_FALSE(logger.enabled());
  logger.log(1, {{"loss", 1.0}});
  logger.flush();
  EXPECT_FALSE(fs::exists(dir));
}

TEST(Progress, FormatDuration) {
  EXPECT_EQ(format_duration(0), "0s");
  EXPECT_EQ(format_duration(45), "45s");
  EXPECT_EQ(format_duration(59.4), "59s");
  EXPECT_EQ(format_duration(59.6), "1m00s");
  EXPECT_EQ(format_duration(83), "1m23s");
  EXPECT_EQ(format_duration(3599), "59m59s");
  EXPECT_EQ(format_duration(3600), "1h00m");
  EXPECT_EQ(format_duration(2 * 3600 + 5 * 60 + 30), "2h05m");
  EXPECT_EQ(format_duration(-1), "?");
  EXPECT_EQ(format_duration(std::nan("")), "?");
}

TEST(Progress, RunsThroughAndValidates) {
  EXPECT_THROW(Progress(10, 11, 1), Error);
  EXPECT_THROW(Progress(10, 0, 0), Error);
  Progress progress(5, 2, 2);
  for (int64_t step = 3; step <= 5; ++step) progress.update(step, 4.0 - step * 0.1, 2100, 3e-3);
  progress.message("eval loss 3.5");
  progress.finish();
  progress.finish();
}

TEST(Progress, PlainLogLines) {
  if (::isatty(2)) GTEST_SKIP() << "stderr is a terminal: Progress draws a bar instead";
  std::ostringstream out;
  auto previous = spdlog::default_logger();
  auto logger = std::make_shared<spdlog::logger>(
      "progress_test", std::make_shared<spdlog::sinks::ostream_sink_st>(out));
  logger->set_pattern("%v");
  spdlog::set_default_logger(logger);
  {
    Progress progress(300, 100, 20);
    for (int64_t step = 101; step <= 300; ++step) progress.update(step, 4.12341, 2100.4, 3e-3);
    progress.message("eval loss 3.5");
  }
  spdlog::set_default_logger(previous);
  std::vector<std::string> lines;
  std::istringstream in(out.str());
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  ASSERT_EQ(lines.size(), 11u);  // steps 120, 140, ..., 300, then the message
  EXPECT_EQ(lines[0].rfind("step 120/300 loss 4.1234 lr 3.00e-03 tok/s 2100 eta ", 0), 0u)
      << lines[0];
  EXPECT_EQ(lines[9], "step 300/300 loss 4.1234 lr 3.00e-03 tok/s 2100 eta 0s");
  EXPECT_EQ(lines[10], "eval loss 3.5");
}

}  // namespace condense
