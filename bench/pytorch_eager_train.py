#!/usr/bin/env python3
"""PyTorch eager baseline for condense's pretraining step (bench/train_throughput.py runs it).

One step here does what one step of `condense train recipes/quickstart.yaml` does
(trainer/trainer.cpp): forward of a Llama decoder with SDPA attention, cross-entropy over the full
[tokens x vocab] logits, backward, global-norm gradient clip, fused AdamW with weight decay on
parameters of two or more dimensions only, and gradients zeroed by setting them to None.

The model is transformers' LlamaForCausalLM built from the quickstart config in fp32. Batches are
random token ids generated before the timed loop (condense reads real batches from its token
store inside its timed step, which is slightly more work for condense). The loss is computed the
way condense computes it (cross-entropy of logits against a separate target tensor) rather than
through transformers' `labels=` path, so both sides do the same arithmetic.

On a GPU (--device cuda) the same step runs there; --precision bf16 wraps forward and loss in
torch.autocast(bfloat16) with fp32 weights, gradients and optimizer state, as condense's
train.precision=bf16 does, and each step ends with a synchronize so that its time is complete.

--compile runs the forward and the loss through torch.compile (inductor, default mode), what a
PyTorch user who wants speed on CPU writes: the first steps include the compilation (the caller
discards warm-up steps; the compile time is reported as compile_s, the first step's time).

Prints one JSON object on stdout: {"step_s": [...], "tokens_per_step": N, ...}.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from torch_peer import add_model_args, build_llama, lr_at, make_adamw  # bench/, beside this file


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--vocab-size", type=int, default=4096)
    add_model_args(ap)
    ap.add_argument("--progress", default="", help="append one line per finished step to this file "
                    "(train_throughput.py follows it to read CPU time per step)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--batches", type=int, default=16, help="distinct random batches cycled through")
    ap.add_argument("--compile", action="store_true", help="torch.compile the forward and loss")
    args = ap.parse_args()

    import torch
    import torch.nn.functional as F

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    device = torch.device(args.device)
    model = build_llama(args, args.vocab_size).to(device)
    opt, decay, no_decay = make_adamw(model, args)
    params = decay + no_decay

    # Inputs and next-token targets, as condense's loader cuts them: [B, T] each.
    g = torch.Generator().manual_seed(args.seed)
    data = [torch.randint(0, args.vocab_size, (args.batch_size, args.seq_len + 1), generator=g)
            for _ in range(args.batches)]
    batches = [(d[:, :-1].contiguous().to(device), d[:, 1:].contiguous().to(device)) for d in data]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16")

    def forward_loss(inputs, targets):
        logits = model(input_ids=inputs).logits
        return F.cross_entropy(logits.view(-1, logits.size(-1)).float(), targets.view(-1))
    if args.compile:
        forward_loss = torch.compile(forward_loss)

    tokens = args.batch_size * args.seq_len
    progress = open(args.progress, "a") if args.progress else None
    step_s, losses = [], []
    for step in range(args.steps):
        t0 = time.perf_counter()
        inputs, targets = batches[step % len(batches)]
        lr = lr_at(step, args.lr, args.min_lr, args.warmup_steps, args.steps)
        for group in opt.param_groups:
            group["lr"] = lr
        with autocast:
            loss = forward_loss(inputs, targets)
        loss.backward()
        loss_value = loss.item()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, args.grad_clip)
        grad_norm.item()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        step_s.append(time.perf_counter() - t0)
        losses.append(loss_value)
        if progress:
            progress.write(f"{step + 1}\n")
            progress.flush()

    json.dump({
        "step_s": step_s,
        "loss": losses,
        "tokens_per_step": tokens,
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "device": args.device,
        "precision": args.precision,
        "compile": args.compile,
        "compile_s": step_s[0] if args.compile else 0.0,
        "torch": torch.__version__,
        "parameters": sum(p.numel() for p in params),
    }, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
