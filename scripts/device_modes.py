#!/usr/bin/env python3
"""The exchange modes end to end on a device, against the same runs on the CPU (a step of
scripts/device_check.sh).

For each mode below, `condense train` runs a tiny model (the quickstart recipe at hidden size 64,
2 layers, sequences of 32) for 12 steps on --device with comm.backend nccl (a world of one: its
collectives, including the all-to-all and the gathers of the checkpoint's per-rank state, run on
the device), writing a checkpoint at steps 6 and 12; then the same command on the CPU (backend
self). Per mode it prints one JSON line and fails (exit 1) when a run fails, when the first
step's losses differ by more than 1e-4 relative (the same initial weights and batch: only
rounding differs), when the last step's differ by more than 2e-2 relative (12 steps of rounding
amplified by AdamW and the compressors: a loose bound for gross differences only; the CUDA tests
in tests/test_cuda_comm.cpp check the modes' arithmetic closely), when a run's last loss is not
below its first, when the payload bytes
of any step differ (the same exchanges on both), or when the device run writes no checkpoint at
step 12.

    python3 scripts/device_modes.py --bin BUILD/condense --store STORE.h5 --work DIR [--device cuda]

--device cpu compares the CPU with itself (a dry run of this script where no GPU is).
"""
import argparse
import json
import pathlib
import shutil
import subprocess
import sys

# A world of one exchanges only in these modes (plain data parallelism skips its exchange). 0/1
# Adam refreshes v at steps 1-6, 8, 10 and 12: with only two refreshes before the first frozen
# step (var_update_scaler 2) this tiny model diverges on the CPU as well, codec none included.
MODES = {
    "diloco sparseloco 2-bit/ef": {"comm.sync.mode": "diloco", "comm.sync.inner_steps": 4,
                                   "comm.compression.codec": "sparseloco", "comm.compression.chunk": 64,
                                   "comm.compression.ratio": 0.05, "comm.compression.bits": 2,
                                   "comm.compression.error_control": "ef", "comm.compression.decay": 0.95},
    "onebit_adam sign/ef compressed_all_reduce": {
        "comm.sync.mode": "onebit_adam", "comm.sync.freeze_steps": 4, "comm.compression.codec": "sign",
        "comm.compression.error_control": "ef", "comm.compression.collective": "compressed_all_reduce"},
    "zero_one_adam qsgd/ef": {"comm.sync.mode": "zero_one_adam", "comm.sync.freeze_steps": 12,
                              "comm.sync.var_update_scaler": 6, "comm.compression.codec": "qsgd",
                              "comm.compression.error_control": "ef"},
}


def overrides(store, out_dir, device, threads, extra):
    o = {"out_dir": out_dir, "data.dataset": store, "data.seq_len": 32, "data.batch_size": 4,
         "model.hidden_size": 64, "model.intermediate_size": 128, "model.num_hidden_layers": 2,
         "model.num_attention_heads": 4, "model.num_key_value_heads": 2,
         "model.max_position_embeddings": 64, "train.steps": 12, "train.warmup_steps": 3,
         "train.eval_every": 0, "train.log_every": 1, "train.threads": threads,
         "checkpoint.every": 6, "checkpoint.keep": 4, "train.device": device,
         "comm.backend": "self" if device == "cpu" else "nccl"}
    o.update(extra)
    return [f"{k}={v}" for k, v in o.items()]


def train_rows(out_dir):
    p = pathlib.Path(out_dir) / "metrics.jsonl"
    if not p.exists():
        return []
    rows = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("split") == "train"]


def run(args, name, device, extra):
    out = pathlib.Path(args.work) / f"{name.split()[0]}_{device.replace(':', '')}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [args.bin, "train", args.recipe, *overrides(args.store, out, device, args.threads, extra)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    if p.returncode != 0:
        sys.stderr.write(f"{name} on {device}: rc {p.returncode}\n{p.stderr[-3000:]}\n")
    return p.returncode, train_rows(out), out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", required=True)
    ap.add_argument("--store", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--recipe", default="recipes/quickstart.yaml")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--timeout", type=int, default=120)
    args = ap.parse_args()
    pathlib.Path(args.work).mkdir(parents=True, exist_ok=True)
    failed = 0
    for name, extra in MODES.items():
        rc_dev, dev, dev_dir = run(args, name, args.device, extra)
        rc_cpu, cpu, _ = run(args, name, "cpu", extra)
        r = {"mode": name, "device": args.device, "rc_device": rc_dev, "rc_cpu": rc_cpu,
             "steps_device": len(dev), "steps_cpu": len(cpu)}
        problems = []
        if rc_dev or rc_cpu or len(dev) != 12 or len(cpu) != 12:
            problems.append("a run failed or logged other than 12 steps")
        else:
            rel = [abs(d["loss"] - c["loss"]) / abs(c["loss"]) for d, c in zip(dev, cpu)]
            r.update(loss_first_device=dev[0]["loss"], loss_first_cpu=cpu[0]["loss"],
                     loss_last_device=dev[-1]["loss"], loss_last_cpu=cpu[-1]["loss"],
                     rel_diff_first=rel[0], rel_diff_last=rel[-1], rel_diff_max=max(rel))
            if rel[0] > 1e-4:
                problems.append("first-step losses differ")
            if rel[-1] > 2e-2:
                problems.append("last-step losses differ")
            if dev[-1]["loss"] >= dev[0]["loss"] or cpu[-1]["loss"] >= cpu[0]["loss"]:
                problems.append("the loss did not fall")
            bytes_dev = [d.get("comm_bytes") for d in dev]
            bytes_cpu = [c.get("comm_bytes") for c in cpu]
            r["comm_bytes_device"] = bytes_dev
            if bytes_dev != bytes_cpu:
                problems.append(f"payload bytes differ (cpu {bytes_cpu})")
            if not (dev_dir / "checkpoints" / "step_000012.h5").exists():
                problems.append("no checkpoint at step 12 on the device")
        r["ok"] = not problems
        r["problems"] = problems
        failed += bool(problems)
        print(json.dumps(r), flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
