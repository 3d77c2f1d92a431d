#!/usr/bin/env python3
"""KV-cache compression (issue 14): KV-head merging with SVD vs mean-pooling initialization,
before and after healing by distillation, and the int8 KV cache, as perplexity versus KV bytes
per token on held-out text, against the uncompressed model.

    .venv/bin/python bench/kv_compress.py --out bench/out/kv --steps 200
    .venv/bin/python bench/kv_compress.py --out bench/out/kv_smollm2 --teacher bench/out/smollm2/smollm2.h5 \\
        --data bench/out/smollm2/gcide-smollm2.h5 --kv-heads 1 --heal-kv-heads 1 --steps 60 \\
        --seq-len 128 --batch-size 4 --eval-seq-len 128 --eval-batches 8

Stages (each skipped when its outputs exist, so an interrupted run continues):
  teacher  recipes/teacher_mha.yaml (4M parameters, 8 query heads each with its own KV head)
           trained unless --teacher names a checkpoint; rebuilt when absent
  merge    `condense prune --method kv-heads` to each of --kv-heads, init svd and mean
  heal     both inits at --heal-kv-heads distilled from the teacher for --steps steps
           (recipes/heal_kv_heads.yaml: attention projections train, kd_ratio 1)
  project  PCA bases of every KV head's keys (after RoPE) and values (`condense prune --method
           kv-project`, the untrained MatryoshkaKV start), evaluated at --kv-ranks of head_dim
  matryoshka  the PCA projections trained by recipes/kv_project.yaml (MatryoshkaKV: Cayley-
           orthogonal, per-head ranks sampled from {d/4, d/2, 3d/4, d}, 0.25 KD + 0.75 CE) for
           --steps steps, then evaluated at the same --kv-ranks: one trained set for every rank
  budget   `--kv-budget` at the --kv-ranks shares (ranks per layer or per KV head,
           --budget-granularity, from calibration sensitivity) for the project and matryoshka
           stages' outputs
  cskv     CSKV's low-rank latent cache (`condense prune --method cskv`): key and value ranks
           as --cskv-split shares of kv_heads x head_dim, untrained with each init (whiten,
           asvd, svd), then the whiten init trained for --steps steps two ways: CSKV's
           layer-wise reconstruction (recipes/cskv.yaml) and distillation from the teacher
           (the same recipe as kind distill, --kd-ratio), the latter also with an int8 cache
  int8     the teacher with `--kv-cache int8` (KIVI-style: keys per channel in groups of 32
           tokens, values per token)
  ood      perplexity of the original and each trained compressor on Debian fortunes text at
           the --gen-contexts lengths: out of the fitting text's domain and beyond its window
  gen      greedy decode tokens/s and peak RSS after prompts of --gen-contexts tokens (Debian
           fortunes text): original, healed merged model, MatryoshkaKV at half rank and the
           CSKV model trained by distillation, each with the fp and the int8 cache, side by
           side in one run (median of --reps)
KV bytes per token count every layer's keys and values at 2 bytes (f16, what llama.cpp caches by
default), and for int8 one byte plus the scales. Validation loss is `condense eval` on the first
--eval-batches held-out batches (calibration reads the last validation windows). Writes a PNG of
perplexity versus KV bytes per token beside the outputs and appends a section to
bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import REPO, cpu_model, finish_report, git_head  # noqa: E402
from prune_recovery import (BIN, DATA, EVAL_WINDOWS, REFERENCE, EvalLoss, configure, evaluate,  # noqa: E402
                            latest, metrics, sh, train)


def model_config(ckpt):
    import h5py
    with h5py.File(ckpt, "r") as f:
        raw = f["config"][()]
    return json.loads(raw.decode() if isinstance(raw, bytes) else raw)


def head_dim(c):
    return c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]


def kv_bytes_f16(c, kv_heads):
    return 2 * kv_heads * head_dim(c) * c["num_hidden_layers"] * 2


def kv_bytes_int8(c, group=32):
    # keys: 1 byte per value + a float32 scale and zero per channel per `group` tokens;
    # values: 1 byte per value + a float32 scale and zero per token.
    d = head_dim(c)
    per_head = (d + 8 * d / group) + (d + 8)
    return per_head * c["num_key_value_heads"] * c["num_hidden_layers"]


def prompt_of(tokens_wanted, ckpt, out):
    """Debian fortunes text cut to about tokens_wanted tokens of ckpt's tokenizer (measured with
    `condense score`, then cut proportionally; within a few tokens)."""
    src = sorted(p for p in Path("/usr/share/games/fortunes").glob("*") if p.suffix == "" and p.is_file())
    if not src:
        raise SystemExit("the gen stage needs Debian's fortunes text: apt-get install fortunes-min")
    text = "".join(p.read_text(encoding="utf-8", errors="replace") for p in src)
    path = out / f"prompt_{tokens_wanted}.txt"
    chars = tokens_wanted * 2  # under any tokenizer's count, so the first score fits the context
    for _ in range(4):
        path.write_text(text[:chars], encoding="utf-8")
        n = json.loads(sh([BIN, "score", ckpt, "--text", path, "--top-k", 0, "--json", out / "prompt.json"])[0]
                       .stdout.strip().splitlines()[-1])["tokens"]
        if abs(n - tokens_wanted) <= 2:
            break
        chars = int(chars * tokens_wanted / n * (0.99 if n < tokens_wanted else 0.97))
    return path.read_text(encoding="utf-8"), n


def final_models(a, out, teacher):
    """(name, checkpoint, extra options) of the uncompressed model and each trained compressor
    the earlier stages left in out."""
    healed = out / f"heal_svd_kv{a.heal_kv_heads}"
    models = [("original", teacher, [])]
    if (healed / "checkpoints" / "latest").exists():
        models.append((f"merged to {a.heal_kv_heads} KV heads", latest(healed), []))
    d = head_dim(model_config(teacher))
    if (out / "matryoshka" / "checkpoints" / "latest").exists():
        models.append((f"MatryoshkaKV rank {d // 2} of {d}", latest(out / "matryoshka"),
                       ["--kv-rank", d // 2]))
    for run_dir in sorted(out.glob("cskv_distill_k*v*")):
        if (run_dir / "checkpoints" / "latest").exists():
            models.append((f"CSKV {run_dir.name.split('_')[-1]}", latest(run_dir), []))
    return models


def out_of_domain_table(a, out, teacher):
    """Perplexity of each final model on Debian fortunes text at each --gen-contexts length, one
    context per length: text unlike the GCIDE windows the compressors were fitted on, at
    lengths beyond their 128-token training windows."""
    rows = ["| prompt tokens | model | perplexity | vs original |", "| --- | --- | --- | --- |"]
    for ctx in [int(x) for x in a.gen_contexts.split(",")]:
        _, n = prompt_of(ctx, teacher, out)
        base = None
        for name, ckpt, extra in final_models(a, out, teacher):
            proc, _ = sh([BIN, "score", ckpt, "--text", out / f"prompt_{ctx}.txt", "--top-k", 0,
                          "--json", out / "ood.json", *extra])
            ppl = json.loads(proc.stdout.strip().splitlines()[-1])["perplexity"]
            base = base or ppl
            rows.append(f"| {n} | {name} | {ppl:.2f} | {100 * (ppl / base - 1):+.1f}% |")
    return rows


def generation_table(a, out, teacher):
    import re
    import statistics
    models = final_models(a, out, teacher)
    rows = ["| prompt tokens | model | cache | KV bytes/token held (model in f32) | decode tokens/s | peak RSS MiB |",
            "| --- | --- | --- | --- | --- | --- |"]
    for ctx in [int(x) for x in a.gen_contexts.split(",")]:
        text, n = prompt_of(ctx, teacher, out)
        for name, ckpt, extra in models:
            for cache in ("fp", "int8"):
                rates, rss, kvb = [], [], 0
                for _ in range(a.reps):
                    proc, _ = sh(["/usr/bin/time", "-f", "maxrss %M", BIN, "generate", ckpt, "--prompt", text,
                                  "--max-new-tokens", a.gen_tokens, "--ignore-eos", "--threads", a.threads,
                                  "--kv-cache", cache, *extra])
                    m = re.search(r"decode ([0-9.]+) tokens/s; \S+ KV cache, ([0-9.]+) bytes", proc.stderr)
                    rates.append(float(m.group(1)))
                    kvb = float(m.group(2))
                    rss.append(int(re.search(r"maxrss (\d+)", proc.stderr).group(1)) / 1024)
                rows.append(f"| {n} | {name} | {cache} | {kvb:.0f} | {statistics.median(rates):.1f} | "
                            f"{statistics.median(rss):.0f} |")
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench/out/kv")
    ap.add_argument("--teacher", default="", help="checkpoint (default: train recipes/teacher_mha.yaml)")
    ap.add_argument("--kv-heads", default="4,2,1", help="merge targets (KV heads)")
    ap.add_argument("--heal-kv-heads", type=int, default=2, help="the target that is healed")
    ap.add_argument("--steps", type=int, default=200, help="healing steps")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seq-len", type=int, default=128, help="healing windows")
    ap.add_argument("--batch-size", type=int, default=8, help="healing windows per step")
    ap.add_argument("--eval-seq-len", type=int, default=128)
    ap.add_argument("--eval-batches", type=int, default=16)
    ap.add_argument("--calib-windows", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--stages", default="merge,heal,project,matryoshka,budget,cskv,int8,ood,gen")
    ap.add_argument("--cskv-split", default="0.25:0.75", help="cskv: key:value latent widths as "
                    "shares of kv_heads x head_dim (0.25:0.75 caches half the bytes)")
    ap.add_argument("--kd-ratio", type=float, default=0.25, help="matryoshka: KD weight (the paper's "
                    "0.25; 1: pure distillation, which cannot adapt to the training text's domain)")
    ap.add_argument("--kv-ranks", default="0.25,0.5,0.75", help="project: ranks as shares of head_dim")
    ap.add_argument("--budget-granularity", default="layer,head", help="budget: --kv-granularity "
                    "values (head: a rank per KV head, 3 calibration forwards per head)")
    ap.add_argument("--gen-contexts", default="256,448", help="prompt lengths in tokens")
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--data", default="", help="token store for calibration, healing and evaluation "
                    "(a model with its own tokenizer, e.g. SmolLM2-135M, needs one made with it)")
    ap.add_argument("--results", default=str(REPO / "bench" / "RESULTS.md"))
    ap.add_argument("--no-append", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("--png", default="", help="also copy the plot here (e.g. bench/kv_teacher_mha.png)")
    a = ap.parse_args()
    out, data = configure(a)
    stages = set(a.stages.split(","))
    load0 = os.getloadavg()[0]
    t_start = time.time()
    notes = []

    teacher_dir = out / "teacher"
    if a.teacher:
        teacher = Path(a.teacher).resolve()
    else:
        train(REPO / "recipes" / "teacher_mha.yaml", teacher_dir, [], a.threads)
        teacher = latest(teacher_dir)
        tm = metrics(teacher_dir)
        notes.append(f"teacher: recipes/teacher_mha.yaml, {tm[-1]['tokens_seen'] / 1e6:.1f}M tokens "
                     f"in {tm[-1]['elapsed_s'] / 60:.0f} min")
    cfg = model_config(teacher)
    kv0 = cfg["num_key_value_heads"]
    REFERENCE.extend(["--reference", str(teacher)])  # every evaluation: fidelity to the original
    base = evaluate(teacher, a.eval_batches)
    points = [{"method": "original", "kv_heads": kv0, "bytes": kv_bytes_f16(cfg, kv0), "loss": base}]

    merged = {}
    if "merge" in stages:
        for kn in [int(x) for x in a.kv_heads.split(",")]:
            for init in ("svd", "mean"):
                path = out / f"merge_{init}_kv{kn}.h5"
                if not path.exists():
                    proc, _ = sh([BIN, "prune", teacher, "--method", "kv-heads", "--kv-heads", kn,
                                  "--init", init, "--calib-windows", a.calib_windows,
                                  "--threads", a.threads, *DATA, "--out", path])
                    path.with_suffix(".json").write_text(proc.stdout.strip().splitlines()[-1])
                merged[(init, kn)] = path
                points.append({"method": f"merge {init}", "kv_heads": kn, "bytes": kv_bytes_f16(cfg, kn),
                               "loss": evaluate(path, a.eval_batches)})

    if "heal" in stages:
        kn = a.heal_kv_heads
        for init in ("svd", "mean"):
            src = merged.get((init, kn))
            if src is None:
                raise SystemExit(f"--heal-kv-heads {kn} is not among --kv-heads {a.kv_heads}")
            run_dir = out / f"heal_{init}_kv{kn}"
            train(REPO / "recipes" / "heal_kv_heads.yaml", run_dir,
                  [f"init={src}", f"distill.teacher={teacher}", f"train.steps={a.steps}",
                   f"train.lr={a.lr}", f"train.min_lr={a.lr / 10}", "train.warmup_steps=10",
                   "train.eval_every=0", f"checkpoint.every={a.steps}", *data], a.threads)
            tokens = metrics(run_dir)[-1]["tokens_seen"]
            points.append({"method": f"merge {init} + heal", "kv_heads": kn,
                           "bytes": kv_bytes_f16(cfg, kn), "loss": evaluate(latest(run_dir), a.eval_batches),
                           "note": f"{a.steps} steps, {tokens / 1e3:.0f}k tokens of distillation"})

    if "project" in stages:
        path = out / "project_pca.h5"
        if not path.exists():
            proc, _ = sh([BIN, "prune", teacher, "--method", "kv-project", "--calib-windows",
                          a.calib_windows, "--threads", a.threads, *DATA, "--out", path])
            path.with_suffix(".json").write_text(proc.stdout.strip().splitlines()[-1])
        d = head_dim(cfg)
        for share in [float(x) for x in a.kv_ranks.split(",")]:
            r = max(1, round(share * d))
            loss = evaluate(path, a.eval_batches, "--kv-rank", r)
            points.append({"method": "PCA projection (untrained)", "kv_heads": kv0,
                           "bytes": kv_bytes_f16(cfg, kv0) * r / d, "loss": loss,
                           "note": f"rank {r} of {d}"})

    if "matryoshka" in stages:
        src = out / "project_pca.h5"
        if not src.exists():
            raise SystemExit("the matryoshka stage trains the project stage's output; run it first")
        run_dir = out / "matryoshka"
        train(REPO / "recipes" / "kv_project.yaml", run_dir,
              [f"init={src}", f"distill.teacher={teacher}", f"train.steps={a.steps}",
               f"train.lr={a.lr}", f"train.min_lr={a.lr / 10}", "train.warmup_steps=10",
               f"distill.kd_ratio={a.kd_ratio}", "train.eval_every=0", f"checkpoint.every={a.steps}",
               *data], a.threads)
        tokens = metrics(run_dir)[-1]["tokens_seen"]
        d = head_dim(cfg)
        for share in [float(x) for x in a.kv_ranks.split(",")]:
            r = max(1, round(share * d))
            loss = evaluate(latest(run_dir), a.eval_batches, "--kv-rank", r)
            points.append({"method": "MatryoshkaKV (trained)", "kv_heads": kv0,
                           "bytes": kv_bytes_f16(cfg, kv0) * r / d, "loss": loss,
                           "note": f"rank {r} of {d}; {a.steps} steps, {tokens / 1e3:.0f}k tokens, "
                                   f"KD ratio {a.kd_ratio}"})

    if "budget" in stages:
        # --kv-budget: per-layer ranks from calibration sensitivity, the same share of the cache
        # as the uniform --kv-ranks points, for the PCA and the trained projections.
        d = head_dim(cfg)
        for name, ckpt in (("PCA projection, budget", out / "project_pca.h5"),
                           ("MatryoshkaKV, budget", out / "matryoshka")):
            if not (ckpt.exists() if ckpt.suffix else (ckpt / "checkpoints" / "latest").exists()):
                continue
            for per in a.budget_granularity.split(","):
                for share in [float(x) for x in a.kv_ranks.split(",")]:
                    if share < 0.25:
                        continue
                    src = ckpt if ckpt.suffix else latest(ckpt)
                    t0 = time.time()
                    proc, _ = sh([BIN, "eval", src, "--batches", a.eval_batches, *DATA, *EVAL_WINDOWS,
                                  *REFERENCE, "--kv-budget", share, "--kv-granularity", per])
                    j = json.loads(proc.stdout.strip().splitlines()[-1])
                    budget_loss = EvalLoss(j["val_loss"])
                    budget_loss.kl, budget_loss.top1 = j.get("kl_from_reference"), j.get("top1_agreement")
                    plan = [x for x in proc.stderr.splitlines() if "key ranks per layer" in x][-1]
                    ranks = plan.split("; ", 1)[1].split(" (")[0] if per == "head" else ""
                    points.append({"method": f"{name} per {per}", "kv_heads": kv0,
                                   # f16 bytes: the share of the original's cache (both of
                                   # eval's counts are in the checkpoint's dtype).
                                   "bytes": kv_bytes_f16(cfg, kv0) * j["kv_bytes_per_token"] / base.kv_bytes,
                                   "loss": budget_loss,
                                   "note": f"--kv-budget {share} --kv-granularity {per}: "
                                           + plan.split(": ", 1)[1].split(";")[0]
                                           + f"; plan + eval {time.time() - t0:.0f} s"
                                           + (f"; {ranks}" if ranks else "")})

    if "cskv" in stages:
        kv_dim = kv0 * head_dim(cfg)
        ks, vs = (float(x) for x in a.cskv_split.split(":"))
        rk, rv = max(1, round(ks * kv_dim)), max(1, round(vs * kv_dim))
        share = (rk + rv) / (2 * kv_dim)
        for init in ("whiten", "asvd", "svd"):
            path = out / f"cskv_{init}_k{rk}v{rv}.h5"
            if not path.exists():
                sh([BIN, "prune", teacher, "--method", "cskv", "--key-rank", rk, "--value-rank", rv,
                    "--init", init, "--calib-windows", a.calib_windows, "--threads", a.threads, *DATA,
                    "--out", path])
            points.append({"method": f"CSKV {init} (untrained)", "kv_heads": kv0,
                           "bytes": kv_bytes_f16(cfg, kv0) * share, "loss": evaluate(path, a.eval_batches),
                           "note": f"key rank {rk}, value rank {rv} of {kv_dim}"})
        src = out / f"cskv_whiten_k{rk}v{rv}.h5"
        for how, extra in (("reconstruction", []),
                           ("distill", ["kind=distill", f"distill.teacher={teacher}",
                                        f"distill.kd_ratio={a.kd_ratio}"])):
            run_dir = out / f"cskv_{how}_k{rk}v{rv}"
            train(REPO / "recipes" / "cskv.yaml", run_dir,
                  [f"init={src}", f"train.steps={a.steps}", f"train.lr={a.lr}",
                   f"train.min_lr={a.lr / 10}", "train.warmup_steps=10", "train.eval_every=0",
                   f"checkpoint.every={a.steps}", *extra, *data], a.threads)
            tokens = metrics(run_dir)[-1]["tokens_seen"]
            note = (f"whiten init, {a.steps} steps, {tokens / 1e3:.0f}k tokens"
                    + (f", KD ratio {a.kd_ratio}" if how == "distill" else ""))
            points.append({"method": f"CSKV + {how}", "kv_heads": kv0, "bytes": kv_bytes_f16(cfg, kv0) * share,
                           "loss": evaluate(latest(run_dir), a.eval_batches), "note": note})
            if how == "distill":
                # int8 latents: one byte per value plus scales (keys per channel per group of 32
                # positions, values per token), as kv_bytes_int8 counts for heads.
                b8 = (rk + 8 * rk / 32 + rv + 8) * cfg["num_hidden_layers"]
                points.append({"method": "CSKV + distill + int8 cache", "kv_heads": kv0, "bytes": b8,
                               "loss": evaluate(latest(run_dir), a.eval_batches, "--kv-cache", "int8"),
                               "note": note})

    if "int8" in stages:
        loss = evaluate(teacher, a.eval_batches, "--kv-cache", "int8")
        points.append({"method": "int8 cache", "kv_heads": kv0, "bytes": kv_bytes_int8(cfg), "loss": loss})
        healed = out / f"heal_svd_kv{a.heal_kv_heads}"
        if (healed / "checkpoints" / "latest").exists():
            loss = evaluate(latest(healed), a.eval_batches, "--kv-cache", "int8")
            kv_cfg = dict(cfg, num_key_value_heads=a.heal_kv_heads)
            points.append({"method": "merge svd + heal + int8 cache", "kv_heads": a.heal_kv_heads,
                           "bytes": kv_bytes_int8(kv_cfg), "loss": loss})

    gen_lines, ood_lines = [], []
    if "ood" in stages:
        ood_lines = out_of_domain_table(a, out, teacher)
    if "gen" in stages:
        gen_lines = generation_table(a, out, teacher)

    # Table and plot.
    def row(p):
        ppl = math.exp(p["loss"])
        d = 100 * (ppl / math.exp(base) - 1)
        kl, top1 = getattr(p["loss"], "kl", None), getattr(p["loss"], "top1", None)
        fidelity = f"{kl:.4f} | {100 * top1:.1f}%" if kl is not None else "n/a | n/a"
        return (f"| {p['method']} | {p['kv_heads']} | {p['bytes']:.0f} | {p['loss']:.4f} | {ppl:.2f} | "
                f"{d:+.1f}% | {fidelity} | {p.get('note', '')} |")

    # Fidelity: KL(original || model) per position and top-1 agreement with the original on the
    # same tokens (eval --reference); a perplexity below the original's is drift, not fidelity.
    lines = ["| model | KV heads | KV bytes/token | val loss | perplexity | vs original | KL from original "
             "(nats/token) | top-1 agreement | notes |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"] + [row(p) for p in points]
    readings = []
    by = {(p["method"], p["kv_heads"]): p["loss"] for p in points}
    for kn in [int(x) for x in a.kv_heads.split(",")] if "merge" in stages else []:
        s, m = by.get(("merge svd", kn)), by.get(("merge mean", kn))
        if s is not None and m is not None:
            target = "; target at most half at 1/4 of the heads" if kn * 4 == kv0 else ""
            readings.append(f"- {kv0} -> {kn} KV heads before healing: svd +{s - base:.3f} nats, mean "
                            f"+{m - base:.3f} ({(s - base) / max(m - base, 1e-12):.0%} of mean's{target})")
    h = by.get(("merge svd + heal", a.heal_kv_heads))
    if h is not None:
        readings.append(f"- after healing (svd, {a.heal_kv_heads} KV heads): perplexity "
                        f"{100 * (math.exp(h - base) - 1):+.1f}% vs the original (target within 5%)")
    d = head_dim(cfg)
    half = {p["method"]: p["loss"] for p in points if p.get("note", "").startswith(f"rank {round(d / 2)} of")}
    if "MatryoshkaKV (trained)" in half and "PCA projection (untrained)" in half:
        m, pca = half["MatryoshkaKV (trained)"], half["PCA projection (untrained)"]
        readings.append(f"- rank {round(d / 2)} of {d} (50%): MatryoshkaKV perplexity "
                        f"{100 * (math.exp(m - base) - 1):+.1f}% vs the original (target within 5%), "
                        f"PCA {100 * (math.exp(pca - base) - 1):+.1f}%; MatryoshkaKV's increase is "
                        f"{(m - base) / max(pca - base, 1e-12):.0%} of PCA's (target at most half)")
    cskv = {p["method"]: p["loss"] for p in points if p["method"].startswith("CSKV")}
    for how in ("CSKV + reconstruction", "CSKV + distill"):
        if how in cskv:
            readings.append(f"- {how} at {a.cskv_split} of the KV width: perplexity "
                            f"{100 * (math.exp(cskv[how] - base) - 1):+.1f}% vs the original (target "
                            f"within 3% at half the KV bytes)")
    png = out / "kv_perplexity_vs_bytes.png"
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 4))
        for method in dict.fromkeys(p["method"] for p in points):
            ps = sorted((p for p in points if p["method"] == method), key=lambda p: p["bytes"])
            ax.plot([p["bytes"] for p in ps], [math.exp(p["loss"]) for p in ps], "o-", label=method)
        ax.axhline(math.exp(base), color="grey", ls="--", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("KV cache bytes per token")
        ax.set_ylabel("held-out perplexity")
        ax.set_title(f"KV compression, {teacher.name}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(png, dpi=110)
        if a.png:
            import shutil
            shutil.copy(png, a.png)
            png = Path(a.png).resolve()
        notes.append(f"plot: {png.relative_to(REPO) if png.is_relative_to(REPO) else png}")
    except ImportError:
        notes.append("plot: matplotlib missing")

    if ood_lines:
        lines += ["", "Out of domain and beyond the training length: perplexity on one Debian fortunes "
                  "text per length (the prompts of the generation table), each final model:", ""] + ood_lines
    if gen_lines:
        lines += ["", f"Greedy decoding of {a.gen_tokens} tokens after a prompt of about N tokens "
                  f"(Debian fortunes), {a.threads} threads, median of {a.reps}; peak RSS of the process:",
                  ""] + gen_lines
    stamp = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    cmd = "`.venv/bin/python bench/kv_compress.py " + " ".join(sys.argv[1:]) + "`"
    section = (f"\n## KV-cache compression ({stamp}, commit {git_head()})\n\nCommand: {cmd}. Machine: "
               f"{cpu_model()}, {a.threads} threads; load {load0:.1f} -> {os.getloadavg()[0]:.1f}; "
               f"{(time.time() - t_start) / 60:.0f} min. Teacher {teacher}: {cfg['num_attention_heads']} "
               f"query / {kv0} KV heads of {head_dim(cfg)}, {cfg['num_hidden_layers']} layers. Validation: "
               f"first {a.eval_batches} batches of 8 x {a.eval_seq_len} held-out tokens.\n\n"
               + "\n".join(lines) + "\n\n" + "\n".join(readings + [f"- {n}" for n in notes]) + "\n")
    for p in points:  # the fidelity figures into the JSON too (EvalLoss serializes as a float)
        p["kl_from_original"], p["top1_agreement"] = getattr(p["loss"], "kl", None), getattr(p["loss"], "top1", None)
    finish_report(section, a.results, not a.no_append, a.json, {"points": points, "base": base})


if __name__ == "__main__":
    main()
