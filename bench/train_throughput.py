#!/usr/bin/env python3
"""Training throughput: condense versus PyTorch eager and torch.compile, side by side in one run.

    .venv/bin/python bench/train_throughput.py --condense build/condense

For each configuration (seq_len x batch, default 128x8 and 512x2: the same 1024 tokens per step)
it runs R repetitions of S steps of each contender, interleaved A B C A B C ... so that the load of a
shared machine falls on both alike:

  A  `condense train recipes/quickstart.yaml` (4 layers, hidden 256, vocab 4096, fp32, AdamW
     fused, clip 1.0), per-step times read from <out_dir>/metrics.jsonl
     (step time = tokens per step / tokens_per_s, which is the trainer's own timer around
     batch + forward + loss + backward + clip + AdamW + zero_grad);
  B  bench/pytorch_eager_train.py, the same step with transformers' LlamaForCausalLM (peer
     "pytorch": eager);
  C  the same with the forward and loss under torch.compile (peer "compile": inductor; its
     compilation falls in the discarded warm-up steps).
--peers chooses the peers (default pytorch,compile); every ratio is condense / that peer.

The first W steps of every repetition are discarded as warm-up. Reported per configuration and
thread count (--threads 2 by default; --threads 2,1 adds single-threaded runs): median tokens/s
over all kept steps of all repetitions, the per-repetition medians, the ratio condense / PyTorch
(of the pooled medians, and the median of the per-repetition ratios), the same restricted to
"quiet" pairs (no other work in the run queue during either run), and the CPU time per step of
each process. Each run notes the 1-minute load average before and after, and the mean run queue
during it; --quiet-wait N waits up to N s before each pair for the machine to go idle. A markdown
section is printed and appended to bench/RESULTS.md (--no-append to skip), with the command,
machine and torch version; --json-out keeps every per-step time.

On a shared 2-core machine, 2-threaded wall times are only comparable when nothing else runs:
other processes deschedule OpenMP threads at barriers and slow both contenders 5-30x. The
single-threaded CPU time per step is the measure that survives such load.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from bench_common import cpu_model, finish_report, git_head  # noqa: E402


def loadavg() -> tuple[float, float, float]:
    with open("/proc/loadavg") as f:
        a, b, c = f.read().split()[:3]
    return float(a), float(b), float(c)


def procs_running() -> int:
    """Runnable tasks right now (/proc/stat), the reader included: 1 on an idle machine."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("procs_running"):
                return int(line.split()[1])
    return -1


def wait_for_quiet(threshold: float, max_wait: float) -> tuple[float, float]:
    """Waits until the mean run queue over one second is at most `threshold` (1 = idle), for at
    most `max_wait` seconds. Returns (seconds waited, last mean run queue)."""
    t0 = time.perf_counter()
    while True:
        xs = []
        for _ in range(5):
            xs.append(procs_running())
            time.sleep(0.2)
        q = sum(xs) / len(xs)
        waited = time.perf_counter() - t0
        if q <= threshold or waited >= max_wait:
            return waited, q


class ProcessMonitor:
    """Follows a child process while it runs: every `period` seconds it records the run queue, the
    number of lines in its per-step progress file and the CPU time the process has used (all its
    threads, /proc/PID/stat utime + stime). CPU time per step is much less sensitive to other
    load on the machine than wall time."""

    def __init__(self, pid: int, progress: Path, period: float = 0.02):
        self.pid, self.progress, self.period = pid, progress, period
        self.runq, self.samples = [], []  # samples: (lines, cpu_s)
        self._tick = os.sysconf("SC_CLK_TCK")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._size, self._lines = -1, 0

    def _count_lines(self) -> int:
        try:
            size = os.stat(self.progress).st_size
        except OSError:
            return 0
        if size != self._size:
            with open(self.progress, "rb") as f:
                self._lines = f.read().count(b"\n")
            self._size = size
        return self._lines

    def _cpu(self) -> float:
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / self._tick  # utime, stime

    def _loop(self):
        n = 0
        while not self._stop.is_set():
            try:
                lines = self._count_lines()
                self.samples.append((lines, self._cpu()))
            except (OSError, ValueError, IndexError):
                pass
            if n % 10 == 0:
                self.runq.append(procs_running())
            n += 1
            self._stop.wait(self.period)

    def start(self):
        self._thread.start()

    def stop(self):
        self._stop.set()
        self._thread.join()

    def runq_mean(self) -> float:
        return sum(self.runq) / len(self.runq) if self.runq else float("nan")

    def cpu_per_step(self, warmup: int) -> float:
        """CPU seconds per step from the end of step `warmup` to the last step seen while the
        process was alive."""
        first = {}
        for lines, cpu in self.samples:
            first.setdefault(lines, cpu)
        seen = [n for n in first if n >= warmup]
        if warmup not in first:  # the poll missed the exact boundary: take the next one seen
            seen = [n for n in first if n > warmup]
        if len(seen) < 2:
            return float("nan")
        a, b = min(seen), max(seen)
        return (first[b] - first[a]) / (b - a)


