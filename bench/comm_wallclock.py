#!/usr/bin/env python3
"""Wall-clock benchmark of gradient communication on the local multi-node simulator
(launch/netsim.sh): condense dense, condense compressed, PyTorch DDP and DDP + PowerSGD, side by
side in one run.

    .venv/bin/python bench/comm_wallclock.py                       # 2 and 4 nodes, 100mbit and 1gbit
    .venv/bin/python bench/comm_wallclock.py --scaling             # data-parallel scaling, 1/2/4 ranks

Needs root (network namespaces). Every run brings up its own simulator with
`launch/netsim.sh exec K RATE [DELAY] -- mpirun -np K ...` (one rank per node, one intra-op thread
per rank, `--bind-to none`), under its own prefix (--prefix, CONDENSE_NETSIM_PREFIX; default
cnbench), and netsim tears it down after every run, also on errors and Ctrl-C.

Contenders (--contenders; each is run for every configuration):

  condense-dense       build/condense train RECIPE train.threads=1 train.steps=S out_dir=<fresh>
                       train.eval_every=E ... comm.bucket_cap_mb=C [--condense-extra]
  condense-compressed  the same plus --condense-compressed (default: top-k 1 % with EControl,
                       eta 0.1, 10 dense warm-up steps); --condense-compressed "" drops it
  ddp                  bench/ddp_train.py: transformers' LlamaForCausalLM under
                       DistributedDataParallel, gloo over the simulated links, same data, same
                       hyperparameters (read from condense's resolved recipe, --print-recipe)
  ddp-powersgd         the same with the PowerSGD comm hook (rank 4, error feedback, warm start,
                       --start-powersgd-iter dense iterations first)
  condense:NAME        one per --condense-variant NAME='OVERRIDES' (repeatable): condense-dense plus
                       those overrides (e.g. DeMo, DiLoCo, 1-bit Adam settings), so that several
                       condense methods race in one run

Repetitions are interleaved (A B C D A B C D ...) over all configurations, so that drifting load
on the machine falls on every contender alike; the 1-minute load average is noted before and after
every run. Per contender and configuration the driver reports:

  - median step time over all kept steps of all repetitions (the first --warmup steps are
    discarded, and for compressed contenders also their dense warm-up steps: PowerSGD's
    start_powerSGD_iter, condense's comm.compression.warmup_steps), with the per-repetition
    medians. condense's step time is its trainer's timer (tokens per step / tokens_per_s in
    metrics.jsonl); ddp_train.py times the same span (batch, forward, loss, backward + exchange,
    loss all-reduce, clip, AdamW, zero_grad).
  - time to reach the target validation loss: the training-loop time (elapsed_s at the end of the
    step whose validation first reaches it; earlier validations included) or "not reached".
    Target: --target-loss, else the largest final validation loss of the condense-dense
    repetitions of the same configuration (they are deterministic, so normally one value);
    reached means <= target * (1 + --target-rtol), default 1e-4, so that float noise between
    implementations that follow the same trajectory does not decide it.
  - gradient payload bytes all-reduced per step per rank (condense: comm_bytes in metrics.jsonl;
    DDP: parameter bytes, PowerSGD: counted in its hook), comm_s (condense: its exchange time), and
    condense's own comm_wire_bytes metric where it logs one, and the bytes each node's eth0 sent
    during the whole process (/proc/net/dev of the node, read by a shell wrapper around each rank
    before and after; includes start-up, parameter broadcast, validation, MPI/gloo control traffic
    and condense's final checkpoint, which all-gathers every rank's compression state).

Projected time to target (--curve N:CONTENDER=PATH, repeatable, with --target-loss): the loss
trajectory of a contender does not depend on the link (the same ranks compute the same numbers at
any rate), so a long convergence run without the simulator (PATH: condense's metrics.jsonl, or a
--json-out of this driver whose first successful run has validations) gives the step n at which
validation first reaches the target on N nodes, and n x the median step time measured here on the
simulator is the training-loop time to target at each rate (validation time excluded). A curve
that never reaches the target gives a lower bound (its last step x the step time).

--scaling instead runs condense-dense and ddp at 1, 2 and 4 ranks (--scaling-ranks), at 1gbit and
10gbit (--scaling-rates), for every bucket cap in --bucket-caps (MB; condense comm.bucket_cap_mb,
DDP bucket_cap_mb), without validation; 1 rank is a plain process without the simulator (no
exchange at all). It reports the median step time, global tokens/s, the weak-scaling efficiency
t(1 rank) / t(N ranks) (the per-rank batch is fixed, so ideal is 1), and the CPU ceiling
min(1, cores / N): on a machine with fewer cores than ranks the simulated nodes share cores, so
efficiency there measures CPU contention as much as communication.

A markdown section (command, machine, load, table, per-run detail) is printed and appended to
bench/RESULTS.md unless --no-append; --json-out keeps every per-step value (written after every
run, so an interrupted benchmark keeps its data). A contender that fails (for example a
compression key this condense binary does not know yet) is recorded with its error and the
benchmark goes on (--stop-on-error to stop instead).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from bench_common import cpu_model, finish_report, git_head  # noqa: E402
NETSIM = REPO / "launch" / "netsim.sh"
DEFAULT_COMPRESSED = ("comm.compression.codec=topk comm.compression.ratio=0.01 "
                      "comm.compression.error_control=econtrol comm.compression.eta=0.1 "
                      "comm.compression.warmup_steps=10")
ALL_CONTENDERS = ["condense-dense", "condense-compressed", "ddp", "ddp-powersgd"]

# Each rank runs under this wrapper: the node's /proc/net/dev before and after the program ($0 is
# the directory for the snapshots; /proc/net is per network namespace, i.e. per simulated node).
NETDEV_WRAPPER = ('d=$0; r=${OMPI_COMM_WORLD_RANK:-0}; cat /proc/net/dev > "$d/netdev.$r.0"; '
                  '"$@"; rc=$?; cat /proc/net/dev > "$d/netdev.$r.1"; exit $rc')


# ---- small helpers ------------------------------------------------------------------------------

def loadavg() -> tuple[float, float, float]:
    with open("/proc/loadavg") as f:
        a, b, c = f.read().split()[:3]
    return float(a), float(b), float(c)


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


def netdev(path: Path, ifname: str = "eth0") -> tuple[int, int] | None:
    """(rx, tx) bytes of ifname in a /proc/net/dev snapshot."""
    try:
        for line in path.read_text().splitlines()[2:]:
            name, data = line.split(":", 1)
            if name.strip() == ifname:
                v = data.split()
                return int(v[0]), int(v[8])
    except (OSError, ValueError, IndexError):
        pass
    return None


def wire_bytes(run_dir: Path, ranks: int) -> list[list[int]] | None:
    out = []
    for r in range(ranks):
        a, b = netdev(run_dir / f"netdev.{r}.0"), netdev(run_dir / f"netdev.{r}.1")
        if a is None or b is None:
            return None
        out.append([b[0] - a[0], b[1] - a[1]])
    return out


def compression_warmup(overrides: list[str]) -> int:
    for o in overrides:
        if o.startswith("comm.compression.warmup_steps="):
            try:
                return int(o.split("=", 1)[1])
            except ValueError:
                pass
    return 0


def netsim_is_up(prefix: str) -> bool:
    env = dict(os.environ, CONDENSE_NETSIM_PREFIX=prefix)
    return subprocess.run([str(NETSIM), "status"], env=env, capture_output=True).returncode != 3


def netsim_down(prefix: str) -> None:
    env = dict(os.environ, CONDENSE_NETSIM_PREFIX=prefix)
    subprocess.run([str(NETSIM), "down"], env=env, capture_output=True)


# ---- the recipe, resolved by condense, and what ddp_train.py needs of it -------------------------

def resolved_recipe(args, overrides: list[str]) -> dict:
    import yaml
    cmd = [str(args.condense), "train", str(args.recipe), *overrides, "--print-recipe"]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{shlex.join(cmd)} failed:\n{p.stdout[-2000:]}{p.stderr[-2000:]}")
    return yaml.safe_load(p.stdout)


def dataset_path(args, cfg: dict) -> Path:
    """The token store condense's resolve_dataset() (recipes/pretrain.cpp) uses; prepared with
    `condense prepare` when missing."""
    d = cfg["data"]
    seed = d.get("seed", 1234)  # data.seed draws the split and seeds the tokenizer, not train.seed
    if d.get("dataset"):
        return (REPO / d["dataset"]).resolve()
    if d.get("tokenizer") or d.get("path") or d.get("max_documents"):
        raise SystemExit("this driver derives the token store path only for recipes without "
                         "data.tokenizer / data.path / data.max_documents; set data.dataset")
    cache = Path(d["cache_dir"])
    cache = cache if cache.is_absolute() else REPO / cache
    path = cache / f"{d['corpus']}-bpe{d['vocab_size']}-val{float(d['val_fraction'])!r}-seed{seed}.h5"
    if not path.exists():
        print(f"preparing {path} (first use)", flush=True)
        subprocess.run([str(args.condense), "prepare", "--corpus", d["corpus"], "--vocab-size",
                        str(d["vocab_size"]), "--val-fraction", str(d["val_fraction"]), "--seed",
                        str(seed), "--out", str(path)], cwd=REPO, check=True)
    return path


def ddp_recipe_args(cfg: dict) -> list[str]:
    m, d, t = cfg["model"], cfg["data"], cfg["train"]
    if t.get("grad_accum", 1) != 1:
        raise SystemExit("ddp_train.py does one micro-step per step: use train.grad_accum=1")
    if cfg.get("memory", {}).get("loss", "full") != "full":
        print("warning: condense uses memory.loss=chunked; ddp_train.py computes full logits", flush=True)
    out = ["--seq-len", d["seq_len"], "--batch-size", d["batch_size"],
           "--hidden-size", m["hidden_size"], "--intermediate-size", m["intermediate_size"],
           "--layers", m["num_hidden_layers"], "--heads", m["num_attention_heads"],
           "--kv-heads", m["num_key_value_heads"] or m["num_attention_heads"],
           "--max-positions", m["max_position_embeddings"], "--head-dim", m.get("head_dim", 0),
           "--rms-norm-eps", m["rms_norm_eps"], "--rope-theta", m["rope_theta"],
           "--initializer-range", m["initializer_range"],
           "--lr", t["lr"], "--min-lr", t["min_lr"], "--warmup-steps", t["warmup_steps"],
           "--weight-decay", t["weight_decay"], "--beta1", t["beta1"], "--beta2", t["beta2"],
           "--eps", t["eps"], "--grad-clip", t["grad_clip"], "--seed", t["seed"]]
    if not m["tie_word_embeddings"]:
        out.append("--untied")
    return [str(x) for x in out]


# ---- one run --------------------------------------------------------------------------------------

class Failed(Exception):
    pass


def launch(args, ranks: int, rate: str, prog: list[str], run_dir: Path) -> dict:
    """Runs `prog` on `ranks` simulated nodes at `rate` (or as one plain process when ranks == 1).
    Returns stdout, stderr, wall time, loads and the netsim settings it reported."""
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               PYTHONUNBUFFERED="1")
    if ranks == 1:
        cmd = prog
    else:
        env["CONDENSE_NETSIM_PREFIX"] = args.prefix
        mpirun = ["mpirun", "-np", str(ranks), "--oversubscribe", "--bind-to", "none",
                  "-x", f"OMP_NUM_THREADS={args.threads}", "-x", f"MKL_NUM_THREADS={args.threads}",
                  "-x", "GLOO_SOCKET_IFNAME=eth0", "-x", "PYTHONUNBUFFERED=1",
                  "sh", "-c", NETDEV_WRAPPER, str(run_dir), *prog]
        cmd = [str(NETSIM), "exec", str(ranks), rate] + ([args.delay] if args.delay else []) + ["--", *mpirun]
    # A binary being rebuilt is missing or not executable for a moment: wait for it.
    for _ in range(120):
        if all(os.access(p, os.X_OK) for p in prog[:1] if os.path.isabs(p)):
            break
        time.sleep(1)
    before = loadavg()
    t0 = time.perf_counter()
    try:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    except OSError as e:
        raise Failed(f"cannot start {cmd[0]}: {e}")
    try:
        out, err = proc.communicate(timeout=args.run_timeout)
    except (subprocess.TimeoutExpired, KeyboardInterrupt) as e:
        # netsim exec traps TERM: it stops mpirun and tears the simulator down.
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        if ranks > 1:
            netsim_down(args.prefix)
        if isinstance(e, KeyboardInterrupt):
            raise
        raise Failed(f"timed out after {args.run_timeout:.0f} s: {shlex.join(cmd)}\n{err[-3000:]}")
    wall = time.perf_counter() - t0
    after = loadavg()
    if ranks > 1 and netsim_is_up(args.prefix):  # exec always tears down; make sure
        netsim_down(args.prefix)
    info = {"cmd": shlex.join(cmd), "stdout": out, "stderr": err, "wall_s": wall,
            "load_before": before, "load_after": after}
    m = re.search(r"rate (\S+), delay (\S+) one-way", err)
    if m:
        info["netsim_rate"], info["netsim_delay"] = m.group(1), m.group(2)
    if proc.returncode != 0:
        lines = [l for l in (out + "\n" + err).splitlines() if "error" in l.lower()]
        first = lines[0].strip() if lines else f"exit status {proc.returncode}"
        raise Failed(f"{first}\n--- command: {shlex.join(cmd)}\n--- stderr tail:\n{err[-3000:]}"
                     f"\n--- stdout tail:\n{out[-1500:]}")
    return info


def run_condense(args, ranks: int, rate: str, cap: float, extra: list[str], run_dir: Path, steps: int,
                 eval_every: int) -> dict:
    out_dir = run_dir / "out"
    prog = [str(args.condense), "train", str(args.recipe), "name=comm_wallclock", f"out_dir={out_dir}",
            f"train.steps={steps}", f"train.eval_every={eval_every}",
            f"train.eval_batches={args.eval_batches}", "checkpoint.every=0",
            f"train.log_every={max(1, steps // 10)}", f"train.threads={args.threads}",
            f"data.cache_dir={args.data_cache}", f"comm.bucket_cap_mb={cap:g}",
            *args.condense_extra, *extra]
    info = launch(args, ranks, rate, prog, run_dir)
    train, val = [], []
    with open(out_dir / "metrics.jsonl") as f:
        for line in f:
            rec = json.loads(line)
            (train if rec.get("split") == "train" else val if rec.get("split") == "val" else []).append(rec)
    step_s, elapsed, prev_tokens = [], {}, 0.0
    for r in train:
        tokens = r["tokens_seen"] - prev_tokens
        prev_tokens = r["tokens_seen"]
        step_s.append(tokens / r["tokens_per_s"])
        elapsed[r["step"]] = r["elapsed_s"]
    comm = {}
    for r in train:
        for k, v in r.items():
            if k.startswith("comm") and isinstance(v, (int, float)):
                comm.setdefault(k, []).append(v)
    return {"step_s": step_s, "loss": [r["loss"] for r in train],
            "elapsed_s": [r["elapsed_s"] for r in train],
            "val": [{"step": v["step"], "loss": v["loss"], "elapsed_s": elapsed.get(v["step"])} for v in val],
            "comm_bytes": comm.get("comm_bytes", [0.0] * len(train)),
            "comm_s": comm.get("comm_s"), "comm_metrics": comm,
            "tokens_per_step": (train[-1]["tokens_seen"] / len(train)) if train else None,
            "wire_rx_tx_bytes_per_rank": wire_bytes(run_dir, ranks) if ranks > 1 else None, **info}


def run_ddp(args, ranks: int, rate: str, cap: float, hook: str, run_dir: Path, steps: int,
            eval_every: int) -> dict:
    prog = [args.python, str(REPO / "bench" / "ddp_train.py"), "--dataset", str(args.dataset),
            "--steps", str(steps), "--eval-every", str(eval_every), "--eval-batches", str(args.eval_batches),
            "--threads", str(args.threads),
            "--comm-hook", hook, "--bucket-cap-mb", f"{cap:g}", "--port", str(args.port),
            "--powersgd-rank", str(args.powersgd_rank),
            "--start-powersgd-iter", str(args.start_powersgd_iter),
            *args.ddp_recipe_args, *args.ddp_extra]
    info = launch(args, ranks, rate, prog, run_dir)
    lines = [l for l in info["stdout"].splitlines() if l.startswith("{")]
    if not lines:
        raise Failed(f"no JSON line from ddp_train.py\n{info['stderr'][-3000:]}")
    res = json.loads(lines[-1])
    res["ddp_wire_loop_rx_tx_bytes_per_rank"] = res.pop("wire_rx_tx_bytes_per_rank", None)
    res["wire_rx_tx_bytes_per_rank"] = wire_bytes(run_dir, ranks) if ranks > 1 else None
    res.update(info)
    return res


def run_one(args, contender: str, ranks: int, rate: str, cap: float, rep: int, steps: int,
            eval_every: int) -> dict:
    run_dir = Path(tempfile.mkdtemp(prefix=f"comm-wallclock-{contender}-", dir=args.work_dir))
    rec = {"contender": contender, "ranks": ranks, "rate": rate if ranks > 1 else "-",
           "bucket_cap_mb": cap if ranks > 1 else None, "rep": rep, "steps": steps}
    try:
        if contender == "condense-dense":
            res = run_condense(args, ranks, rate, cap, [], run_dir, steps, eval_every)
            skip = 0
        elif contender == "condense-compressed":
            res = run_condense(args, ranks, rate, cap, args.compressed, run_dir, steps, eval_every)
            skip = compression_warmup(args.compressed)
        elif contender.startswith("condense:"):
            overrides = args.variants[contender.split(":", 1)[1]]
            res = run_condense(args, ranks, rate, cap, overrides, run_dir, steps, eval_every)
            skip = compression_warmup(overrides)
        elif contender == "ddp":
            res = run_ddp(args, ranks, rate, cap, "none", run_dir, steps, eval_every)
            skip = 0
        elif contender == "ddp-powersgd":
            res = run_ddp(args, ranks, rate, cap, "powersgd", run_dir, steps, eval_every)
            skip = args.start_powersgd_iter
        else:
            raise SystemExit(f"unknown contender {contender}")
        rec["ok"] = True
        rec["skip"] = max(args.warmup, skip if ranks > 1 else 0)
        for k in ("step_s", "loss", "elapsed_s", "val", "comm_bytes", "comm_s", "comm_metrics",
                  "wire_rx_tx_bytes_per_rank", "ddp_wire_loop_rx_tx_bytes_per_rank", "tokens_per_step",
                  "cmd", "wall_s", "load_before", "load_after", "netsim_rate", "netsim_delay"):
            if k in res:
                rec[k] = res[k]
    except Failed as e:
        rec.update(ok=False, error=str(e))
        if args.stop_on_error:
            raise SystemExit(f"{contender} failed: {e}")
    finally:
        if args.keep_runs:
            rec["run_dir"] = str(run_dir)
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    return rec


# ---- summaries ----------------------------------------------------------------------------------

def kept(rec: dict) -> list[float]:
    return rec["step_s"][rec["skip"]:] if rec.get("ok") else []


def time_to_target(rec: dict, target: float | None, rtol: float = 0.0):
    if target is None or not rec.get("ok"):
        return None
    for v in rec.get("val", []):
        if v["loss"] <= target * (1 + rtol) and v.get("elapsed_s") is not None:
            return v["elapsed_s"], v["step"]
    return None


def read_curve(path: Path) -> list[tuple[int, float]]:
    """(step, validation loss) pairs: condense's metrics.jsonl, or this driver's --json-out (its
    first successful run with validations)."""
    if path.suffix == ".jsonl":
        out = []
        for line in path.read_text().splitlines():
            rec = json.loads(line)
            if rec.get("split") == "val":
                out.append((rec["step"], rec["loss"]))
        return out
    runs = json.loads(path.read_text())["runs"]
    run = next(r for r in runs if r.get("ok") and r.get("val"))
    return [(v["step"], v["loss"]) for v in run["val"]]


def projection_table(args, runs: list[dict], configs: list[tuple[int, str]]) -> tuple[str, list[dict]]:
    """Steps to --target-loss from each --curve, times the median step time measured here."""
    lines = ["| nodes | rate | contender | median ms/step (here) | curve: first step at target | "
             "projected time to target, s | vs ddp-powersgd |",
             "| ---: | --- | --- | ---: | --- | ---: | --- |"]
    summary = []
    for nodes, rate in configs:
        rows = []
        for c in args.contenders:
            curve = args.curves.get((nodes, c))
            ok = [r for r in runs if r["ranks"] == nodes and r["rate"] == rate and r["contender"] == c and r.get("ok")]
            if curve is None or not ok:
                continue
            med = median([x for r in ok for x in kept(r)])
            hit = next((s for s, l in curve if l <= args.target_loss * (1 + args.target_rtol)), None)
            if hit is not None:
                rows.append((c, med, f"step {hit}", hit * med, True))
            else:
                last, best = curve[-1][0], min(l for _, l in curve)
                rows.append((c, med, f"not reached in {last} steps (best {best:.4f})", last * med, False))
        ref = next((r for r in rows if r[0] == "ddp-powersgd"), None)
        for c, med, where, t, reached in rows:
            if ref is None or c == "ddp-powersgd":
                vs = "-"
            elif reached and ref[4]:
                vs = f"{ref[3] / t:.2f}x sooner"
            elif reached:
                vs = f"> {ref[3] / t:.2f}x sooner (ddp-powersgd not reached)"
            else:
                vs = "not reached"
            lines.append(f"| {nodes} | {rate} | {c} | {fmt_ms(med)} | {where} | "
                         f"{'> ' if not reached else ''}{t:.0f} | {vs} |")
            summary.append({"nodes": nodes, "rate": rate, "contender": c, "median_step_s": med,
                            "reached": reached, "projected_s": t, "where": where})
    return "\n".join(lines), summary


def fmt_ms(x: float) -> str:
    return "n/a" if x != x else f"{x * 1e3:.0f}"


def load_range(rs: list[dict]) -> str:
    xs = [x for r in rs for x in (r.get("load_before", [None])[0], r.get("load_after", [None])[0]) if x is not None]
    return f"{min(xs):.2f}-{max(xs):.2f}" if xs else "n/a"


def first_line(err: str) -> str:
    return err.splitlines()[0][:160].replace("|", "/") if err else "failed"


def comm_table(args, runs: list[dict], configs: list[tuple[int, str]]) -> tuple[str, list[dict]]:
    lines = ["| nodes | rate | contender | median ms/step (kept) | per-rep medians | step time vs condense-dense "
             "| final val loss (median) | target val loss | time to target, s (median; reached) "
             "| payload MB/step/rank (condense comm_wire_bytes) | comm_s median | wire MB sent/rank (whole run) | process wall s (median) "
             "| load 1-min (min-max) |",
             "| ---: | --- | --- | ---: | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | --- |"]
    summary = []
    for nodes, rate in configs:
        rs_all = [r for r in runs if r["ranks"] == nodes and r["rate"] == rate]
        dense = [r for r in rs_all if r["contender"] == "condense-dense" and r.get("ok") and r.get("val")]
        if args.target_loss is not None:
            target, target_src = args.target_loss, "given"
        elif dense:
            target, target_src = max(r["val"][-1]["loss"] for r in dense), "condense-dense final"
        else:
            ddp = [r for r in rs_all if r["contender"] == "ddp" and r.get("ok") and r.get("val")]
            target = max(r["val"][-1]["loss"] for r in ddp) if ddp else None
            target_src = "ddp final (no condense-dense)" if ddp else "none"
        base = median([x for r in rs_all if r["contender"] == "condense-dense" for x in kept(r)])
        for c in args.contenders:
            rs = [r for r in rs_all if r["contender"] == c]
            ok = [r for r in rs if r.get("ok")]
            if not ok:
                err = next((r.get("error", "") for r in rs if not r.get("ok")), "not run")
                lines.append(f"| {nodes} | {rate} | {c} | failed: {first_line(err)} | | | | | | | | | | |")
                summary.append({"nodes": nodes, "rate": rate, "contender": c, "failed": first_line(err)})
                continue
            med = median([x for r in ok for x in kept(r)])
            per_rep = ", ".join(fmt_ms(median(kept(r))) for r in ok)
            final = median([r["val"][-1]["loss"] for r in ok if r.get("val")])
            tt = [time_to_target(r, target, args.target_rtol) for r in ok]
            reached = [t for t in tt if t is not None]
            if target is None:
                tts = "no target"
            elif reached:
                tts = (f"{median([t[0] for t in reached]):.1f} (step {median([t[1] for t in reached]):.0f}; "
                       f"{len(reached)}/{len(ok)})")
            else:
                best = min((v["loss"] for r in ok for v in r.get("val", [])), default=float("nan"))
                tts = f"not reached (0/{len(ok)}; best {best:.4f})"
            payload = median([x for r in ok for x in r.get("comm_bytes", [])[r["skip"]:]]) / 1e6
            cwire = median([x for r in ok for x in (r.get("comm_metrics") or {}).get("comm_wire_bytes", [])[r["skip"]:]]) / 1e6
            comm_s = median([x for r in ok for x in (r.get("comm_s") or [])[r["skip"]:]])
            wires = [sum(w[1] for w in r["wire_rx_tx_bytes_per_rank"]) / len(r["wire_rx_tx_bytes_per_rank"])
                     for r in ok if r.get("wire_rx_tx_bytes_per_rank")]
            wire = median(wires) / 1e6 if wires else float("nan")
            ratio = med / base if base == base else float("nan")
            lines.append(
                f"| {nodes} | {rate} | {c} | {fmt_ms(med)} | {per_rep} | {ratio:.2f} | {final:.4f} | "
                f"{'n/a' if target is None else f'{target:.4f}'} | {tts} | {payload:.3f}"
                f"{'' if cwire != cwire else f' ({cwire:.3f})'} | "
                f"{'n/a' if comm_s != comm_s else f'{comm_s * 1e3:.0f} ms'} | {wire:.1f} | "
                f"{median([r['wall_s'] for r in ok]):.0f} | {load_range(ok)} |")
            summary.append({"nodes": nodes, "rate": rate, "contender": c, "median_step_s": med,
                            "per_rep_median_step_s": [median(kept(r)) for r in ok], "vs_condense_dense": ratio,
                            "final_val_loss": final, "target_loss": target, "target_source": target_src,
                            "time_to_target_s": [t[0] if t else None for t in tt],
                            "reached": len(reached), "reps_ok": len(ok), "payload_mb_per_step": payload,
                            "condense_comm_wire_mb_per_step": cwire,
                            "comm_s_median": comm_s, "wire_mb_sent_per_rank": wire})
    return "\n".join(lines), summary


def scaling_table(args, runs: list[dict]) -> tuple[str, list[dict]]:
    cores = os.cpu_count() or 1
    lines = ["| contender | ranks | rate | bucket MB | median ms/step (kept) | per-rep medians | global tok/s "
             "| efficiency t(1)/t(N) | CPU ceiling min(1, cores/N) | payload MB/step/rank | wire MB sent/rank "
             "| load 1-min (min-max) |",
             "| --- | ---: | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    summary = []
    keys = []
    for r in runs:
        k = (r["contender"], r["ranks"], r["rate"], r["bucket_cap_mb"])
        if k not in keys:
            keys.append(k)
    keys.sort(key=lambda k: (k[0], k[1], k[2], k[3] or 0))
    for c, n, rate, cap in keys:
        rs = [r for r in runs if (r["contender"], r["ranks"], r["rate"], r["bucket_cap_mb"]) == (c, n, rate, cap)]
        ok = [r for r in rs if r.get("ok")]
        if not ok:
            err = next((r.get("error", "") for r in rs), "")
            lines.append(f"| {c} | {n} | {rate} | {cap if cap is not None else '-'} | failed: {first_line(err)} "
                         "| | | | | | | |")
            continue
        med = median([x for r in ok for x in kept(r)])
        one = median([x for r in runs if r["contender"] == c and r["ranks"] == 1 for x in kept(r)])
        eff = one / med if one == one else float("nan")
        tokens = ok[0].get("tokens_per_step") or float("nan")
        payload = median([x for r in ok for x in (r.get("comm_bytes") or [])[r["skip"]:]]) / 1e6
        wires = [sum(w[1] for w in r["wire_rx_tx_bytes_per_rank"]) / len(r["wire_rx_tx_bytes_per_rank"])
                 for r in ok if r.get("wire_rx_tx_bytes_per_rank")]
        wire = median(wires) / 1e6 if wires else float("nan")
        lines.append(f"| {c} | {n} | {rate} | {cap if cap is not None else '-'} | {fmt_ms(med)} | "
                     f"{', '.join(fmt_ms(median(kept(r))) for r in ok)} | {tokens / med:.0f} | {eff:.2f} | "
                     f"{min(1.0, cores / n):.2f} | {payload:.2f} | {'-' if wire != wire else f'{wire:.1f}'} | "
                     f"{load_range(ok)} |")
        summary.append({"contender": c, "ranks": n, "rate": rate, "bucket_cap_mb": cap, "median_step_s": med,
                        "global_tokens_per_s": tokens / med, "efficiency": eff,
                        "cpu_ceiling": min(1.0, cores / n), "payload_mb_per_step": payload,
                        "wire_mb_sent_per_rank": wire})
    return "\n".join(lines), summary


def detail_table(runs: list[dict]) -> str:
    rows = ["| # | contender | ranks | rate | bucket MB | rep | ok | median ms/step (kept) | kept steps "
            "| final val loss | load before (1/5/15) | load after (1/5/15) | wall s |",
            "| ---: | --- | ---: | --- | ---: | ---: | --- | ---: | ---: | ---: | --- | --- | ---: |"]
    for i, r in enumerate(runs):
        val = r.get("val") or []
        ok = "yes" if r.get("ok") else "no: " + first_line(r.get("error", ""))
        final = format(val[-1]["loss"], ".4f") if val else "-"
        rows.append(f"| {i} | {r['contender']} | {r['ranks']} | {r['rate']} | {r['bucket_cap_mb'] or '-'} | "
                    f"{r['rep']} | {ok} | {fmt_ms(median(kept(r)))} | {len(kept(r))} | "
                    f"{final} | "
                    f"{' '.join(f'{x:.2f}' for x in r.get('load_before', []))} | "
                    f"{' '.join(f'{x:.2f}' for x in r.get('load_after', []))} | "
                    f"{r.get('wall_s', float('nan')):.0f} |")
    return "\n".join(rows)


# ---- main ---------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--condense", default="build/condense", help="condense binary (relative to the repo root)")
    ap.add_argument("--python", default=sys.executable, help="interpreter for bench/ddp_train.py")
    ap.add_argument("--recipe", default="recipes/quickstart.yaml")
    ap.add_argument("--data-cache", default=str(REPO / "data_cache"), help="condense data.cache_dir")
    ap.add_argument("--nodes", default="2,4", help="comma-separated node counts (one rank per node)")
    ap.add_argument("--rates", default="100mbit,1gbit", help="comma-separated link rates (tc units)")
    ap.add_argument("--delay", default="", help="one-way delay for netsim (empty: netsim's default, "
                    "0.1ms, dropped with a warning on kernels without netem)")
    ap.add_argument("--contenders", default=",".join(ALL_CONTENDERS),
                    help=f"comma-separated subset of {','.join(ALL_CONTENDERS)}, run in this order")
    ap.add_argument("--condense-compressed", default=DEFAULT_COMPRESSED,
                    help="overrides (space-separated key=value) that make condense-compressed; "
                         "empty drops that contender")
    ap.add_argument("--condense-extra", default="", help="overrides added to every condense contender")
    ap.add_argument("--condense-variant", action="append", default=[], metavar="NAME=OVERRIDES",
                    help="a condense contender 'condense:NAME' with these overrides (repeatable)")
    ap.add_argument("--curve", action="append", default=[], metavar="N:CONTENDER=PATH",
                    help="loss trajectory of CONTENDER on N nodes for the projected time to target")
    ap.add_argument("--ddp-extra", default="", help="extra arguments for bench/ddp_train.py")
    ap.add_argument("--powersgd-rank", type=int, default=4)
    ap.add_argument("--start-powersgd-iter", type=int, default=10)
    ap.add_argument("--bucket-cap-mb", type=float, default=25.0, help="bucket cap of every contender "
                    "(comparison mode)")
    ap.add_argument("--steps", type=int, default=None, help="steps per run (default 200; --scaling 30)")
    ap.add_argument("--warmup", type=int, default=5, help="steps discarded at the start of each run")
    ap.add_argument("--eval-every", type=int, default=None, help="validation interval (default 20; "
                    "--scaling 0: none)")
    ap.add_argument("--eval-batches", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3, help="repetitions per contender and configuration")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads per rank")
    ap.add_argument("--target-loss", type=float, default=None,
                    help="validation loss to reach (default: condense-dense's final one, per configuration)")
    ap.add_argument("--target-rtol", type=float, default=1e-4,
                    help="a validation loss <= target * (1 + rtol) counts as reached (condense and DDP "
                         "follow the same trajectory up to float summation order, ~1e-8 apart)")
    ap.add_argument("--scaling", action="store_true", help="data-parallel scaling mode (see above)")
    ap.add_argument("--scaling-ranks", default="1,2,4")
    ap.add_argument("--scaling-rates", default="1gbit,10gbit")
    ap.add_argument("--bucket-caps", default="1,5,25", help="scaling mode: bucket caps in MB")
    ap.add_argument("--prefix", default=os.environ.get("CONDENSE_NETSIM_PREFIX", "cnbench"),
                    help="netsim prefix (CONDENSE_NETSIM_PREFIX) of this benchmark's simulators")
    ap.add_argument("--port", type=int, default=29500, help="gloo rendezvous port on node 0")
    ap.add_argument("--run-timeout", type=float, default=3600, help="seconds before a run is stopped")
    ap.add_argument("--work-dir", default=None, help="where run directories go (default: system temp)")
    ap.add_argument("--keep-runs", action="store_true", help="keep run directories (out dirs, netdev snapshots)")
    ap.add_argument("--stop-on-error", action="store_true")
    ap.add_argument("--results", default=str(REPO / "bench" / "RESULTS.md"))
    ap.add_argument("--no-append", action="store_true", help="print only; do not append to RESULTS.md")
    ap.add_argument("--json-out", default="")
    args = ap.parse_args()

    args.steps = args.steps if args.steps is not None else (30 if args.scaling else 200)
    args.eval_every = args.eval_every if args.eval_every is not None else (0 if args.scaling else 20)
    if args.warmup >= args.steps:
        ap.error("--warmup must be smaller than --steps")
    args.condense = (REPO / args.condense).resolve() if not os.path.isabs(args.condense) else Path(args.condense)
    if not args.condense.exists():
        ap.error(f"{args.condense} does not exist; build it first (scripts/build.sh)")
    args.recipe = (REPO / args.recipe).resolve() if not os.path.isabs(args.recipe) else Path(args.recipe)
    args.data_cache = str(Path(args.data_cache).resolve())
    args.compressed = args.condense_compressed.split()
    args.condense_extra = args.condense_extra.split()
    args.ddp_extra = shlex.split(args.ddp_extra)
    if args.scaling:
        args.contenders = [c for c in args.contenders.split(",") if c in ("condense-dense", "ddp")] \
            if args.contenders != ",".join(ALL_CONTENDERS) else ["condense-dense", "ddp"]
    else:
        args.contenders = [c for c in args.contenders.split(",") if c]
        if not args.compressed and "condense-compressed" in args.contenders:
            args.contenders.remove("condense-compressed")
    args.variants = {}
    for v in args.condense_variant:
        name, sep, overrides = v.partition("=")
        if not sep or not name:
            ap.error(f"--condense-variant wants NAME=OVERRIDES, got '{v}'")
        args.variants[name] = overrides.split()
        args.contenders.append(f"condense:{name}")
    args.curves = {}
    for c in args.curve:
        key, sep, path = c.partition("=")
        nodes, sep2, contender = key.partition(":")
        if not sep or not sep2 or not nodes.isdigit() or not Path(path).exists():
            ap.error(f"--curve wants N:CONTENDER=PATH with an existing PATH, got '{c}'")
        args.curves[(int(nodes), contender)] = read_curve(Path(path))
    if args.curves and args.target_loss is None:
        ap.error("--curve needs --target-loss")
    for c in args.contenders:
        if c.startswith("condense:"):
            continue
        if c not in ALL_CONTENDERS:
            ap.error(f"unknown contender '{c}' (choices: {', '.join(ALL_CONTENDERS)})")
    if not args.contenders:
        ap.error("no contenders left to run")
    if os.geteuid() != 0:
        ap.error("needs root: launch/netsim.sh creates network namespaces")
    if netsim_is_up(args.prefix):
        ap.error(f"a simulator with prefix '{args.prefix}' is up; tear it down first "
                 f"(CONDENSE_NETSIM_PREFIX={args.prefix} launch/netsim.sh down) or pick another --prefix")

    # What the DDP side needs of the recipe, from condense's own resolution of it.
    cfg = resolved_recipe(args, [f"data.cache_dir={args.data_cache}", *args.condense_extra])
    args.dataset = dataset_path(args, cfg)
    args.ddp_recipe_args = ddp_recipe_args(cfg)

    import torch  # only for its version string
    exe = os.path.relpath(sys.executable, REPO) if sys.executable.startswith(str(REPO)) else sys.executable
    command = shlex.join([exe, "bench/comm_wallclock.py"] + sys.argv[1:])
    started = dt.datetime.now().astimezone()
    uptime_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()

    # The schedule: repetitions outermost, so that A B C D A B C D ... spreads machine load.
    plan = []  # (contender, ranks, rate, cap)
    if args.scaling:
        ranks_list = [int(x) for x in args.scaling_ranks.split(",")]
        rates = args.scaling_rates.split(",")
        caps = [float(x) for x in args.bucket_caps.split(",")]
        if 1 in ranks_list:
            plan += [(c, 1, "-", None) for c in args.contenders]
        for rate in rates:
            for n in [n for n in ranks_list if n > 1]:
                for cap in caps:
                    plan += [(c, n, rate, cap) for c in args.contenders]
        configs = []
    else:
        configs = [(int(n), r) for n in args.nodes.split(",") for r in args.rates.split(",")]
        for n, rate in configs:
            plan += [(c, n, rate, args.bucket_cap_mb) for c in args.contenders]
    print(f"{len(plan) * args.reps} runs of {args.steps} steps; contenders {', '.join(args.contenders)}; "
          f"netsim prefix {args.prefix}", flush=True)

    runs = []
    t_start = time.perf_counter()
    try:
        for rep in range(args.reps):
            for contender, n, rate, cap in plan:
                rec = run_one(args, contender, n, rate, cap if cap is not None else args.bucket_cap_mb,
                              rep, args.steps, args.eval_every)
                if n == 1:
                    rec["bucket_cap_mb"] = None
                runs.append(rec)
                if args.json_out:
                    with open(args.json_out, "w") as f:
                        json.dump({"runs": runs, "command": command, "partial": True}, f)
                if rec.get("ok"):
                    val = rec.get("val") or []
                    print(f"[{time.perf_counter() - t_start:6.0f}s] rep {rep} {contender:20s} {n} x {rate:8s} "
                          f"bucket {rec['bucket_cap_mb'] or '-'}: median {fmt_ms(median(kept(rec)))} ms/step "
                          f"({len(kept(rec))} kept)"
                          + (f", final val {val[-1]['loss']:.4f}" if val else "")
                          + f", wall {rec['wall_s']:.0f} s, load {rec['load_before'][0]:.2f} -> "
                            f"{rec['load_after'][0]:.2f}", flush=True)
                else:
                    print(f"[{time.perf_counter() - t_start:6.0f}s] rep {rep} {contender:20s} {n} x {rate:8s}: "
                          f"FAILED: {rec['error'][:2000]}", flush=True)
    except KeyboardInterrupt:
        print("interrupted; summarizing the runs so far", flush=True)
        netsim_down(args.prefix)
    total_s = time.perf_counter() - t_start
    uptime_after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()

    if args.scaling:
        table, summary = scaling_table(args, runs)
        title = "Data-parallel scaling on the simulator: condense vs PyTorch DDP"
        note = ("Weak scaling: every rank keeps its batch (data.batch_size windows of data.seq_len), so "
                "the ideal step time is constant and efficiency = median step time at 1 rank / at N ranks. "
                "1 rank is a plain process (no simulator, no exchange). On a machine with fewer cores than "
                "ranks the simulated nodes share cores: the CPU ceiling column bounds what any "
                "communication scheme could reach there.")
    else:
        table, summary = comm_table(args, runs, configs)
        if args.curves:
            projected, psummary = projection_table(args, runs, configs)
            table += (f"\n\nProjected time to target {args.target_loss:.4f} (steps from the --curve "
                      f"runs x the median step time above; validation time excluded):\n\n{projected}")
            summary = {"measured": summary, "projected": psummary}
        title = "Gradient communication, wall clock on the simulator: condense dense / compressed vs DDP / PowerSGD"
        note = ("Step times are medians over kept steps (the first --warmup steps and a compressed "
                "contender's dense warm-up steps are discarded). Time to target (val loss <= target x "
                f"(1 + {args.target_rtol:g})) = training-loop time "
                "(elapsed_s at the end of the step whose validation first reaches the target; earlier "
                "validations included). Payload = gradient bytes handed to all-reduce per step by one rank; "
                "wire = bytes a node's eth0 sent during the whole process (start-up, broadcast, validation "
                "and control traffic included, and for condense the final checkpoint, which all-gathers every "
                "rank's compression state: with error control a few gradient sizes per rank). "
                "Step time vs condense-dense < 1 means faster.")
    delays = sorted({r.get("netsim_delay") for r in runs if r.get("netsim_delay")})
    validation = (f"validation every {args.eval_every} steps ({args.eval_batches} batches)"
                  if args.eval_every > 0 else "no validation")
    if args.scaling:
        settings = (f"bucket caps {args.bucket_caps} MB; extra condense overrides: "
                    f"`{' '.join(args.condense_extra) or '(none)'}`")
    else:
        variants = "".join(f"; condense:{n} overrides: `{' '.join(o)}`" for n, o in args.variants.items())
        curves = "".join(f"; curve {n}:{c} from --curve" for (n, c) in args.curves)
        compressed = (f"; condense-compressed overrides: `{' '.join(args.compressed)}`"
                      if "condense-compressed" in args.contenders else "")
        settings = (f"bucket cap {args.bucket_cap_mb:g} MB{compressed}{variants}{curves}; extra condense overrides: "
                    f"`{' '.join(args.condense_extra) or '(none)'}`; PowerSGD rank {args.powersgd_rank}, "
                    f"start_powerSGD_iter {args.start_powersgd_iter}, error feedback, warm start")
    section = f"""
## {title} ({started:%Y-%m-%d %H:%M %Z})

Command (from the repo root, as root):

    {command}

- Machine: {os.cpu_count()} CPUs (nproc), {cpu_model()}; {platform.system()} {platform.release()}
- torch {torch.__version__}; condense commit {git_head()}, binary {os.path.relpath(args.condense, REPO)};
  recipe {os.path.relpath(args.recipe, REPO)}; token store {os.path.relpath(args.dataset, REPO)}
- {args.reps} repetitions x {args.steps} steps, interleaved over contenders and configurations;
  {args.threads} thread(s) per rank, one rank per simulated node, mpirun --bind-to none;
  {validation}; total {total_s / 60:.1f} min
- Simulator one-way delay as applied: {', '.join(delays) if delays else 'n/a'}
- {settings}
- Load before: `{uptime_before}`
- Load after:  `{uptime_after}`

{table}

{note}

<details><summary>Per-run detail</summary>

{detail_table(runs)}

</details>
"""
    finish_report(section, args.results, not args.no_append, args.json_out,
                  {"runs": runs, "summary": summary, "command": command})
    return 0 if all(r.get("ok") for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
