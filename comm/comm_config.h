// CommConfig: how ranks talk (recipe section `comm`).
#pragma once
#include <string>

namespace condense {

struct CommConfig {
  std::string backend = "auto";  // auto | mpi | nccl | self (auto: nccl on cuda, mpi under mpirun)
  std::string device = "cpu";    // where tensors live; follows train.device, not a recipe key
  double bucket_cap_mb = 25.0;   // gradient bucket size
  bool overlap = true;           // exchange buckets while backward runs
};

}  // namespace condense
