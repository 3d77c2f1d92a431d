"""Hugging Face export and import, checked with the real consumers.

A briefly trained condense model is exported with `condense export --format hf`; transformers'
AutoModelForCausalLM.from_pretrained loads the directory with no missing or unexpected weights
and its log-probabilities on held-out text match condense's own (`condense score --full`) to
1e-5; its LlamaTokenizer tokenizes the text to condense's ids; the safetensors package reads
every file. Round trips import(export(ckpt)) reproduce the checkpoint bitwise (f32), for MHA and
GQA, tied and untied models, single files and shards. Bad input (not a Llama, missing shard,
tensors that disagree with config.json, truncated files, an existing output) fails with a
message naming the file and the tensor, and leaves nothing behind.
"""
import json
import os
import pathlib
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from conftest import run
from export_fixtures import QUICKSTART, model_tensors, score, train_tiny, trained  # noqa: F401 (fixture)

transformers = pytest.importorskip("transformers")
safetensors = pytest.importorskip("safetensors")
from safetensors import safe_open  # noqa: E402

TOL = 1e-5


def hf_logprobs(export_dir, ids):
    model = transformers.AutoModelForCausalLM.from_pretrained(
        export_dir, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    return torch.log_softmax(logits, -1)[:-1].numpy()


def test_hf_export_loads_in_transformers_and_matches(trained, tmp_path):
    ckpt, tok_model, text, ids, lp = trained
    out = tmp_path / "hf"
    run("export", ckpt, out, "--format", "hf")
    names = sorted(p.name for p in out.iterdir())
    assert names == ["config.json", "generation_config.json", "model.safetensors",
                     "special_tokens_map.json", "tokenizer.model", "tokenizer_config.json"]
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        out, output_loading_info=True, dtype=torch.float32)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [], info
    assert info["mismatched_keys"] == [] and info["error_msgs"] == [], info
    err = np.abs(hf_logprobs(out, ids) - lp).max()
    print(f"HF f32 export: max |logprob diff| = {err:.3g}")
    assert err <= TOL
    assert (hf_logprobs(out, ids).argmax(-1) == lp.argmax(-1)).all()

    tok = transformers.LlamaTokenizer.from_pretrained(out)
    assert tok(text.read_text(encoding="utf-8"))["input_ids"] == ids
    with safe_open(out / "model.safetensors", "pt") as f:
        assert f.metadata() == {"format": "pt"}
        tensors, _, _ = model_tensors(ckpt)
        assert sorted(f.keys()) == sorted(tensors)
        for k in f.keys():
            assert np.array_equal(f.get_tensor(k).numpy(), tensors[k]), k
    # The exported directory scores exactly like its checkpoint.
    _, lp_dir, _ = score(out, text)
    assert np.abs(lp_dir - lp).max() == 0
    # Top-k output (the default) lists the k best in order, consistent with the full vectors.
    j = json.loads(run("score", out, "--text", text, "--top-k", 3).stdout)
    assert j["predicted"] == len(ids) - 1 and abs(j["nll"] + sum(
        lp[i, ids[i + 1]] for i in range(len(ids) - 1))) < 1e-9
    assert abs(j["perplexity"] - np.exp(j["nll"] / j["predicted"])) < 1e-9 * j["perplexity"]
    for i, p in enumerate(j["positions"]):
        assert [t[0] for t in p["top"]] == list(np.argsort(-lp[i], kind="stable")[:3])
        assert abs(p["logprob"] - lp[i, ids[i + 1]]) < 1e-12


