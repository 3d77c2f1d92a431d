"""Non-finite losses and gradients on one rank (train.nonfinite): `stop` ends the job naming the
step and the rank; `skip` drops the step on every rank (weights and optimizer state unchanged
across it, bit for bit), restarts the compression residuals the NaN reached, counts the step
in metrics, and stops after train.max_consecutive_skips skipped steps in a row.

The NaN comes from the trainer's fault injection: CONDENSE_TEST_NAN_RANK's loss is multiplied
by NaN before backward at each step in CONDENSE_TEST_NAN_STEPS."""
import os

import h5py
import numpy as np

from conftest import run
from test_cli_e2e import QUICKSTART, read_metrics, tiny_overrides
from test_data_parallel import mpirun


def nan_env(rank, steps):
    return {"CONDENSE_TEST_NAN_RANK": str(rank), "CONDENSE_TEST_NAN_STEPS": ",".join(map(str, steps))}


def overrides(store, out, steps, **extra):
    # A checkpoint after every step, all kept: the skipped step's is compared with the one before.
    return tiny_overrides(store, out, steps, **{"checkpoint.every": 1, "checkpoint.keep": 100,
                                                "train.eval_every": 0, **extra})


def trained_state(path):
    """Weights and optimizer state of a checkpoint (not the RNG or the counters)."""
    with h5py.File(path) as f:
        out = {}
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()])
                     if isinstance(obj, h5py.Dataset) and not name.startswith("rng/") else None)
    assert any(n.startswith("model.") for n in out) and any("optim" in n for n in out), sorted(out)
    return out


def assert_step_dropped(out, step, residuals_restart=False):
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == list(range(1, len(rows) + 1))
    skipped = [r["step"] for r in rows if r.get("skipped")]
    assert skipped == [step], skipped
    assert rows[step - 1]["loss"] is None  # non-finite values are written as null
    assert all(r["loss"] is not None and np.isfinite(r["loss"]) for r in rows if r["step"] != step)
    ck = out / "checkpoints"
    before = trained_state(ck / f"step_{step - 1:06d}.h5")
    at = trained_state(ck / f"step_{step:06d}.h5")
    after = trained_state(ck / f"step_{step + 1:06d}.h5")
    assert before.keys() == at.keys()
    if residuals_restart:  # every rank's error-feedback residual is zero after the skipped step
        comm = [n for n in at if n.startswith("comm/compression_rank")]
        assert len(comm) == 2 and all(np.any(before[n] != 0) and not np.any(at[n]) for n in comm)
    for name in before:
        if residuals_restart and name.startswith("comm/compression"):
            continue  # the residuals (above) and the count of exchanges, which did happen
        assert np.array_equal(before[name], at[name]), f"{name} changed across the skipped step"
    assert any(not np.array_equal(at[n], after[n]) for n in at if n.startswith("model."))


def test_stop_names_the_step_and_the_rank(small_store, tmp_path):
    p = mpirun(2, "train", QUICKSTART, *overrides(small_store, tmp_path / "s", 6),
               env=nan_env(1, [3]), check=False, timeout=120)
    assert p.returncode != 0
    text = p.stdout + p.stderr
    assert "training diverged at step 3" in text, text[-3000:]
    assert "non-finite loss on rank(s) 1;" in text, text[-3000:]
    assert "train.nonfinite: skip" in text
    # The last complete checkpoint is the step before.
    assert (tmp_path / "s" / "checkpoints" / "latest").read_text().strip() == "step_000002.h5"


def test_skip_drops_the_step_on_every_rank(small_store, tmp_path):
    out = tmp_path / "k"
    p = mpirun(2, "train", QUICKSTART, *overrides(small_store, out, 6, **{"train.nonfinite": "skip"}),
               env=nan_env(1, [3]), timeout=120)
    assert "step 3 skipped (1 in a row): non-finite loss on rank(s) 1" in p.stdout + p.stderr
    assert_step_dropped(out, 3)


def test_skip_restarts_the_error_feedback_residuals(small_store, tmp_path):
    """With Top-K + EF the NaN gradient of rank 1 enters its residual during the exchange; kept,
    it would make every later step non-finite too."""
    out = tmp_path / "ef"
    extra = {"train.nonfinite": "skip", "comm.compression.codec": "topk",
             "comm.compression.ratio": 0.05, "comm.compression.error_control": "ef",
             "comm.compression.warmup_steps": 0, "comm.compression.min_bucket_numel": 0}
    mpirun(2, "train", QUICKSTART, *overrides(small_store, out, 6, **extra), env=nan_env(1, [3]),
           timeout=120)
    assert_step_dropped(out, 3, residuals_restart=True)


def test_skip_on_a_one_bit_adam_momentum_step(small_store, tmp_path):
    """On momentum steps the exchange is inside the optimizer step, which a skipped step never
    reaches: the momentum, its error buffers and the frozen variance stay as they were."""
    out = tmp_path / "ob"
    extra = {"train.nonfinite": "skip", "comm.sync.mode": "onebit_adam", "comm.sync.freeze_steps": 2,
             "comm.compression.codec": "sign", "comm.compression.error_control": "ef",
             "comm.compression.warmup_steps": 0}
    mpirun(2, "train", QUICKSTART, *overrides(small_store, out, 6, **extra), env=nan_env(0, [4]),
           timeout=120)
    assert_step_dropped(out, 4)
    rows = read_metrics(out)
    assert rows[3]["comm_bytes"] == 0 and rows[4]["comm_bytes"] > 0


def test_skip_alone(small_store, tmp_path):
    out = tmp_path / "one"
    run("train", QUICKSTART, *overrides(small_store, out, 5, **{"train.nonfinite": "skip"}),
        env={**os.environ, **nan_env(0, [2])})
    assert_step_dropped(out, 2)


def test_too_many_consecutive_skips_stop(small_store, tmp_path):
    p = mpirun(2, "train", QUICKSTART,
               *overrides(small_store, tmp_path / "c", 8,
                          **{"train.nonfinite": "skip", "train.max_consecutive_skips": 2}),
               env=nan_env(0, [3, 4, 5]), check=False, timeout=120)
    assert p.returncode != 0
    text = p.stdout + p.stderr
    assert "3 consecutive steps skipped up to step 5 (train.max_consecutive_skips is 2)" in text, text[-3000:]
    assert "non-finite loss on rank(s) 0;" in text
