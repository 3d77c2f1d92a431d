// The collective watchdog's paths for collectives queued on a stream (NCCL's) and for a
// backend's asynchronous errors, with fake completion probes (comm/watchdog.h). Each case runs
// in a child process (gtest death tests, "threadsafe" style: the child re-executes this binary),
// since the watchdog ends its process with _Exit(1). The blocking (MPI) path is tested end to
// end under mpirun in tests/python/test_watchdog.py; the NCCL wiring on a GPU in
// tests/test_cuda_comm.cpp (Cuda.NcclWatchdogEndsAStalledCollective).
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>

#include "comm/watchdog.h"

namespace condense {
namespace {

namespace fs = std::filesystem;

class WatchdogDeathTest : public ::testing::Test {
 protected:
  void SetUp() override {
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    // The same name in the parent and in the child that re-runs this test; the parent removes
    // what the child reported into it.
    dir_ = fs::temp_directory_path() /
           ("condense_watchdog_test_" + std::string(::testing::UnitTest::GetInstance()->current_test_info()->name()));
    fs::remove_all(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  // In the death test's child: a watchdog of timeout_s (the test's report directory, rank 0 of
  // a world of one), given to `queue` (which registers collectives and checks), then wait_s of
  // waiting; the child exits 0 if the watchdog has not ended it by then.
  void watch(double timeout_s, double wait_s, const std::function<void(CollectiveWatchdog&)>& queue) const {
    CollectiveWatchdog w({timeout_s, dir_.string(), 0, 1, 42});
    queue(w);
    std::this_thread::sleep_for(std::chrono::duration<double>(wait_s));
    std::exit(0);
  }
  fs::path dir_;
};

TEST_F(WatchdogDeathTest, AQueuedCollectiveThatNeverFinishesEndsTheProcess) {
  EXPECT_EXIT(watch(0.3, 10, [](CollectiveWatchdog& w) { w.queued("ncclAllReduce", 64, [] { return false; }); }),
              ::testing::ExitedWithCode(1),
              "\\[rank 0\\] error: collective ncclAllReduce #1 \\(64 bytes\\) has not finished after [0-9]+ s "
              "\\(comm.timeout_s = 0.3\\); a single rank: its device never finished it");
}

TEST_F(WatchdogDeathTest, FinishedCollectivesAreNotTimed) {
  // Three finished at once, one that finishes after 0.15 s, then over three times the timeout
  // of quiet: nothing fires.
  EXPECT_EXIT(watch(0.3, 1.0,
                    [](CollectiveWatchdog& w) {
                      auto later = std::make_shared<std::atomic<bool>>(false);
                      for (int i = 0; i < 3; ++i) w.queued("ncclAllGather", 8, [] { return true; });
                      w.queued("ncclAllReduce", 4, [later] { return later->load(); });
                      std::this_thread::sleep_for(std::chrono::milliseconds(150));
                      later->store(true);
                    }),
              ::testing::ExitedWithCode(0), "");
}

TEST_F(WatchdogDeathTest, TheOldestUnfinishedCollectiveIsTheOneNamed) {
  // The first finished; the second and third never do: the second is reported (a stream runs
  // them in order), with its sequence number among all collectives.
  EXPECT_EXIT(watch(0.3, 10,
                    [](CollectiveWatchdog& w) {
                      w.queued("ncclBroadcast", 16, [] { return true; });
                      w.queued("ncclReduceScatter", 1024, [] { return false; });
                      w.queued("ncclAllReduce", 2048, [] { return false; });
                    }),
              ::testing::ExitedWithCode(1), "collective ncclReduceScatter #2 \\(1024 bytes\\) has not finished");
}

TEST_F(WatchdogDeathTest, AnAsynchronousErrorEndsTheProcessBeforeTheTimeout) {
  // Healthy for the first polls, then a peer's failure: the process ends within a few polls
  // (the timeout, 100 s, polls every second), naming the error.
  EXPECT_EXIT(watch(100, 8,
                    [](CollectiveWatchdog& w) {
                      auto polls = std::make_shared<std::atomic<int>>(0);
                      w.set_health_check([polls]() -> std::string {
                        return ++*polls < 3 ? "" : "NCCL reports an asynchronous error on rank 0: remote process exited";
                      });
                      w.queued("ncclAllReduce", 4, [] { return false; });
                    }),
              ::testing::ExitedWithCode(1),
              "\\[rank 0\\] error: NCCL reports an asynchronous error on rank 0: remote process exited\\. "
              "Ending the job\\.");
}

TEST_F(WatchdogDeathTest, AProbeThatFailsEndsTheProcess) {
  EXPECT_EXIT(watch(0.5, 10,
                    [](CollectiveWatchdog& w) {
                      w.queued("ncclAllReduce", 4, []() -> bool {
                        throw std::runtime_error("CUDA error: an illegal memory access");
                      });
                    }),
              ::testing::ExitedWithCode(1),
              "the collective watchdog's probe failed: CUDA error: an illegal memory access");
}

// The verdict names what the reports show: a rank left behind at an older collective (it ended
// and its last report stayed), an order mismatch, or one collective stuck everywhere.
TEST(Watchdog, ReportsComparedByCollective) {
  const fs::path dir = fs::temp_directory_path() / ("condense_wd_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  auto write = [&](int r, const std::string& what) {
    std::ofstream(dir / ("00000000000000ab.rank" + std::to_string(r))) << "rank " << r
        << " waiting in " << what << " (64 bytes) for 3.0 s\n";
  };
  write(0, "all_reduce #128");
  write(1, "all_reduce #122");
  std::string v = compare_watchdog_reports(dir.string(), 0xab, 2);
  EXPECT_NE(v.find("different collectives (rank 0: all_reduce #128, rank 1: all_reduce #122)"),
            std::string::npos) << v;
  write(1, "broadcast #128");
  v = compare_watchdog_reports(dir.string(), 0xab, 2);
  EXPECT_NE(v.find("different orders"), std::string::npos) << v;
  write(1, "all_reduce #128");
  v = compare_watchdog_reports(dir.string(), 0xab, 2);
  EXPECT_NE(v.find("same collective (rank 0: all_reduce #128, rank 1: all_reduce #128)"),
            std::string::npos) << v;
  fs::remove_all(dir);
}

}  // namespace

}  // namespace condense
