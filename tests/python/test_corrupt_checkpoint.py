"""Checkpoints that HDF5 still opens but that are wrong inside: a weight with another shape or
dtype, a missing optimizer entry, a NaN in a weight or an inf in the optimizer's moments. Each
is refused by `eval` (model tensors) and `train --resume` (everything) with the file and the
dataset named, before anything is trained or written."""
import shutil

import h5py
import numpy as np
import pytest

from conftest import run
from test_cli_e2e import QUICKSTART, tiny_overrides

W = "model.layers.0.mlp.down_proj.weight"
M = "optimizer/model.layers.1.mlp.up_proj.weight/exp_avg"


def reshape(f):
    a = f[W][()]
    del f[W]
    f[W] = a[:, :-1]


def to_double(f):
    a = f[W][()]
    del f[W]
    f[W] = a.astype(np.float64)


def drop_moment(f):
    del f["optimizer/model.embed_tokens.weight/exp_avg_sq"]


def nan_weight(f):
    a = f[W][()]
    a[1, 2] = np.nan
    f[W][...] = a


def inf_moment(f):
    a = f[M][()]
    a[0, 0] = np.inf
    f[M][...] = a


def float_rng(f):
    for name in ("rng/torch_cpu_rank0", "rng/torch_cpu"):
        if name in f:
            a = f[name][()]
            del f[name]
            f[name] = a.astype(np.float32)


CASES = {
    "shape": (reshape, True, f"tensor '{W}' has shape [64, 127], the model expects [64, 128]"),
    "dtype": (to_double, True, f"tensor '{W}' has dtype Double, the model expects Float"),
    "missing optimizer entry": (drop_moment, False,
                                "missing optimizer state 'model.embed_tokens.weight/exp_avg_sq'"),
    "nan weight": (nan_weight, True, f"tensor '{W}' holds 1 non-finite values (NaN or inf) of 8192"),
    "inf moment": (inf_moment, False, f"tensor '{M}' holds 1 non-finite values (NaN or inf) of 8192"),
    # LibTorch's own check named neither file nor dataset (found by tests/fuzz/fuzz_hdf5_readers.cpp).
    "rng state": (float_rng, False, "dataset 'rng/torch_cpu_rank0' must be the CPU generator's state, "
                  "5056 uint8 bytes; got Float [5056]"),
}


@pytest.fixture(scope="module")
def trained(small_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("ck") / "run"
    run("train", QUICKSTART, *tiny_overrides(small_store, out, 10, **{"train.eval_every": 0}))
    return out


@pytest.mark.parametrize("case", CASES)
def test_corrupt_checkpoint_is_refused(case, trained, small_store, tmp_path):
    corrupt, in_model, expected = CASES[case]
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    ck = out / "checkpoints" / "step_000010.h5"
    with h5py.File(ck, "r+") as f:
        corrupt(f)
    before = {p.name: p.read_bytes() for p in (out / "checkpoints").iterdir()}
    metrics = (out / "metrics.jsonl").read_text()
    recipe = (out / "recipe.yaml").read_text()

    p = run("train", QUICKSTART, *tiny_overrides(small_store, out, 12, **{"train.eval_every": 0}),
            "--resume", check=False)
    assert p.returncode == 1, p.stderr[-2000:]
    assert f"error: {ck}: {expected}" in p.stderr, p.stderr[-2000:]
    assert {q.name: q.read_bytes() for q in (out / "checkpoints").iterdir()} == before
    assert (out / "metrics.jsonl").read_text() == metrics
    assert (out / "recipe.yaml").read_text() == recipe  # the override train.steps=12 not written

    p = run("eval", out, "--batches", 1, check=False)
    if in_model:
        assert p.returncode == 1 and f"error: {ck}: {expected}" in p.stderr, p.stderr[-2000:]
    else:  # eval reads the weights only
        assert p.returncode == 0, p.stderr[-2000:]


def test_a_flipped_bit_is_a_checksum_error(trained, small_store, tmp_path):
    """One bit flipped in a weight's stored bytes, a value that stays finite: every dataset carries
    a Fletcher-32 checksum, so eval and --resume refuse the file naming the dataset, where before
    the changed weight loaded silently."""
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    ck = out / "checkpoints" / "step_000010.h5"
    with h5py.File(ck, "r") as f:
        info = f[W].id.get_chunk_info(0)  # chunked: the checksum is per chunk
        assert f[W].fletcher32
    raw = bytearray(ck.read_bytes())
    raw[info.byte_offset + 1001] ^= 0x01  # bit 8 of one float's mantissa: a finite value still
    ck.write_bytes(bytes(raw))
    expected = f"{ck}: dataset '{W}': read failed (its checksum does not match"
    p = run("eval", out, "--batches", 1, check=False)
    assert p.returncode == 1 and expected in p.stderr, p.stderr[-2000:]
    p = run("train", QUICKSTART, *tiny_overrides(small_store, out, 12, **{"train.eval_every": 0}),
            "--resume", check=False)
    assert p.returncode == 1 and expected in p.stderr, p.stderr[-2000:]
