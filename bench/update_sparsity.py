#!/usr/bin/env python3
"""How much of AdamW's state and update the top 1% of coordinates carry, from a condense checkpoint.

    .venv/bin/python bench/update_sparsity.py runs/<name>/checkpoints/step_000200.h5 200 [--beta1 0.9 --beta2 0.95]

Prints, for the momentum m (a smoothed gradient), the gradient RMS sqrt(v) and Adam's update
m_hat / sqrt(v_hat), the share of the squared L2 norm and of the L1 norm held by the largest 1%
of coordinates (over all parameters together). A Top-K 1% exchange of gradients captures the
first; what AdamW does with it depends on the last. For an SGD checkpoint it prints the same for
the momentum buffer (SGD's update).
"""
import argparse

import h5py
import numpy as np


def top_share(x: np.ndarray, ratio: float):
    a = np.sort(np.abs(x))[::-1]
    k = int(ratio * len(a))
    return (a[:k] ** 2).sum() / (a ** 2).sum(), a[:k].sum() / a.sum()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("step", type=int, help="optimizer steps taken (for the bias corrections)")
    ap.add_argument("--beta1", type=float, default=0.9)
    ap.add_argument("--beta2", type=float, default=0.95)
    ap.add_argument("--ratio", type=float, default=0.01)
    args = ap.parse_args()
    f = h5py.File(args.checkpoint, "r")
    names = []
    f.visit(names.append)
    sgd = [f[n][()].ravel().astype(np.float64) for n in names
           if n.startswith("optimizer/") and n.endswith("/momentum_buffer")]
    if sgd:
        b = np.concatenate(sgd)
        e2, e1 = top_share(b, args.ratio)
        print(f"{args.checkpoint}: {len(b)} optimized elements (SGD)")
        print(f"{'momentum buffer (SGD update)':32s} top {args.ratio:.0%}: {e2:.3f} of squared L2, {e1:.3f} of L1")
        return
    ms, vs = [], []
    for n in names:
        if n.startswith("optimizer/") and n.endswith("/exp_avg"):
            base = n[: -len("/exp_avg")]
            ms.append(f[n][()].ravel().astype(np.float64))
            vs.append(f[base + "/exp_avg_sq"][()].ravel().astype(np.float64))
    if not ms:
        raise SystemExit(f"{args.checkpoint}: no optimizer/<name>/exp_avg datasets or momentum_buffer datasets")
    m, v = np.concatenate(ms), np.concatenate(vs)
    u = (m / (1 - args.beta1 ** args.step)) / (np.sqrt(v / (1 - args.beta2 ** args.step)) + 1e-8)
    print(f"{args.checkpoint}: {len(m)} optimized elements")
    for name, x in [("momentum m (smoothed gradient)", m), ("gradient RMS sqrt(v)", np.sqrt(v)),
                    ("Adam update m/sqrt(v)", u)]:
        e2, e1 = top_share(x, args.ratio)
        print(f"{name:32s} top {args.ratio:.0%}: {e2:.3f} of squared L2, {e1:.3f} of L1")


if __name__ == "__main__":
    main()
