#!/usr/bin/env python3
"""PyTorch DistributedDataParallel baseline for condense's data-parallel pretraining step
(bench/comm_wallclock.py runs it on the local multi-node simulator, launch/netsim.sh).

One step here does what one step of `condense train recipes/quickstart.yaml` does under mpirun
(trainer/trainer.cpp): this rank's [B, T] batch from the token store, forward of transformers'
LlamaForCausalLM (quickstart config, fp32, SDPA), cross-entropy over the full [tokens x vocab]
logits, backward with DDP's bucketed gradient all-reduce overlapped with it (gloo, CPU), one small
all-reduce of the loss (condense reduces the loss and its stop flag every step), global-norm clip,
fused AdamW with weight decay on parameters of two or more dimensions only, gradients set to None.
The step timer spans the same work as condense's (batch + forward + loss + backward + exchange +
clip + AdamW + zero_grad).

Data: condense's HDF5 token store (data/token_store.h; the quickstart writes
data_cache/gcide-bpe4096-val0.02-seed1234.h5), read with h5py. Training batches are cut exactly as
data/loader.cpp cuts them: windows [w*T, w*T + T + 1) of train/ids, visited per epoch in the same
splitmix64 Fisher-Yates permutation of (seed, epoch), global batch B x world consecutive permuted
windows, rank r takes slice r. Validation mirrors validation_batches() and Trainer::validate():
windows of the held-out stream (val/ids with its documents in condense's held-out order,
bench_common.held_out_ids) in order, global batches sharded by rank, at most --eval-batches of them, the
mean loss per rank averaged over ranks; run every --eval-every steps and after the last step.
Initial weights: torch.manual_seed(seed) before building the model; transformers then draws
normal(0, initializer_range) for every matrix in the same order as condense's model/llama.cpp, so
with the quickstart config both start from the same weights (observed with 2 ranks: the first
steps' train and validation losses equal condense's to every printed digit; they drift apart
later only through floating-point summation order).

Launch: one process per rank under mpirun (rank, size and local rank from OMPI_COMM_WORLD_*; or
RANK / WORLD_SIZE / LOCAL_RANK), torch.distributed with backend gloo and init_method
tcp://MASTER:PORT. --master auto: node 0's address from the running simulator's state
($CONDENSE_NETSIM_STATE/$CONDENSE_NETSIM_PREFIX/hosts, which launch/netsim.sh exports to mpirun),
else MASTER_ADDR, else 127.0.0.1. Gloo picks its interface by resolving the hostname, which in a
simulator node (its own UTS namespace, hostname = namespace name) resolves to nothing; --ifname
auto therefore sets GLOO_SOCKET_IFNAME=eth0 under the simulator (the node's only link). With one
rank no process group is created and the model is not wrapped (like condense, which skips the
gradient sync with one rank).

    mpirun -np 2 ... .venv/bin/python bench/ddp_train.py --steps 20 --comm-hook powersgd

Output: one JSON line on rank 0's stdout: per-step times, losses, elapsed times, validation
losses with step and elapsed time, gradient payload bytes all-reduced per step by this rank
(counted: DDP's built-in all-reduce sends every gradient once; the PowerSGD hook's all-reduces are
counted as they are issued) and the bytes each rank's network interface sent and received during
the timed loop (/proc/net/dev, which is per network namespace: per node under the simulator).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

from bench_common import held_out_ids  # bench/, beside this file
from torch_peer import add_model_args, build_llama, lr_at, make_adamw  # bench/, beside this file

M64 = (1 << 64) - 1


# ---- condense's loader, in Python (data/loader.cpp, core/random.h) ----------------------------

def _splitmix64(state: int) -> tuple[int, int]:
    """Advances the state; returns (new state, output)."""
    state = (state + 0x9E3779B97F4A7C15) & M64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return state, z ^ (z >> 31)


def epoch_permutation(n: int, seed: int, epoch: int) -> list[int]:
    """condense::epoch_permutation: Fisher-Yates over splitmix64 with Lemire's bounded draw."""
    p = list(range(n))
    state = (seed * 0xD1B54A32D192ED03) & M64
    state, out = _splitmix64(state)
    state = out ^ (epoch & M64)
    state, _ = _splitmix64(state)
    for i in range(n - 1, 0, -1):
        bound = i + 1
        state, r = _splitmix64(state)
        m = r * bound
        low = m & M64
        if low < bound:
            threshold = ((1 << 64) - bound) % bound
            while low < threshold:
                state, r = _splitmix64(state)
                m = r * bound
                low = m & M64
        j = m >> 64
        p[i], p[j] = p[j], p[i]
    return p


