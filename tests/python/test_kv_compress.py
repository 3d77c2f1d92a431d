"""KV-cache compression through the CLI: KV-head merging checked with the real consumers, and
the int8 KV cache in score, eval and generate.

A briefly trained GQA model (4 query heads over 2 KV heads of 16, 2 layers) is merged with
`condense prune --method kv-heads --kv-heads 1` into a multi-query model. The merged checkpoint
keeps every tensor outside attention bit for bit; mean pooling gives exactly the mean of the two
heads' K/V rows (checked with numpy). Exported `--format hf`, transformers loads it with
num_key_value_heads 1 and its log-probabilities match condense's to 1e-5; exported `--format
gguf` (F32), llama.cpp runs it with next-token probabilities within 1e-4 and reports a KV cache
half the size of the unmerged model's. Bad options fail naming the option, with nothing
written.
"""
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import run
from export_fixtures import (SOURCE, assert_same_datasets, model_tensors, score, start_from_step,  # noqa: F401
                             trained)
from test_minitron_export import CHILD, field_value

transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")
pytest.importorskip("llama_cpp")


def merge(ckpt, out, *extra, check=True):
    return run("prune", ckpt, "--method", "kv-heads", "--calib-windows", 8, "--threads", 1,
               "--out", out, *extra, check=check)


@pytest.fixture(scope="module")
def merged(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("kvmerge") / "merged.h5"
    merge(trained[0], out, "--kv-heads", 1)
    return out


def test_merged_checkpoint_keeps_everything_outside_attention(trained, merged, tmp_path):
    orig, oc, _ = model_tensors(trained[0])
    new, c, tok = model_tensors(merged)
    assert tok, "the merged checkpoint keeps the tokenizer"
    assert oc["num_key_value_heads"] == 2 and c["num_key_value_heads"] == 1
    assert c["num_attention_heads"] == 4 and c["head_dim"] == 16
    assert sorted(new) == sorted(orig)
    for k in new:
        if ".self_attn." in k:
            continue
        assert np.array_equal(new[k], orig[k]), k
    for i in range(2):
        assert new[f"model.layers.{i}.self_attn.k_proj.weight"].shape == (16, 64)
        assert new[f"model.layers.{i}.self_attn.v_proj.weight"].shape == (16, 64)

    merge(trained[0], tmp_path / "mean.h5", "--kv-heads", 1, "--init", "mean")
    mean, _, _ = model_tensors(tmp_path / "mean.h5")
    for k in mean:
        if "k_proj" in k or "v_proj" in k:
            want = orig[k].reshape(2, 16, 64).mean(0)
            assert np.abs(mean[k] - want).max() <= 1e-6, k
        else:
            assert np.array_equal(mean[k], orig[k]), k


def test_hf_export_loads_in_transformers_and_matches(trained, merged, tmp_path):
    ids, lp, _ = score(merged, trained[2])
    out = tmp_path / "hf"
    run("export", merged, out, "--format", "hf")
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["num_attention_heads"], cfg["num_key_value_heads"]) == (4, 1)
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        out, output_loading_info=True, dtype=torch.float32, attn_implementation="eager")
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [], info
    assert info["mismatched_keys"] == [] and info["error_msgs"] == [], info
    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    lp_hf = torch.log_softmax(logits, -1)[:-1].numpy()
    err = np.abs(lp_hf - lp).max()
    print(f"kv-heads HF export: max |logprob diff| = {err:.3g}")
    assert err <= 1e-5
    assert (lp_hf.argmax(-1) == lp.argmax(-1)).all()