def run_monitored(cmd: list[str], progress: Path, warmup: int) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    mon = ProcessMonitor(proc.pid, progress)
    mon.start()
    try:
        out, err = proc.communicate()
    finally:
        mon.stop()
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.stderr.write(out[-4000:] + err[-4000:])
        raise SystemExit(f"failed ({proc.returncode}): {shlex.join(cmd)}")
    return {"stdout": out, "stderr": err, "wall_s": wall, "runq_mean": mon.runq_mean(),
            "runq_max": max(mon.runq, default=-1), "cpu_per_step_s": mon.cpu_per_step(warmup)}


# --model keys (recipe model.* names) -> bench/torch_peer.py's arguments.
PEER_MODEL_ARGS = {"hidden_size": "--hidden-size", "intermediate_size": "--intermediate-size",
                   "num_hidden_layers": "--layers", "num_attention_heads": "--heads",
                   "num_key_value_heads": "--kv-heads"}


def model_overrides(args) -> list[tuple[str, str]]:
    out = []
    for item in filter(None, args.model.split(",")):
        key, _, value = item.partition("=")
        if key not in PEER_MODEL_ARGS:
            raise SystemExit(f"--model: unknown key {key!r} (valid: {', '.join(PEER_MODEL_ARGS)})")
        out.append((key, value))
    return out


def run_condense(args, seq_len: int, batch: int, threads: int, rep: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="condense-bench-") as tmp:
        out_dir = Path(tmp) / "run"
        cmd = [str(args.condense), "train", str(args.recipe),
               f"name=bench_{seq_len}x{batch}_{rep}", f"out_dir={out_dir}",
               f"train.steps={args.steps}", "train.eval_every=0", "checkpoint.every=0",
               f"train.threads={threads}", f"data.seq_len={seq_len}",
               f"data.batch_size={batch}", f"train.log_every={args.steps}",
               f"data.cache_dir={args.data_cache}", f"train.precision={args.precision}"]
        cmd += [f"model.{k}={v}" for k, v in model_overrides(args)]
        mon = run_monitored(cmd, out_dir / "metrics.jsonl", args.warmup)
        tokens = seq_len * batch
        steps = []
        with open(out_dir / "metrics.jsonl") as f:
            for line in f:
                rec = json.loads(line)
                if rec.get("split") == "train":
                    steps.append(tokens / rec["tokens_per_s"])
        m = re.search(r"model: ([\d.]+)M parameters", mon["stdout"] + mon["stderr"])
        return {"step_s": steps, "tokens_per_step": tokens, "parameters_m": float(m.group(1)) if m else None,
                "cmd": shlex.join(cmd), **{k: v for k, v in mon.items() if k not in ("stdout", "stderr")}}


