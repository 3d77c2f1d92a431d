"""Local-update training (comm.sync.mode=diloco) end to end under mpirun: with one inner step of
plain SGD and an outer SGD step of lr 1 it is data parallel with that SGD; every rank holds the
same weights after each outer step and its own between them; bytes move only on exchange steps;
a run resumed from a checkpoint in the middle of a round reproduces the uninterrupted run
exactly; bad settings are refused naming the key, before anything is written. Also the GPU
check's exchange-mode step (scripts/device_modes.py) as a dry run on the CPU."""
import json
import pathlib
import subprocess
import sys

import h5py
import numpy as np
import pytest

from conftest import run
from test_cli_e2e import QUICKSTART, read_metrics, tiny_overrides
from test_data_parallel import mpirun, resume_matches


def diloco(h, **extra):
    o = {"comm.sync.mode": "diloco", "comm.sync.inner_steps": h}
    o.update(extra)
    return o


def test_one_inner_sgd_step_with_outer_lr_one_is_data_parallel_sgd(small_store, tmp_path):
    """mean_r (anchor - (anchor - lr g_r)) = lr mean_r g_r: DiLoCo with H = 1, inner SGD without
    momentum, no compression and outer SGD at lr 1 without momentum takes data parallel's SGD
    step, up to float rounding (the pseudo-gradient is formed as a difference of weights).
    Clipping is off: a clip of each rank's gradient is not a clip of the mean."""
    steps = 8
    sgd = {"train.optimizer": "sgd", "train.momentum": 0, "train.weight_decay": 0,
           "train.grad_clip": 0, "train.lr": 0.5, "train.min_lr": 0.05}
    dp = tmp_path / "dp"
    mpirun(2, "train", QUICKSTART, *tiny_overrides(small_store, dp, steps, **sgd))
    lu = tmp_path / "lu"
    p = mpirun(2, "train", QUICKSTART, *tiny_overrides(small_store, lu, steps, **sgd, **diloco(
        1, **{"comm.sync.outer.optimizer": "sgd", "comm.sync.outer.lr": 1.0,
              "comm.sync.outer.momentum": 0})))
    assert "comm.sync: diloco, 1 inner steps" in p.stderr, p.stderr
    a, b = read_metrics(dp), read_metrics(lu)
    la, lb = np.array([r["loss"] for r in a]), np.array([r["loss"] for r in b])
    assert np.abs(la - lb).max() < 1e-5, (la, lb)
    with h5py.File(dp / "checkpoints" / f"step_{steps:06d}.h5") as fa, \
         h5py.File(lu / "checkpoints" / f"step_{steps:06d}.h5") as fb:
        names = [n for n in fa.keys() if n.startswith("model.")]
        assert names
        worst = max(np.abs(fa[n][()] - fb[n][()]).max() for n in names)
        assert worst < 1e-5, worst
    # And the same with AdamW inside is *not* data parallel (each rank keeps its own moments).
    adam = tmp_path / "adam"
    mpirun(2, "train", QUICKSTART, *tiny_overrides(small_store, adam, steps, **diloco(
        1, **{"comm.sync.outer.optimizer": "sgd", "comm.sync.outer.lr": 1.0,
              "comm.sync.outer.momentum": 0})))
    dpa = tmp_path / "dpa"
    mpirun(2, "train", QUICKSTART, *tiny_overrides(small_store, dpa, steps))
    lc = np.array([r["loss"] for r in read_metrics(adam)])
    ld = np.array([r["loss"] for r in read_metrics(dpa)])
    assert np.abs(lc - ld).max() > 1e-4