def test_eval_reads_the_held_out_split_as_the_python_peers(trained, small_store, tmp_path):
    """`condense eval` scores the held-out documents in bit-reversed order (TokenStore::
    held_out_ids), which bench_common.held_out_ids reproduces for the PyTorch and llama.cpp peers:
    transformers on the exported model gives eval's loss on the first windows of that stream
    (and not on the split's file order)."""
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "bench"))
    from bench_common import held_out_ids, held_out_order
    assert held_out_order(8) == [0, 4, 2, 6, 1, 5, 3, 7] and held_out_order(5) == [0, 4, 2, 1, 3]
    ckpt = trained[0]
    out = tmp_path / "hf"
    run("export", ckpt, out, "--format", "hf")
    T = 48
    with h5py.File(small_store, "r") as f:
        stream, file_order = held_out_ids(f), f["val/ids"][...]
    # Enough batches of 2 windows to reach past the first token where the two orders differ (the
    # first held-out document comes first in both; it may be long).
    first_difference = int(np.argmax(stream != file_order))
    assert stream[first_difference] != file_order[first_difference]
    batches = max(3, (first_difference // T + 2 + 1) // 2)
    ev = json.loads(run("eval", ckpt, "--data", small_store, "--seq-len", T, "--batch-size", 2,
                        "--batches", batches).stdout.splitlines()[-1])

    def loss(ids):
        windows = [ids[w * T: w * T + T + 1].astype(np.int64) for w in range(2 * batches)]
        return -np.mean([hf_logprobs(out, list(w))[np.arange(T), w[1:]].mean() for w in windows])
    assert ev["val_loss"] == pytest.approx(loss(stream), abs=2e-5), ev
    assert abs(ev["val_loss"] - loss(file_order)) > 1e-3
    # Evaluation keeps to the stream's first half and calibration to its second (they do not
    # record which windows a model was calibrated on): crossing the middle is warned about.
    first = run("eval", ckpt, "--data", small_store, "--batches", 3)
    assert "past the first half" not in first.stderr, first.stderr
    whole = run("eval", ckpt, "--data", small_store, "--batches", 0)
    assert "eval reads held-out tokens [0, " in whole.stderr and "past the first half" in whole.stderr
    few = run("prune", ckpt, "--method", "wanda", "--calib-windows", 8, "--out", tmp_path / "w8.h5")
    assert "past the second half" not in few.stderr, few.stderr
    many = run("prune", ckpt, "--method", "wanda", "--calib-windows", 200, "--out", tmp_path / "w200.h5")
    assert "calibration reads held-out tokens" in many.stderr and "past the second half" in many.stderr


def test_eval_reference_reports_kl_and_top1_agreement(trained, small_store, tmp_path):
    """eval --reference R: the mean KL(R || model) per position and the share of positions whose
    argmax agrees, on eval's own windows: 0 and 1 against itself, and what transformers computes
    from both models' exports on the same held-out windows for a less trained model."""
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "bench"))
    from bench_common import held_out_ids
    ckpt = trained[0]
    other = train_tiny(small_store, tmp_path / "short", steps=10)
    T = 48
    window_args = ["--data", small_store, "--seq-len", T, "--batch-size", 2, "--batches", 3]

    def ev(model, ref):
        return json.loads(run("eval", model, *window_args, "--reference", ref).stdout.splitlines()[-1])
    same = ev(ckpt, ckpt)
    assert abs(same["kl_from_reference"]) < 1e-9 and same["top1_agreement"] == 1.0, same
    j = ev(other, ckpt)
    plain = json.loads(run("eval", other, *window_args).stdout.splitlines()[-1])
    assert j["val_loss"] == pytest.approx(plain["val_loss"], abs=1e-5)
    with h5py.File(small_store, "r") as f:
        stream = held_out_ids(f)
    windows = [list(stream[w * T: w * T + T + 1].astype(np.int64)) for w in range(6)]
    ref_dir, other_dir = tmp_path / "ref_hf", tmp_path / "other_hf"
    run("export", ckpt, ref_dir, "--format", "hf")
    run("export", other, other_dir, "--format", "hf")
    lr = np.concatenate([hf_logprobs(ref_dir, w) for w in windows])
    lm = np.concatenate([hf_logprobs(other_dir, w) for w in windows])
    kl = float(np.mean(np.sum(np.exp(lr) * (lr - lm), axis=1)))
    agree = float(np.mean(lr.argmax(1) == lm.argmax(1)))
    assert kl > 0.05 and j["kl_from_reference"] == pytest.approx(kl, rel=1e-4, abs=1e-6), (j, kl)
    assert abs(j["top1_agreement"] - agree) <= 1 / len(lr), (j, agree)
    # A missing reference is named.
    bad = run("eval", other, *window_args, "--reference", tmp_path / "missing.h5", check=False)
    assert bad.returncode == 1 and "missing.h5" in bad.stderr, bad.stderr


