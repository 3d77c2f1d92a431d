"""CSKV's low-rank latent KV cache through the CLI (compressors/cskv.h).

A briefly trained GQA model (4 query heads over 2 KV heads of 16, hidden 64, 2 layers) gets
low-rank K/V factors with `condense prune --method cskv`. At full rank (32 = kv_heads x
head_dim) it scores what the original scores; at key rank 8 / value rank 16 the cache holds 24
floats per layer and token, and token-by-token decoding from the latents scores what the
chunked forward scores. Exported with --without-kv-projection, transformers and llama.cpp run
the multiplied-out plain Llama and agree with condense's CSKV model (the factors and a config
naming the method sit beside the HF weights). recipes/cskv.yaml trains only the factors (the
model stays bitwise), lowers the reconstruction loss and resumes bitwise; as kind distill it
trains them end to end. Bad options fail naming the option, with nothing written.
"""
import json

import numpy as np
import pytest
import torch

from conftest import run
from export_fixtures import (SOURCE, assert_same_datasets, model_tensors, score, start_from_step,  # noqa: F401
                             trained)
from test_kv_compress import llama_cpp

transformers = pytest.importorskip("transformers")
pytest.importorskip("llama_cpp")


def cskv(ckpt, out, *extra, check=True):
    return run("prune", ckpt, "--method", "cskv", "--calib-windows", 8, "--threads", 1, "--out", out,
               *extra, check=check)


