// CUDA kernels of Top-K selection; contract in comm/topk_cuda_kernels.h, the steps in
// comm/topk_radix.h (shared with the CPU replay in tests/test_cuda_kernels.cpp).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cub/block/block_radix_sort.cuh>
#include <string>

#include "comm/topk_cuda_kernels.h"
#include "comm/topk_radix.h"

namespace condense::topk_radix {
namespace {

constexpr int kHistThreads = 256;
constexpr int kHistRegion = kPasses * kMaxBins;  // int32 per stage's histograms
constexpr int kWarps = kTileThreads / 32;
constexpr int64_t kMaxTileBlocks = 2048;  // grids of the per-tile kernels (they loop over tiles)

// One selection's state on the device (zeroed before the first kernel).
struct State {
  uint32_t t;             // sampled path: the sample threshold
  int32_t outcome;        // sampled path: a SampleOutcome (topk_radix.h), set by the collection
  int64_t count;          // sampled path: the keys >= t (the collection adds them up)
  Selection candidates;   // T and need among the candidates
  Selection full;         // T and need over x
  // Blocks finished, per kernel that ends in a one-block step (arrive_last): per stage, its
  // three histograms and its tile count; then the collection.
  uint32_t done[2 * (kPasses + 1) + 1];
};

// A gated kernel runs only when bit *flag of `when` is set (the sampled path launches both the
// candidates' stage and the exact path over x; State::outcome picks what runs). flag ==
// nullptr: always runs.
struct Gate {
  const int32_t* flag = nullptr;
  uint32_t when = 0;
  __device__ bool closed() const { return flag != nullptr && !((when >> *flag) & 1u); }
};
constexpr uint32_t bit(int32_t outcome) { return 1u << outcome; }

// Optional stage timing (cuda_topk_profile): an event recorded after each launch group (all
// created before the first launch, so the host's event creation does not fall between steps).
struct Marks {
  static constexpr int kMax = 16;
  cudaEvent_t events[kMax];
  const char* names[kMax];
  int created = 0, count = 0;
  Marks() {
    while (created < kMax && cudaEventCreate(&events[created]) == cudaSuccess) ++created;
  }
  ~Marks() {
    for (int i = 0; i < created; ++i) cudaEventDestroy(events[i]);
  }
  void mark(const char* name, cudaStream_t s) {
    if (count < created && cudaEventRecord(events[count], s) == cudaSuccess) names[count++] = name;
  }
};
void mark(Marks* marks, const char* name, cudaStream_t s) {
  if (marks) marks->mark(name, s);
}

// One exact-path stage's inputs: `bits` are float bits or keys (key_of leaves keys unchanged),
// n their number (host bound) and n_dev, when not null, the number actually there (the
// sampled path's candidate count, which may exceed n: then the stage is gated off).
struct Stage {
  const uint32_t* bits = nullptr;
  int64_t n = 0;
  const int64_t* n_dev = nullptr;
  int64_t tiles = 0;                  // x's tiles
  const int64_t* seg_base = nullptr;  // the candidates' segments per x tile (tile_range), or null
  const int32_t* seg_count = nullptr;
  const int32_t* map = nullptr;  // output through it (candidate -> index in x), or null
  Gate gate;         // every kernel of the stage
  Gate select_gate;  // the histograms, too (zero fill sets T and need without them)
  int32_t* hist = nullptr;          // kHistRegion int32, zeroed
  Selection* selection = nullptr;   // T and need (written)
  int32_t* counts = nullptr;        // 2 x tiles
  int64_t* inclusive = nullptr;     // 2 x tiles
};

__device__ int64_t effective_n(int64_t n, const int64_t* n_dev) { return n_dev ? min(n, *n_dev) : n; }

// Whether this block is the last of its grid to get here (every thread of every block calls it
// once). The last block then sees every other block's global writes, read through L2 (__ldcg):
// each block's writes are ordered before its count by the barrier and thread 0's fence
// (cumulative), and the last block's thread 0 fences again after seeing the final count. A
// one-block step at the end of a kernel without a launch of its own (the "last block" pattern
// of CUDA's threadFenceReduction sample).
__device__ bool arrive_last(uint32_t* done) {
  __shared__ bool last;
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    last = atomicAdd(done, 1u) == gridDim.x - 1;
    if (last) __threadfence();
  }
  __syncthreads();
  return last;
}

// Exclusive prefix sum of one value per thread over a block of Threads threads (Hillis-Steele
// in shared memory).
template <int Threads, typename T>
__device__ T block_exclusive_scan(T v, T* scratch) {
  const int t = static_cast<int>(threadIdx.x);
  scratch[t] = v;
  __syncthreads();
  for (int offset = 1; offset < Threads; offset *= 2) {
    const T add = t >= offset ? scratch[t - offset] : T{0};
    __syncthreads();
    scratch[t] += add;
    __syncthreads();
  }
  const T inclusive = scratch[t];
  __syncthreads();  // scratch is reused by the next scan
  return inclusive - v;
}

// Pass p's histogram: per block in shared memory (in pass 0 lanes with the same digit add
// together: gradient keys crowd into few bins, all-zero data into one), then added into the
// global one;
// the last block picks the digit into *selection, each thread searching its own range of
// digits (select_digit_range) after a block scan of the ranges' counts.
__global__ void __launch_bounds__(kHistThreads)
    histogram_kernel(const uint32_t* bits, int64_t n_host, const int64_t* n_dev, int pass, Selection* selection,
                     int32_t* hist, int32_t k, uint32_t* done, Gate gate) {
  if (gate.closed()) return;
  const int64_t n = effective_n(n_host, n_dev);
  const int t = static_cast<int>(threadIdx.x);
  __shared__ int32_t local[kMaxBins];
  const int bins = 1 << digit_width(pass);
  for (int b = t; b < bins; b += kHistThreads) local[b] = 0;
  __syncthreads();
  // Read before the last block's writer can change it (the block scan below is a barrier).
  const Selection start = pass == 0 ? Selection{0u, k} : *selection;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kHistThreads;
  const int64_t rounds = (n + stride - 1) / stride;  // the same for every lane: full warps vote
  for (int64_t r = 0; r < rounds; ++r) {
    const int64_t i = r * stride + static_cast<int64_t>(blockIdx.x) * kHistThreads + t;
    uint32_t key = 0;
    const bool counted = i < n && in_prefix(key = key_of(bits[i]), pass, start.prefix);
    if (pass > 0) {  // only keys in the prefix count: few lanes, rarely the same digit
      if (counted) atomicAdd(&local[digit_of(key, pass)], 1);
      continue;
    }
    const int digit = counted ? static_cast<int>(digit_of(key, pass)) : -1;
    const uint32_t peers = __match_any_sync(0xffffffffu, digit);
    if (counted && (__ffs(peers) - 1) == t % 32) atomicAdd(&local[digit], __popc(peers));
  }
  __syncthreads();
  for (int b = t; b < bins; b += kHistThreads)
    if (local[b]) atomicAdd(&hist[b], local[b]);
  if (!arrive_last(done)) return;
  for (int b = t; b < bins; b += kHistThreads) local[b] = __ldcg(&hist[b]);
  __syncthreads();
  const int per = bins / kHistThreads;  // 8 or 2 digits per thread; thread 0 the highest
  const int d_hi = bins - t * per, d_lo = d_hi - per;
  int32_t sum = 0;
  for (int d = d_lo; d < d_hi; ++d) sum += local[d];
  __shared__ int32_t scratch[kHistThreads];
  const int32_t above = block_exclusive_scan<kHistThreads>(sum, scratch);
  Selection s = start;
  if (select_digit_range(local, pass, d_lo, d_hi, above, s)) *selection = s;
}

// Per tile (a grid-stride loop over tiles): the keys above T and those equal to T (counts' two
// rows); the last block writes their inclusive prefix sums over the tiles, 1024 tiles per
// round (4 consecutive per thread, a warp-shuffle scan, the warps' totals, a carry).
__global__ void __launch_bounds__(kTileThreads)
    tile_count_kernel(const uint32_t* bits, int64_t n, const int64_t* seg_base, const int32_t* seg_count,
                      const Selection* selection, int32_t* counts, int64_t* inclusive, int64_t tiles, uint32_t* done,
                      Gate gate) {
  if (gate.closed()) return;
  const int t = static_cast<int>(threadIdx.x), warp = t / 32, lane = t % 32;
  const uint32_t threshold = selection->prefix;
  __shared__ int32_t sa[kTileThreads], se[kTileThreads];
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    int64_t lo, hi;
    tile_range(tile, n, seg_base, seg_count, lo, hi);
    int above = 0, ties = 0;
    for (int64_t i = lo + t; i < hi; i += kTileThreads) {  // strided: coalesced
      const uint32_t key = key_of(bits[i]);
      above += key > threshold;
      ties += key == threshold;
    }
    sa[t] = above;
    se[t] = ties;
    __syncthreads();
    for (int w = kTileThreads / 2; w > 0; w /= 2) {
      if (t < w) {
        sa[t] += sa[t + w];
        se[t] += se[t + w];
      }
      __syncthreads();
    }
    if (t == 0) {  // sa[0], se[0]: only thread 0 writes them next round
      counts[tile] = sa[0];
      counts[tiles + tile] = se[0];
    }
  }
  if (!arrive_last(done)) return;
  __shared__ int64_t warp_sums[kWarps];
  constexpr int kQuad = 4;
  for (int row = 0; row < 2; ++row) {
    const int32_t* c = counts + row * tiles;
    int64_t carry = 0;
    for (int64_t first = 0; first < tiles; first += kQuad * kTileThreads) {
      const int64_t i0 = first + kQuad * t;
      int64_t v[kQuad];
      for (int q = 0; q < kQuad; ++q) v[q] = (q ? v[q - 1] : 0) + (i0 + q < tiles ? __ldcg(&c[i0 + q]) : 0);
      int64_t incl = v[kQuad - 1];  // inclusive over the warp's threads
      for (int d = 1; d < 32; d *= 2) {
        const int64_t other = __shfl_up_sync(0xffffffffu, incl, d);
        if (lane >= d) incl += other;
      }
      if (lane == 31) warp_sums[warp] = incl;
      __syncthreads();
      int64_t before = carry + incl - v[kQuad - 1], total = 0;
      for (int w = 0; w < kWarps; ++w) {
        if (w < warp) before += warp_sums[w];
        total += warp_sums[w];
      }
      for (int q = 0; q < kQuad; ++q)
        if (i0 + q < tiles) inclusive[row * tiles + i0 + q] = before + v[q];
      carry += total;
      __syncthreads();  // warp_sums is rewritten next round
    }
  }
}