def llama_cpp(gguf_path, text, ids, tmp_path):
    """(probabilities [n-1, V], llama.cpp's reported KV cache MiB) of a GGUF on ids."""
    ids_json = tmp_path / "ids.json"
    ids_json.write_text(json.dumps(ids))
    npz = tmp_path / (gguf_path.stem + ".npz")
    env = {**__import__("os").environ, "CONDENSE_LLAMA_VERBOSE": "1", "CONDENSE_LLAMA_KV_F32": "1"}
    p = subprocess.run([sys.executable, str(CHILD), str(gguf_path), str(text), str(ids_json), str(npz)],
                       capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode == 0, f"llama.cpp child failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    m = re.search(r"llama_kv_cache[^\n]*?size\s*=\s*([0-9.]+)\s*MiB", p.stderr)
    assert m, f"llama.cpp did not report its KV cache size:\n{p.stderr[-3000:]}"
    z = np.load(npz)
    assert z["tokens"].tolist() == ids
    logits = z["logits"][:-1]
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True), float(m.group(1))


def test_gguf_export_runs_in_llama_cpp_with_half_the_kv_cache(trained, merged, tmp_path):
    text = trained[2]
    ids, lp, _ = score(merged, text)
    out = tmp_path / "merged.gguf"
    run("export", merged, out, "--format", "gguf", "--dtype", "f32")
    r = gguf.GGUFReader(out)
    assert field_value(r, "llama.attention.head_count") == 4
    assert field_value(r, "llama.attention.head_count_kv") == 1
    prob, kv_mib = llama_cpp(out, text, ids, tmp_path)
    err = np.abs(prob - np.exp(lp)).max()
    print(f"kv-heads GGUF f32: max |dp| = {err:.3g}; llama.cpp KV cache {kv_mib} MiB")
    assert err <= 1e-4
    assert (prob.argmax(-1) == lp.argmax(-1)).all()

    base = tmp_path / "orig.gguf"
    run("export", trained[0], base, "--format", "gguf", "--dtype", "f32")
    _, kv_orig = llama_cpp(base, text, ids, tmp_path)
    print(f"llama.cpp KV cache: original {kv_orig} MiB, merged {kv_mib} MiB")
    assert kv_mib == pytest.approx(kv_orig / 2, rel=0.02)


@pytest.mark.parametrize("args,needles", [
    (["--kv-heads", "2"], ["kv_heads 2", "valid is 1..1"]),
    (["--kv-heads", "0"], ["kv_heads 0", "valid is 1..1"]),
    ([], ["--kv-heads N", "2 now"]),
    (["--kv-heads", "1", "--sparsity", "0.5"], ["--sparsity", "kv-heads takes --kv-heads"]),
])
def test_bad_options_fail_clearly(trained, tmp_path, args, needles):
    out = tmp_path / "bad.h5"
    res = merge(trained[0], out, *args, check=False)
    assert res.returncode == 1, res.stderr
    for n in needles:
        assert n in res.stderr, res.stderr
    assert not out.exists()


def test_calibration_window_length_is_chosen_and_checked(trained, tmp_path):
    out = tmp_path / "p.h5"
    res = run("prune", trained[0], "--method", "kv-project", "--calib-windows", 2, "--calib-seq-len",
              24, "--out", out)
    assert "the last 2 windows of 24 tokens" in res.stderr, res.stderr
    bad = tmp_path / "bad.h5"
    res = run("prune", trained[0], "--method", "kv-project", "--calib-seq-len", 100000, "--out", bad,
              check=False)
    assert res.returncode == 1 and "--calib-seq-len 100000: valid is 0 (the recipe's" in res.stderr, res.stderr
    assert not bad.exists()


def test_kv_options_belong_to_kv_heads(trained, tmp_path):
    out = tmp_path / "bad.h5"
    res = run("prune", trained[0], "--method", "magnitude", "--kv-heads", 1, "--out", out, check=False)
    assert res.returncode == 1 and "--kv-heads belongs to --method kv-heads" in res.stderr, res.stderr
    res = run("prune", trained[0], "--method", "magnitude", "--init", "svd", "--out", out, check=False)
    assert res.returncode == 1 and "--init belongs to --method kv-heads" in res.stderr, res.stderr
    assert not out.exists()


