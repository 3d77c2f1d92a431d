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

Prints one JSON object on stdout: {"step_s": [...], "tokens_per_step": N, ...}.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time


def lr_at(step: int, lr: float, min_lr: float, warmup: int, total: int) -> float:
    """Linear warm-up then cosine decay to min_lr, like trainer/lr_schedule (value only matters
    to keep the per-step work the same: a Python float per group)."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--vocab-size", type=int, default=4096)
    ap.add_argument("--hidden-size", type=int, default=256)
    ap.add_argument("--intermediate-size", type=int, default=688)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--max-positions", type=int, default=512)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--min-lr", type=float, default=3e-4)
    ap.add_argument("--warmup-steps", type=int, default=30)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--grad-clip", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--progress", default="", help="append one line per finished step to this file "
                    "(train_throughput.py follows it to read CPU time per step)")
    ap.add_argument("--batches", type=int, default=16, help="distinct random batches cycled through")
    args = ap.parse_args()

    import torch
    import torch.nn.functional as F
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    config = LlamaConfig(
        vocab_size=args.vocab_size,
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=args.max_positions,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        attention_dropout=0.0,
        initializer_range=0.02,
        use_cache=False,  # training: no KV cache objects built per forward
        torch_dtype="float32",
    )
    config._attn_implementation = "sdpa"
    model = LlamaForCausalLM(config).to(torch.float32)
    model.train()

    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    params = decay + no_decay
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.95), eps=1e-8, fused=True)

    # Inputs and next-token targets, as condense's loader cuts them: [B, T] each.
    g = torch.Generator().manual_seed(args.seed)
    data = [torch.randint(0, args.vocab_size, (args.batch_size, args.seq_len + 1), generator=g)
            for _ in range(args.batches)]
    batches = [(d[:, :-1].contiguous(), d[:, 1:].contiguous()) for d in data]

    tokens = args.batch_size * args.seq_len
    progress = open(args.progress, "a") if args.progress else None
    step_s, losses = [], []
    for step in range(args.steps):
        t0 = time.perf_counter()
        inputs, targets = batches[step % len(batches)]
        lr = lr_at(step, args.lr, args.min_lr, args.warmup_steps, args.steps)
        for group in opt.param_groups:
            group["lr"] = lr
        logits = model(input_ids=inputs).logits
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        loss.backward()
        loss_value = loss.item()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, args.grad_clip)
        grad_norm.item()
        opt.step()
        opt.zero_grad(set_to_none=True)
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
        "torch": torch.__version__,
        "parameters": sum(p.numel() for p in params),
    }, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