// Per tile (a grid-stride loop over tiles): its taken indices at their output positions.
__global__ void __launch_bounds__(kTileThreads)
    write_kernel(const uint32_t* bits, int64_t n, const int64_t* seg_base, const int32_t* seg_count,
                 const Selection* selection, const int32_t* counts, const int64_t* inclusive, int64_t tiles,
                 const int32_t* map, int32_t* out, int64_t k, Gate gate) {
  if (gate.closed()) return;
  const int t = static_cast<int>(threadIdx.x);
  const uint32_t threshold = selection->prefix;
  const int64_t need = selection->remaining;
  __shared__ int scratch[kTileThreads];
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t ties_before = inclusive[tiles + tile] - counts[tiles + tile];
    // Nothing taken here: the same answer for every thread of the block, so it skips whole.
    if (counts[tile] == 0 && (counts[tiles + tile] == 0 || ties_before >= need)) continue;
    int64_t lo, hi;
    tile_range(tile, n, seg_base, seg_count, lo, hi);
    const int64_t taken_before = inclusive[tile] - counts[tile] + min(need, ties_before);
    int64_t i0, i1;
    chunk_bounds(lo, hi, t, i0, i1);
    const int64_t tie_base =
        ties_before + block_exclusive_scan<kTileThreads>(chunk_ties(bits, i0, i1, threshold), scratch);
    const int taken = chunk_taken(bits, i0, i1, threshold, need, tie_base);
    const int64_t pos = taken_before + block_exclusive_scan<kTileThreads>(taken, scratch);
    chunk_write(bits, i0, i1, threshold, need, tie_base, map, out, pos, k);
  }
}

