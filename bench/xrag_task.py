"""xRAG and the task with an answer (issue 15): trains recipes/context_xrag.yaml against a frozen
decoder, stage 1 (paraphrase) then stage 2 (answer NLL + 2.0 x KL from the decoder reading the
document as text, started from stage 1), on a documents file that tools/gcide_headwords.py and
tools/embed_documents.py make (GCIDE definition -> headword, all-MiniLM-L6-v2 embeddings); then
`condense context-eval --documents` scores, on the file's last --held-out documents (never trained
on): answer NLL and exact match with no context, the document as text, xRAG's one vector,
the document truncated to one token, its mean-pooled token embeddings, the untrained projector
and another document's vector; and the paraphrase's teacher-forced token accuracy. --compare
adds other context_compressor runs (ARC, CompLLM) scored on the same documents and task.

    .venv/bin/python bench/xrag_task.py --decoder bench/out/teacher/checkpoints/step_003000.h5 \
        --documents bench/out/xrag/gcide_headwords.h5 --out bench/out/xrag \
        --steps1 1000 --steps2 600 --compare bench/out/context/arc4,bench/out/context/compllm2

A run whose checkpoint exists is reused (an interrupted one resumes).
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

CONDITIONS = ["none", "full", "compressed", "truncated", "mean_pool", "untrained", "compressed_other"]


def finished(run_dir, steps):
    return (Path(run_dir) / "metrics.jsonl").exists() and metrics(run_dir) and metrics(run_dir)[-1]["step"] >= steps


def evaluate(run_dir, documents, count, threads):
    proc, secs = sh([BIN, "context-eval", latest(run_dir), "--documents", documents, "--documents-count", count,
                     "--batches", 4, "--threads", threads])
    j = json.loads(proc.stdout.strip().splitlines()[-1])
    j["eval_seconds"] = secs
    return j


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--decoder", required=True, help="the frozen decoder's checkpoint")
    ap.add_argument("--documents", required=True, help="condense-documents/1 file with answers")
    ap.add_argument("--out", default="bench/out/xrag")
    ap.add_argument("--name", default="", help="run names: NAMEstage1, NAMEstage2")
    ap.add_argument("--steps1", type=int, default=1000)
    ap.add_argument("--steps2", type=int, default=600)
    ap.add_argument("--held-out", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--data", default="", help="token store in the decoder's tokenizer (e.g. SmolLM2's)")
    ap.add_argument("--extra", default="", help="more recipe overrides for both stages, space-separated")
    ap.add_argument("--task-template", default="", help="context.task_template (a text with spaces, "
                    "e.g. for tools/gcide_headwords.py --reverse: 'Background: {context}\\nQuestion: "
                    "What does this word mean?\\nAnswer:')")
    ap.add_argument("--compare", default="", help="other context_compressor runs, comma-separated")
    ap.add_argument("--results", default=str(REPO / "bench" / "RESULTS.md"))
    ap.add_argument("--no-append", action="store_true")
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    decoder, documents = Path(a.decoder).resolve(), Path(a.documents).resolve()
    load0, t0 = os.getloadavg()[0], time.time()
    common = [f"init={decoder}", f"context.documents={documents}", f"context.held_out={a.held_out}"]
    if a.data:
        common.append(f"data.dataset={Path(a.data).resolve()}")
    common += a.extra.split()
    if a.task_template:
        # A YAML double-quoted scalar: "\n" in the argument becomes a line break there.
        common.append('context.task_template="' + a.task_template.replace('"', '\\"') + '"')
    recipe = REPO / "recipes" / "context_xrag.yaml"
    s1, s2 = out / f"{a.name}stage1", out / f"{a.name}stage2"
    for run_dir, steps, extra in [(s1, a.steps1, ["context.stage=1"]),
                                  (s2, a.steps2, ["context.stage=2", f"context.start_from={s1}"])]:
        if not finished(run_dir, steps):  # a finished run is reused as it is
            train(recipe, run_dir, common + [f"train.steps={steps}"] + extra, a.threads)
    payload = {"decoder": str(decoder), "documents": str(documents), "runs": {}}
    rows = []
    for name, run_dir in [("xRAG stage 1", s1), ("xRAG stage 2", s2)] + \
            [(Path(c).name, Path(c)) for c in a.compare.split(",") if c]:
        j = evaluate(run_dir, documents, a.held_out, a.threads)
        m = metrics(run_dir)
        j.update(train_tokens=m[-1]["tokens_seen"], train_seconds=m[-1]["elapsed_s"])
        payload["runs"][name] = j
        rows.append((name, j))
    load1 = os.getloadavg()[0]

    def row(name, j):
        t = j["task"]["answer"]
        cells = [f"{t['nll'][c]:.3f} / {100 * t['exact_match'][c]:.1f}%" for c in CONDITIONS]
        para = j["task"].get("paraphrase")
        p = (f"{100 * para['token_accuracy']['compressed']:.1f}% ({100 * para['token_accuracy']['untrained']:.1f}%, "
             f"{100 * para['token_accuracy']['full']:.1f}%)" if para else "n/a")
        gap = t["gap_closed"]["compressed"]
        pos = t["context_positions"]
        return (f"| {name} ({pos['full']:.1f} -> {pos['compressed']:.1f} pos.) | "
                + " | ".join(cells) + f" | {gap:.2f} | {p} | {j['train_tokens'] / 1e6:.2f}M, "
                f"{j['train_seconds'] / 60:.1f} min |")

    # context-eval scores a run with its own recipe's task template (compressors/context_task.cpp).
    compare_note = ("The --compare runs are scored with their own recipes' context.task_template, not "
                    "--task-template. " if a.compare and a.task_template else "")
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cmd = "`.venv/bin/python bench/xrag_task.py " + " ".join(sys.argv[1:]) + "`"
    header = " | ".join(CONDITIONS)
    section = f"""
## xRAG and the task with an answer ({documents.name}) on {decoder.name} ({now}, commit {git_head()})

Command: {cmd}. Machine: {cpu_model()}, {a.threads} threads; load {load0:.1f} -> {load1:.1f};
{(time.time() - t0) / 60:.0f} min (reused runs are not retrained). Documents: {documents}, the last
{a.held_out} held out from the projector's training (a decoder trained on the same corpus, such as
the GCIDE teacher, has seen most of them). {compare_note}Each cell: answer NLL (mean over its tokens, then over documents) / exact match
(greedy continuation starts with the answer) after the task template with, in place of
{{context}}: nothing, the document as text, the compressed form, the document truncated to as
many positions (its first tokens), mean-pooled token embeddings (xRAG: one mean vector), the untrained compressor,
another document's compressed form. Gap: (none - compressed) / (none - full) on the NLL.
Positions: the context's mean length in the decoder, full -> compressed (what its KV cache
holds). Paraphrase (xRAG): teacher-forced token accuracy of the decoder saying the document after
"Background: {{context}} means the same as" (untrained projector, document as text).

| compressor | {header} | gap | paraphrase | training |
| --- | {' | '.join('---' for _ in CONDITIONS)} | --- | --- | --- |
""" + "\n".join(row(name, j) for name, j in rows) + "\n"
    finish_report(section, a.results, not a.no_append, a.json or None, payload)


if __name__ == "__main__":
    main()
