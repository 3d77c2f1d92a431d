#!/usr/bin/env python3
"""Final checkpoints of several runs on validation windows none of them validated on.

    .venv/bin/python bench/heldout_eval.py --skip-batches 32 bench/out/conv1000/dense \
        bench/out/conv1000/demo-32of4096-2bit-lr4.5e-3 ...

A training run validates on the first eval_batches x ranks batches of the validation split
(data/loader.cpp: batch k of rank r holds windows k*b*n + r*b ..), so hyperparameters picked by
that loss are picked on those windows. `condense eval --skip-batches K` (one process, the
recipe's batch size b) starts past them: K = eval_batches x ranks. This prints, per run, the
final validation loss from its metrics next to the loss on all the windows after those, and
each one's gap to the first run (the reference, e.g. dense).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="run directories; the first is the reference")
    ap.add_argument("--skip-batches", type=int, required=True,
                    help="validation batches the runs validated on (eval_batches x ranks)")
    ap.add_argument("--condense", default=str(REPO / "build" / "condense"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    rows = []
    for run in map(Path, args.runs):
        records = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
        val = [r for r in records if r["split"] == "val"]
        p = subprocess.run([args.condense, "eval", str(run), "--batches", "0",
                            "--skip-batches", str(args.skip_batches)],
                           capture_output=True, text=True,
                           env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
        if p.returncode != 0:
            sys.exit(f"{run}: condense eval failed:\n{p.stderr[-2000:]}")
        ev = json.loads(p.stdout)
        rows.append((run.name, val[-1]["loss"], ev["val_loss"], ev["tokens"]))
    ref = rows[0]
    print(f"held-out: validation windows after the first {args.skip_batches} batches "
          f"({ref[3]} tokens); reference {ref[0]}\n")
    print("| run | final val loss (run's windows) | vs reference | held-out loss | vs reference |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, v, h, _ in rows:
        print(f"| {name} | {v:.4f} | {100 * (v / ref[1] - 1):+.2f}% | {h:.4f} | {100 * (h / ref[2] - 1):+.2f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
