// TensorBoard event writer: TFRecord framing plus the few protobuf fields of
// tensorflow/core/util/event.proto and summary.proto that scalars need, encoded by hand.
#include "io/tensorboard_writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>

#include "core/error.h"

namespace condense {
namespace {

std::array<uint32_t, 256> make_crc32c_table() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : (c >> 1);
    table[i] = c;
  }
  return table;
}

std::string le_bytes(uint64_t v, int nbytes) {  // little-endian regardless of the host
  std::string s;
  for (int i = 0; i < nbytes; ++i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
  return s;
}

// Appends protobuf wire-format fields to a byte string. Only what Event/Summary need:
// varints (wire type 0), fixed64 (1), length-delimited (2) and fixed32 (5).
class ProtoWriter {
 public:
  void varint_field(int field, uint64_t v) {
    key(field, 0);
    varint(v);
  }
  void double_field(int field, double v) {
    uint64_t bits;
    std::memcpy(&bits, &v, sizeof(bits));
    key(field, 1);
    out_ += le_bytes(bits, 8);
  }
  void float_field(int field, float v) {
    uint32_t bits;
    std::memcpy(&bits, &v, sizeof(bits));
    key(field, 5);
    out_ += le_bytes(bits, 4);
  }
  void bytes_field(int field, const std::string& bytes) {  // strings and sub-messages
    key(field, 2);
    varint(bytes.size());
    out_ += bytes;
  }
  const std::string& bytes() const { return out_; }

 private:
  void key(int field, int wire_type) { varint((static_cast<uint64_t>(field) << 3) | wire_type); }
  void varint(uint64_t v) {
    while (v >= 0x80) {
      out_.push_back(static_cast<char>((v & 0x7F) | 0x80));
      v >>= 7;
    }
    out_.push_back(static_cast<char>(v));
  }
  std::string out_;
};

std::string hostname() {
  char buf[256] = {};
  if (::gethostname(buf, sizeof(buf) - 1) != 0 || buf[0] == '\0') return "localhost";
  std::string name(buf);
  for (char& c : name)
    if (c == '/') c = '_';
  return name;
}

// Double -> float without undefined behaviour for finite values beyond float's range.
float to_float(double v) {
  constexpr double kMax = std::numeric_limits<float>::max();
  if (std::isfinite(v) && std::fabs(v) > kMax)
    return v > 0 ? std::numeric_limits<float>::infinity() : -std::numeric_limits<float>::infinity();
  return static_cast<float>(v);
}

}  // namespace

uint32_t crc32c(const void* data, size_t size, uint32_t crc) {
  static const std::array<uint32_t, 256> table = make_crc32c_table();
  const auto* p = static_cast<const unsigned char*>(data);
  crc = ~crc;
  for (size_t i = 0; i < size; ++i) crc = table[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
  return ~crc;
}

uint32_t masked_crc32c(const void* data, size_t size) {
  uint32_t crc = crc32c(data, size);
  return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

double unix_time_now() {
  using namespace std::chrono;
  return duration<double>(system_clock::now().time_since_epoch()).count();
}

TensorBoardWriter::TensorBoardWriter(const std::string& log_dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(log_dir, ec);
  CONDENSE_CHECK(!ec, "cannot create TensorBoard directory {}: {}", log_dir, ec.message());
  double now = unix_time_now();
  std::string base = (fs::path(log_dir) / ("events.out.tfevents." +
                      std::to_string(static_cast<int64_t>(now)) + "." + hostname())).string();
  // Two writers started in the same second in the same directory must not clobber each
  // other: O_EXCL picks the first free name, adding ".1", ".2", ... (TensorBoard reads any
  // file whose name contains "tfevents").
  int fd = -1;
  for (int n = 0; n < 1000 && fd < 0; ++n) {
    path_ = n == 0 ? base : base + "." + std::to_string(n);
    fd = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0 && errno != EEXIST) break;
  }
  CONDENSE_CHECK(fd >= 0, "cannot create TensorBoard event file {}: {}", path_,
                 std::strerror(errno));
  file_ = ::fdopen(fd, "wb");
  if (file_ == nullptr) {
    ::close(fd);
    fail("cannot open TensorBoard event file {}: {}", path_, std::strerror(errno));
  }
  ProtoWriter event;
  event.double_field(1, now);
  event.bytes_field(3, "brain.Event:2");
  write_record(event.bytes());
  flush();
}

TensorBoardWriter::~TensorBoardWriter() {
  if (file_ != nullptr) std::fclose(file_);  // flushes; errors cannot be reported here
}

void TensorBoardWriter::add_session_start(int64_t step, double wall_time) {
  ProtoWriter session_log;
  session_log.varint_field(1, 1);  // SessionLog.status = START
  ProtoWriter event;
  event.double_field(1, wall_time);
  event.varint_field(2, static_cast<uint64_t>(step));
  event.bytes_field(7, session_log.bytes());  // Event.session_log
  write_record(event.bytes());
}

void TensorBoardWriter::add_scalar(const std::string& tag, double value, int64_t step,
                                   double wall_time) {
  ProtoWriter summary_value;
  summary_value.bytes_field(1, tag);
  summary_value.float_field(2, to_float(value));
  ProtoWriter summary;
  summary.bytes_field(1, summary_value.bytes());
  ProtoWriter event;
  event.double_field(1, wall_time);
  event.varint_field(2, static_cast<uint64_t>(step));  // int64: two's complement varint
  event.bytes_field(5, summary.bytes());
  write_record(event.bytes());
}

void TensorBoardWriter::flush() {
  CONDENSE_CHECK(std::fflush(file_) == 0, "cannot write TensorBoard event file {}: {}", path_,
                 std::strerror(errno));
}

// TFRecord: uint64 length, masked CRC of those 8 bytes, data, masked CRC of the data.
void TensorBoardWriter::write_record(const std::string& data) {
  std::string header = le_bytes(data.size(), 8);
  std::string record = header + le_bytes(masked_crc32c(header.data(), header.size()), 4) + data +
                       le_bytes(masked_crc32c(data.data(), data.size()), 4);
  CONDENSE_CHECK(std::fwrite(record.data(), 1, record.size(), file_) == record.size(),
                 "cannot write TensorBoard event file {}: {}", path_, std::strerror(errno));
}

}  // namespace condense