def test_int8_kv_cache_through_the_cli(trained, merged, tmp_path):
    """score/eval/generate with --kv-cache int8: decoding one token at a time scores what the
    chunked prefill scores (up to codes that float noise flips), int8 stays close to fp, and the
    reported bytes per token follow the layout (keys: 1 byte + 8 / 32 per channel; values: 1
    byte per channel + 8 per head), on the original and on the merged model."""
    text = trained[2]
    for ckpt, kv_heads in [(trained[0], 2), (merged, 1)]:
        ids, lp_full, _ = score(ckpt, text)
        _, lp_fp, j_fp = score(ckpt, text, "--kv-cache", "fp", "--token-by-token")
        _, lp_q, j_q = score(ckpt, text, "--kv-cache", "int8")
        _, lp_qt, _ = score(ckpt, text, "--kv-cache", "int8", "--token-by-token")
        assert np.abs(lp_fp - lp_full).max() <= 1e-5
        assert np.abs(lp_q - lp_qt).max() <= 5e-3
        drift = np.abs(lp_q - lp_full).max()
        assert 0 < drift <= 0.05, drift
        per_layer_head = 16 * 4 * 2  # f32 keys and values of 16 channels
        assert j_fp["kv_bytes_per_token"] == 2 * kv_heads * per_layer_head
        assert j_q["kv_bytes_per_token"] == 2 * kv_heads * (16 + 8 * 16 / 32 + 16 + 8)
        print(f"{ckpt.name}: int8 cache mean NLL {j_q['mean_nll']:.5f} vs fp {j_fp['mean_nll']:.5f}; "
              f"{j_q['kv_bytes_per_token']:.0f} vs {j_fp['kv_bytes_per_token']:.0f} bytes/token")

    ev = [json.loads(run("eval", trained[0], "--batches", 2, "--kv-cache", kv).stdout.splitlines()[-1])
          for kv in ("fp", "int8")]
    assert abs(ev[0]["val_loss"] - ev[1]["val_loss"]) < 0.01 and ev[0]["val_loss"] != ev[1]["val_loss"]
    assert ev[1]["kv_cache"] == "int8" and (ev[0]["kv_bytes_per_token"], ev[1]["kv_bytes_per_token"]) == (512, 176)

    res = run("generate", merged, "--prompt", "The", "--max-new-tokens", 40, "--kv-cache", "int8")
    assert "int8 KV cache, 88 bytes per token" in res.stderr, res.stderr
    bad = run("eval", trained[0], "--kv-cache", "int4", check=False)
    assert bad.returncode == 1 and "--kv-cache 'int4': valid are fp" in bad.stderr, bad.stderr


