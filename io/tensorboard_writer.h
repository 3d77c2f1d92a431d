// TensorBoard event files without TensorFlow or protobuf: TFRecord framing with masked
// CRC-32C, and a hand-encoded Event/Summary protobuf holding scalar values. The file is
// `<log_dir>/events.out.tfevents.<unix_seconds>.<hostname>`; TensorBoard reads every such
// file in the directory, so a resumed run just adds another file next to the old one.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>

namespace condense {

// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), table-driven. `crc` chains calls:
// crc32c(b, nb, crc32c(a, na)) == crc32c(a+b, na+nb).
uint32_t crc32c(const void* data, size_t size, uint32_t crc = 0);
// The TFRecord mask: ((crc >> 15) | (crc << 17)) + 0xa282ead8, so that CRCs of data that
// itself contains CRCs stay well distributed.
uint32_t masked_crc32c(const void* data, size_t size);
// Current time as fractional seconds since the Unix epoch (the Event.wall_time convention).
double unix_time_now();

// Writes one event file. Not thread-safe; one writer per process (rank 0 only). Records are
// buffered; flush() and the destructor push them to the OS. Throws condense::Error naming the
// file if the directory cannot be created or a write fails.
class TensorBoardWriter {
 public:
  explicit TensorBoardWriter(const std::string& log_dir);
  ~TensorBoardWriter();
  TensorBoardWriter(const TensorBoardWriter&) = delete;
  TensorBoardWriter& operator=(const TensorBoardWriter&) = delete;

  // One Event{wall_time, step, summary{value{tag, simple_value}}}. The value is stored as a
  // float32, as TensorBoard's simple_value is.
  void add_scalar(const std::string& tag, double value, int64_t step,
                  double wall_time = unix_time_now());
  // Event{wall_time, step, session_log{status: START}}: TensorBoard (its EventAccumulator with
  // purge_orphaned_data, the default) then drops every earlier event at this step or later,
  // which is how a resumed run hides what its predecessor logged after the checkpoint.
  void add_session_start(int64_t step, double wall_time = unix_time_now());
  void flush();
  const std::string& path() const { return path_; }

 private:
  void write_record(const std::string& data);

  std::string path_;
  std::FILE* file_ = nullptr;
};

}  // namespace condense
