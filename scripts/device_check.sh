#!/usr/bin/env bash
# The on-device check of condense's GPU path (README "GPU"), for a machine with one NVIDIA GPU,
# a Python whose torch is 2.11.0 with CUDA 13 (the project's pin), and none of the Debian
# libraries condense links. Prepare here with `bash scripts/device_pack.sh` (prebuilt binaries,
# their libraries and a small token store in .device_pack/), then on the GPU machine, from the
# repository root with .device_pack beside it:
#
#   bash scripts/device_check.sh          # results under $OUT (default ./device_out)
#
# It runs, each under its own time limit, logging to $OUT/<step>.log:
#   gpu        the GPU, driver, torch; measured bf16 matmul rate (8192^3) and HBM copy rate
#   tests      the CUDA tests: test_cuda_memory (model vs CPU, recompute with the CUDA RNG,
#              pinned-host offload, memory meter, bf16 autocast), test_cuda_comm (codecs on
#              CUDA vs the CPU path, error control, one-rank NCCL collectives and watchdog,
#              GradientSync), test_cuda_local_update (DiLoCo, 1-bit / 0/1 Adam) and
#              test_cuda_kernels (condense's CUDA kernels vs the CPU paths)
#   modes      scripts/device_modes.py: DiLoCo, 1-bit Adam and 0/1 Adam through condense train
#              on the GPU (NCCL, one rank) against the same runs on the CPU (on the tensor-op
#              path if condense's CUDA kernels failed their tests)
#   codecs     codec throughput on 64M floats against the device-to-device copy rate: the
#              path the codecs take (Top-K, qsgd and sign through condense's CUDA kernels; Top-K
#              also with the kernels' exact path forced, topk_exact_path), then the tensor-op
#              path (codecs_tensor) for the comparison
#   memory     memory_bench --cuda: memory policies at SmolLM2-135M's shape, offload overlap of
#              every activation and of the layer inputs under full recomputation (fastest of 4)
#   train      condense train on SmolLM2-135M's decoder shape (30 x 576, 9/3 heads, FFN 1536;
#              the carried store's vocabulary of 4096), bf16 and fp32, batch 8 x 2048
#   peer       the PyTorch eager loop (bench/pytorch_eager_train.py: transformers' Llama, fused
#              AdamW, autocast bf16) on the same shape and batch
# and writes $OUT/device_check.md: one table of every measured number, with tokens/s ratios and
# MFU (model FLOPs per token 6N + 12 L d T, PaLM's convention, over the measured matmul rate).
# A failing step is recorded and the rest still run; the exit status is that of the tests.
# SANITIZE=1 adds compute-sanitizer (memcheck, racecheck) runs of the CUDA kernels' tests.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/device_out}
mkdir -p "$OUT"
PACK=${PACK:-.device_pack}
WORK=${WORK:-/tmp/condense_device}
STEPS=${STEPS:-25}
BATCH=${BATCH:-8}
SEQ=${SEQ:-2048}
export PYTHONUNBUFFERED=1

