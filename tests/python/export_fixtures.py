"""Shared helpers for the export/import tests: a briefly trained small model with a real
sentencepiece tokenizer (GCIDE, 384 pieces), condense's own per-position log-probabilities of a
held-out text (`condense score --full`), and readers for condense checkpoints."""
import json
import os
import pathlib
import shutil

import h5py
import numpy as np
import pytest

from conftest import run

SOURCE = pathlib.Path(os.environ.get("CONDENSE_SOURCE_DIR", pathlib.Path(__file__).resolve().parents[2]))
QUICKSTART = SOURCE / "recipes" / "quickstart.yaml"

# Not GCIDE text (the model trained on GCIDE entries): a held-out paragraph with punctuation,
# digits, a newline and a non-ASCII character so byte-fallback pieces take part.
HELD_OUT = ("The harbour was quiet at dawn; three boats, painted red and blue, rested near the "
            "pier.\nA fisherman counted 42 nets and said: \"Tomorrow we sail north\" \u2014 café.")


def train_tiny(store, out_dir, steps=40, **extra):
    """Trains a small GQA model (hidden 64, rows multiple of 32 for Q8_0); returns its checkpoint."""
    o = {"name": "x", "out_dir": out_dir, "data.dataset": store, "data.seq_len": 64,
         "data.batch_size": 4, "model.hidden_size": 64, "model.intermediate_size": 128,
         "model.num_hidden_layers": 2, "model.num_attention_heads": 4,
         "model.num_key_value_heads": 2, "model.max_position_embeddings": 128,
         "model.tie_word_embeddings": "false", "train.steps": steps, "train.warmup_steps": 5,
         "train.lr": 5e-3, "train.min_lr": 5e-4, "train.eval_every": 0, "train.threads": 1,
         "train.log_every": 20, "checkpoint.every": 0, "checkpoint.keep": 1}
    o.update(extra)
    run("train", QUICKSTART, *[f"{k}={v}" for k, v in o.items()])
    ckpts = sorted((pathlib.Path(out_dir) / "checkpoints").glob("step_*.h5"))
    assert ckpts, f"no checkpoint in {out_dir}"
    return ckpts[-1]


def score(source, text_path, *extra):
    """condense score --full: returns (ids, logprobs [n-1, V] float64, summary dict)."""
    out = pathlib.Path(str(text_path) + f".{abs(hash((str(source),) + extra))}.json")
    run("score", source, "--text", text_path, "--full", "--json", out, *extra)
    j = json.loads(out.read_text())
    ids = [p["id"] for p in j["positions"]] + [j["positions"][-1]["next_id"]]
    lp = np.array([p["logprobs"] for p in j["positions"]], dtype=np.float64)
    return ids, lp, j


def start_from_step(src_run, dst_run, step):
    """dst_run/checkpoints holding only src_run's checkpoint of `step` as latest: a run to resume
    from there, for bitwise-resume tests."""
    name = f"step_{step:06d}.h5"
    (dst_run / "checkpoints").mkdir(parents=True)
    shutil.copy(src_run / "checkpoints" / name, dst_run / "checkpoints" / name)
    (dst_run / "checkpoints" / "latest").write_text(name + "\n")


def assert_same_datasets(fa, fb, prefixes, at_least):
    """Every dataset of checkpoint fa under one of `prefixes` bitwise equal in fb; at least
    `at_least` of them (so a renamed group cannot pass by comparing nothing)."""
    with h5py.File(fa, "r") as x, h5py.File(fb, "r") as y:
        names = []
        x.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        compared = [n for n in names if n.startswith(tuple(prefixes))]
        assert len(compared) >= at_least, compared
        for n in compared:
            assert np.array_equal(x[n][()], y[n][()]), n


def model_tensors(h5_path):
    """{name: array} of a condense checkpoint's model tensors, plus its config and tokenizer."""
    with h5py.File(h5_path, "r") as f:
        names = [k for k in f.keys() if k.startswith("model.") or k.startswith("lm_head.")]
        tensors = {k: np.asarray(f[k][()]) for k in names}
        raw = f["config"][()]
        config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        tok = bytes(np.asarray(f["tokenizer"][()]).tobytes()) if "tokenizer" in f else b""
    return tensors, config, tok


@pytest.fixture(scope="session")
def trained(small_store, tmp_path_factory):
    """(checkpoint path, tokenizer path, held-out text path, ids, condense logprobs)."""
    d = tmp_path_factory.mktemp("trained")
    ckpt = train_tiny(small_store, d / "run")
    text = d / "held_out.txt"
    text.write_text(HELD_OUT, encoding="utf-8")
    ids, lp, _ = score(ckpt, text)
    return ckpt, small_store.parent / "tok.model", text, ids, lp
