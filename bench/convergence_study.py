#!/usr/bin/env python3
"""Convergence of compressed gradient exchange: validation loss versus bytes on the wire.

Rows: per-step codecs (the gradient), local-update training (DiLoCo with int8 / SparseLoCo
pseudo-gradients, comm.sync.mode=diloco), DeMo (sign step over decayed-EF chunked Top-K) and
1-bit Adam (comm.sync.mode=onebit_adam).

    .venv/bin/python bench/convergence_study.py --ranks 4 --steps 300

Trains the quickstart model (recipes/quickstart.yaml: 4 layers, hidden 256, GCIDE, vocab 4096)
on N ranks under mpirun once per configuration, all with the same seeds, data order, steps and
schedule; only comm.compression differs. Each run's metrics.jsonl gives the validation losses
(every --eval-every steps) and the bytes each rank put on the wire per step (comm_wire_bytes:
ring all-reduce 2(n-1)/n P, all-gather (n-1) P). Prints and appends to bench/RESULTS.md a table
of final validation loss (and its gap to the dense run) and total wire bytes per rank, and
writes bench/convergence_loss_vs_bytes.png (validation loss against cumulative bytes, log x)
and bench/convergence_loss_vs_step.png.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Local-update training (comm.sync.mode=diloco): keys with a dot are full recipe keys.
DILOCO = {"comm.sync.mode": "diloco", "comm.sync.outer.optimizer": "nesterov",
          "comm.sync.outer.lr": 0.7, "comm.sync.outer.momentum": 0.9}
# SparseLoCo: decayed EF buffer as the only momentum, outer SGD at lr 1.
SPARSELOCO = {"comm.sync.mode": "diloco", "comm.sync.outer.optimizer": "sgd",
              "comm.sync.outer.lr": 1.0, "comm.sync.outer.momentum": 0, "codec": "sparseloco",
              "error_control": "ef", "decay": 0.95}

# name -> comm.compression overrides (keys without a dot) and other recipe keys (with one).
# Top-K and Random-K keep 1% of each bucket.
CONFIGS = {
    "dense": {},
    "topk1%": {"codec": "topk", "ratio": 0.01},
    "topk1%+ef": {"codec": "topk", "ratio": 0.01, "error_control": "ef"},
    "topk1%/tensor+ef": {"codec": "topk", "ratio": 0.01, "scope": "tensor", "error_control": "ef"},
    "topk1%/tensor+econtrol(0.1)": {"codec": "topk", "ratio": 0.01, "scope": "tensor",
                                    "error_control": "econtrol", "eta": 0.1},
    "topk1%+ef(warmup50)": {"codec": "topk", "ratio": 0.01, "error_control": "ef", "warmup_steps": 50},
    "topk10%+ef": {"codec": "topk", "ratio": 0.1, "error_control": "ef"},
    "topk10%+econtrol(0.1)": {"codec": "topk", "ratio": 0.1, "error_control": "econtrol", "eta": 0.1},
    "topk1%+ef21": {"codec": "topk", "ratio": 0.01, "error_control": "ef21"},
    "topk1%+econtrol(0.01)": {"codec": "topk", "ratio": 0.01, "error_control": "econtrol", "eta": 0.01},
    "topk1%+econtrol(0.05)": {"codec": "topk", "ratio": 0.01, "error_control": "econtrol", "eta": 0.05},
    "topk1%+econtrol(0.1)": {"codec": "topk", "ratio": 0.01, "error_control": "econtrol", "eta": 0.1},
    "topk1%+econtrol(0.2)": {"codec": "topk", "ratio": 0.01, "error_control": "econtrol", "eta": 0.2},
    "topk1%+econtrol(0.5)": {"codec": "topk", "ratio": 0.01, "error_control": "econtrol", "eta": 0.5},
    "randk1%+ef": {"codec": "randk", "ratio": 0.01, "error_control": "ef"},
    "qsgd4bit": {"codec": "qsgd", "levels": 7},
    "sign+ef": {"codec": "sign", "error_control": "ef"},
    "powersgd4+ef": {"codec": "powersgd", "rank": 4, "error_control": "ef"},
    "diloco-H16": {**DILOCO, "comm.sync.inner_steps": 16},
    "diloco-H8-int8": {**DILOCO, "comm.sync.inner_steps": 8, "codec": "int8"},
    "diloco-H16-int8": {**DILOCO, "comm.sync.inner_steps": 16, "codec": "int8"},
    "diloco-H32-int8": {**DILOCO, "comm.sync.inner_steps": 32, "codec": "int8"},
    "diloco-H8-int8+ef": {**DILOCO, "comm.sync.inner_steps": 8, "codec": "int8",
                          "error_control": "ef"},
    "diloco-H16-int8+ef": {**DILOCO, "comm.sync.inner_steps": 16, "codec": "int8",
                           "error_control": "ef"},
    "diloco-H32-int8+ef": {**DILOCO, "comm.sync.inner_steps": 32, "codec": "int8",
                           "error_control": "ef"},
    "diloco-H16-int8+econtrol(0.2)": {**DILOCO, "comm.sync.inner_steps": 16, "codec": "int8",
                                      "error_control": "econtrol", "eta": 0.2},
    "sparseloco-H16-3%-2bit": {**SPARSELOCO, "comm.sync.inner_steps": 16, "ratio": 0.03, "bits": 2},
    "sparseloco-H16-1%-2bit": {**SPARSELOCO, "comm.sync.inner_steps": 16, "ratio": 0.01, "bits": 2},
    "sparseloco-H16-3%-4bit": {**SPARSELOCO, "comm.sync.inner_steps": 16, "ratio": 0.03, "bits": 4},
    "sparseloco-H16-3%-2bit+econtrol(0.2)": {**SPARSELOCO, "comm.sync.inner_steps": 16,
                                             "ratio": 0.03, "bits": 2, "error_control": "econtrol",
                                             "eta": 0.2, "decay": 1.0},  # decay is ef's alone
    # DeMo: decayed EF (the unsynchronized momentum) around chunked Top-K 32/4096 with fp32
    # values, sign step.
    "demo-32/4096": {"train.optimizer": "sign", "codec": "sparseloco", "bits": 32, "k": 32,
                     "chunk": 4096, "error_control": "ef", "decay": 0.999, "warmup_steps": 0},
    "demo-32of4096-lr1e-3": {"train.optimizer": "sign", "train.lr": 1e-3, "train.min_lr": 1e-4,
                             "codec": "sparseloco", "bits": 32, "k": 32, "chunk": 4096,
                             "error_control": "ef", "decay": 0.999, "warmup_steps": 0},
    "demo-32of4096-2bit": {"train.optimizer": "sign", "codec": "sparseloco", "bits": 2, "k": 32,
                           "chunk": 4096, "error_control": "ef", "decay": 0.999, "warmup_steps": 0},
    "demo-32of4096-2bit-lr6e-3": {"train.optimizer": "sign", "train.lr": 6e-3, "train.min_lr": 6e-4,
                                  "codec": "sparseloco", "bits": 2, "k": 32, "chunk": 4096,
                                  "error_control": "ef", "decay": 0.999, "warmup_steps": 0},
    "demo-32of4096-2bit-lr1e-2": {"train.optimizer": "sign", "train.lr": 1e-2, "train.min_lr": 1e-3,
                                  "codec": "sparseloco", "bits": 2, "k": 32, "chunk": 4096,
                                  "error_control": "ef", "decay": 0.999, "warmup_steps": 0},
    "demo-32of4096-2bit-lr4.5e-3": {"train.optimizer": "sign", "train.lr": 4.5e-3,
                                    "train.min_lr": 4.5e-4, "codec": "sparseloco", "bits": 2,
                                    "k": 32, "chunk": 4096, "error_control": "ef", "decay": 0.999,
                                    "warmup_steps": 0},
    "demo-32of4096-2bit-lr7.5e-3": {"train.optimizer": "sign", "train.lr": 7.5e-3,
                                    "train.min_lr": 7.5e-4, "codec": "sparseloco", "bits": 2,
                                    "k": 32, "chunk": 4096, "error_control": "ef", "decay": 0.999,
                                    "warmup_steps": 0},
    "demo-32of4096-2bit-lr4.5e-3-dct": {"train.optimizer": "sign", "train.lr": 4.5e-3,
                                        "train.min_lr": 4.5e-4, "codec": "sparseloco", "bits": 2,
                                        "k": 32, "chunk": 4096, "transform": "dct",
                                        "error_control": "ef", "decay": 0.999, "warmup_steps": 0},
    "demo-16of4096": {"train.optimizer": "sign", "codec": "sparseloco", "bits": 32, "k": 16,
                      "chunk": 4096, "error_control": "ef", "decay": 0.999, "warmup_steps": 0},
    # 1-bit Adam: 10% dense AdamW, then sign + EF on the momentum with v frozen.
    "onebit-adam": {"comm.sync.mode": "onebit_adam", "comm.sync.freeze_steps": 100,
                    "codec": "sign", "error_control": "ef", "warmup_steps": 0},
    # 0/1 Adam: dense AdamW steps at an interval that doubles every 16 refreshes (DeepSpeed's
    # var_update_scaler) up to step 1000, sign + EF on the momentum in between.
    "zero-one-adam": {"comm.sync.mode": "zero_one_adam", "comm.sync.var_update_scaler": 16,
                      "comm.sync.freeze_steps": 1000,
                      "codec": "sign", "error_control": "ef", "warmup_steps": 0},
}


def read_metrics(path: Path):
    train, val = [], []
    for line in path.read_text().splitlines():
        r = json.loads(line)
        (val if r.get("split") == "val" else train).append(r)
    return train, val


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--condense", default=str(REPO / "build" / "condense"))
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=4, help="per rank")
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10, help="comm.compression.warmup_steps")
    ap.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset")
    ap.add_argument("--out", default="/tmp/condense-convergence")
    ap.add_argument("--no-append", action="store_true")
    ap.add_argument("--plot-name", default="convergence",
                    help="plots go to bench/<plot-name>_loss_vs_{bytes,step}.png")
    ap.add_argument("--reuse", action="store_true", help="skip runs whose metrics already exist")
    ap.add_argument("--extra", default="", help="recipe overrides added to every run, e.g. "
                    "'train.optimizer=sgd train.lr=0.3'")
    args = ap.parse_args()

    names = [n for n in args.configs.split(",") if n]
    for n in names:
        if n not in CONFIGS:
            sys.exit(f"unknown config {n}; known: {', '.join(CONFIGS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = [f"name=conv", f"train.steps={args.steps}", f"train.eval_every={args.eval_every}",
            f"data.batch_size={args.batch_size}", "train.threads=1", "checkpoint.every=0",
            "train.log_every=50", *shlex.split(args.extra)]
    mpirun = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", str(args.ranks),
              "--mca", "mpi_yield_when_idle", "1", "--mca", "btl_vader_single_copy_mechanism", "none"]
    results = {}
    commands = []
    for name in names:
        run_dir = out / name.replace("%", "pct").replace("(", "_").replace(")", "").replace("/", "of")
        comp = dict(CONFIGS[name])
        overrides = [f"out_dir={run_dir}"] + base
        local = comp.get("comm.sync.mode") == "diloco"
        if comp and not local:  # warm-up counts exchanges in diloco: none there
            comp.setdefault("warmup_steps", args.warmup)
        overrides += [f"{k}={v}" if "." in k else f"comm.compression.{k}={v}" for k, v in comp.items()]
        cmd = [*mpirun, args.condense, "train", str(REPO / "recipes" / "quickstart.yaml"), *overrides]
        commands.append(shlex.join(cmd))
        metrics = run_dir / "metrics.jsonl"
        if not (args.reuse and metrics.exists()):
            if run_dir.exists():
                subprocess.run(["rm", "-rf", str(run_dir)], check=True)
            t0 = time.time()
            load0 = os.getloadavg()[0]
            p = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
            if p.returncode != 0:
                print(p.stderr[-3000:], file=sys.stderr)
                sys.exit(f"{name} failed ({p.returncode})")
            print(f"{name}: {time.time() - t0:.0f} s (load {load0:.1f} -> {os.getloadavg()[0]:.1f})",
                  file=sys.stderr)
        train, val = read_metrics(metrics)
        cum, total = {}, 0.0
        for r in train:
            total += r.get("comm_wire_bytes", 0.0)
            cum[r["step"]] = total
        results[name] = {
            "val": [(r["step"], r["loss"]) for r in val],
            "bytes_at": [cum[r["step"]] for r in val],
            "total_wire_bytes": total,
            "total_payload_bytes": sum(r.get("comm_bytes", 0.0) for r in train),
            "final_train_loss": train[-1]["loss"],
        }

    dense = results.get("dense")
    lines = ["| config | final val loss | vs dense | wire bytes per rank | vs dense |",
             "| --- | --- | --- | --- | --- |"]
    for name, r in results.items():
        v = r["val"][-1][1]
        gap = f"{100 * (v / dense['val'][-1][1] - 1):+.2f}%" if dense else "-"
        ratio = f"{dense['total_wire_bytes'] / r['total_wire_bytes']:.1f}x less" if dense and r["total_wire_bytes"] else "-"
        lines.append(f"| {name} | {v:.4f} | {gap} | {r['total_wire_bytes'] / 1e6:.1f} MB | {ratio} |")
    table = "\n".join(lines)
    print(table)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    colors = plt.get_cmap("tab20").colors
    for kind in ("bytes", "step"):
        fig, ax = plt.subplots(figsize=(9, 5.5))
        for i, (name, r) in enumerate(results.items()):
            ys = [l for _, l in r["val"]]
            xs = r["bytes_at"] if kind == "bytes" else [s for s, _ in r["val"]]
            if kind == "bytes":
                xs = [max(x, 1.0) / 1e6 for x in xs]
            ax.plot(xs, ys, marker="os^v"[i % 4], ms=3, label=name, color="black" if name == "dense" else colors[i % 20],
                    lw=2.4 if name == "dense" else 1.2, ls="-" if i % 2 == 0 else "--")
        if kind == "bytes":
            ax.set_xscale("log")
            ax.set_xlabel("cumulative bytes on the wire per rank (MB, log)")
        else:
            ax.set_xlabel("step")
        ax.set_ylabel("validation loss")
        ax.set_title(f"quickstart model, GCIDE, {args.ranks} ranks x batch {args.batch_size}, {args.steps} steps")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(REPO / "bench" / f"{args.plot_name}_loss_vs_{kind}.png", dpi=110)
    (out / "results.json").write_text(json.dumps(results, indent=1))

    if not args.no_append:
        with open(REPO / "bench" / "RESULTS.md", "a") as f:
            f.write(f"\n## Convergence of compressed gradient exchange ({dt.date.today()})\n\n")
            f.write(f"Command: `.venv/bin/python bench/convergence_study.py {' '.join(sys.argv[1:])}`  \n")
            f.write(f"Quickstart model on GCIDE, {args.ranks} ranks (mpirun, 1 thread each) x batch "
                    f"{args.batch_size} x seq 128, {args.steps} steps, same seeds; per-step compression "
                    f"starts after {args.warmup} dense steps (diloco rows: none; inner steps count "
                    f"as steps). Wire bytes: per rank, summed over steps. Plots: "
                    f"bench/{args.plot_name}_loss_vs_bytes.png, bench/{args.plot_name}_loss_vs_step.png.\n\n")
            f.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
