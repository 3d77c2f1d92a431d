#!/usr/bin/env python3
"""Validation loss against wall-clock time on the link simulator, from a comm_wallclock race.

    .venv/bin/python bench/plot_time_to_target.py --race bench/out/wc/race_4n.json \
        --race bench/out/wc/race_2n.json \
        --curve 4:condense:demo=bench/out/conv2000/demo-32of4096-2bit-lr4.5e-3/metrics.jsonl \
        --curve 4:ddp-powersgd=bench/out/wc/ddp_psgd_2000_4n.json \
        --target 4=3.2333 --target 2=3.5995 --out bench/time_to_target.png

A loss trajectory does not depend on the link, only the time per step does. Each --curve gives a
contender's (step, validation loss) on N nodes from a long run without the simulator (condense's
metrics.jsonl or comm_wallclock's --json-out); each --race gives the step times comm_wallclock
measured on the simulator. The x axis is step x the median measured step time of that contender
on N nodes at that rate (validation time excluded), the same projection as comm_wallclock's
"Projected time to target" table; one panel per (nodes, rate), the dense run's final validation
loss (--target) as a horizontal line.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from comm_wallclock import kept, median, projection_table, read_curve  # noqa: E402


def rate_key(rate: str) -> float:
    units = {"kbit": 1e3, "mbit": 1e6, "gbit": 1e9}
    for u, f in units.items():
        if rate.endswith(u):
            return float(rate[: -len(u)]) * f
    return float("inf")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--race", action="append", required=True, help="comm_wallclock --json-out file")
    ap.add_argument("--curve", action="append", required=True, metavar="N:CONTENDER=PATH")
    ap.add_argument("--target", action="append", default=[], metavar="N=LOSS",
                    help="dense final validation loss on N nodes, drawn as a line")
    ap.add_argument("--out", required=True, help="PNG path")
    args = ap.parse_args()

    runs = [r for path in args.race for r in json.loads(Path(path).read_text())["runs"] if r.get("ok")]
    step_s = {}  # (nodes, rate, contender) -> median step seconds
    for r in runs:
        step_s.setdefault((r["ranks"], r["rate"], r["contender"]), []).extend(kept(r))
    step_s = {k: median(v) for k, v in step_s.items()}
    curves = {}
    for c in args.curve:
        nodes, _, rest = c.partition(":")
        contender, _, path = rest.partition("=")
        if not (nodes.isdigit() and contender and Path(path).exists()):
            ap.error(f"--curve wants N:CONTENDER=PATH with an existing PATH, got '{c}'")
        curves[(int(nodes), contender)] = read_curve(Path(path))
    targets = {}
    for t in args.target:
        n, _, loss = t.partition("=")
        targets[int(n)] = float(loss)

    panels = sorted({(n, rate) for (n, rate, c) in step_s if (n, c) in curves},
                    key=lambda p: (p[0], rate_key(p[1])))
    if not panels:
        sys.exit("no (nodes, rate) has both a measured step time (--race) and a --curve")
    # The table: comm_wallclock's own projection, once per node count (each has its target).
    for n in sorted({n for n, _ in panels} & set(targets)):
        table_args = argparse.Namespace(
            contenders=sorted({c for (cn, c) in curves if cn == n}), curves=curves,
            target_loss=targets[n], target_rtol=1e-4)
        print(projection_table(table_args, runs, [p for p in panels if p[0] == n])[0], end="\n\n")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cols = len({rate for _, rate in panels})
    rows = len({n for n, _ in panels})
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4 * rows), squeeze=False)
    rates = sorted({rate for _, rate in panels}, key=rate_key)
    nodes = sorted({n for n, _ in panels})
    for n, rate in panels:
        ax = axes[nodes.index(n)][rates.index(rate)]
        for (cn, contender), curve in sorted(curves.items()):
            s = step_s.get((n, rate, contender))
            if cn != n or s is None:
                continue
            xs = [step * s for step, _ in curve]
            ax.plot(xs, [l for _, l in curve], marker="o", ms=3,
                    label=f"{contender} ({s * 1e3:.0f} ms/step)")
        if n in targets:
            ax.axhline(targets[n], color="black", lw=0.8, ls=":", label=f"dense final {targets[n]:.4f}")
        ax.set_title(f"{n} nodes, {rate}")
        ax.set_xlabel("projected training time, s (step x measured median step time)")
        ax.set_ylabel("validation loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out} ({len(panels)} panels)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