@pytest.fixture(scope="module")
def low_rank(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("cskv") / "cskv.h5"
    cskv(trained[0], out, "--key-rank", 8, "--value-rank", 16)
    return out


def test_full_rank_is_exact_and_latents_shrink_the_cache(trained, low_rank, tmp_path):
    text = trained[2]
    _, lp_orig, _ = score(trained[0], text)
    for init in ("whiten", "asvd", "svd"):
        full = tmp_path / f"full_{init}.h5"
        cskv(trained[0], full, "--key-rank", 32, "--init", init)
        _, lp_full, j = score(full, text, "--kv-cache", "fp")
        assert np.abs(lp_full - lp_orig).max() <= 1e-5, init
        assert j["kv_bytes_per_token"] == 2 * (32 + 32) * 4
    orig, _, _ = model_tensors(trained[0])
    new, _, _ = model_tensors(low_rank)
    for k in orig:  # the weights are untouched; the factors sit beside them
        assert np.array_equal(new[k], orig[k]), k
    _, lp_dec, j_dec = score(low_rank, text, "--kv-cache", "fp", "--token-by-token")
    _, lp_fwd, _ = score(low_rank, text)
    assert np.abs(lp_dec - lp_fwd).max() <= 1e-5  # decoding from latents = the CSKV forward
    assert np.abs(lp_fwd - lp_orig).max() > 1e-3
    assert j_dec["kv_bytes_per_token"] == 2 * (8 + 16) * 4
    _, lp_q8, j_q8 = score(low_rank, text, "--kv-cache", "int8")
    assert np.abs(lp_q8 - lp_fwd).max() < 0.1
    assert j_q8["kv_bytes_per_token"] == 2 * (8 + 8 * 8 / 32 + 16 + 8)
    ev = json.loads(run("eval", low_rank, "--batches", 2).stdout.splitlines()[-1])
    assert ev["kv_bytes_per_token"] == 2 * (8 + 16) * 4
    out = run("generate", low_rank, "--prompt", "A", "--max-new-tokens", 8, "--ignore-eos")
    assert "192 bytes" in out.stderr, out.stderr


def test_recent_window_through_the_cli(trained, low_rank):
    """--kv-window W: the last W positions before each query read exact keys and values; a
    window over the whole text is the original model, and decoding equals the forward."""
    text = trained[2]
    _, lp_orig, _ = score(trained[0], text)
    _, lp_all, j = score(low_rank, text, "--kv-window", 100000)
    assert np.abs(lp_all - lp_orig).max() <= 1e-5 and j["kv_window"] == 100000
    _, lp_fwd, _ = score(low_rank, text, "--kv-window", 8)
    _, lp_dec, _ = score(low_rank, text, "--kv-window", 8, "--kv-cache", "fp", "--token-by-token")
    _, lp_none, _ = score(low_rank, text)
    assert np.abs(lp_dec - lp_fwd).max() <= 1e-5
    # Exact recent keys help: closer to the original than without the window.
    assert np.abs(lp_fwd - lp_orig).mean() < np.abs(lp_none - lp_orig).mean()
    ev = json.loads(run("eval", low_rank, "--batches", 1, "--kv-window", 8).stdout.splitlines()[-1])
    assert ev["val_loss"] > 0
    run("generate", low_rank, "--prompt", "A", "--max-new-tokens", 4, "--kv-window", 8)
    res = run("eval", trained[0], "--batches", 1, "--kv-window", 8, check=False)
    assert res.returncode == 1 and "has no CSKV low-rank cache" in res.stderr, res.stderr


def test_export_writes_the_plain_llama_and_the_factors_beside_it(trained, low_rank, tmp_path):
    for fmt, out in (("gguf", tmp_path / "c.gguf"), ("hf", tmp_path / "hf")):
        res = run("export", low_rank, out, "--format", fmt, check=False)
        assert res.returncode == 1 and "--without-kv-projection" in res.stderr and "cskv" in res.stderr, res.stderr
        assert not out.exists()
    out = tmp_path / "plain"
    run("export", low_rank, out, "--format", "hf", "--without-kv-projection")
    meta = json.loads((out / "kv_compression.json").read_text())
    assert meta["method"] == "cskv" and (meta["key_rank"], meta["value_rank"]) == (8, 16)
    from safetensors.numpy import load_file
    parts = load_file(out / "kv_compression.safetensors")
    assert parts["cskv/layers.1.key_down"].shape == (64, 8)
    assert parts["cskv/layers.1.value_up"].shape == (16, 32)
    ids, lp, _ = score(low_rank, trained[2])
    model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32,
                                                              attn_implementation="eager").eval()
    with torch.no_grad():
        lp_hf = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)[:-1].numpy()
    err = np.abs(lp_hf - lp).max()
    print(f"cskv plain HF export vs condense's CSKV model: max |logprob diff| = {err:.3g}")
    assert err <= 1e-5
    # The multiplied-out k_proj has rank 8, what the factors compute.
    w = model.model.layers[0].self_attn.k_proj.weight.detach().double().numpy()
    s = np.linalg.svd(w, compute_uv=False)
    assert s[8] <= 1e-5 * s[0]

    gguf_path = tmp_path / "plain.gguf"
    run("export", low_rank, gguf_path, "--format", "gguf", "--without-kv-projection")
    probs, _ = llama_cpp(gguf_path, trained[2], ids, tmp_path)
    assert np.abs(probs - np.exp(lp)).max() <= 1e-4


def train_cskv(store, init, out_dir, *extra, steps=4, check=True):
    o = {"init": init, "out_dir": out_dir, "data.dataset": store, "data.seq_len": 64,
         "data.batch_size": 4, "train.steps": steps, "train.warmup_steps": 1, "train.lr": 3e-3,
         "train.eval_every": 0, "train.threads": 1, "train.log_every": 1, "checkpoint.every": 2,
         "checkpoint.keep": 3}
    return run("train", SOURCE / "recipes" / "cskv.yaml", *[f"{k}={v}" for k, v in o.items()], *extra,
               check=check)


def losses(run_dir):
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r.get("split") == "train"]