@pytest.fixture(scope="module")
def projected(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("kvproject") / "projected.h5"
    run("prune", trained[0], "--method", "kv-project", "--calib-windows", 8, "--threads", 1, "--out", out)
    return out


def test_kv_project_is_exact_at_full_rank_and_shrinks_the_cache(trained, projected, tmp_path):
    import h5py
    orig, _, _ = model_tensors(trained[0])
    new, c, _ = model_tensors(projected)
    for k in orig:  # the weights are untouched; the bases sit beside them
        assert np.array_equal(new[k], orig[k]), k
    with h5py.File(projected, "r") as f:
        for i in range(2):
            for kind in ("key", "value"):
                u = np.asarray(f[f"kv_proj/layers.{i}.{kind}"][()], dtype=np.float64)
                assert u.shape == (2, 16, 16)
                for h in range(2):  # orthonormal columns, checked independently of condense
                    assert np.abs(u[h].T @ u[h] - np.eye(16)).max() < 1e-5
    text = trained[2]
    _, lp_orig, _ = score(trained[0], text)
    _, lp_full, _ = score(projected, text)
    _, lp_half, j_half = score(projected, text, "--kv-rank", 8, "--kv-cache", "fp", "--token-by-token")
    _, lp_half_prefill, j_half_prefill = score(projected, text, "--kv-rank", 8)
    assert np.abs(lp_full - lp_orig).max() <= 1e-5
    assert np.abs(lp_half - lp_half_prefill).max() <= 1e-5  # decoding = the projected forward
    assert np.abs(lp_half - lp_orig).max() > 1e-3
    assert j_half["kv_bytes_per_token"] == 2 * 2 * (8 + 8) * 4 and j_half["kv_rank"] == 8
    # Without --kv-cache, score reports what a full-precision cache at that rank would hold.
    assert j_half_prefill["kv_cache"] == "none"
    assert j_half_prefill["kv_bytes_per_token"] == j_half["kv_bytes_per_token"]
    full = json.loads(run("eval", projected, "--batches", 2).stdout.splitlines()[-1])
    half = json.loads(run("eval", projected, "--batches", 2, "--kv-rank", 8).stdout.splitlines()[-1])
    assert full["kv_bytes_per_token"] == 2 * half["kv_bytes_per_token"]
    print(f"kv-project: val loss full rank {full['val_loss']:.4f}, rank 8 of 16 {half['val_loss']:.4f}")


def test_kv_project_export_is_refused_unless_asked_for_the_plain_llama(trained, projected, tmp_path):
    for fmt, out in (("gguf", tmp_path / "p.gguf"), ("hf", tmp_path / "hf")):
        res = run("export", projected, out, "--format", fmt, check=False)
        assert res.returncode == 1 and "--without-kv-projection" in res.stderr, res.stderr
        assert not out.exists()
    out = tmp_path / "plain"
    run("export", projected, out, "--format", "hf", "--without-kv-projection")
    ids, lp, _ = score(trained[0], trained[2])
    model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32,
                                                              attn_implementation="eager").eval()
    with torch.no_grad():
        lp_hf = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)[:-1].numpy()
    assert np.abs(lp_hf - lp).max() <= 1e-5


@pytest.mark.parametrize("which,args,needle", [
    ("projected", ["--kv-rank", 17], "--kv-rank 17: valid is 1..16"),
    ("projected", ["--kv-rank", -1], "--kv-rank -1: valid is 1..16"),
    ("trained", ["--kv-rank", 4], "has no KV-cache projections"),
])
def test_bad_kv_rank_fails_clearly(trained, projected, which, args, needle):
    ckpt = projected if which == "projected" else trained[0]
    res = run("eval", ckpt, "--batches", 1, *args, check=False)
    assert res.returncode == 1 and needle in res.stderr, res.stderr


def test_kv_budget_allocates_layer_ranks_within_the_budget(small_store, trained, projected):
    """--kv-budget F: per-layer ranks from calibration sensitivity, at most F of the full-rank
    cache's bytes, on eval, score (through the cache) and generate; misuse fails clearly."""
    full = json.loads(run("eval", projected, "--batches", 2).stdout.splitlines()[-1])
    res = run("eval", projected, "--batches", 2, "--kv-budget", 0.5)
    half = json.loads(res.stdout.splitlines()[-1])
    assert "key ranks per layer [" in res.stderr, res.stderr
    assert half["kv_bytes_per_token"] <= 0.5 * full["kv_bytes_per_token"]
    assert half["kv_bytes_per_token"] >= 0.5 * full["kv_bytes_per_token"] - 2 * 2 * 4 * 4  # one step
    assert half["val_loss"] != full["val_loss"]
    _, lp_tbt, j = score(projected, trained[2], "--kv-budget", 0.5, "--data", small_store,
                         "--kv-cache", "fp", "--token-by-token")
    _, lp_fwd, _ = score(projected, trained[2], "--kv-budget", 0.5, "--data", small_store)
    assert np.abs(lp_tbt - lp_fwd).max() <= 1e-5
    assert j["kv_bytes_per_token"] == half["kv_bytes_per_token"] and j["kv_budget"] == 0.5
    out = run("generate", projected, "--prompt", "A", "--max-new-tokens", 4, "--kv-budget", 0.5,
              "--data", small_store)
    assert f"{half['kv_bytes_per_token']:.0f} bytes" in out.stderr, out.stderr
    for args, needle in ((["--kv-budget", 0.1], "--kv-budget 0.1: valid is 0.25..1"),
                         (["--kv-budget", 0.5, "--kv-rank", 4], "--kv-rank or --kv-budget, not both")):
        res = run("eval", projected, "--batches", 1, *args, check=False)
        assert res.returncode == 1 and needle in res.stderr, res.stderr
    res = run("eval", trained[0], "--batches", 1, "--kv-budget", 0.5, check=False)
    assert res.returncode == 1 and "has no KV-cache projections" in res.stderr, res.stderr


