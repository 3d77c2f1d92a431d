#!/usr/bin/env python3
"""Pruning and recovery on the GCIDE teacher (issue 12): one-shot pruning, recovery with equal
tokens, recovery data selection, Minitron against a model trained from scratch.

    .venv/bin/python bench/prune_recovery.py --out bench/out/prune --steps 200

Stages (each skipped when its outputs exist, so an interrupted run continues):
  teacher    recipes/teacher.yaml (11M parameters, GQA) trained unless --teacher names a
             checkpoint; rebuilt when absent, since machines are not kept
  oneshot    magnitude and Wanda at 50% and 2:4, validation loss before any recovery, and the
             calibration pass's time against one plain forward over the same tokens
  recovery   from Wanda 50%: full, LoRA (masked adapters, rank 2) and PERP (norms + MaskLoRA,
             rank 2: under 1% of the parameters), kind finetune (cross-entropy), the same --steps
             and batch (equal tokens); trained share, step time, AdamW state from the checkpoint;
             bytes per step under mpirun -np 2
  selection  PERP from --selection-from (Wanda 50%) on 20% of --candidates windows chosen by
             PASER-style selection vs the same number of random windows (kind distill,
             kd_ratio 0, so training is cross-entropy in both), for each --selection-seeds
  minitron   width (hidden 384->256, FFN 1024->512, 6->4 query heads: keeps ~42% of the parameters)
             and depth (6->4 layers) pruning, each distilled from the teacher for --steps steps,
             against the same shape trained from scratch for 5x --steps
Validation loss everywhere is `condense eval` on the first --eval-batches validation batches
(held-out GCIDE documents; calibration reads the last validation windows). Appends a section to
bench/RESULTS.md with the commands, machine and load.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import REPO, cpu_model, finish_report, git_head  # noqa: E402

# CONDENSE_BENCH_BIN: a copy of the binary, so that a long run survives rebuilding build/.
BIN = Path(os.environ.get("CONDENSE_BENCH_BIN", REPO / "build" / "condense"))


def sh(args, log=None, **kw):
    t0 = time.time()
    proc = subprocess.run([str(a) for a in args], capture_output=True, text=True, **kw)
    if log:
        Path(log).write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(map(str, args))}\n{proc.stderr[-3000:]}")
    return proc, time.time() - t0


def latest(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints" / (Path(run_dir) / "checkpoints" / "latest").read_text().strip()


DATA = []  # ["--data", STORE] when --data is given: calibration and evaluation read it
EVAL_WINDOWS = []  # ["--seq-len", T, "--batch-size", B] for evaluation
REFERENCE = []  # ["--reference", CKPT]: evaluations also measure fidelity to that model


class EvalLoss(float):
    """A validation loss that also carries, when REFERENCE is set, eval's kl_from_reference
    (mean KL(reference || model) per position, nats) and top1_agreement (else None): a loss
    below the reference's says nothing about fidelity, these do."""
    kl = None
    top1 = None
    kv_bytes = None  # eval's kv_bytes_per_token (in the checkpoint's dtype)


def evaluate(ckpt, batches, *extra):
    # The same held-out windows for every checkpoint, whatever recipe wrote it. extra: more
    # `condense eval` options (--kv-rank, --kv-cache).
    proc, _ = sh([BIN, "eval", ckpt, "--batches", batches, *DATA, *EVAL_WINDOWS, *REFERENCE, *extra])
    j = json.loads(proc.stdout.strip().splitlines()[-1])
    loss = EvalLoss(j["val_loss"])
    loss.kl, loss.top1 = j.get("kl_from_reference"), j.get("top1_agreement")
    loss.kv_bytes = j.get("kv_bytes_per_token")
    return loss


def configure(a):
    """Points every evaluation at --data / --eval-seq-len windows; returns the output directory
    (created) and the recipe overrides that train on the same text with --seq-len / --batch-size."""
    if a.data:
        DATA.extend(["--data", str(Path(a.data).resolve())])
    EVAL_WINDOWS.extend(["--seq-len", a.eval_seq_len, "--batch-size", 8])
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data = ([f"data.dataset={Path(a.data).resolve()}"] if a.data else ["data.vocab_size=4096"]) + [
        f"data.seq_len={a.seq_len}", f"data.batch_size={a.batch_size}"]
    return out, data