@pytest.mark.parametrize("dtype,torch_dtype", [("f16", torch.float16), ("bf16", torch.bfloat16)])
def test_hf_half_exports_round_like_torch(trained, tmp_path, dtype, torch_dtype):
    ckpt, _, text, ids, lp = trained
    out = tmp_path / dtype
    run("export", ckpt, out, "--format", "hf", "--dtype", dtype)
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == str(torch_dtype).split(".")[1]
    tensors, _, _ = model_tensors(ckpt)
    with safe_open(out / "model.safetensors", "pt") as f:
        for k in f.keys():
            t = f.get_tensor(k)
            assert t.dtype == torch_dtype
            assert torch.equal(t, torch.from_numpy(tensors[k]).to(torch_dtype)), k
    err = np.abs(hf_logprobs(out, ids) - lp).max()
    print(f"HF {dtype} export (computed in f32): max |logprob diff| = {err:.3g}")
    assert err < (5e-3 if dtype == "f16" else 3e-2)  # measured 1.3e-3 and 8.9e-3


def test_sharded_export_and_bitwise_round_trip(trained, tmp_path):
    ckpt, _, text, ids, lp = trained
    out = tmp_path / "sharded"
    run("export", ckpt, out, "--max-shard-mb", "0.1")
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) > 2
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {p.name for p in shards}
    assert index["metadata"]["total_size"] == sum(
        np.asarray(v).nbytes for v in model_tensors(ckpt)[0].values())
    assert np.abs(hf_logprobs(out, ids) - lp).max() <= TOL
    back = tmp_path / "back.h5"
    run("import", out, back)
    a, ca, ta = model_tensors(ckpt)
    b, cb, tb = model_tensors(back)
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
    assert ca == cb and ta == tb
    # The imported checkpoint is a working condense checkpoint.
    info = run("info", back).stdout
    assert "2 layers, hidden 64" in info and "384 pieces" in info
    gen = run("generate", back, "--prompt", "The harbour", "--max-new-tokens", "8")
    assert gen.stdout.startswith("The harbour") and "tokens/s" in gen.stderr + gen.stdout
    # ... and starts a training run (recipe `init`), which checks the tokenizer against the data.
    store = pathlib.Path(trained[1]).parent / "gcide-small.h5"
    train_tiny(store, tmp_path / "finetune", steps=3, init=back)
    # ... from the imported weights: its first loss is well below a fresh model's on the same
    # batch (an ignored `init` would start where the fresh run does).
    train_tiny(store, tmp_path / "fresh", steps=3)
    first = lambda d: json.loads((d / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    assert first(tmp_path / "finetune") < first(tmp_path / "fresh") - 0.3, \
        (first(tmp_path / "finetune"), first(tmp_path / "fresh"))


FIXTURE_SHAPES = {
    "mha_tied": ["--heads", "4", "--kv-heads", "4", "--hidden", "64", "--tied"],
    "gqa_untied": ["--heads", "4", "--kv-heads", "2", "--hidden", "64"],
    "gqa_head_dim": ["--heads", "4", "--kv-heads", "2", "--hidden", "64", "--head-dim", "24"],
}


@pytest.mark.parametrize("name", sorted(FIXTURE_SHAPES))
def test_round_trip_names_and_shapes(name, tmp_path, small_store):
    tool = pathlib.Path(os.environ.get("CONDENSE_BUILD_DIR", "build")) / "tests" / "model_fixture"
    if not tool.is_file():
        pytest.skip("model_fixture not built")
    res = subprocess.run([str(tool), str(tmp_path / "fx"), "--layers", "2", "--intermediate", "96",
                          "--vocab", "101", *FIXTURE_SHAPES[name]], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    ckpt = pathlib.Path(res.stdout.strip())
    run("export", ckpt, tmp_path / "hf")
    with safe_open(tmp_path / "hf" / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    tied = "--tied" in FIXTURE_SHAPES[name]
    assert ("lm_head.weight" in keys) == (not tied)
    imp = run("import", tmp_path / "hf", tmp_path / "back.h5")
    assert "no tokenizer" in imp.stderr  # said clearly, not silently
    if name == "mha_tied":  # and the commands that need one refuse it in the same words
        for args in (["generate", tmp_path / "back.h5", "--prompt", "a"],
                     ["eval", tmp_path / "back.h5", "--data", small_store]):
            p = run(*args, check=False)
            assert p.returncode == 1 and "no tokenizer" in p.stderr, p.stderr
    a, ca, _ = model_tensors(ckpt)
    b, cb, _ = model_tensors(tmp_path / "back.h5")
    assert sorted(a) == sorted(b) and ca == cb
    for k in a:
        assert a[k].shape == b[k].shape and np.array_equal(a[k], b[k]), k
    model, info = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf",
                                                                    output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [], info
    assert set(model.state_dict()) == set(a) | {"lm_head.weight"}


def expect_failure(args, *needles):
    p = run(*args, check=False)
    assert p.returncode == 1, (p.stdout, p.stderr)
    for n in needles:
        assert str(n) in p.stderr, (n, p.stderr)
    assert "Segmentation" not in p.stderr and "terminate" not in p.stderr


def test_bad_hf_input_fails_clearly(trained, tmp_path):
    ckpt = trained[0]
    good = tmp_path / "good"
    run("export", ckpt, good, "--max-shard-mb", "0.1")
    out = tmp_path / "x.h5"

    def variant(name):
        d = tmp_path / name
        shutil.copytree(good, d)
        return d

    d = variant("gpt2")
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "model_type": "gpt2"}))
    expect_failure(["import", d, out], "config.json", "gpt2")

    d = variant("missing_shard")
    shard = sorted(d.glob("model-*.safetensors"))[1]
    shard.unlink()
    expect_failure(["import", d, out], shard.name, "missing")

    d = variant("shape")
    (d / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 96}))
    expect_failure(["import", d, out], "mlp", "shape", "config.json")

    d = variant("truncated")
    shard = sorted(d.glob("model-*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes()[:-10])
    expect_failure(["import", d, out], shard.name)

    d = variant("header")
    shard = sorted(d.glob("model-*.safetensors"))[0]
    raw = bytearray(shard.read_bytes())
    raw[0:8] = (len(raw) * 2).to_bytes(8, "little")
    shard.write_bytes(bytes(raw))
    expect_failure(["import", d, out], shard.name, "header length")

    d = variant("dtype")
    (d / "model.safetensors.index.json").unlink()
    for s in d.glob("model-*.safetensors"):
        s.unlink()
    from safetensors.numpy import save_file
    tensors, _, _ = model_tensors(ckpt)
    tensors = {k: (v.astype(np.int32) if "q_proj" in k else v) for k, v in tensors.items()}
    save_file(tensors, str(d / "model.safetensors"))
    expect_failure(["import", d, out], "q_proj", "I32")

    expect_failure(["import", tmp_path / "nope", out], "nope")
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    # Existing outputs are never overwritten.
    run("import", good, out)
    before = out.read_bytes()
    expect_failure(["import", good, out], "already exists")
    assert out.read_bytes() == before
    expect_failure(["export", ckpt, good], "not an empty directory")
    expect_failure(["export", ckpt, tmp_path / "z", "--dtype", "f8"], "f8", "f32")


@pytest.mark.parametrize("tied,dtype", [(True, torch.bfloat16), (False, torch.float16)])
def test_import_of_a_transformers_checkpoint(trained, tmp_path, tied, dtype):
    """A directory written by transformers itself (sharded, half precision) imports into a
    checkpoint whose forward matches transformers' on the same weights."""
    tok_model, text = trained[1], trained[2]
    torch.manual_seed(3)
    cfg = transformers.LlamaConfig(vocab_size=384, hidden_size=64, intermediate_size=160,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=1, max_position_embeddings=256,
                                   tie_word_embeddings=tied, rope_theta=5000.0,
                                   initializer_range=0.2, rms_norm_eps=1e-6)
    model = transformers.LlamaForCausalLM(cfg).to(dtype)
    src = tmp_path / "src"
    model.save_pretrained(src, safe_serialization=True, max_shard_size="100KB")
    assert (src / "model.safetensors.index.json").exists()
    shutil.copy(tok_model, src / "tokenizer.model")
    run("import", src, tmp_path / "imported.h5")
    ids, lp, _ = score(tmp_path / "imported.h5", text)
    # Against transformers in float64, next to transformers' own float32 error: on this model
    # (initializer_range 0.2, large logits) float32 itself is ~1e-5 off (measured 0.9-1.1e-5 on
    # an AVX2 EPYC, condense 1.3-1.5e-5), so a fixed 1e-5 against float32 transformers tested
    # the machine's rounding rather than the import.
    ref = transformers.AutoModelForCausalLM.from_pretrained(src, dtype=torch.float64)
    with torch.no_grad():
        exact = torch.log_softmax(ref(torch.tensor([ids])).logits[0], -1)[:-1].numpy()
        hf32 = torch.log_softmax(ref.float()(torch.tensor([ids])).logits[0].double(), -1)[:-1].numpy()
    err, hf_err = np.abs(exact - lp).max(), np.abs(exact - hf32).max()
    assert err <= max(TOL, 2 * hf_err), (err, hf_err)
    tensors, config, tok = model_tensors(tmp_path / "imported.h5")
    assert tok == tok_model.read_bytes()
    assert config["tie_word_embeddings"] == tied and config["num_key_value_heads"] == 1
    assert ("lm_head.weight" in tensors) == (not tied)
    # Every imported tensor is one of the reference's, and every reference tensor came in (a
    # tied lm_head is the embedding).
    assert set(tensors) <= set(ref.state_dict()), set(tensors) - set(ref.state_dict())
    assert set(ref.state_dict()) - set(tensors) <= ({"lm_head.weight"} if tied else set())
    for k, v in ref.state_dict().items():
        if k in tensors:
            assert np.array_equal(v.numpy(), tensors[k]), k


def test_an_eos_token_id_list_survives_import_finetune_and_export(trained, small_store, tmp_path):
    """Llama 3 Instruct's config.json names several ids that end generation (eos_token_id a
    list, whose head is not the tokenizer's eos): the import keeps the list, a finetune of it
    keeps it and resumes, and the export writes it back to config.json and
    generation_config.json, where transformers reads the same ids."""
    tok_model = trained[1]
    cfg = transformers.LlamaConfig(vocab_size=384, hidden_size=64, intermediate_size=160,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=128, bos_token_id=1, eos_token_id=[5, 2, 7])
    src = tmp_path / "src"
    torch.manual_seed(4)
    transformers.LlamaForCausalLM(cfg).save_pretrained(src, safe_serialization=True)
    shutil.copy(tok_model, src / "tokenizer.model")
    run("import", src, tmp_path / "imported.h5")
    _, config, _ = model_tensors(tmp_path / "imported.h5")
    assert config["eos_token_id"] == [5, 2, 7]
    # A finetune from it (the run's model is the init's) keeps the list in its checkpoints.
    tuned = tmp_path / "tuned"
    finetune = ["train", QUICKSTART, "kind=finetune", f"init={tmp_path / 'imported.h5'}", f"out_dir={tuned}",
                f"data.dataset={small_store}", "data.seq_len=32", "data.batch_size=2", "train.warmup_steps=1",
                "train.eval_every=0", "train.threads=1", "checkpoint.every=2"]
    run(*finetune, "train.steps=2")
    run(*finetune, "train.steps=4", "--resume")  # its model (the init's, list and all) is the same
    _, config, _ = model_tensors(tuned / "checkpoints" / "step_000004.h5")
    assert config["eos_token_id"] == [5, 2, 7]
    run("export", tuned / "checkpoints" / "step_000004.h5", tmp_path / "hf")
    for name in ("config.json", "generation_config.json"):
        assert json.loads((tmp_path / "hf" / name).read_text())["eos_token_id"] == [5, 2, 7], name
    assert transformers.AutoConfig.from_pretrained(tmp_path / "hf").eos_token_id == [5, 2, 7]
    assert transformers.GenerationConfig.from_pretrained(tmp_path / "hf").eos_token_id == [5, 2, 7]
    # A pretrain recipe with the import as init builds its own model section (one eos): said.
    p = run("train", QUICKSTART, f"init={tmp_path / 'imported.h5'}", f"out_dir={tmp_path / 'pre'}",
            f"data.dataset={small_store}", "data.seq_len=32", "data.batch_size=2", "train.steps=1",
            "train.warmup_steps=1", "train.eval_every=0", "train.threads=1", "model.hidden_size=64",
            "model.intermediate_size=160", "model.num_hidden_layers=2", "model.num_attention_heads=4",
            "model.num_key_value_heads=2", "model.max_position_embeddings=128",
            "model.tie_word_embeddings=false")
    assert "ends generation at several ids ([5,2,7])" in p.stderr, p.stderr[-2000:]


def test_help_and_trailing_slash(trained, tmp_path):
    for cmd in ["import", "export", "score"]:
        assert "Usage" in run(cmd, "--help").stdout
    out = tmp_path / "slash"
    run("export", trained[0], str(out) + "/")
    assert (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slash"]