// The sample's keys, sorted by one block; the key of rank plan.rank from the top is t.
__global__ void __launch_bounds__(kSampleThreads) sample_kernel(const uint32_t* bits, SamplePlan plan, State* state) {
  using Sort = cub::BlockRadixSort<uint32_t, kSampleThreads, kSampleItems>;
  __shared__ typename Sort::TempStorage temp;
  const int64_t m = plan.strata * kSampleRun;
  uint32_t keys[kSampleItems];
  for (int i = 0; i < kSampleItems; ++i) {
    const int64_t s = static_cast<int64_t>(threadIdx.x) * kSampleItems + i;
    keys[i] = s < m ? key_of(bits[sample_position(plan, s / kSampleRun, static_cast<int>(s % kSampleRun))]) : 0u;
  }
  // Sorted by bits [kSampleLowBits, 31) only (keys are below 2^31): the key at the rank has the
  // right high bits, which are all sample_threshold keeps. Padding zeros sort first, below every
  // rank <= m from the top.
  Sort(temp).Sort(keys, kSampleLowBits, 31);  // blocked: thread j holds ranks [j items, (j + 1) items)
  const int at = kSampleMax - plan.rank;
  if (at / kSampleItems == static_cast<int>(threadIdx.x)) {
    for (int i = 0; i < kSampleItems; ++i)  // constant indices: keys stay in registers
      if (i == at % kSampleItems) state->t = sample_threshold(keys[i]);
  }
}

