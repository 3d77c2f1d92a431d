// Test helper for tests/python/test_tensorboard_events.py: writes TensorBoard scalars with
// condense::TensorBoardWriter so that TensorBoard's own reader can check the file.
// Usage: write_tb_events <log_dir> [tag step value]...   (wall_time = 1000 + step)
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>

#include "io/tensorboard_writer.h"

int main(int argc, char** argv) {
  if (argc < 2 || (argc - 2) % 3 != 0) {
    std::fprintf(stderr, "usage: %s <log_dir> [tag step value]...\n", argv[0]);
    return 2;
  }
  try {
    condense::TensorBoardWriter writer(argv[1]);
    for (int i = 2; i < argc; i += 3) {
      int64_t step = std::stoll(argv[i + 1]);
      writer.add_scalar(argv[i], std::stod(argv[i + 2]), step, 1000.0 + static_cast<double>(step));
    }
    writer.flush();
    std::printf("%s\n", writer.path().c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "write_tb_events: %s\n", e.what());
    return 1;
  }
  return 0;
}