[[ -f $PACK/pack.tar.xz ]] || { echo "error: $PACK/pack.tar.xz missing: run scripts/device_pack.sh where condense builds and carry $PACK"; exit 2; }
PY=${PYTHON:-python3}
rm -rf "$WORK" && mkdir -p "$WORK" && tar -C "$WORK" -xJf "$PACK/pack.tar.xz"
TORCH_DIR=$($PY -c 'import torch, os; print(os.path.dirname(torch.__file__))') || { echo "error: $PY has no torch"; exit 2; }
SITE=$(dirname "$TORCH_DIR")
export LD_LIBRARY_PATH="$WORK/lib:$TORCH_DIR/lib:$SITE/nvidia/cu13/lib:$SITE/nvidia/nccl/lib:${LD_LIBRARY_PATH:-}"
BIN=$WORK/bin
STORE=$(ls "$WORK"/data/*.h5 | head -1)
SUMMARY=$OUT/steps.tsv
: >"$SUMMARY"

# step NAME LIMIT_S COMMAND...: runs with a time limit, logs, records rc and seconds.
step() {
  local name=$1 limit=$2
  shift 2
  local t0=$SECONDS
  echo "== $name (limit ${limit}s)"
  timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" >>"$SUMMARY"
  tail -n 4 "$OUT/$name.log"
  echo "== $name: rc $rc in $((SECONDS - t0)) s"
  return $rc
}

step gpu 120 $PY - <<'EOF'
import json, time, subprocess, torch
print(subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                     capture_output=True, text=True).stdout.strip())
d = torch.device("cuda")
a = torch.randn(8192, 8192, device=d, dtype=torch.bfloat16); b = torch.randn_like(a)
for _ in range(3): a @ b
torch.cuda.synchronize(); t = time.perf_counter()
for _ in range(10): a @ b
torch.cuda.synchronize(); mm = 10 * 2 * 8192**3 / (time.perf_counter() - t)
x = torch.empty(1 << 28, device=d, dtype=torch.float32); y = torch.empty_like(x)
for _ in range(3): y.copy_(x)
torch.cuda.synchronize(); t = time.perf_counter()
for _ in range(10): y.copy_(x)
torch.cuda.synchronize(); cp = 10 * 2 * x.numel() * 4 / (time.perf_counter() - t)
print(json.dumps({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
                  "bf16_matmul_tflops": mm / 1e12, "copy_gbps": cp / 1e9}))
EOF

tests_rc=0
step test_cuda_memory 240 "$BIN/test_cuda_memory" --gtest_output=json:"$OUT/test_cuda_memory.json" || tests_rc=1
step test_cuda_comm 240 "$BIN/test_cuda_comm" --gtest_output=json:"$OUT/test_cuda_comm.json" || tests_rc=1
step test_cuda_local_update 240 "$BIN/test_cuda_local_update" --gtest_output=json:"$OUT/test_cuda_local_update.json" || tests_rc=1
kernels_ok=1
step test_cuda_kernels 240 "$BIN/test_cuda_kernels" --gtest_output=json:"$OUT/test_cuda_kernels.json" || { tests_rc=1; kernels_ok=0; }
# Opt-in (SANITIZE=1, minutes more): condense's CUDA kernels under compute-sanitizer's memcheck
# and racecheck, through their tests.
if [[ ${SANITIZE:-0} == 1 ]]; then
  CS=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  for tool in memcheck racecheck; do
    step "sanitize_$tool" 300 "$CS" --tool "$tool" --error-exitcode 1 "$BIN/test_cuda_kernels" \
      --gtest_filter='Cuda.*' || tests_rc=1
  done
fi
# The exchange modes (DiLoCo, 1-bit Adam, 0/1 Adam) through the trainer on the GPU over NCCL,
# against the same runs on the CPU.
# If condense's CUDA kernels failed their tests, the modes run on the tensor-op path instead
# (CONDENSE_CUDA_KERNELS=0), so that this step still tests the modes themselves; the codecs step
# below still times the kernels.
if [[ $kernels_ok == 0 ]]; then
  echo "test_cuda_kernels failed: the modes step runs with CONDENSE_CUDA_KERNELS=0" | tee "$OUT/modes_note.txt"
fi
CONDENSE_CUDA_KERNELS=$kernels_ok step modes 300 $PY scripts/device_modes.py --bin "$BIN/condense" \
  --store "$STORE" --work "$WORK/modes" --device cuda --threads 8 || tests_rc=1
step codecs 180 "$BIN/codec_device_bench" --device cuda --numel 67108864 --repeats 10
step codecs_tensor 180 "$BIN/codec_device_bench" --device cuda --numel 67108864 --repeats 10 --path tensor
# Smaller than the training batch: offload=host pins every saved activation in host memory.
step memory 240 "$BIN/memory_bench" --cuda "$OUT/memory_cuda.csv" 4 "${MEM_BATCH:-4}" "${MEM_SEQ:-1024}"

shape=(model.hidden_size=576 model.intermediate_size=1536 model.num_hidden_layers=30
       model.num_attention_heads=9 model.num_key_value_heads=3 model.max_position_embeddings=$SEQ
       model.rope_theta=100000 data.dataset="$STORE" data.seq_len=$SEQ data.batch_size=$BATCH
       train.steps=$STEPS train.warmup_steps=5 train.eval_every=0 train.log_every=5
       checkpoint.every=0 train.device=cuda)
for p in bf16 fp32; do
  rm -rf "$WORK/run_$p"
  step "train_$p" 300 "$BIN/condense" train recipes/quickstart.yaml out_dir="$WORK/run_$p" "${shape[@]}" train.precision=$p
  cp "$WORK/run_$p/metrics.jsonl" "$OUT/train_$p.metrics.jsonl" 2>/dev/null
done
step peer_bf16 300 $PY bench/pytorch_eager_train.py --device cuda --precision bf16 --steps "$STEPS" \
  --seq-len "$SEQ" --batch-size "$BATCH" --vocab-size 4096 --hidden-size 576 --intermediate-size 1536 \
  --layers 30 --heads 9 --kv-heads 3 --max-positions "$SEQ" --rope-theta 100000

# The table.
$PY - "$OUT" "$SEQ" <<'EOF' | tee "$OUT/device_check.md"
import json, pathlib, statistics, sys
out, T = pathlib.Path(sys.argv[1]), int(sys.argv[2])
def jlines(name):
    p = out / name
    if not p.exists(): return []
    rows = []
    for line in p.read_text().splitlines():
        line = line.strip()
        if line.startswith("{"):
            try: rows.append(json.loads(line))
            except ValueError: pass
    return rows
print("# device_check\n")
print("| step | rc | seconds |\n|---|---|---|")
for line in (out / "steps.tsv").read_text().splitlines():
    print("| " + " | ".join(line.split("\t")) + " |")
gpu = (jlines("gpu.log") or [{}])[-1]
print(f"\nGPU: {gpu.get('gpu')} torch {gpu.get('torch')}; bf16 matmul {gpu.get('bf16_matmul_tflops', 0):.0f} TFLOP/s, "
      f"copy {gpu.get('copy_gbps', 0):.0f} GB/s (read + write)\n")
for t in ["test_cuda_memory", "test_cuda_comm", "test_cuda_local_update", "test_cuda_kernels"]:
    p = out / f"{t}.json"
    if p.exists():
        r = json.loads(p.read_text())
        cases = [(s["name"], c) for s in r["testsuites"] for c in s["testsuite"]]
        skipped = sum(c.get("result") == "SKIPPED" for _, c in cases)
        failed = [f"{n}.{c['name']}" for n, c in cases if c.get("failures")]
        print(f"{t}: {len(cases)} tests, {len(cases) - skipped - len(failed)} passed, "
              f"{len(failed)} failed, {skipped} skipped")
        for f in failed: print(f"  FAILED {f}")
    else:
        print(f"{t}: no result")
print("\n## exchange modes on the GPU vs the CPU (scripts/device_modes.py)\n")
if (out / "modes_note.txt").exists(): print((out / "modes_note.txt").read_text())
for r in jlines("modes.log"): print("    " + json.dumps(r))
print("\n## codecs (64M floats)\n")
for r in jlines("codecs.log") + jlines("codecs_tensor.log"): print("    " + json.dumps(r))
print("\n## memory policies\n")
mem = out / "memory.log"
if mem.exists(): print(mem.read_text()[-4500:])
# Training throughput and MFU: 6N + 12 L d T FLOPs per token (N = matmul parameters, the tied
# lm head included, the embedding lookup not).
L, d, ff, V, kv = 30, 576, 1536, 4096, 192
N = L * (d * d * 2 + d * kv * 2 + 3 * d * ff) + V * d
flops_tok = 6 * N + 12 * L * d * T
peak = gpu.get("bf16_matmul_tflops", 0) * 1e12
def tps_condense(p):
    rows = [r for r in jlines(f"train_{p}.metrics.jsonl") if r.get("split") == "train"]
    v = [r["tokens_per_s"] for r in rows[5:]]
    return statistics.median(v) if v else None
peer = (jlines("peer_bf16.log") or [{}])[-1]
peer_tps = None
if peer.get("step_s"):
    s = sorted(peer["step_s"][5:]); peer_tps = peer["tokens_per_step"] / statistics.median(s)
print(f"\n## training, SmolLM2-135M decoder shape, {N / 1e6:.1f}M matmul parameters, {T} tokens per sequence\n")
print("| run | tokens/s (median, steps 6+) | MFU vs measured bf16 matmul | vs PyTorch eager bf16 |\n|---|---|---|---|")
for name, tps in [("condense bf16", tps_condense("bf16")), ("condense fp32", tps_condense("fp32")),
                  ("PyTorch eager bf16", peer_tps)]:
    if tps is None: print(f"| {name} | failed | | |"); continue
    mfu = tps * flops_tok / peak if peak else 0
    ratio = f"{tps / peer_tps:.2f}x" if peer_tps else "n/a"
    print(f"| {name} | {tps:.0f} | {100 * mfu:.1f}% | {ratio} |")
EOF
# Everything but the table and the CSV into one archive (the device tool returns few files).
(cd "$OUT" && tar -czf /tmp/condense_device_logs.tar.gz --exclude=device_check.md \
   --exclude=console.log --exclude=memory_cuda.csv . ; mv /tmp/condense_device_logs.tar.gz logs.tar.gz
   find . -maxdepth 1 -type f ! -name device_check.md ! -name console.log ! -name logs.tar.gz \
     ! -name memory_cuda.csv -delete)
echo "device_check: results in $OUT: device_check.md, memory_cuda.csv, logs.tar.gz (tests rc $tests_rc)"
exit $tests_rc