def test_kv_budget_per_head_caches_what_the_plan_says(small_store, trained, projected):
    """--kv-granularity head: ranks per KV head, ragged heads packed, so the bytes the cache
    holds are the plan's share of the full cache; score through the cache token by token
    equals one forward; generate reports the same bytes; misuse fails clearly."""
    full = json.loads(run("eval", projected, "--batches", 2).stdout.splitlines()[-1])
    res = run("eval", projected, "--batches", 2, "--kv-budget", 0.5, "--kv-granularity", "head")
    half = json.loads(res.stdout.splitlines()[-1])
    plan = [x for x in res.stderr.splitlines() if "(head granularity)" in x]
    assert plan, res.stderr
    share = float(plan[-1].split("kv budget 0.5: ")[1].split("%")[0]) / 100
    assert half["kv_bytes_per_token"] == pytest.approx(share * full["kv_bytes_per_token"], rel=1e-6)
    # Within the budget, and the planner spends it: at most two steps (a rank of one head's K
    # and V: 1/64 of this cache) below it.
    assert 0.5 - 2 / 64 <= share <= 0.5
    _, lp_tbt, j = score(projected, trained[2], "--kv-budget", 0.5, "--kv-granularity", "head",
                         "--data", small_store, "--kv-cache", "fp", "--token-by-token")
    _, lp_fwd, _ = score(projected, trained[2], "--kv-budget", 0.5, "--kv-granularity", "head",
                         "--data", small_store)
    assert np.abs(lp_tbt - lp_fwd).max() <= 1e-5
    assert j["kv_bytes_per_token"] == half["kv_bytes_per_token"] and j["kv_granularity"] == "head"
    out = run("generate", projected, "--prompt", "A", "--max-new-tokens", 4, "--kv-budget", 0.5,
              "--kv-granularity", "head", "--data", small_store)
    assert f"{half['kv_bytes_per_token']:.0f} bytes" in out.stderr, out.stderr
    for args, needle in ((["--kv-granularity", "head"], "--kv-granularity head applies to --kv-budget"),
                         (["--kv-budget", 0.5, "--kv-granularity", "token"],
                          "--kv-granularity 'token': valid is layer")):
        res = run("eval", projected, "--batches", 1, *args, check=False)
        assert res.returncode == 1 and needle in res.stderr, res.stderr
        res = run("score", projected, "--text", trained[2], *args, check=False)
        assert res.returncode == 1 and needle in res.stderr, res.stderr


def train_projection(store, init, teacher, out_dir, *extra, steps=4):
    o = {"init": init, "distill.teacher": teacher, "out_dir": out_dir, "data.dataset": store,
         "data.seq_len": 64, "data.batch_size": 4, "train.steps": steps, "train.warmup_steps": 1,
         "train.lr": 1e-2, "train.eval_every": 0, "train.threads": 1, "train.log_every": 10,
         "checkpoint.every": 2, "checkpoint.keep": 3}
    return run("train", SOURCE / "recipes" / "kv_project.yaml", *[f"{k}={v}" for k, v in o.items()], *extra)


