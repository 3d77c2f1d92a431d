"""The ARC-style context compressor through the CLI (recipes/context_arc.yaml, kind
context_compressor; compressors/context_arc.h).

On a briefly trained small model as the frozen decoder: training changes only the encoder,
projector and markers (every decoder tensor in the run's checkpoints is bitwise the init's),
lowers the continuation loss with compressed context below the untrained encoder's, and resumes
bitwise. `condense context-eval` reports every baseline on the same tokens, with gap closed
computed from its own NLLs, and KV bytes that follow the layout. Bad options fail naming the key,
with no run directory written.
"""
import json

import h5py
import numpy as np
import pytest

from conftest import run
from export_fixtures import SOURCE, assert_same_datasets, model_tensors, start_from_step, trained  # noqa: F401

RECIPE = SOURCE / "recipes" / "context_arc.yaml"


def arc_args(trained, store, out, steps=30, *extra):
    return ["train", RECIPE, f"init={trained[0]}", f"out_dir={out}", f"data.dataset={store}",
            "data.seq_len=32", "data.batch_size=4", "context.chunk_len=16", "context.pooling_factor=4",
            "context.encoder_layers=1", f"train.steps={steps}", "train.warmup_steps=2", "train.lr=2e-3",
            "train.eval_every=0", "train.eval_batches=2", "train.threads=1", "train.log_every=10",
            "checkpoint.every=10", "checkpoint.keep=5", *extra]


@pytest.fixture(scope="module")
def arc_run(trained, small_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("arc") / "run"
    run(*arc_args(trained, small_store, out))
    return out


def context_eval(source, *extra):
    out = run("context-eval", source, "--batches", 4, "--threads", 1, *extra)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_only_the_compressor_trains(trained, arc_run):
    orig, _, _ = model_tensors(trained[0])
    ckpt = arc_run / "checkpoints" / "step_000030.h5"
    new, _, _ = model_tensors(ckpt)
    assert orig.keys() == new.keys()
    for k in orig:
        assert np.array_equal(orig[k], new[k]), k
    with h5py.File(ckpt, "r") as f:  # optimizer state only for what trains
        assert set(f["optimizer"].keys()) == {n for n in f.keys() if n.startswith(("encoder.", "projector."))}


def test_training_beats_the_untrained_encoder_and_reports_consistently(arc_run):
    j = context_eval(arc_run)
    nll, gap = j["nll"], j["gap_closed"]
    assert set(nll) == {"none", "full", "compressed", "truncated", "mean_pool", "untrained"}
    assert nll["full"] < nll["none"]  # the decoder uses its context
    assert nll["compressed"] < nll["untrained"]
    for name in ("compressed", "truncated", "mean_pool", "untrained"):
        expect = (nll["none"] - nll[name]) / (nll["none"] - nll["full"])
        assert abs(gap[name] - expect) < 1e-9, name
    assert j["compressed_positions"] == 4 and j["chunk_len"] == 16 and j["continuation_len"] == 16
    # 2 layers x 2 KV heads x 16 x (K, V) x 4 bytes per position; full 32 positions, compressed
    # 4 + the marker + 16.
    per_position = 2 * 2 * 16 * 2 * 4
    assert j["kv_bytes_per_window"] == {"full": 32 * per_position, "compressed": 21 * per_position}
    assert 0 <= j["reconstruction_accuracy"] <= 1
    # Another layout of the same compressor: a plain prefix before a longer chunk.
    k = context_eval(arc_run, "--prefix-len", 4, "--chunk-len", 20, "--seq-len", 40)
    assert k["compressed_positions"] == 5 and k["continuation_len"] == 16


def test_resume_is_bitwise(trained, small_store, arc_run, tmp_path):
    resumed = tmp_path / "resumed"
    start_from_step(arc_run, resumed, 10)
    run(*arc_args(trained, small_store, resumed), "--resume")
    assert_same_datasets(arc_run / "checkpoints" / "step_000030.h5",
                         resumed / "checkpoints" / "step_000030.h5",
                         ["encoder.", "projector.", "optimizer"], at_least=12)


@pytest.mark.parametrize("override, message", [
    ("context.pooling_factor=32", "context.pooling_factor 32 is larger than the chunk"),
    ("context.chunk_len=32", "must leave at least one continuation token"),
    ("context.encoder_layers=3", "context.encoder_layers 3: valid is 1..2"),
    ("context.reconstruction_share=1.5", "context.reconstruction_share"),
    ("context.method=xyz", "context.method"),
])
def test_bad_options_write_nothing(trained, small_store, tmp_path, override, message):
    out = tmp_path / "bad"
    r = run(*arc_args(trained, small_store, out, 2, override), check=False)
    assert r.returncode != 0 and message in r.stderr, r.stderr
    assert not out.exists()


def test_context_eval_refuses_a_plain_checkpoint(trained):
    r = run("context-eval", trained[0], check=False)
    assert r.returncode != 0 and "without a context compressor" in r.stderr, r.stderr