def test_rounds_meter_and_resume_exactly(small_store, tmp_path):
    """SparseLoCo-style (2-bit chunked Top-K, decayed EF) on 2 ranks, H = 4, 12 steps with a
    checkpoint at step 6, in the middle of the second round: bytes only on steps 4, 8, 12;
    ranks agree after an exchange and differ inside a round; the resumed run repeats steps
    7..12 exactly."""
    steps = 12
    comp = diloco(4, **{"comm.compression.codec": "sparseloco", "comm.compression.ratio": 0.05,
                        "comm.compression.chunk": 256, "comm.compression.bits": 2,
                        "comm.compression.error_control": "ef", "comm.compression.decay": 0.95,
                        "comm.sync.outer.optimizer": "sgd", "comm.sync.outer.lr": 1.0,
                        "comm.sync.outer.momentum": 0, "checkpoint.every": 2, "checkpoint.keep": 10,
                        "train.eval_every": 3})
    ref = tmp_path / "ref"
    mpirun(2, "train", QUICKSTART, *tiny_overrides(small_store, ref, steps, **comp))
    rows = read_metrics(ref)
    exchanged = [r["step"] for r in rows if r["comm_bytes"] > 0]
    assert exchanged == [4, 8, 12], exchanged
    for r in rows:
        if r["step"] in exchanged:
            # 5% of each chunk at 2 bits + int16 index, plus a scale per chunk, all-gathered on
            # 2 ranks, against 4 dense fp32 all-reduces: roughly 4 * 4 / (0.05 * 2.25) ~ 140x.
            assert 60 < r["comm_ratio"] < 200, r
            assert r["outer_step"] == r["step"] // 4
        else:
            assert r["comm_wire_bytes"] == 0 and "comm_ratio" not in r, r
    assert len(read_metrics(ref, "val")) == 4  # steps 3, 6, 9, 12: the anchor, mid-round too
    with h5py.File(ref / "checkpoints" / "step_000008.h5") as f:
        w0, w1 = f["local_update/rank0/weights"][()], f["local_update/rank1/weights"][()]
        assert np.array_equal(w0, w1)  # after an exchange: the anchor on every rank
        assert np.array_equal(w0, np.concatenate([f["local_update/anchor0"][()]]))
        e0, e1 = f["comm/compression_rank0"][()], f["comm/compression_rank1"][()]
        assert e0.shape == e1.shape and not np.array_equal(e0, e1)
    with h5py.File(ref / "checkpoints" / "step_000006.h5") as f:
        w0, w1 = f["local_update/rank0/weights"][()], f["local_update/rank1/weights"][()]
        assert not np.array_equal(w0, w1)  # inside a round: each rank's own
        anchor = f["local_update/anchor0"][()]
        assert not np.array_equal(anchor, w0)
        # The model stored is the global one (the anchor), not rank 0's local weights: every
        # model tensor trains here, so their values are the anchor's (compared as sums).
        model = [f[n][()].astype(np.float64) for n in f.keys() if n.startswith("model.")]
        assert sum(m.size for m in model) == anchor.size
        total = sum(m.sum() for m in model)
        assert abs(total - anchor.astype(np.float64).sum()) < 1e-6 * np.abs(anchor).sum()
        assert abs(total - w0.astype(np.float64).sum()) > 1e-6 * np.abs(anchor).sum()

    cut = tmp_path / "cut"
    resume_matches(small_store, ref, cut, 6, steps, comp)
    with h5py.File(ref / "checkpoints" / "step_000012.h5") as fa, \
         h5py.File(cut / "checkpoints" / "step_000012.h5") as fb:
        for n in fa.keys():
            if n.startswith("model.") or n.startswith("local_update/"):
                assert np.array_equal(fa[n][()], fb[n][()]), n


def test_int8_pseudo_gradients_train_on_four_ranks(small_store, tmp_path):
    """int8 codebook (INTELLECT-1) with Nesterov outer steps on 4 ranks: about 4 bytes per
    element less than fp32 and ranks that agree after each exchange; the loss falls."""
    out = tmp_path / "i8"
    mpirun(4, "train", QUICKSTART, *tiny_overrides(small_store, out, 16, **diloco(
        8, **{"comm.compression.codec": "int8", "data.batch_size": 2, "train.eval_every": 8})))
    rows = read_metrics(out)
    ex = [r for r in rows if r["comm_bytes"] > 0]
    assert [r["step"] for r in ex] == [8, 16]
    # all-gather of 1 byte per element (plus a 1 KB codebook per tensor, 20% on this tiny
    # model) on 4 ranks sends 3 (N + codebooks); 8 dense ring all-reduces send 8 * 6N.
    assert all(11 < r["comm_ratio"] < 16 for r in ex), ex
    val = [r["loss"] for r in read_metrics(out, "val")]
    assert val[-1] < val[0]
    with h5py.File(out / "checkpoints" / "step_000016.h5") as f:
        ws = [f[f"local_update/rank{r}/weights"][()] for r in range(4)]
        assert all(np.array_equal(ws[0], w) for w in ws[1:])