// The collection: x tile `blockIdx.x`'s keys >= t, in index order, into a segment of the
// candidate buffer reserved with one atomic add (positions past capacity are only counted);
// the last block sets State::outcome (and, for a zero fill, T = 0 and need over x).
// Loads are striped (round j: elements lo + 256 j + thread, coalesced); a round's elements are in
// index order by (warp, lane), so the ballots of 16 rounds x 8 warps, scanned in (round, warp)
// order, place every candidate.
__global__ void __launch_bounds__(kTileThreads)
    collect_kernel(const uint32_t* bits, int64_t n, int64_t k, State* state, int32_t* indices, uint32_t* keys,
                   int64_t capacity, int64_t* seg_base, int32_t* seg_count) {
  const int64_t tile = blockIdx.x, lo = tile * kTile;
  const int t = static_cast<int>(threadIdx.x), warp = t / 32, lane = t % 32;
  const uint32_t threshold = state->t;
  uint32_t key[kPerThread], mask[kPerThread];
  __shared__ int32_t offsets[kPerThread * kWarps];
  __shared__ int64_t base;
#pragma unroll
  for (int j = 0; j < kPerThread; ++j) {
    const int64_t i = lo + j * kTileThreads + t;
    key[j] = i < n ? key_of(bits[i]) : 0u;
    mask[j] = __ballot_sync(0xffffffffu, i < n && key[j] >= threshold);
    if (lane == 0) offsets[j * kWarps + warp] = __popc(mask[j]);
  }
  __syncthreads();
  if (warp == 0) {  // exclusive scan of the 128 counts: 4 consecutive per lane, then across lanes
    constexpr int kPer = kPerThread * kWarps / 32;
    int32_t c[kPer], sum = 0;
#pragma unroll
    for (int q = 0; q < kPer; ++q) sum += c[q] = offsets[lane * kPer + q];
    int32_t inclusive = sum;
#pragma unroll
    for (int d = 1; d < 32; d *= 2) {
      const int32_t other = __shfl_up_sync(0xffffffffu, inclusive, d);
      if (lane >= d) inclusive += other;
    }
    int32_t run = inclusive - sum;
#pragma unroll
    for (int q = 0; q < kPer; ++q) {
      offsets[lane * kPer + q] = run;
      run += c[q];
    }
    if (lane == 31) {
      base = static_cast<int64_t>(atomicAdd(reinterpret_cast<unsigned long long*>(&state->count),
                                            static_cast<unsigned long long>(inclusive)));
      seg_count[tile] = inclusive;
    }
  }
  __syncthreads();
  if (t == 0) seg_base[tile] = base;
  const uint32_t below = (1u << lane) - 1u;
#pragma unroll
  for (int j = 0; j < kPerThread; ++j) {
    if (!(mask[j] >> lane & 1u)) continue;
    const int64_t pos = base + offsets[j * kWarps + warp] + __popc(mask[j] & below);
    if (pos < capacity) {
      indices[pos] = static_cast<int32_t>(lo + j * kTileThreads + t);
      keys[pos] = key[j];
    }
  }
  if (arrive_last(&state->done[2 * (kPasses + 1)]) && t == 0) {
    const auto count = static_cast<int64_t>(__ldcg(reinterpret_cast<const unsigned long long*>(&state->count)));
    const int32_t outcome = sample_outcome(count, k, capacity, threshold);
    if (outcome == kZeroFill) state->full = zero_fill_selection(k, count);
    state->outcome = outcome;
  }
}