def run_pytorch(args, seq_len: int, batch: int, threads: int, rep: int, compile: bool = False) -> dict:
    with tempfile.TemporaryDirectory(prefix="pytorch-bench-") as tmp:
        progress = Path(tmp) / "progress.txt"
        cmd = [args.python, str(REPO / "bench" / "pytorch_eager_train.py"), "--steps", str(args.steps),
               "--seq-len", str(seq_len), "--batch-size", str(batch), "--threads", str(threads),
               "--precision", args.precision, *(["--compile"] if compile else []),
               "--progress", str(progress)]
        for k, v in model_overrides(args):
            cmd += [PEER_MODEL_ARGS[k], v]
        mon = run_monitored(cmd, progress, args.warmup)
    out = json.loads(mon["stdout"].strip().splitlines()[-1])
    out["parameters_m"] = out["parameters"] / 1e6
    out["cmd"] = shlex.join(cmd[:-2])
    out.update({k: v for k, v in mon.items() if k not in ("stdout", "stderr")})
    return out


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--condense", default="build/condense", help="condense binary (relative to the repo root)")
    ap.add_argument("--python", default=sys.executable, help="interpreter for the PyTorch baseline")
    ap.add_argument("--recipe", default="recipes/quickstart.yaml")
    ap.add_argument("--data-cache", default=str(REPO / "data_cache"), help="condense data.cache_dir")
    ap.add_argument("--reps", type=int, default=5, help="repetitions per contender and configuration")
    ap.add_argument("--steps", type=int, default=40, help="steps per repetition")
    ap.add_argument("--warmup", type=int, default=5, help="steps discarded at the start of each repetition")
    ap.add_argument("--threads", default="2",
                    help="comma-separated thread counts, each run for every configuration (e.g. 2,1: "
                         "with 1 thread the CPU-time ratio is not disturbed by OpenMP spin-waiting)")
    ap.add_argument("--configs", default="128x8,512x2", help="comma-separated SEQ_LENxBATCH")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                    help="bf16: condense train.precision=bf16 and the PyTorch peers under "
                         "torch.autocast(cpu, bfloat16), fp32 weights and optimizer state on both")
    ap.add_argument("--peers", default="pytorch,compile",
                    help="comma-separated peers: pytorch (eager), compile (torch.compile, inductor)")
    ap.add_argument("--model", default="",
                    help="model shape overrides for both sides, e.g. 'hidden_size=512,num_hidden_layers=8' "
                         "(recipe model.* keys; the PyTorch side takes the same values)")
    ap.add_argument("--results", default=str(REPO / "bench" / "RESULTS.md"))
    ap.add_argument("--no-append", action="store_true", help="print only; do not append to RESULTS.md")
    ap.add_argument("--quiet-threshold", type=float, default=1.5,
                    help="before each condense/PyTorch pair, wait until the mean run queue "
                         "(/proc/stat procs_running, 1 = idle) is at most this ...")
    ap.add_argument("--quiet-wait", type=float, default=0,
                    help="... for at most this many seconds (0: do not wait)")
    ap.add_argument("--quiet-runq", type=float, default=None,
                    help="a pair counts as quiet when the mean run queue during both of its runs is at "
                         "most this; default threads + 1.5 (the benchmark itself accounts for about "
                         "threads + 0.5 to threads + 1)")
    ap.add_argument("--json-out", default="", help="also write every per-step time to this JSON file")
    args = ap.parse_args()
    if args.warmup >= args.steps:
        ap.error("--warmup must be smaller than --steps")
    args.condense = (REPO / args.condense).resolve() if not os.path.isabs(args.condense) else Path(args.condense)
    if not args.condense.exists():
        ap.error(f"{args.condense} does not exist; build it first (ninja -C build condense)")
    configs = []
    for c in args.configs.split(","):
        s, b = c.lower().split("x")
        for t in str(args.threads).split(","):
            configs.append((int(s), int(b), int(t)))

    import torch  # only for its version string; the runs are separate processes
    exe = os.path.relpath(sys.executable, REPO) if sys.executable.startswith(str(REPO)) else sys.executable
    command = shlex.join([exe, "bench/train_throughput.py"] + sys.argv[1:])
    started = dt.datetime.now().astimezone()
    uptime_before = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    peer_fns = {"pytorch": run_pytorch,
                "compile": lambda *a: run_pytorch(*a, compile=True)}
    peers = [p for p in args.peers.split(",") if p]
    for p in peers:
        if p not in peer_fns:
            ap.error(f"--peers: unknown peer {p!r} (valid: {', '.join(peer_fns)})")
    contenders = [("condense", run_condense)] + [(p, peer_fns[p]) for p in peers]

    runs = []  # one record per (config, rep, contender)
    t_start = time.perf_counter()
    for seq_len, batch, threads in configs:
        for rep in range(args.reps):
            waited, quiet = (wait_for_quiet(args.quiet_threshold, args.quiet_wait)
                             if args.quiet_wait > 0 else (0.0, float("nan")))
            for name, fn in contenders:
                before = loadavg()
                res = fn(args, seq_len, batch, threads, rep)
                after = loadavg()
                kept = res["step_s"][args.warmup:]
                tps = [res["tokens_per_step"] / s for s in kept]
                rec = {"config": f"{seq_len}x{batch} t{threads}", "seq_len": seq_len, "batch": batch,
                       "threads": threads, "rep": rep,
                       "contender": name, "step_s": res["step_s"], "kept_tokens_per_s": tps,
                       "median_tokens_per_s": median(tps), "load_before": before, "load_after": after,
                       "runq_mean": res["runq_mean"], "runq_max": res["runq_max"],
                       "cpu_per_step_s": res["cpu_per_step_s"],
                       "waited_s": waited, "runq_before_pair": quiet,
                       "wall_s": res["wall_s"], "parameters_m": res.get("parameters_m"), "cmd": res["cmd"]}
                runs.append(rec)
                if args.json_out:  # after every run, so an interrupted benchmark keeps its data
                    with open(args.json_out, "w") as f:
                        json.dump({"runs": runs, "command": command, "partial": True}, f)
                print(f"[{time.perf_counter() - t_start:6.0f}s] {seq_len}x{batch} t{threads} rep {rep} {name:8s} "
                      f"median {rec['median_tokens_per_s']:8.0f} tok/s  ({median(kept) * 1e3:7.1f} ms/step, "
                      f"{len(kept)} kept)  CPU {res['cpu_per_step_s']:.3f} s/step  load {before[0]:.2f} -> {after[0]:.2f}  "
                      f"run queue {res['runq_mean']:.1f}"
                      + (f"  (waited {waited:.0f}s for quiet)" if name == contenders[0][0] and waited >= 1 else ""),
                      flush=True)
    uptime_after = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    total_s = time.perf_counter() - t_start

    # Summary table.
    peer_names = {"pytorch": "PyTorch eager", "compile": "torch.compile"}
    lines = ["| seq_len x batch | threads | peer | tokens/step | condense tok/s (median) | peer tok/s (median) "
             "| ratio condense/peer | median of per-rep ratios | condense per-rep medians "
             "| peer per-rep medians | load 1-min (min-max over runs) | run queue during runs (min-max of means) "
             "| quiet pairs (run queue <= threshold in both runs) | condense tok/s, quiet "
             "| peer tok/s, quiet | ratio, quiet pairs (pooled / median of per-pair) "
             "| CPU s/step condense (median of runs) | CPU s/step peer | ratio by CPU time (peer/condense, "
             "median of per-pair) |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- | --- | --- | --- | ---: | ---: | ---: | ---: "
             "| ---: | ---: | ---: |"]
    summary = []

    def per_rep(rs):
        return ", ".join("%.0f" % r["median_tokens_per_s"] for r in rs)
    for (seq_len, batch, threads), peer in ((c, p) for c in configs for p in peers):
        cfg = f"{seq_len}x{batch} t{threads}"
        rc = [r for r in runs if r["config"] == cfg and r["contender"] == "condense"]
        rp = [r for r in runs if r["config"] == cfg and r["contender"] == peer]
        mc = median([x for r in rc for x in r["kept_tokens_per_s"]])
        mp = median([x for r in rp for x in r["kept_tokens_per_s"]])
        per_rep_ratio = [a["median_tokens_per_s"] / b["median_tokens_per_s"] for a, b in zip(rc, rp)]
        loads = [x for r in rc + rp for x in (r["load_before"][0], r["load_after"][0])]
        qmax = args.quiet_runq if args.quiet_runq is not None else threads + 1.5
        quiet = [(a, b) for a, b in zip(rc, rp) if a["runq_mean"] <= qmax and b["runq_mean"] <= qmax]
        qc = median([x for a, _ in quiet for x in a["kept_tokens_per_s"]])
        qp = median([x for _, b in quiet for x in b["kept_tokens_per_s"]])
        q_ratio = median([a["median_tokens_per_s"] / b["median_tokens_per_s"] for a, b in quiet])
        cc = median([r["cpu_per_step_s"] for r in rc])
        cp = median([r["cpu_per_step_s"] for r in rp])
        cpu_ratio = median([b["cpu_per_step_s"] / a["cpu_per_step_s"] for a, b in zip(rc, rp)])
        summary.append({"config": cfg, "peer": peer, "condense": mc, "peer_tokens_per_s": mp, "ratio": mc / mp,
                        "per_rep_ratio_median": median(per_rep_ratio), "quiet_pairs": len(quiet),
                        "quiet_condense": qc, "quiet_peer": qp,
                        "quiet_ratio": qc / qp if quiet else float("nan"),
                        "quiet_per_pair_ratio_median": q_ratio, "cpu_condense": cc, "cpu_peer": cp,
                        "cpu_ratio_per_pair_median": cpu_ratio})
        lines.append(
            f"| {seq_len} x {batch} | {threads} | {peer_names[peer]} | {seq_len * batch} | {mc:.0f} | {mp:.0f} | "
            f"{mc / mp:.3f} | {median(per_rep_ratio):.3f} | {per_rep(rc)} | {per_rep(rp)} | "
            f"{min(loads):.2f}-{max(loads):.2f} | "
            f"{min(r['runq_mean'] for r in rc + rp):.1f}-{max(r['runq_mean'] for r in rc + rp):.1f} | "
            f"{len(quiet)} of {len(rc)} (<= {qmax:g}) | {qc:.0f} | {qp:.0f} | "
            + (f"{qc / qp:.3f} / {q_ratio:.3f} |" if quiet else "n/a |")
            + f" {cc:.3f} | {cp:.3f} | {cpu_ratio:.3f} |")
    table = "\n".join(lines)

    detail = ["| config | rep | contender | median ms/step (kept) | median tok/s | load before (1/5/15 min) "
              "| load after (1/5/15 min) | run queue mean / max | CPU s/step | process wall s |",
              "| --- | ---: | --- | ---: | ---: | --- | --- | --- | ---: | ---: |"]
    for r in runs:
        kept = r["step_s"][args.warmup:]
        detail.append(f"| {r['config']} | {r['rep']} | {r['contender']} | {median(kept) * 1e3:.1f} | "
                      f"{r['median_tokens_per_s']:.0f} | {' '.join(f'{x:.2f}' for x in r['load_before'])} | "
                      f"{' '.join(f'{x:.2f}' for x in r['load_after'])} | {r['runq_mean']:.1f} / {r['runq_max']} | "
                      f"{r['cpu_per_step_s']:.3f} | {r['wall_s']:.1f} |")

    params = sorted({(r["contender"], r["parameters_m"]) for r in runs if r["parameters_m"] is not None})
    section = f"""
## Training throughput: condense vs {" and ".join(peer_names[p] for p in peers)} ({started:%Y-%m-%d %H:%M %Z})

Command (from the repo root):

    {command}

- Machine: {os.cpu_count()} CPUs (nproc), {cpu_model()}; {platform.system()} {platform.release()}
- torch {torch.__version__} (condense links the same libtorch); threads {args.threads} (each, same for both)
- condense commit {git_head()}, binary {os.path.relpath(args.condense, REPO)}; recipe {args.recipe}
- {args.reps} repetitions x {args.steps} steps per contender and configuration, first {args.warmup} steps of each
  repetition discarded; order {", ".join(c for c, _ in contenders)}, repeated; total {total_s / 60:.1f} min
- Parameters: {', '.join(f'{c} {p:.2f}M' for c, p in params)}
- Quiet wait: {f"up to {args.quiet_wait:.0f} s before each pair for a run queue <= {args.quiet_threshold}" if args.quiet_wait > 0 else "off"}
- Load before: `{uptime_before}`
- Load after:  `{uptime_after}`

{table}

tok/s = tokens per step / step wall time; "median" is over all kept steps of all repetitions.
"Run queue" is /proc/stat procs_running sampled every 0.2 s during a run: the benchmark's own
threads count (about threads + 0.5 to threads + 1), so a higher mean means other work competed for
the cores. With 2 threads on a 2-core machine such contention slows both contenders 5-30x
(OpenMP threads descheduled at barriers), so read the "quiet pairs" columns (pairs whose two runs
both saw a mean run queue <= the threshold); the all-runs columns are kept for the record.
"CPU s/step" is the CPU time (all threads, /proc/PID/stat utime+stime) the process used per kept
step, read while it runs as its per-step log grows. With 1 thread it counts work, not waiting, and
is the load-robust comparison; with 2 threads it includes OpenMP spin-waiting, which contention
inflates several-fold, so it is not comparable across runs then.
condense's step time is its trainer's timer (batch from the token store + forward + loss + backward
+ clip + AdamW + zero_grad); PyTorch's is the same span around the same work on random batches.

<details><summary>Per-run detail</summary>

{chr(10).join(detail)}

</details>
"""
    finish_report(section, args.results, not args.no_append, args.json_out,
                  {"runs": runs, "summary": summary, "command": command})
    return 0


if __name__ == "__main__":
    sys.exit(main())