def test_kv_project_training_freezes_the_model_and_resumes_bitwise(small_store, trained, projected, tmp_path):
    """recipes/kv_project.yaml (MatryoshkaKV): only the Cayley generators train; the model's
    weights stay bitwise, the trained bases are the stored ones rotated by the Cayley transform of
    the generators (composed in numpy), full rank stays exact, and a run
    resumed from step 2 ends bitwise equal to the uninterrupted one (the rank draws included)."""
    import h5py
    a = tmp_path / "a"
    res = train_projection(small_store, projected, trained[0], a)
    assert "0.0000M of the model's" in res.stderr, res.stderr
    fa = a / "checkpoints" / "step_000004.h5"
    orig, _, _ = model_tensors(trained[0])
    new, _, _ = model_tensors(fa)
    for k in orig:
        assert np.array_equal(new[k], orig[k]), k
    # The trained basis is base @ cayley(skew), cayley(A) = (I + A)^-1 (I - A) with A = S - S^T
    # (compressors/kv_project.h), composed here in numpy: a copy of the checkpoint holding that
    # basis with zero generators scores what condense's own composition scores at a reduced
    # rank (so the composition is the orthogonal one written down, not merely some basis).
    composed = tmp_path / "composed.h5"
    shutil.copy(fa, composed)
    eye = np.eye(16)
    with h5py.File(composed, "r+") as f:
        skews = [n for n in f["kv_proj"].keys() if n.endswith("_skew")]
        assert len(skews) == 4, skews  # keys and values of 2 layers
        moved = 0.0
        for n in skews:
            skew = np.asarray(f["kv_proj"][n][()], dtype=np.float64)
            moved = max(moved, np.abs(skew).max())
            base = np.asarray(f["kv_proj"][n[:-len("_skew")]][()], dtype=np.float64)
            a_ = skew - skew.transpose(0, 2, 1)
            u = base @ np.stack([np.linalg.solve(eye + a_[h], eye - a_[h]) for h in range(2)])
            for h in range(2):
                assert np.abs(base[h].T @ base[h] - eye).max() < 1e-5  # the stored PCA basis
            f["kv_proj"][n[:-len("_skew")]][...] = u.astype(f["kv_proj"][n[:-len("_skew")]].dtype)
            f["kv_proj"][n][...] = 0
        assert moved > 1e-4, "the generators did not move"
    _, lp_trained8, _ = score(fa, trained[2], "--kv-rank", 8)
    _, lp_composed8, _ = score(composed, trained[2], "--kv-rank", 8)
    _, lp_untrained8, _ = score(projected, trained[2], "--kv-rank", 8)
    assert np.abs(lp_composed8 - lp_trained8).max() <= 1e-4
    assert np.abs(lp_untrained8 - lp_trained8).max() > 1e-3  # training changed the reduced scores
    _, lp_orig, _ = score(trained[0], trained[2])
    _, lp_full, _ = score(fa, trained[2])
    assert np.abs(lp_full - lp_orig).max() <= 1e-5

    b = tmp_path / "b"
    start_from_step(a, b, 2)
    train_projection(small_store, projected, trained[0], b, "--resume")
    assert_same_datasets(fa, b / "checkpoints" / "step_000004.h5", ("kv_proj/", "optimizer/"), 8)


def test_kv_project_training_needs_projections(small_store, trained, tmp_path):
    out = tmp_path / "r"
    res = run("train", SOURCE / "recipes" / "kv_project.yaml", f"init={trained[0]}",
              f"distill.teacher={trained[0]}", f"out_dir={out}", f"data.dataset={small_store}",
              "train.steps=1", check=False)
    assert res.returncode == 1 and "has none; make them with" in res.stderr, res.stderr
    assert not out.exists()