def test_one_process_runs_diloco_as_lookahead(small_store, tmp_path):
    """In one process the outer step still applies (Lookahead-like): with outer lr 1 and no
    momentum the anchor becomes the local weights (up to the rounding of anchor - (anchor - w)),
    so it is plain training."""
    plain, lu = tmp_path / "plain", tmp_path / "lu"
    run("train", QUICKSTART, *tiny_overrides(small_store, plain, 6))
    p = run("train", QUICKSTART, *tiny_overrides(small_store, lu, 6, **diloco(
        3, **{"comm.sync.outer.optimizer": "sgd", "comm.sync.outer.lr": 1.0,
              "comm.sync.outer.momentum": 0})))
    assert "has no effect in a single process" not in p.stderr  # DiLoCo does act in one process
    a = np.array([r["loss"] for r in read_metrics(plain)])
    b = np.array([r["loss"] for r in read_metrics(lu)])
    assert np.abs(a - b).max() < 1e-5, (a, b)
    # ... which it would be without the outer step too: the outer steps are counted ...
    assert [(r["step"], r["outer_step"]) for r in read_metrics(lu) if "outer_step" in r] == [(3, 1), (6, 2)]


def test_one_process_outer_step_closed_form(small_store, tmp_path):
    """... and with outer lr 0.5 the weights after the first outer step are
    anchor + 0.5 (w_3 - anchor) = (start + w_3) / 2, w_3 being plain training's after 3 steps from
    the same start (the inner steps are plain training's steps)."""
    start = tmp_path / "start"
    run("train", QUICKSTART, *tiny_overrides(small_store, start, 1, **{"checkpoint.every": 1}))
    init = start / "checkpoints" / "step_000001.h5"
    common = {"kind": "finetune", "init": init, "checkpoint.every": 3}
    plain, lu = tmp_path / "plain", tmp_path / "lu"
    run("train", QUICKSTART, *tiny_overrides(small_store, plain, 3, **common))
    run("train", QUICKSTART, *tiny_overrides(small_store, lu, 3, **common, **diloco(
        3, **{"comm.sync.outer.optimizer": "sgd", "comm.sync.outer.lr": 0.5,
              "comm.sync.outer.momentum": 0})))
    with h5py.File(init) as f0, h5py.File(plain / "checkpoints" / "step_000003.h5") as f3, \
         h5py.File(lu / "checkpoints" / "step_000003.h5") as fl:
        names = [n for n in f0.keys() if n.startswith("model.")]
        assert names
        moved = max(np.abs(f3[n][()] - f0[n][()]).max() for n in names)
        worst = max(np.abs(fl[n][()] - 0.5 * (f0[n][()] + f3[n][()])).max() for n in names)
        assert moved > 1e-3 and worst < 1e-6, (moved, worst)


@pytest.mark.parametrize("key,value,expected", [
    ("comm.sync.mode", "demo2", "must be one of: ddp, diloco"),
    ("comm.sync.inner_steps", 0, "comm.sync.inner_steps"),
    ("comm.sync.outer.optimizer", "adam", "must be one of: nesterov, sgd"),
    ("comm.sync.outer.momentum", 1.0, "comm.sync.outer.momentum"),
    ("comm.sync.outer.lr", 0, "comm.sync.outer.lr"),
    ("comm.compression.bits", 9, "comm.compression.bits"),
    ("comm.compression.bits", 1, "comm.compression.bits"),
    ("comm.compression.chunk", 0, "comm.compression.chunk"),
    ("comm.compression.decay", 1.5, "comm.compression.decay"),
    ("comm.compression.transform", "fft", "must be one of: none, dct"),
    ("comm.compression.transform", "dct", "'dct' applies to codec sparseloco, got 'none'"),
    ("comm.compression.collective", "ring", "must be one of: all_gather, compressed_all_reduce"),
    ("comm.compression.scope", "tensor", "'tensor' applies to codec topk, got 'none'"),
    ("comm.sync.var_update_scaler", 0, "comm.sync.var_update_scaler"),
])
def test_bad_settings_are_refused(small_store, tmp_path, key, value, expected):
    """(diloco(2, ...) sets mode diloco; DiLoCo keys under ddp: test_diloco_settings_under_ddp_are_refused.)"""
    out = tmp_path / "bad"
    p = run("train", QUICKSTART, *tiny_overrides(small_store, out, 2, **diloco(2, **{key: value})),
            check=False)
    assert p.returncode != 0
    assert expected in p.stderr, p.stderr
    assert not out.exists()