int64_t tiles_of(int64_t n) { return (n + kTile - 1) / kTile; }

// The exact path over one stage's keys: three histograms (each ending in its digit's
// selection), the tile counts (ending in their prefix sums), the write. done: the stage's
// kPasses + 1 block counters.
void run_exact(const Stage& st, int64_t k, uint32_t* done, int32_t* out, cudaStream_t s, Marks* marks,
               const char* const names[3]) {
  const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>(2048, (st.n + 16 * kHistThreads - 1) / (16 * kHistThreads)));
  for (int pass = 0; pass < kPasses; ++pass)
    histogram_kernel<<<static_cast<unsigned>(blocks), kHistThreads, 0, s>>>(
        st.bits, st.n, st.n_dev, pass, st.selection, st.hist + pass * kMaxBins, static_cast<int32_t>(k), done + pass,
        st.select_gate.flag ? st.select_gate : st.gate);
  mark(marks, names[0], s);
  const auto grid = static_cast<unsigned>(std::min(st.tiles, kMaxTileBlocks));
  tile_count_kernel<<<grid, kTileThreads, 0, s>>>(st.bits, st.n, st.seg_base, st.seg_count, st.selection, st.counts,
                                                   st.inclusive, st.tiles, done + kPasses, st.gate);
  mark(marks, names[1], s);
  write_kernel<<<grid, kTileThreads, 0, s>>>(st.bits, st.n, st.seg_base, st.seg_count, st.selection, st.counts,
                                              st.inclusive, st.tiles, st.map, out, k, st.gate);
  mark(marks, names[2], s);
}

// Workspace layout, in bytes from its start (each piece aligned to 256).
struct Layout {
  SamplePlan plan;
  size_t state = 0, hist = 0, counts = 0, inclusive = 0, cand_indices = 0, cand_keys = 0, seg_base = 0,
         seg_count = 0, total = 0;
};

Layout layout_of(int64_t n, int64_t k, int64_t sampled_min_n) {
  Layout l;
  l.plan = plan_sample(n, k, sampled_min_n);
  size_t at = 0;
  auto take = [&at](size_t bytes) {
    const size_t here = at;
    at += (bytes + 255) / 256 * 256;
    return here;
  };
  l.state = take(sizeof(State));
  l.hist = take(2 * kHistRegion * sizeof(int32_t));  // the candidates' stage, then x's
  // Both stages count per x tile; only one of them runs, so they share counts and prefix sums.
  const int64_t tiles = tiles_of(n);
  l.counts = take(2 * tiles * sizeof(int32_t));
  l.inclusive = take(2 * tiles * sizeof(int64_t));
  if (l.plan.strata > 0) {
    l.cand_indices = take(l.plan.capacity * sizeof(int32_t));
    l.cand_keys = take(l.plan.capacity * sizeof(uint32_t));
    l.seg_base = take(tiles * sizeof(int64_t));
    l.seg_count = take(tiles * sizeof(int32_t));
  }
  l.total = at;
  return l;
}

}  // namespace

size_t cuda_topk_workspace_bytes(int64_t n, int64_t k, int64_t sampled_min_n) {
  return layout_of(n, k, sampled_min_n).total;
}

