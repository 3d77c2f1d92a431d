#!/usr/bin/env python3
"""One plot of held-out perplexity versus KV-cache bytes per token for every KV-compression
method, merged from several `bench/kv_compress.py --json` results of the same model (stages run
at different times write separate files; each carries its own measurement of the original).

    .venv/bin/python bench/kv_plot.py --png bench/kv_smollm2_all.png --title SmolLM2-135M \\
        bench/out/kv_smollm2/result.json bench/out/kv_smollm2/result_cskv.json ...

A method appearing in several files keeps the points of the last file that has it (later runs
supersede earlier ones). Perplexities are plotted relative to each file's own original, so runs
whose evaluation of the original differs in the last digit still line up.
"""
from __future__ import annotations

import argparse
import json
import math


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+", help="kv_compress.py --json files")
    ap.add_argument("--png", required=True)
    ap.add_argument("--title", default="KV-cache compression")
    a = ap.parse_args()

    by_method = {}
    original = None
    for path in a.results:
        with open(path) as f:
            j = json.load(f)
        base = j["base"]
        pts = {}
        for p in j["points"]:
            if p["method"] == "original":
                original = (p["bytes"], 0.0)
                continue
            ratio = 100 * (math.exp(p["loss"] - base) - 1)
            pts.setdefault(p["method"], []).append((p["bytes"], ratio))
        by_method.update(pts)

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(10, 5))
    colors = plt.get_cmap("tab20").colors
    markers = "osD^vP*Xh<>"
    for i, (method, pts) in enumerate(by_method.items()):
        pts.sort()
        ax.plot([b for b, _ in pts], [r for _, r in pts], "-", marker=markers[i % len(markers)],
                color=colors[i % len(colors)], label=method, ms=5)
    if original:
        ax.plot([original[0]], [0], "k*", ms=10, label="original")
    ax.axhline(0, color="grey", ls="--", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("symlog", linthresh=10)
    ax.set_xlabel("KV cache bytes per token (f16 count; int8 with scales)")
    ax.set_ylabel("held-out perplexity vs original (%)")
    ax.set_title(a.title)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(a.png, dpi=110)
    print(f"wrote {a.png}: {len(by_method)} methods")


if __name__ == "__main__":
    main()
