"""Context compressors against their frozen decoder (issue 15): trains recipes/context_arc.yaml
(method arc) and recipes/context_compllm.yaml (method compllm) at the given factors, then
measures with `condense context-eval` on the same held-out windows: the continuation NLL with no
context, full context, the compressed context, the context truncated to as many positions (its
most recent tokens), mean-pooled token embeddings and the compressor as initialized; gap closed
for each; reconstruction accuracy of the compressed span (ARC) next to the decoder's copying of
the uncompressed span; prefill tokens/s and KV bytes, full vs compressed, in one run. Appends a
section to bench/RESULTS.md.

    .venv/bin/python bench/context_compress.py --teacher bench/out/teacher/checkpoints/step_003000.h5 \
        --out bench/out/context --runs arc:4,arc:8,compllm:2 --steps 600

A run whose checkpoint exists is reused (an interrupted one resumes), so the script can be rerun
to add a factor or re-evaluate.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import REPO, cpu_model, finish_report, git_head  # noqa: E402
from prune_recovery import BIN, latest, metrics, sh, train  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", required=True, help="the frozen decoder's checkpoint")
    ap.add_argument("--out", default="bench/out/context")
    ap.add_argument("--runs", default="arc:4,arc:8", help="method:factor list (compllm's factor is C)")
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--chunk-len", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--encoder-layers", type=int, default=2)
    ap.add_argument("--eval-batches", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--segment-len", type=int, default=16, help="compllm segments")
    ap.add_argument("--data", default="", help="token store in the decoder's tokenizer (e.g. SmolLM2's)")
    ap.add_argument("--extra", default="", help="more recipe overrides, space-separated")
    ap.add_argument("--results", default=str(REPO / "bench" / "RESULTS.md"))
    ap.add_argument("--no-append", action="store_true")
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    teacher = Path(a.teacher).resolve()
    load0, t0 = os.getloadavg()[0], time.time()
    head = git_head()  # the source the runs started from (HEAD may move during a long run)
    rows, payload = [], {"teacher": str(teacher), "runs": {}}
    for spec in a.runs.split(","):
        method, f = spec.split(":")
        f = int(f)
        run_dir = out / f"{method}{f}"
        overrides = [f"init={teacher}", f"context.pooling_factor={f}", f"context.chunk_len={a.chunk_len}",
                     f"data.seq_len={a.seq_len}", f"train.steps={a.steps}"]
        overrides.append(f"context.encoder_layers={a.encoder_layers}" if method == "arc"
                         else f"context.segment_len={a.segment_len}")
        if a.data:
            overrides.append(f"data.dataset={Path(a.data).resolve()}")
        overrides += a.extra.split()
        train(REPO / "recipes" / f"context_{method}.yaml", run_dir, overrides, a.threads)
        m = metrics(run_dir)  # a resumed run's elapsed_s counts from its restart
        tokens, train_s = m[-1]["tokens_seen"], m[-1]["elapsed_s"]
        proc, _ = sh([BIN, "context-eval", latest(run_dir), "--batches", a.eval_batches,
                      "--threads", a.threads])
        j = json.loads(proc.stdout.strip().splitlines()[-1])
        j.update(train_tokens=tokens, train_seconds=train_s)
        payload["runs"][f"{method}{f}"] = j
        rows.append((f"{method} {f}x", j))
    load1 = os.getloadavg()[0]

    def pct(x):
        return "n/a" if x is None else f"{100 * x:.1f}%"

    def row(name, j):
        n, g, p, kv = j["nll"], j["gap_closed"], j["prefill_tokens_per_s"], j["kv_bytes_per_window"]
        return (f"| {name} ({j['chunk_len']} -> {j['compressed_positions']}) | {n['none']:.4f} | "
                f"{n['full']:.4f} | {n['compressed']:.4f} (**{g['compressed']:.2f}**) | "
                f"{n['truncated']:.4f} ({g['truncated']:.2f}) | {n['mean_pool']:.4f} ({g['mean_pool']:.2f}) | "
                f"{n['untrained']:.4f} ({g['untrained']:.2f}) | {n['compressed_other_window']:.4f} / "
                f"{n['full_other_window']:.4f} (**{j['content_gap_closed']:.2f}**) | {pct(j['reconstruction_accuracy'])} "
                f"({pct(j['reconstruction_accuracy_untrained'])}, {pct(j['reconstruction_accuracy_uncompressed'])}) | "
                f"{p['compressed'] / p['full']:.2f}x | "
                f"{kv['compressed'] / kv['full']:.3f} | {j['train_tokens'] / 1e6:.2f}M, {j['train_seconds'] / 60:.1f} min |")

    windows = ", ".join(sorted({str(j['windows']) for _, j in rows}))
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cmd = "`.venv/bin/python bench/context_compress.py " + " ".join(sys.argv[1:]) + "`"
    section = f"""
## Context compressors on {teacher.name} ({now}, commit {head})

Command: {cmd}. Machine: {cpu_model()}, {a.threads} threads; load {load0:.1f} -> {load1:.1f};
{(time.time() - t0) / 60:.0f} min (reused runs are not retrained). Frozen decoder: {teacher}.
Held-out: the first {a.eval_batches} validation batches, {windows} windows of {a.seq_len} tokens: a chunk
of {a.chunk_len} tokens (the context), then the continuation; NLL on the continuation tokens
after the first (the same targets for every row). In parentheses: gap closed = (none - x) /
(none - full). Truncated: the chunk's last tokens, as many positions as the compressed context.
Reconstruction: teacher-forced token accuracy of the decoder rebuilding the chunk from [compressed,
<Rec>] (in parentheses the untrained encoder's, which is about the decoder's own language
modelling of the chunk, and the uncompressed ceiling: the decoder reading the chunk's tokens and
then the chunk again, i.e. how well the frozen decoder copies at all). Another window's: each window
reads the compressed (or the plain) context of another window of its batch, the control for a
learned prompt (domain adaptation) that helps whatever the content; content gap = (compressed of
another window - compressed) / (full of another window - full), what the compressed content is
worth against what the plain content is worth. Prefill: (window tokens / s) compressed (encoder + decoder) over full. KV: cached
positions' bytes, compressed over full.

| compressor | no context | full | compressed | truncated | mean-pooled | untrained | another window's: compressed / full (content gap) | reconstruction | prefill | KV | training |
| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |
""" + "\n".join(row(name, j) for name, j in rows) + "\n"
    finish_report(section, a.results, not a.no_append, a.json or None, payload)


if __name__ == "__main__":
    main()
