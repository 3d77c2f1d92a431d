"""Plots bench/memory_bench.csv (written by memory_bench): peak activation memory versus step
time of every memory policy, one panel per sequence length, to bench/memory_policies.png.

Usage: python bench/plot_memory.py [memory_bench.csv] [out.png]   (needs matplotlib)
"""
import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else "bench/memory_bench.csv"
    out = sys.argv[2] if len(sys.argv) > 2 else "bench/memory_policies.png"
    rows = [r for r in csv.DictReader(open(src)) if r["seq_len"] != "loss32k"]
    lengths = sorted({int(r["seq_len"]) for r in rows})
    fig, axes = plt.subplots(1, len(lengths), figsize=(6 * len(lengths), 4.5))
    for ax, t in zip(axes if len(lengths) > 1 else [axes], lengths):
        pts = [r for r in rows if int(r["seq_len"]) == t]
        base = next(r for r in pts if r["policy"] == "baseline")
        for r in pts:
            x = float(r["step_s"]) / float(base["step_s"])
            y = float(r["held_activation_mb"])
            ax.scatter(x, y, color="tab:red" if r["policy"] == "baseline" else "tab:blue")
            ax.annotate(r["policy"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel("step time / baseline (forward + backward)")
        ax.set_ylabel("activation memory held after forward (MiB)")
        ax.set_title(f"quickstart model, seq_len {t}, 4096 tokens/step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    print("wrote", out)


if __name__ == "__main__":
    main()