namespace {
int run_topk(const float* x, int64_t n, int64_t k, int64_t sampled_min_n, void* workspace, size_t workspace_bytes,
             int32_t* out, cudaStream_t s, Marks* marks) {
  mark(marks, "start", s);
  const Layout l = layout_of(n, k, sampled_min_n);
  if (workspace_bytes < l.total || reinterpret_cast<uintptr_t>(workspace) % 256 != 0) return cudaErrorInvalidValue;
  auto* base = static_cast<char*>(workspace);
  auto* state = reinterpret_cast<State*>(base + l.state);
  auto* hist = reinterpret_cast<int32_t*>(base + l.hist);
  const auto* bits = reinterpret_cast<const uint32_t*>(x);
  // The state and both stages' histograms are adjacent: one memset.
  cudaError_t e = cudaMemsetAsync(base + l.state, 0, l.hist - l.state + 2 * kHistRegion * sizeof(int32_t), s);
  if (e != cudaSuccess) return e;
  mark(marks, "memset", s);
  const int64_t tiles = tiles_of(n);
  auto* counts = reinterpret_cast<int32_t*>(base + l.counts);
  auto* inclusive = reinterpret_cast<int64_t*>(base + l.inclusive);
  Stage over_x;  // the exact path over x (alone, or the sampled path's fallback)
  over_x.bits = bits;
  over_x.n = n;
  over_x.tiles = tiles;
  over_x.hist = hist + kHistRegion;
  over_x.selection = &state->full;
  over_x.counts = counts;
  over_x.inclusive = inclusive;
  if (l.plan.strata > 0) {
    const int64_t cap = l.plan.capacity;
    auto* indices = reinterpret_cast<int32_t*>(base + l.cand_indices);
    auto* keys = reinterpret_cast<uint32_t*>(base + l.cand_keys);
    auto* seg_base = reinterpret_cast<int64_t*>(base + l.seg_base);
    auto* seg_count = reinterpret_cast<int32_t*>(base + l.seg_count);
    sample_kernel<<<1, kSampleThreads, 0, s>>>(bits, l.plan, state);
    mark(marks, "sample", s);
    collect_kernel<<<static_cast<unsigned>(tiles), kTileThreads, 0, s>>>(bits, n, k, state, indices, keys, cap,
                                                                         seg_base, seg_count);
    mark(marks, "collect", s);
    Stage candidates = over_x;  // the exact path over the candidates' segments, written through indices
    candidates.bits = keys;
    candidates.n = cap;
    candidates.n_dev = &state->count;
    candidates.seg_base = seg_base;
    candidates.seg_count = seg_count;
    candidates.map = indices;
    candidates.gate = Gate{&state->outcome, bit(kCandidates)};
    candidates.hist = hist;
    candidates.selection = &state->candidates;
    static const char* const kCandidateNames[3] = {"candidates_histograms", "candidates_count", "candidates_write"};
    run_exact(candidates, k, state->done, out, s, marks, kCandidateNames);
    over_x.gate = Gate{&state->outcome, bit(kMissed) | bit(kZeroFill)};
    over_x.select_gate = Gate{&state->outcome, bit(kMissed)};
  }
  static const char* const kFullNames[3] = {"x_histograms", "x_count", "x_write"};
  run_exact(over_x, k, state->done + kPasses + 1, out, s, marks, kFullNames);
  return cudaGetLastError();
}
}  // namespace

int cuda_topk(const float* x, int64_t n, int64_t k, int64_t sampled_min_n, void* workspace, size_t workspace_bytes,
              int32_t* out, void* stream) {
  return run_topk(x, n, k, sampled_min_n, workspace, workspace_bytes, out, static_cast<cudaStream_t>(stream), nullptr);
}

int cuda_topk_profile(const float* x, int64_t n, int64_t k, int64_t sampled_min_n, void* workspace,
                      size_t workspace_bytes, int32_t* out, void* stream, std::string& report) {
  Marks marks;
  auto s = static_cast<cudaStream_t>(stream);
  int e = run_topk(x, n, k, sampled_min_n, workspace, workspace_bytes, out, s, &marks);
  if (e == cudaSuccess) e = cudaStreamSynchronize(s);
  report.clear();
  for (int i = 1; i < marks.count && e == cudaSuccess; ++i) {
    float ms = 0;
    e = cudaEventElapsedTime(&ms, marks.events[i - 1], marks.events[i]);
    char item[96];
    std::snprintf(item, sizeof item, "%s\"%s\": %.4f", report.empty() ? "" : ", ", marks.names[i], ms);
    report += item;
  }
  return e;
}

}  // namespace condense::topk_radix