def metrics(run_dir: Path):
    rows = [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    return train


def optimizer_state_mib(ckpt):
    """Bytes of AdamW state (exp_avg, exp_avg_sq) in a checkpoint: what training holds per step."""
    import h5py
    sizes = []

    def visit(name, obj):
        if isinstance(obj, h5py.Dataset) and name.startswith("optimizer/") and \
                name.endswith(("exp_avg", "exp_avg_sq")):
            sizes.append(obj.size * obj.dtype.itemsize)

    with h5py.File(ckpt, "r") as f:
        f.visititems(visit)
    return sum(sizes) / 2**20


def share_from_log(text):
    m = re.search(r"training ([0-9.]+)M of ([0-9.]+)M parameters \(([0-9.]+)%\)", text)
    return float(m.group(3)) if m else float("nan")


def train(recipe, out_dir: Path, overrides, threads, ranks=1):
    """Runs `condense train`, continuing a run that was interrupted (--resume: a finished run
    returns at once); returns its log."""
    log = out_dir.with_suffix(".log")
    args = [BIN, "train", recipe, f"out_dir={out_dir}", f"train.threads={threads}", *overrides]
    if (out_dir / "checkpoints" / "latest").exists():
        args.append("--resume")
    if ranks > 1:
        args = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", ranks,
                "--mca", "mpi_yield_when_idle", "1", *args]
    proc, secs = sh(args, log=log)
    return proc.stdout + proc.stderr


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench/out/prune")
    ap.add_argument("--teacher", default="", help="teacher checkpoint (default: train recipes/teacher.yaml)")
    ap.add_argument("--steps", type=int, default=200, help="recovery / distillation steps")
    ap.add_argument("--candidates", type=int, default=2000)
    ap.add_argument("--eval-batches", type=int, default=16)
    ap.add_argument("--calib-windows", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--selection-from", default="wanda 50%",
                    help="the one-shot model the selection stage recovers (a row name of the "
                    "oneshot stage: 'wanda 50%%', 'wanda 2:4', ...)")
    ap.add_argument("--selection-seeds", default="1234",
                    help="train.seed values (comma-separated) for the selection stage: each seed "
                    "draws other candidates, another random subset and another batch order")
    ap.add_argument("--selection-steps", type=int, default=0,
                    help="recovery steps of the selection stage (0: --steps)")
    ap.add_argument("--stages", default="oneshot,recovery,selection,minitron")
    ap.add_argument("--seq-len", type=int, default=256, help="recovery windows")
    ap.add_argument("--eval-seq-len", type=int, default=256, help="evaluation windows (8 per batch)")
    ap.add_argument("--batch-size", type=int, default=8, help="recovery windows per step")
    ap.add_argument("--data", default="", help="token store for calibration and evaluation (a "
                    "model imported with its own tokenizer, e.g. SmolLM2-135M, needs a store made "
                    "with that tokenizer); default: each checkpoint's recipe's")
    ap.add_argument("--results", default=str(REPO / "bench" / "RESULTS.md"))
    ap.add_argument("--no-append", action="store_true")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    out, data = configure(a)
    stages = set(a.stages.split(","))
    load0 = os.getloadavg()[0]
    t_start = time.time()
    rows, notes, payload = [], [], {"steps": a.steps}

    # Teacher.
    teacher_dir = out / "teacher"
    if a.teacher:
        teacher = Path(a.teacher).resolve()
    else:
        text = train(REPO / "recipes" / "teacher.yaml", teacher_dir, [], a.threads)
        teacher = latest(teacher_dir)
        tm = metrics(teacher_dir)
        notes.append(f"teacher: recipes/teacher.yaml, {tm[-1]['tokens_seen'] / 1e6:.1f}M tokens in "
                     f"{tm[-1]['elapsed_s'] / 60:.0f} min")
    base_loss = evaluate(teacher, a.eval_batches)
    rows.append(("teacher (unpruned)", base_loss, "", ""))
    payload["teacher"] = {"checkpoint": str(teacher), "val_loss": base_loss}

    # One-shot pruning.
    pruned = {}
    for name, args in [("magnitude 50%", ["--method", "magnitude", "--sparsity", "0.5"]),
                       ("wanda 50%", ["--method", "wanda", "--sparsity", "0.5"]),
                       ("magnitude 2:4", ["--method", "magnitude", "--pattern", "2:4"]),
                       ("wanda 2:4", ["--method", "wanda", "--pattern", "2:4"])]:
        path = out / (name.replace(" ", "_").replace("%", "").replace(":", "of") + ".h5")
        info = {}
        if not path.exists():
            proc, _ = sh([BIN, "prune", teacher, *args, "--calib-windows", a.calib_windows,
                          "--threads", a.threads, *DATA, "--out", path])
            info = json.loads(proc.stdout.strip().splitlines()[-1])
            (path.with_suffix(".json")).write_text(json.dumps(info))
        else:
            info = json.loads(path.with_suffix(".json").read_text())
        pruned[name] = path
        loss = evaluate(path, a.eval_batches)
        calib = (f"calibration {info['calibration_s']:.2f} s = {info['calibration_s'] / info['forward_s']:.2f}x "
                 f"one forward" if info.get("forward_s") else "")
        rows.append((f"{name}, no recovery", loss, "", calib))
        payload[name] = {"val_loss": loss, **info}

    # Recovery with equal tokens.
    rec = {}
    if "recovery" in stages:
        common = [f"init={pruned['wanda 50%']}", "kind=finetune", f"train.steps={a.steps}",
                  "train.warmup_steps=10", "train.eval_every=0", "checkpoint.every=0", *data]
        for method, extra in [("full", ["recovery.method=full", "train.lr=3e-4", "train.min_lr=3e-5"]),
                              ("lora", ["recovery.method=lora", "recovery.rank=2", "train.lr=1e-3",
                                        "train.min_lr=1e-4", "train.weight_decay=0"]),
                              ("perp", ["recovery.method=perp", "recovery.rank=2", "train.lr=1e-3",
                                        "train.min_lr=1e-4", "train.weight_decay=0"])]:
            run_dir = out / f"recover_{method}"
            text = train(REPO / "recipes" / "recover_perp.yaml", run_dir, common + extra, a.threads)
            loss = evaluate(latest(run_dir), a.eval_batches)
            tm = metrics(run_dir)
            step_s = statistics.median(a.seq_len * a.batch_size / r["tokens_per_s"]
                                       for r in tm[len(tm) // 4:])
            opt_mb = optimizer_state_mib(latest(run_dir))
            # Bytes per step on 2 ranks (5 steps).
            run2 = out / f"recover_{method}_np2"
            train(REPO / "recipes" / "recover_perp.yaml", run2,
                  common[:2] + ["train.steps=5", "train.warmup_steps=1", "train.eval_every=0",
                                "checkpoint.every=0", *data] + extra, 1, ranks=2)
            comm = metrics(run2)[-1].get("comm_bytes", float("nan"))
            rec[method] = loss
            rows.append((f"wanda 50% + {method} recovery", loss,
                         f"{share_from_log(text):.3f}% trained",
                         f"{step_s * 1000:.0f} ms/step, optimizer state {opt_mb:.2f} MiB, "
                         f"{comm / 2**20:.2f} MiB/step sent (2 ranks)"))
            payload[f"recover_{method}"] = {"val_loss": loss, "share_pct": share_from_log(text),
                                            "step_s": step_s, "comm_bytes": comm, "optimizer_mib": opt_mb,
                                            "mem_live_mb": tm[-1]["mem_live_mb"]}
        w = payload["wanda 50%"]["val_loss"]
        if "full" in rec and "perp" in rec:
            frac = (w - rec["perp"]) / (w - rec["full"]) if w != rec["full"] else float("nan")
            notes.append(f"PERP recovers {100 * frac:.0f}% of what full retraining recovers "
                         f"(target >= 70%), training {payload['recover_perp']['share_pct']:.2f}% of the parameters")
        notes.append(f"Wanda's increase at 50%: {payload['wanda 50%']['val_loss'] - base_loss:+.3f} nats vs "
                     f"magnitude's {payload['magnitude 50%']['val_loss'] - base_loss:+.3f} (target: at most half)")

    if "selection" in stages:
        seeds = [int(x) for x in a.selection_seeds.split(",")]
        # Every seed reads the teacher's store (data.seed draws the split now, but the teacher's
        # runs before data.seed existed named their store after train.seed: pinned explicitly).
        pinned = [] if a.data else [f"data.dataset={Path('data_cache/gcide-bpe4096-val0.02-seed1234.h5').resolve()}"]
        steps = a.selection_steps or a.steps
        start = a.selection_from
        tag = "" if start == "wanda 50%" else "_" + start.replace(" ", "_").replace("%", "").replace(":", "of")
        losses = {"paser": [], "random": []}
        for seed in seeds:
            for sel in ["paser", "random"]:
                run_dir = out / (f"select_{sel}{tag}" + (f"_seed{seed}" if seed != 1234 else ""))
                extra = [f"init={pruned[start]}", "kind=distill", f"distill.teacher={teacher}",
                         "distill.kd_ratio=0", "recovery.method=perp", f"recovery.selection={sel}",
                         "recovery.budget=0.2", f"recovery.candidates={a.candidates}",
                         f"train.steps={steps}", "train.warmup_steps=10", "train.eval_every=0",
                         f"train.seed={seed}", "checkpoint.every=0", "train.lr=1e-3",
                         "train.min_lr=1e-4", *data, *pinned]
                text = train(REPO / "recipes" / "recover_perp.yaml", run_dir, extra, a.threads)
                loss = evaluate(latest(run_dir), a.eval_batches)
                losses[sel].append(loss)
                m = re.search(r"recovery data \((\w+)\): (.*)", text)
                rows.append((f"{start} + perp on {sel} 20% data, seed {seed}", loss, "",
                             m.group(2) if m else ""))
                payload[f"select_{sel}{tag}_seed{seed}"] = {"val_loss": loss}
        before = payload[start]["val_loss"]
        summary = {k: (statistics.mean(v), min(v), max(v)) for k, v in losses.items()}
        notes.append(
            f"Selection from {start} ({before:.4f} before recovery; {steps} steps x {a.batch_size} "
            f"windows = {steps * a.batch_size} windows trained on a budget of "
            f"{round(0.2 * a.candidates)} of {a.candidates} candidates): PASER mean "
            f"{summary['paser'][0]:.4f} (range {summary['paser'][1]:.4f}-{summary['paser'][2]:.4f}) vs "
            f"random mean {summary['random'][0]:.4f} ({summary['random'][1]:.4f}-{summary['random'][2]:.4f}) "
            f"over seeds {a.selection_seeds} (target: PASER recovers at least as much, i.e. its "
            f"loss <= random's)")

    if "minitron" in stages:
        for name, targets in [("width", ["hidden_size=256", "intermediate_size=512", "num_attention_heads=4"]),
                              ("depth", ["num_hidden_layers=4"])]:
            path = out / f"minitron_{name}.h5"
            if not path.exists():
                sh([BIN, "prune", teacher, "--method", "minitron", *sum([["--target", t] for t in targets], []),
                    "--calib-windows", a.calib_windows, "--threads", a.threads, *DATA, "--out", path])
            one_shot = evaluate(path, a.eval_batches)
            run_dir = out / f"minitron_{name}_distill"
            train(REPO / "recipes" / "recover_perp.yaml", run_dir,
                  [f"init={path}", "kind=distill", f"distill.teacher={teacher}", "recovery.method=full",
                   f"train.steps={a.steps}", "train.warmup_steps=10", "train.eval_every=0",
                   "checkpoint.every=0", "train.lr=1e-3", "train.min_lr=1e-4", *data], a.threads)
            distilled = evaluate(latest(run_dir), a.eval_batches)
            # The same shape from scratch with 5x the tokens.
            shape = {"width": ["model.hidden_size=256", "model.intermediate_size=512",
                               "model.num_attention_heads=4", "model.head_dim=64"],
                     "depth": ["model.hidden_size=384", "model.num_hidden_layers=4"]}[name]
            scratch_dir = out / f"scratch_{name}"
            train(REPO / "recipes" / "teacher.yaml", scratch_dir,
                  [*shape, f"train.steps={5 * a.steps}", "train.warmup_steps=50", "train.eval_every=0",
                   "checkpoint.every=0", *[d for d in data if d.startswith("data.dataset=")]], a.threads)
            scratch = evaluate(latest(scratch_dir), a.eval_batches)
            rows.append((f"minitron {name}, no recovery", one_shot, "", ""))
            rows.append((f"minitron {name} + distill {a.steps} steps", distilled, "",
                         f"from scratch, {5 * a.steps} steps: {scratch:.4f}"))
            payload[f"minitron_{name}"] = {"one_shot": one_shot, "distilled": distilled, "scratch_5x": scratch}
            notes.append(f"Minitron {name}: distilled {distilled:.4f} vs from scratch with 5x the tokens "
                         f"{scratch:.4f} (target: distilled <= scratch)")

    load1 = os.getloadavg()[0]
    head = git_head()
    when = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    lines = [f"\n## Pruning and recovery ({when}, commit {head})\n",
             f"Command: `.venv/bin/python bench/prune_recovery.py {' '.join(sys.argv[1:])}`. Machine: {cpu_model()}, "
             f"{a.threads} threads; load {load0:.1f} -> {load1:.1f}; {(time.time() - t_start) / 60:.0f} min. "
             + (f"Validation: first {a.eval_batches} batches of held-out GCIDE in {a.data} ("
                f"8 x {a.eval_seq_len} tokens).\n" if a.data else
                f"Validation: first {a.eval_batches} batches of 8 x {a.eval_seq_len} tokens of held-out GCIDE.\n"),
             "| model | val loss | perplexity | trained | notes |", "| --- | --- | --- | --- | --- |"]
    for name, loss, trained, note in rows:
        lines.append(f"| {name} | {loss:.4f} | {math.exp(loss):.2f} | {trained} | {note} |")
    lines += ["", *[f"- {n}" for n in notes], ""]
    finish_report("\n".join(lines), a.results, not a.no_append, a.json, payload)


if __name__ == "__main__":
    main()
