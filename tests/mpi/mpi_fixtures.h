// Shared by the multi-rank tests (tests/mpi/test_*.cpp, each run under mpirun -np 2 and 4):
// the MPI world communicator and a tiny Llama with per-rank data.
#pragma once
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "comm/communicator.h"
#include "model/llama.h"

namespace condense::test {

inline Communicator& world() {
  static std::unique_ptr<Communicator> comm = [] {
    CommConfig c;
    c.backend = "mpi";
    return make_communicator(c);
  }();
  return *comm;
}

inline LlamaConfig tiny() {
  LlamaConfig c;
  c.vocab_size = 101; c.hidden_size = 32; c.intermediate_size = 64; c.num_hidden_layers = 3;
  c.num_attention_heads = 4; c.num_key_value_heads = 2; c.max_position_embeddings = 32;
  return c;
}

inline std::vector<std::pair<std::string, at::Tensor>> named(LlamaForCausalLM& m) {
  std::vector<std::pair<std::string, at::Tensor>> out;
  for (auto& p : m->named_parameters()) out.emplace_back(p.key(), p.value());
  return out;
}

// Different data on every rank.
inline at::Tensor rank_batch(int rank, int64_t b = 2, int64_t t = 12) {
  at::Generator g = at::make_generator<at::CPUGeneratorImpl>(1000 + rank);
  return at::randint(0, 101, {b, t}, g, at::TensorOptions().dtype(at::kLong));
}

inline at::Tensor lm_loss(LlamaForCausalLM& m, const at::Tensor& ids) {
  at::Tensor logits = m->forward(ids.narrow(1, 0, ids.size(1) - 1));
  return at::cross_entropy_loss(logits.reshape({-1, logits.size(-1)}),
                                ids.narrow(1, 1, ids.size(1) - 1).reshape({-1}));
}

// True on every rank when `t` (any dtype) is bitwise identical on all ranks. Collective.
inline bool same_on_all_ranks(const at::Tensor& t) {
  Communicator& c = world();
  at::Tensor bytes = t.contiguous().view(at::kByte).reshape({-1}).clone();
  at::Tensor all = at::empty({bytes.numel() * c.size()}, at::kByte);
  c.all_gather(bytes, all);
  for (int r = 1; r < c.size(); ++r)
    if (!at::equal(all.narrow(0, r * bytes.numel(), bytes.numel()), all.narrow(0, 0, bytes.numel())))
      return false;
  return true;
}

}  // namespace condense::test