def test_training_moves_only_the_factors_and_resumes_bitwise(small_store, trained, low_rank, tmp_path):
    import h5py
    # From the weight-only SVD init, which the data-optimal whiten init beats: training on the
    # reconstruction loss has somewhere to go.
    init = tmp_path / "svd.h5"
    cskv(trained[0], init, "--key-rank", 8, "--value-rank", 16, "--init", "svd")
    a = tmp_path / "a"
    res = train_cskv(small_store, init, a, steps=6)
    assert "layer-wise reconstruction" in res.stderr, res.stderr
    fa = a / "checkpoints" / "step_000006.h5"
    orig, _, _ = model_tensors(trained[0])
    new, _, _ = model_tensors(fa)
    for k in orig:
        assert np.array_equal(new[k], orig[k]), k
    with h5py.File(init, "r") as f0, h5py.File(fa, "r") as f1:
        moved = np.abs(f1["cskv/layers.1.value_up"][()] - f0["cskv/layers.1.value_up"][()]).max()
    assert moved > 1e-4, "the factors did not move"
    curve = losses(a)
    assert len(curve) >= 6 and curve[-1] < curve[0], curve

    b = tmp_path / "b"
    start_from_step(a, b, 2)
    train_cskv(small_store, init, b, "--resume", steps=6)
    assert_same_datasets(fa, b / "checkpoints" / "step_000006.h5", ("cskv/", "optimizer/"), 8)

    c = tmp_path / "c"
    res = train_cskv(small_store, low_rank, c, "kind=distill", f"distill.teacher={trained[0]}",
                     "recovery.kv_window=4", steps=2)
    assert "distillation loss through the frozen model" in res.stderr, res.stderr
    assert "recent window of 4 positions" in res.stderr, res.stderr
    new, _, _ = model_tensors(c / "checkpoints" / "step_000002.h5")
    for k in orig:
        assert np.array_equal(new[k], orig[k]), k


@pytest.mark.parametrize("args,needle", [
    (["--key-rank", 0], "--key-rank 0: valid is 1..32"),
    (["--key-rank", 8, "--value-rank", 33], "--value-rank 33: valid is 1..32"),
    ([], "--method cskv needs --key-rank"),
    (["--key-rank", 8, "--init", "mean"], "--init mean belongs to kv-heads"),
    (["--key-rank", 8, "--sparsity", 0.5], "cskv takes --key-rank, --value-rank and --init"),
])
def test_bad_prune_options_fail_clearly(trained, tmp_path, args, needle):
    out = tmp_path / "x.h5"
    res = cskv(trained[0], out, *args, check=False)
    assert res.returncode == 1 and needle in res.stderr, res.stderr
    assert not out.exists()


def test_other_misuse_fails_clearly(small_store, trained, low_rank, tmp_path):
    res = run("prune", trained[0], "--method", "kv-heads", "--kv-heads", 1, "--key-rank", 4,
              "--out", tmp_path / "y.h5", check=False)
    assert res.returncode == 1 and "--key-rank and --value-rank belong to --method cskv" in res.stderr
    res = run("prune", trained[0], "--method", "kv-heads", "--kv-heads", 1, "--init", "whiten",
              "--out", tmp_path / "y.h5", check=False)
    assert res.returncode == 1 and "--init whiten belongs to cskv" in res.stderr, res.stderr
    res = run("eval", low_rank, "--batches", 1, "--kv-rank", 4, check=False)
    assert res.returncode == 1 and "ranks were fixed" in res.stderr, res.stderr
    res = cskv(low_rank, tmp_path / "z.h5", "--key-rank", 4, check=False)
    assert res.returncode == 1 and "carries a compressed KV cache" in res.stderr, res.stderr
    out = tmp_path / "r"
    res = train_cskv(small_store, trained[0], out, check=False)
    assert res.returncode == 1 and "has none; make them with" in res.stderr, res.stderr
    assert not out.exists()
    res = run("train", SOURCE / "recipes" / "kv_project.yaml", f"init={trained[0]}",
              f"distill.teacher={trained[0]}", f"out_dir={out}", "recovery.kv_window=4", check=False)
    assert res.returncode == 1 and "recovery.kv_window 4 applies to recovery.method cskv" in res.stderr, res.stderr
    assert not out.exists()
    assert not (tmp_path / "y.h5").exists() and not (tmp_path / "z.h5").exists()
