#!/usr/bin/env python3
"""Grouped-query attention in SDPA: repeated K/V versus enable_gqa, forward + backward.

    .venv/bin/python bench/sdpa_gqa.py [--threads 1] [--reps 25]

condense's attention (model/attention.cpp) calls at::scaled_dot_product_attention; this times
the same ATen op from Python for the quickstart shapes (4 query heads, 2 KV heads, head_dim 64,
causal): K/V repeated to 4 heads before the call (what condense did before) against
enable_gqa=True (what it does now, and what transformers does). Prints the median of --reps
forward+backward passes per shape, alternating the two variants over --rounds rounds, and the
kernel SDPA dispatched to.
"""
import argparse
import time

import torch


def one(q, k, v, gqa: bool) -> float:
    t0 = time.perf_counter()
    if gqa:
        o = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    else:
        rep = q.shape[1] // k.shape[1]
        o = torch.nn.functional.scaled_dot_product_attention(
            q, k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1), is_causal=True)
    o.sum().backward()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=25)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), median of {args.reps} fwd+bwd")
    print("| batch x seq | round | repeated K/V ms | enable_gqa ms | ratio |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for b, t in [(8, 128), (2, 512)]:
        q = torch.randn(b, 4, t, 64, requires_grad=True)
        k = torch.randn(b, 2, t, 64, requires_grad=True)
        v = torch.randn(b, 2, t, 64, requires_grad=True)
        for r in range(args.rounds):
            ms = {}
            for gqa in (False, True):
                times = sorted(one(q, k, v, gqa) for _ in range(args.reps))
                ms[gqa] = times[len(times) // 2] * 1e3
            print(f"| {b} x {t} | {r} | {ms[False]:.2f} | {ms[True]:.2f} | {ms[False] / ms[True]:.2f}x |")
    with torch.profiler.profile() as p:
        one(q, k, v, True)
    kernels = [e.key for e in p.key_averages() if "scaled_dot_product" in e.key and "_for_" in e.key]
    print("enable_gqa dispatches to:", ", ".join(kernels) or "(no fused kernel seen)")


if __name__ == "__main__":
    main()
