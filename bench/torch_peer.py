"""What the two PyTorch reference peers (bench/pytorch_eager_train.py, bench/ddp_train.py) build
the same way as condense does: the Llama model from the same architecture arguments, AdamW with
condense's two weight-decay groups, and the learning-rate schedule of trainer/lr_schedule.

Torch and transformers are imported inside the functions, so that the peers can parse their
arguments (and print --help) before the slow imports.
"""
from __future__ import annotations

import argparse
import math


def add_model_args(ap: argparse.ArgumentParser) -> None:
    """Architecture and optimizer arguments, with the quickstart recipe's defaults."""
    ap.add_argument("--hidden-size", type=int, default=256)
    ap.add_argument("--intermediate-size", type=int, default=688)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--max-positions", type=int, default=512)
    ap.add_argument("--head-dim", type=int, default=0, help="0: hidden_size / heads")
    ap.add_argument("--rms-norm-eps", type=float, default=1e-5)
    ap.add_argument("--rope-theta", type=float, default=10000.0)
    ap.add_argument("--initializer-range", type=float, default=0.02)
    ap.add_argument("--untied", action="store_true", help="separate lm_head (tie_word_embeddings false)")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--min-lr", type=float, default=3e-4)
    ap.add_argument("--warmup-steps", type=int, default=30)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--beta1", type=float, default=0.9)
    ap.add_argument("--beta2", type=float, default=0.95)
    ap.add_argument("--eps", type=float, default=1e-8)
    ap.add_argument("--grad-clip", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=1234)


def lr_at(step: int, lr: float, min_lr: float, warmup: int, total: int) -> float:
    """Linear warm-up then cosine decay to min_lr, as trainer/lr_schedule computes it."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def build_llama(args: argparse.Namespace, vocab: int):
    """transformers' LlamaForCausalLM in fp32 with SDPA attention and no KV cache, in train mode.
    The caller seeds torch first (the initial weights come from its generator)."""
    import torch
    import transformers
    from transformers import LlamaConfig, LlamaForCausalLM

    # transformers 5 renamed torch_dtype to dtype and keeps rope_theta in rope_parameters.
    dtype_key = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=args.hidden_size, intermediate_size=args.intermediate_size,
        num_hidden_layers=args.layers, num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads, max_position_embeddings=args.max_positions,
        head_dim=args.head_dim or args.hidden_size // args.heads,
        rms_norm_eps=args.rms_norm_eps, rope_theta=args.rope_theta,
        tie_word_embeddings=not args.untied, attention_dropout=0.0,
        initializer_range=args.initializer_range,
        use_cache=False,  # training: no KV cache objects built per forward
        **{dtype_key: "float32"})
    if isinstance(getattr(config, "rope_parameters", None), dict):
        config.rope_parameters["rope_theta"] = args.rope_theta
    config._attn_implementation = "sdpa"
    model = LlamaForCausalLM(config).to(torch.float32)
    model.train()
    return model


def make_adamw(model, args: argparse.Namespace):
    """Fused AdamW with condense's groups: weights of rank >= 2 decayed, norms and biases not.
    Returns (optimizer, decayed parameters, undecayed parameters)."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(args.beta1, args.beta2), eps=args.eps, fused=True)
    return opt, decay, no_decay