def test_demo_sending_everything_without_sign_is_data_parallel_sgd(small_store, tmp_path):
    """DeMo as composed in condense (decayed EF around chunked Top-K with fp32 values): with
    k = chunk every coordinate is sent, the buffer empties each step, and the mean of the sent
    parts is the mean gradient; with SGD instead of the sign step it is data parallel SGD."""
    steps = 6
    sgd = {"train.optimizer": "sgd", "train.momentum": 0, "train.weight_decay": 0,
           "train.grad_clip": 0, "train.lr": 0.5, "train.min_lr": 0.05}
    dp = tmp_path / "dp"
    mpirun(2, "train", QUICKSTART, *tiny_overrides(small_store, dp, steps, **sgd))
    demo = tmp_path / "demo"
    mpirun(2, "train", QUICKSTART, *tiny_overrides(small_store, demo, steps, **sgd, **{
        "comm.compression.codec": "sparseloco", "comm.compression.bits": 32,
        "comm.compression.chunk": 256, "comm.compression.k": 256,
        "comm.compression.error_control": "ef", "comm.compression.decay": 0.9}))
    la = np.array([r["loss"] for r in read_metrics(dp)])
    lb = np.array([r["loss"] for r in read_metrics(demo)])
    assert np.abs(la - lb).max() < 1e-5, (la, lb)
    # The real thing (k 8 of 256, the sign step) trains and sends ~1/20 of dense's bytes.
    real = tmp_path / "real"
    mpirun(2, "train", QUICKSTART, *tiny_overrides(small_store, real, 12, **{
        "train.optimizer": "sign", "train.lr": 3e-3, "comm.compression.codec": "sparseloco",
        "comm.compression.bits": 32, "comm.compression.chunk": 256, "comm.compression.k": 8,
        "comm.compression.error_control": "ef", "comm.compression.decay": 0.999}))
    rows = read_metrics(real)
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert all(10 < r["comm_ratio"] < 30 for r in rows), rows[0]


def test_onebit_adam_freezes_exchanges_momentum_and_resumes_exactly(small_store, tmp_path):
    """1-bit Adam on 2 ranks: 4 dense AdamW steps, then sign + EF on the momentum (about 30x fewer
    bytes per step), both ranks' error buffers in the checkpoint, and a resume from step 6
    (after the freeze) that repeats steps 7..10 exactly."""
    steps = 10
    comp = {"comm.sync.mode": "onebit_adam", "comm.sync.freeze_steps": 4,
            "comm.compression.codec": "sign", "comm.compression.error_control": "ef",
            "checkpoint.every": 6, "checkpoint.keep": 5}
    ref = tmp_path / "ref"
    p = mpirun(2, "train", QUICKSTART, *tiny_overrides(small_store, ref, steps, **comp))
    assert "comm.sync: onebit_adam, 4 dense AdamW steps" in p.stderr, p.stderr
    rows = read_metrics(ref)
    for r in rows[:4]:
        assert r["comm_ratio"] == 1.0, r
    for r in rows[4:]:
        # 1 bit + a fp32 scale per 512 elements, all-gathered on 2 ranks, vs 4 bytes ring.
        assert 25 < r["comm_ratio"] < 32, r
    assert rows[-1]["loss"] < rows[0]["loss"]
    with h5py.File(ref / "checkpoints" / "step_000006.h5") as f:
        e0, e1 = f["comm/compression_rank0"][()], f["comm/compression_rank1"][()]
        assert e0.shape == e1.shape and not np.array_equal(e0, e1)
    resume_matches(small_store, ref, tmp_path / "cut", 6, steps, comp)
    # Refused before anything is written: 1-bit Adam is AdamW.
    bad = tmp_path / "bad"
    p = run("train", QUICKSTART, *tiny_overrides(small_store, bad, 2, **{
        "comm.sync.mode": "onebit_adam", "train.optimizer": "sgd"}), check=False)
    assert p.returncode != 0
    assert "key 'comm.sync.mode' 'onebit_adam' is AdamW with a frozen second moment" in p.stderr, p.stderr
    assert not bad.exists()