def count_windows(tokens: int, seq_len: int) -> int:
    return (tokens - 1) // seq_len if tokens > seq_len else 0


class Loader:
    """condense::BatchLoader: per-epoch permutation, global batch B x world, rank slice r."""

    def __init__(self, ids, seq_len: int, batch_size: int, seed: int, rank: int, world: int):
        import numpy as np
        self.np = np
        self.ids = np.ascontiguousarray(ids, dtype=np.int64)
        self.T, self.B, self.seed, self.rank, self.world = seq_len, batch_size, seed, rank, world
        self.windows = count_windows(len(self.ids), seq_len)
        self.global_batch = batch_size * world
        if self.windows < self.global_batch:
            raise SystemExit(f"loader: {len(self.ids)} tokens make {self.windows} windows of seq_len "
                             f"{seq_len} + 1, fewer than one global batch of {self.global_batch}")
        self.epoch, self.position = 0, 0
        self._perm_epoch, self._perm = -1, None

    def next(self):
        if self.position + self.global_batch > self.windows:
            self.epoch += 1
            self.position = 0
        if self._perm_epoch != self.epoch:
            self._perm = self.np.asarray(epoch_permutation(self.windows, self.seed, self.epoch), dtype=self.np.int64)
            self._perm_epoch = self.epoch
        first = self.position + self.rank * self.B
        windows = self._perm[first:first + self.B]
        self.position += self.global_batch
        return make_batch(self.ids, windows, self.T)


def make_batch(ids, windows, seq_len: int):
    import numpy as np
    import torch
    rows = ids[windows[:, None] * seq_len + np.arange(seq_len + 1)[None, :]]  # [B, T + 1]
    t = torch.from_numpy(rows)
    return t[:, :-1].contiguous(), t[:, 1:].contiguous()


def validation_batches(ids, seq_len: int, batch_size: int, max_batches: int, rank: int, world: int):
    """condense::validation_batches: windows in order, global batches sharded by rank."""
    import numpy as np
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    windows = count_windows(len(ids), seq_len)
    if windows == 0:
        return []
    if windows < world:
        raise SystemExit(f"validation: {windows} windows, fewer than the {world} ranks")
    per_rank, count = batch_size, windows // (batch_size * world)
    if count == 0:
        per_rank, count = windows // world, 1
    if max_batches > 0:
        count = min(count, max_batches)
    out = []
    for k in range(count):
        first = k * per_rank * world + rank * per_rank
        out.append(make_batch(ids, np.arange(first, first + per_rank, dtype=np.int64), seq_len))
    return out


def rank_info() -> tuple[int, int, int]:
    env = os.environ
    if "OMPI_COMM_WORLD_RANK" in env:
        return (int(env["OMPI_COMM_WORLD_RANK"]), int(env["OMPI_COMM_WORLD_SIZE"]),
                int(env.get("OMPI_COMM_WORLD_LOCAL_RANK", "0")))
    if "RANK" in env:
        return int(env["RANK"]), int(env.get("WORLD_SIZE", "1")), int(env.get("LOCAL_RANK", "0"))
    return 0, 1, 0


def netsim_hosts_file() -> str | None:
    prefix = os.environ.get("CONDENSE_NETSIM_PREFIX")
    if not prefix:
        return None
    path = os.path.join(os.environ.get("CONDENSE_NETSIM_STATE", "/run/condense-netsim"), prefix, "hosts")
    return path if os.path.exists(path) else None


def resolve_master(master: str) -> str:
    if master != "auto":
        return master
    hosts = netsim_hosts_file()
    if hosts:
        with open(hosts) as f:
            for line in f:
                if line.strip():
                    return line.split()[0]  # "ADDR NAMESPACE", node 0 first
    return os.environ.get("MASTER_ADDR", "127.0.0.1")


def net_bytes(ifname: str | None) -> tuple[int, int]:
    """(received, sent) bytes of `ifname` (all interfaces but lo when None) in this process's
    network namespace."""
    rx = tx = 0
    try:
        with open("/proc/net/dev") as f:
            for line in f.readlines()[2:]:
                name, data = line.split(":", 1)
                name = name.strip()
                if (ifname and name != ifname) or (not ifname and name == "lo"):
                    continue
                v = data.split()
                rx += int(v[0])
                tx += int(v[8])
    except OSError:
        pass
    return rx, tx


