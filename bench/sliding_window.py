#!/usr/bin/env python3
"""Sliding-window attention over long texts: `condense score` (one forward, no KV cache) against
transformers' MistralForCausalLM forward (PyTorch eager, SDPA with its sliding-window mask) on the
same random Mistral-shaped model and text, side by side in one run.

Model: hidden 256, 4 layers, 4 heads / 2 KV heads, intermediate 688, every layer windowed, a
sentencepiece vocabulary of 1000 trained on GCIDE and fortunes (so the LM head does not dominate),
random weights. condense attends block by block past twice the window (model/attention.cpp:
blocked_window_attention), so its attention grows with T x window; transformers masks a full T x T
attention. condense's time is a whole `score` process, so its start-up (the same command on a
16-token text) is measured too and subtracted for the forward estimate; --baseline B adds another
condense binary (an earlier build) under the same protocol. Reported: medians of --reps runs per
contender, interleaved, and the 1-minute load average before and after.

usage: .venv/bin/python bench/sliding_window.py [--condense build/condense] [--baseline B]
       [--lengths 2048,4096] [--window 128] [--reps 5] [--no-append]
"""
import argparse
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests" / "python"))
from bench_common import cpu_model, finish_report, git_head  # noqa: E402
from tokenizer_texts import corpus  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--condense", default=str(ROOT / "build" / "condense"))
    ap.add_argument("--baseline", default="", help="another condense binary, measured the same way")
    ap.add_argument("--lengths", default="2048,4096")
    ap.add_argument("--window", type=int, default=128)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--results", default=str(ROOT / "bench" / "RESULTS.md"))
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()

    import sentencepiece as spm
    import torch
    import transformers
    torch.set_num_threads(os.cpu_count() or 1)
    work = pathlib.Path(tempfile.mkdtemp(prefix="condense-swa-"))
    texts, _ = corpus(set())
    lines = [l for name in ("gcide", "fortunes") for t in texts[name] for l in t.split("\n") if l.strip()]
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_prefix=str(work / "tokenizer"),
                                   model_type="bpe", vocab_size=1000, byte_fallback=True, num_threads=1,
                                   minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=str(work / "tokenizer.model"))
    torch.manual_seed(0)
    cfg = transformers.MistralConfig(vocab_size=sp.get_piece_size(), hidden_size=256, intermediate_size=688,
                                     num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                                     max_position_embeddings=8192, sliding_window=args.window,
                                     tie_word_embeddings=False)
    model = transformers.MistralForCausalLM(cfg).eval()
    hf = work / "hf"
    model.save_pretrained(hf, safe_serialization=True)
    (hf / "tokenizer.model").write_bytes((work / "tokenizer.model").read_bytes())
    ckpt = work / "m.h5"
    subprocess.run([args.condense, "import", str(hf), str(ckpt)], check=True, capture_output=True)

    def text_of(n):
        text = ""
        for line in lines:
            text += line + "\n"
            if len(sp.encode(text)) >= n:
                break
        ids = [sp.bos_id()] + sp.encode(text)[:n - 1]
        path = work / f"t{n}.txt"
        path.write_text(sp.decode(ids[1:]))
        return path, ids

    def cli(binary, path):
        t0 = time.perf_counter()
        subprocess.run([binary, "score", str(ckpt), "--text", str(path)], check=True, capture_output=True)
        return time.perf_counter() - t0

    def peer(ids):
        with torch.no_grad():
            t0 = time.perf_counter()
            model(torch.tensor([ids]))
            return time.perf_counter() - t0

    binaries = {"condense": args.condense}
    if args.baseline:
        binaries["baseline"] = args.baseline
    load_before = os.getloadavg()[0]
    short, _ = text_of(16)
    rows = []
    for n in [int(x) for x in args.lengths.split(",")]:
        path, ids = text_of(n)
        times = {k: [] for k in [*binaries, *[k + " start-up" for k in binaries], "transformers"]}
        peer(ids)  # warm-up
        for _ in range(args.reps):
            for name, b in binaries.items():
                times[name].append(cli(b, path))
                times[name + " start-up"].append(cli(b, short))
            times["transformers"].append(peer(ids))
        med = {k: statistics.median(v) for k, v in times.items()}
        fwd = {k: med[k] - med[k + " start-up"] for k in binaries}
        rows.append((len(ids), med, fwd))
    load_after = os.getloadavg()[0]

    lines_out = [f"\n## Sliding-window attention over long texts ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})\n",
                 f"Machine: {cpu_model()}, {os.cpu_count()} threads; commit {git_head()}; load "
                 f"{load_before:.2f} before, {load_after:.2f} after. Window {args.window}, {args.reps} "
                 f"interleaved repetitions, medians. condense forward = score process minus the same "
                 f"command on a 16-token text.\n",
                 "| tokens | contender | process s | start-up s | forward s (est.) | transformers forward s | "
                 "transformers / condense forward (> 1: condense faster) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for n, med, fwd in rows:
        for name in binaries:
            lines_out.append(f"| {n} | {name} | {med[name]:.3f} | {med[name + ' start-up']:.3f} | "
                             f"{fwd[name]:.3f} | {med['transformers']:.3f} | "
                             f"{med['transformers'] / fwd[name]:.2f} |")
    lines_out.append(f"\nCommand: `.venv/bin/python bench/sliding_window.py {' '.join(sys.argv[1:])}`\n")
    section = "\n".join(lines_out) + "\n"
    finish_report(section, args.results, not args.no_append, None, {"rows": [(n, med, fwd) for n, med, fwd in rows]})


if __name__ == "__main__":
    main()