def test_zero_one_adam_refreshes_variance_on_schedule_and_resumes_exactly(small_store, tmp_path):
    """0/1 Adam's variance schedule on 2 ranks: dense exchanges (comm_ratio 1) exactly at the
    refresh steps 1, 2, 4, 6, 8 (var_update_scaler 2, freeze_steps 9), the momentum through sign +
    EF at every other step, and a resume from step 5 that repeats steps 6..12 exactly."""
    steps = 12
    comp = {"comm.sync.mode": "zero_one_adam", "comm.sync.freeze_steps": 9,
            "comm.sync.var_update_scaler": 2,
            "comm.compression.codec": "sign", "comm.compression.error_control": "ef",
            "checkpoint.every": 5, "checkpoint.keep": 5}
    ref = tmp_path / "ref"
    p = mpirun(2, "train", QUICKSTART, *tiny_overrides(small_store, ref, steps, **comp))
    assert "comm.sync: zero_one_adam, 5 dense AdamW steps" in p.stderr, p.stderr
    rows = read_metrics(ref)
    dense = [r["step"] for r in rows if r["comm_ratio"] == 1.0]
    assert dense == [1, 2, 4, 6, 8], [(r["step"], r["comm_ratio"]) for r in rows]
    for r in rows:
        if r["step"] not in dense:
            assert 25 < r["comm_ratio"] < 32, r
    assert rows[-1]["loss"] < rows[0]["loss"]
    resume_matches(small_store, ref, tmp_path / "cut", 5, steps, comp)


def test_onebit_adam_compressed_all_reduce_halves_the_bytes_on_4_ranks(small_store, tmp_path):
    """1-bit Adam's compressed all-reduce (comm.compression.collective) on 4 ranks: after the
    freeze each rank sends 2 x 3 quarter-bucket sign payloads instead of 3 whole ones, so the
    ratio against a dense ring all-reduce (6 bytes per element) roughly doubles: about 30x
    instead of about 15x. Both train, and the server error buffers are checkpointed."""
    ratios = {}
    for collective in ("all_gather", "compressed_all_reduce"):
        out = tmp_path / collective
        comp = {"comm.sync.mode": "onebit_adam", "comm.sync.freeze_steps": 2,
                "comm.compression.codec": "sign", "comm.compression.error_control": "ef",
                "comm.compression.collective": collective}
        mpirun(4, "train", QUICKSTART, *tiny_overrides(small_store, out, 6, **comp))
        rows = read_metrics(out)
        assert all(np.isfinite(r["loss"]) for r in rows)
        ratios[collective] = [r["comm_ratio"] for r in rows[2:]]
        assert len(set(ratios[collective])) == 1, ratios
    assert 14 < ratios["all_gather"][0] < 16.5, ratios
    assert 28 < ratios["compressed_all_reduce"][0] < 32.5, ratios
    # A codec it cannot carry is refused before anything is written.
    bad = tmp_path / "bad"
    p = run("train", QUICKSTART, *tiny_overrides(small_store, bad, 2, **{
        "comm.compression.codec": "topk", "comm.compression.collective": "compressed_all_reduce"}),
        check=False)
    assert p.returncode != 0
    assert "'compressed_all_reduce' needs codec sign or qsgd, got 'topk'" in p.stderr, p.stderr
    assert not bad.exists()