def default_dataset(cache_dir: str, corpus: str, vocab: int, val_fraction: float, seed: int) -> str:
    """The path condense's resolve_dataset() (recipes/pretrain.cpp) gives a store with a trained
    tokenizer and no data.path / max_documents."""
    return os.path.join(cache_dir, f"{corpus}-bpe{vocab}-val{val_fraction!r}-seed{seed}.h5")


def main() -> int:
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-seed", type=int, default=1234, help="data.seed: the default store's split "
                    "and tokenizer seed (condense's data.seed, not --seed)")
    ap.add_argument("--dataset", default="", help="condense token store (.h5); default: the quickstart's "
                    "data_cache/gcide-bpe4096-val0.02-seed1234.h5")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--eval-every", type=int, default=100, help="0 disables validation")
    ap.add_argument("--eval-batches", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8, help="windows per rank")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads per rank")
    add_model_args(ap)
    ap.add_argument("--comm-hook", choices=["none", "powersgd"], default="none")
    ap.add_argument("--powersgd-rank", type=int, default=4, help="matrix_approximation_rank")
    ap.add_argument("--start-powersgd-iter", type=int, default=10,
                    help="plain all-reduce for the first N iterations (PowerSGD needs >= 2 with "
                         "error feedback or warm start)")
    ap.add_argument("--bucket-cap-mb", type=float, default=25.0)
    ap.add_argument("--master", default="auto", help="rendezvous address (auto: simulator node 0, "
                    "else MASTER_ADDR, else 127.0.0.1)")
    ap.add_argument("--port", type=int, default=int(os.environ.get("MASTER_PORT", "29500")))
    ap.add_argument("--ifname", default="auto", help="GLOO_SOCKET_IFNAME (auto: eth0 under the simulator, "
                    "else gloo's default unless the variable is set; '' never sets it)")
    ap.add_argument("--timeout-s", type=float, default=300, help="process group timeout")
    ap.add_argument("--progress", default="", help="rank 0 appends one line per finished step here")
    args = ap.parse_args()

    rank, world, local_rank = rank_info()
    if args.ifname == "auto":
        if "GLOO_SOCKET_IFNAME" not in os.environ and netsim_hosts_file():
            os.environ["GLOO_SOCKET_IFNAME"] = "eth0"
    elif args.ifname:
        os.environ["GLOO_SOCKET_IFNAME"] = args.ifname
    ifname = os.environ.get("GLOO_SOCKET_IFNAME") or None

    import datetime
    import h5py
    import numpy as np
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    torch.set_num_threads(args.threads)
    dataset = args.dataset or default_dataset(os.path.join(repo, "data_cache"), "gcide", 4096, 0.02,
                                              args.data_seed)
    with h5py.File(dataset, "r") as f:
        fmt = f.attrs.get("format")
        fmt = fmt.decode() if isinstance(fmt, bytes) else str(fmt)
        if fmt != "condense-tokens-v1":
            raise SystemExit(f"{dataset}: format attribute is {fmt!r}, not condense-tokens-v1")
        vocab = int(f.attrs["vocab_size"])
        train_ids = f["train/ids"][...]
        val_ids = held_out_ids(f)  # documents in condense's held-out order (TokenStore::held_out_ids)

    distributed = world > 1
    if distributed:
        master = resolve_master(args.master)
        dist.init_process_group("gloo", init_method=f"tcp://{master}:{args.port}", rank=rank,
                                world_size=world, timeout=datetime.timedelta(seconds=args.timeout_s))

    # Bytes handed to all-reduce by this rank, counted as issued (the PowerSGD hook and its
    # plain-all-reduce warm-up go through torch.distributed.all_reduce; DDP's built-in reducer
    # does not and is counted from the parameter sizes).
    counted = {"bytes": 0}
    if distributed and args.comm_hook != "none":
        _all_reduce = dist.all_reduce

        def counting_all_reduce(tensor, *a, **kw):
            counted["bytes"] += tensor.numel() * tensor.element_size()
            return _all_reduce(tensor, *a, **kw)
        dist.all_reduce = counting_all_reduce

    torch.manual_seed(args.seed)
    model = build_llama(args, vocab)
    params = [p for p in model.parameters() if p.requires_grad]
    grad_bytes = sum(p.numel() * p.element_size() for p in params)

    net = model
    state = None
    if distributed:
        # DDP broadcasts rank 0's parameters at construction, as condense does before training.
        net = torch.nn.parallel.DistributedDataParallel(model, bucket_cap_mb=args.bucket_cap_mb)
        if args.comm_hook == "powersgd":
            from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook
            state = powerSGD_hook.PowerSGDState(
                process_group=None, matrix_approximation_rank=args.powersgd_rank,
                start_powerSGD_iter=args.start_powersgd_iter, use_error_feedback=True, warm_start=True)
            net.register_comm_hook(state, powerSGD_hook.powerSGD_hook)

    opt, _, _ = make_adamw(model, args)

    loader = Loader(train_ids, args.seq_len, args.batch_size, args.seed, rank, world)
    val = validation_batches(val_ids, args.seq_len, args.batch_size, args.eval_batches, rank, world)

    def validate() -> float:
        if not val:
            return float("nan")
        net.eval()
        with torch.no_grad():
            total = 0.0
            for inputs, targets in val:
                logits = model(input_ids=inputs).logits  # the plain module: no DDP hooks in eval
                total += F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1)).item()
        net.train()
        mean = total / len(val)
        if distributed:
            t = torch.tensor([mean], dtype=torch.float64)
            dist.all_reduce(t)
            mean = t.item() / world
        return mean

    progress = open(args.progress, "a") if (args.progress and rank == 0) else None
    if distributed:
        dist.barrier()
    net0 = net_bytes(ifname)
    start = time.perf_counter()
    step_s, losses, elapsed, payload, vals = [], [], [], [], []
    for step in range(args.steps):
        t0 = time.perf_counter()
        before = counted["bytes"]
        inputs, targets = loader.next()
        lr = lr_at(step, args.lr, args.min_lr, args.warmup_steps, args.steps)
        for group in opt.param_groups:
            group["lr"] = lr
        logits = net(input_ids=inputs).logits
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
        loss.backward()  # DDP: returns once every bucket is reduced and copied back
        loss_value = loss.item()
        if distributed:  # the per-step loss (and, in condense, stop flag) reduction
            t = torch.tensor([loss_value, 0.0], dtype=torch.float64)
            dist.all_reduce(t)
            loss_value = t[0].item() / world
        if not math.isfinite(loss_value):
            raise SystemExit(f"training diverged: loss is {loss_value} at step {step + 1}")
        torch.nn.utils.clip_grad_norm_(params, args.grad_clip).item()
        opt.step()
        opt.zero_grad(set_to_none=True)
        now = time.perf_counter()
        step_s.append(now - t0)
        elapsed.append(now - start)
        losses.append(loss_value)
        if distributed:
            payload.append(counted["bytes"] - before if args.comm_hook != "none" else grad_bytes)
        else:
            payload.append(0)
        done = step + 1
        if args.eval_every > 0 and (done % args.eval_every == 0 or done == args.steps) and val:
            v = validate()
            vals.append({"step": done, "loss": v, "elapsed_s": elapsed[-1],
                         "elapsed_after_eval_s": time.perf_counter() - start})
        if progress:
            progress.write(f"{done}\n")
            progress.flush()
    total_s = time.perf_counter() - start
    net1 = net_bytes(ifname)
    wire = [net1[0] - net0[0], net1[1] - net0[1]]
    if distributed:
        t = torch.tensor([wire], dtype=torch.int64)
        gathered = [torch.zeros_like(t) for _ in range(world)]
        dist.all_gather(gathered, t)
        wire_per_rank = [g[0].tolist() for g in gathered]
    else:
        wire_per_rank = [wire]

    if rank == 0:
        json.dump({
            "contender": "ddp" if args.comm_hook == "none" else f"ddp-{args.comm_hook}",
            "step_s": step_s, "loss": losses, "elapsed_s": elapsed, "val": vals,
            "comm_bytes": payload, "grad_bytes": grad_bytes,
            "wire_rx_tx_bytes_per_rank": wire_per_rank, "wire_interface": ifname or "all but lo",
            "loop_s": total_s, "world": world, "batch_size": args.batch_size, "seq_len": args.seq_len,
            "tokens_per_step": args.batch_size * args.seq_len * world, "threads": torch.get_num_threads(),
            "comm_hook": args.comm_hook, "powersgd_rank": args.powersgd_rank if state else None,
            "start_powersgd_iter": args.start_powersgd_iter if state else None,
            "bucket_cap_mb": args.bucket_cap_mb, "dataset": dataset, "torch": torch.__version__,
            "parameters": sum(p.numel() for p in params),
        }, sys.stdout)
        sys.stdout.write("\n")
        sys.stdout.flush()
    if distributed:
        # Exit without destroy_process_group(): with the PowerSGD hook, gloo's teardown was seen
        # to hang on one rank after the other had exited (2 nodes, 100 Mbit/s); all work is done
        # and flushed once every rank has passed this barrier.
        dist.barrier()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
