"""train.grad_accum through the trainer: 2 micro-batches of b follow the same trajectory as one
batch of 2b (the loader hands out the same windows in the same order; only the summation order
differs), and a run with accumulation resumes bit for bit."""
import shutil

import h5py
import numpy as np

from conftest import run
from test_cli_e2e import QUICKSTART, read_metrics, tiny_overrides


def test_two_micro_batches_equal_one_batch_of_twice_the_size(small_store, tmp_path):
    steps = 10
    one = tmp_path / "one"
    run("train", QUICKSTART, *tiny_overrides(small_store, one, steps, **{"data.batch_size": 8}))
    acc = tmp_path / "acc"
    run("train", QUICKSTART, *tiny_overrides(small_store, acc, steps,
                                              **{"data.batch_size": 4, "train.grad_accum": 2}))
    a, b = read_metrics(one), read_metrics(acc)
    assert [r["tokens_seen"] for r in a] == [r["tokens_seen"] for r in b]
    la, lb = np.array([r["loss"] for r in a]), np.array([r["loss"] for r in b])
    assert np.allclose(la, lb, rtol=5e-6, atol=0), np.abs(la - lb).max()
    with h5py.File(one / "checkpoints" / f"step_{steps:06d}.h5") as fa, \
         h5py.File(acc / "checkpoints" / f"step_{steps:06d}.h5") as fb:
        names = [n for n in fa.keys() if n.startswith("model.")]
        worst = max(np.abs(fa[n][()] - fb[n][()]).max() for n in names)
        assert worst < 5e-5, worst
    # And accumulation is not a no-op: one micro-batch of 4 per step is another trajectory.
    half = tmp_path / "half"
    run("train", QUICKSTART, *tiny_overrides(small_store, half, steps, **{"data.batch_size": 4}))
    assert not np.allclose([r["loss"] for r in read_metrics(half)], la, rtol=1e-3, atol=0)


def test_accumulating_run_resumes_bit_for_bit(small_store, tmp_path):
    o = {"data.batch_size": 2, "train.grad_accum": 3, "checkpoint.every": 4, "checkpoint.keep": 5}
    ref = tmp_path / "ref"
    run("train", QUICKSTART, *tiny_overrides(small_store, ref, 10, **o))
    out = tmp_path / "resumed"
    (out / "checkpoints").mkdir(parents=True)
    shutil.copy(ref / "checkpoints" / "step_000004.h5", out / "checkpoints")
    (out / "checkpoints" / "latest").write_text("step_000004.h5\n")
    run("train", QUICKSTART, *tiny_overrides(small_store, out, 10, **o), "--resume")
    key = lambda r: (r["step"], r["loss"], r["grad_norm"], r["tokens_seen"])
    assert [key(r) for r in read_metrics(out)] == [key(r) for r in read_metrics(ref)[4:]]