def test_streaming_fragments_exchange_in_turn_and_resume_exactly(small_store, tmp_path):
    """Streaming DiLoCo on 2 ranks (comm.sync.fragments 2, H 4): one fragment's pseudo-gradient
    every 2 steps, the two halves adding up to the bytes of one whole-model round, the ratio
    against dense per covered step the same as without fragments (H), the last step
    synchronizing both, and a resume from step 5 (mid-round for both fragments) that repeats
    steps 6..10 exactly."""
    steps = 10
    whole = tmp_path / "whole"
    mpirun(2, "train", QUICKSTART, *tiny_overrides(small_store, whole, steps, **diloco(4)))
    comp = diloco(4, **{"comm.sync.fragments": 2, "checkpoint.every": 5, "checkpoint.keep": 5})
    ref = tmp_path / "ref"
    p = mpirun(2, "train", QUICKSTART, *tiny_overrides(small_store, ref, steps, **comp))
    assert "in 2 fragments (one every 2 steps)" in p.stderr, p.stderr
    rows = read_metrics(ref)
    sent = {r["step"]: r["comm_wire_bytes"] for r in rows if r["comm_wire_bytes"] > 0}
    assert sorted(sent) == [2, 4, 6, 8, 10], sent
    full = {r["step"]: r for r in read_metrics(whole) if r["comm_wire_bytes"] > 0}
    assert sent[2] + sent[4] == full[4]["comm_wire_bytes"], (sent, full[4])
    assert sent[10] == full[4]["comm_wire_bytes"]  # the last step: both fragments
    assert 0.3 < sent[2] / sent[4] < 3, sent  # halves of comparable size
    # comm_ratio: a whole-model dense all-reduce on each of the 2 steps a fragment's exchange
    # covers, against its bytes (dense per step from the whole-model run: ratio x wire / 4).
    dense_per_step = full[4]["comm_ratio"] * full[4]["comm_wire_bytes"] / 4
    for r in rows:
        if r["step"] in (2, 4, 6, 8):
            assert r["comm_ratio"] == pytest.approx(dense_per_step * 2 / sent[r["step"]], rel=1e-9), r
    resume_matches(small_store, ref, tmp_path / "cut", 5, steps, comp)
    bad = tmp_path / "bad"
    p = run("train", QUICKSTART, *tiny_overrides(small_store, bad, 2, **diloco(4, **{
        "comm.sync.fragments": 3})), check=False)
    assert p.returncode != 0
    assert "must divide comm.sync.inner_steps (4), got 3" in p.stderr, p.stderr
    assert not bad.exists()


def test_device_modes_script_dry_run_on_cpu(condense_bin, small_store, tmp_path):
    """scripts/device_modes.py (the GPU check's exchange-mode step) with --device cpu: every mode
    trains 12 steps with falling loss, writes its checkpoints and logs its exchanges' bytes."""
    script = pathlib.Path(__file__).resolve().parents[2] / "scripts" / "device_modes.py"
    p = subprocess.run([sys.executable, str(script), "--bin", str(condense_bin), "--store", str(small_store),
                        "--work", str(tmp_path), "--device", "cpu", "--threads", "1"],
                       capture_output=True, text=True, timeout=600,
                       cwd=pathlib.Path(__file__).resolve().parents[2])
    rows = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    assert p.returncode == 0, p.stdout + p.stderr
    assert [r["mode"].split()[0] for r in rows] == ["diloco", "onebit_adam", "zero_one_adam"]
    for r in rows:
        assert r["ok"] and r["loss_last_cpu"] < r["loss_first_cpu"], r
        assert any(b for b in r["comm_bytes_device"]), r


@pytest.mark.parametrize("key,value", [("comm.sync.inner_steps", 4), ("comm.sync.fragments", 2)])
def test_diloco_settings_under_ddp_are_refused(small_store, tmp_path, key, value):
    out = tmp_path / "bad"
    p = run("train", QUICKSTART, *tiny_overrides(small_store, out, 2, **{key: value}), check=False)
    assert p.returncode == 1 and f"{key}" in p.stderr and "applies to comm.sync.mode diloco, got 'ddp'" in p.stderr, p.stderr
    assert not out.exists()
