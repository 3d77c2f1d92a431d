"""Parity of condense's Llama forward with Hugging Face transformers' LlamaForCausalLM.

tests/tools/model_fixture builds a small random model (norm weights random around 1, so a
wrong norm or a misplaced weight cannot hide), saves it with CheckpointManager and writes the
logits condense computes for random input ids. Here transformers builds LlamaForCausalLM from
the checkpoint's "config" dataset (its HF config.json), loads the checkpoint's tensors by name
with strict key checking (only lm_head.weight may be missing, and only when the embeddings are
tied), runs the same ids in float32 with the "eager" and "sdpa" attention implementations and
requires

    max relative error = max|condense - hf| / max|hf| <= 1e-5

over all logits, and the same argmax at every position. A second test requires the checkpoint
to hold exactly the parameter names of transformers' model (minus lm_head.weight when tied),
and a third shows the tolerance has teeth: ignoring the norm weights, pairing RoPE dimensions
adjacently (llama.cpp's order) or regrouping query heads onto other kv heads each gives a
relative error above 1e-3.
Covered: MHA and GQA, tied and untied, and head_dim != hidden_size / num_attention_heads.
"""
import json
import os
import pathlib
import subprocess

import h5py
import numpy as np
import pytest
import torch
import transformers

MAX_REL_ERR = 1e-5

# name -> model_fixture options
CONFIGS = {
    "mha_untied": ["--heads", "4", "--kv-heads", "4", "--hidden", "64"],
    "mha_tied": ["--heads", "4", "--kv-heads", "4", "--hidden", "64", "--tied"],
    "gqa_untied": ["--heads", "4", "--kv-heads", "2", "--hidden", "64"],
    "gqa_tied": ["--heads", "4", "--kv-heads", "2", "--hidden", "64", "--tied"],
    # head_dim 24 != 64 / 4: q/k/v/o shapes and RoPE frequencies follow head_dim, not hidden/heads.
    "gqa_head_dim": ["--heads", "4", "--kv-heads", "2", "--hidden", "64", "--head-dim", "24"],
}
COMMON = ["--layers", "3", "--intermediate", "112", "--vocab", "97",
          "--init-range", "0.2", "--batch", "3", "--seq", "24"]


def tool_path():
    env = os.environ.get("CONDENSE_BUILD_DIR")
    build = pathlib.Path(env or "/work/main/build")
    path = build / "tests" / "model_fixture"
    if not path.is_file():
        if env:  # run by ctest: a missing tool is a failure, not a skip
            pytest.fail(f"{path} not built: ninja -C {build} model_fixture")
        pytest.skip(f"{path} not built and CONDENSE_BUILD_DIR not set: ninja model_fixture")
    return path


def model_tensor_names(f):
    return sorted(k for k in f.keys()
                  if k.startswith("model.") or k.startswith("lm_head."))


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def fixture(request, tmp_path_factory):
    """Runs model_fixture once per config; returns (hf config dict, state dict, ids, logits)."""
    out_dir = tmp_path_factory.mktemp(request.param)
    seed = str(sorted(CONFIGS).index(request.param) + 11)
    res = subprocess.run([str(tool_path()), str(out_dir), *COMMON, *CONFIGS[request.param],
                          "--seed", seed], capture_output=True, text=True)
    assert res.returncode == 0, f"model_fixture failed:\n{res.stdout}\n{res.stderr}"
    ckpt = pathlib.Path(res.stdout.strip())
    assert ckpt.is_file(), f"model_fixture printed {res.stdout!r}, not a checkpoint path"
    with h5py.File(ckpt, "r") as f:
        raw = f["config"][()]
        config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        state = {k: torch.from_numpy(np.asarray(f[k][()])) for k in model_tensor_names(f)}
    with h5py.File(out_dir / "logits.h5", "r") as f:
        ids = torch.from_numpy(f["input_ids"][()])
        logits = torch.from_numpy(f["logits"][()])
    return request.param, config, state, ids, logits


def hf_model(config, attn_implementation):
    cfg = transformers.LlamaConfig(**config)
    cfg._attn_implementation = attn_implementation
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).to(torch.float32).eval()
    return model


def load_checkpoint(model, state, tied):
    """load_state_dict with strict key checking; lm_head.weight may only be missing if tied."""
    result = model.load_state_dict(state, strict=False)
    expected_missing = ["lm_head.weight"] if tied else []
    assert sorted(result.missing_keys) == expected_missing, result
    assert list(result.unexpected_keys) == [], result
    if tied:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
        assert torch.equal(model.lm_head.weight, state["model.embed_tokens.weight"])


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_logits_match_transformers(fixture, attn):
    name, config, state, ids, logits = fixture
    tied = bool(config["tie_word_embeddings"])
    assert tied == name.endswith("_tied")
    model = hf_model(config, attn)
    assert model.config._attn_implementation == attn
    load_checkpoint(model, state, tied)
    with torch.no_grad():
        ref = model(input_ids=ids).logits.float()
    assert ref.shape == logits.shape, (ref.shape, logits.shape)
    assert torch.isfinite(logits).all()
    rel = ((logits - ref).abs().max() / ref.abs().max()).item()
    print(f"{name} {attn}: max relative error {rel:.3e} (max|hf| {ref.abs().max().item():.3f})")
    assert rel <= MAX_REL_ERR, f"{name} {attn}: max relative error {rel:.3e} > {MAX_REL_ERR}"
    mismatch = (logits.argmax(-1) != ref.argmax(-1)).nonzero().tolist()
    assert not mismatch, f"{name} {attn}: argmax differs at [batch, position] {mismatch}"


def test_checkpoint_names_match_transformers(fixture):
    name, config, state, _, _ = fixture
    model = hf_model(config, "eager")
    hf_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if config["tie_word_embeddings"]:
        del hf_shapes["lm_head.weight"]
    assert sorted(state) == sorted(hf_shapes)
    assert {k: tuple(v.shape) for k, v in state.items()} == hf_shapes
    assert all(v.dtype == torch.float32 for v in state.values())


def rope_interleaved(w, head_dim):
    """q/k rows per head from rotate-half order to adjacent-pair order (llama.cpp's)."""
    heads = w.shape[0] // head_dim
    return w.reshape(heads, 2, head_dim // 2, -1).transpose(1, 2).reshape(w.shape)


def swap_query_heads(state, head_dim):
    """Moves query head 1 to slot 2 (with o_proj's columns), changing which kv head it reads."""
    out = dict(state)
    for k in [k for k in state if k.endswith("q_proj.weight")]:
        o = k.replace("q_proj", "o_proj")
        heads = state[k].shape[0] // head_dim
        perm = list(range(heads))
        perm[1], perm[2] = perm[2], perm[1]
        out[k] = state[k].reshape(heads, head_dim, -1)[perm].reshape(state[k].shape)
        out[o] = state[o].reshape(-1, heads, head_dim)[:, perm].reshape(state[o].shape)
    return out


def test_parity_check_detects_mistakes(fixture):
    """The tolerance is meaningful: a wrong norm, RoPE pairing or GQA grouping fails it."""
    name, config, state, ids, logits = fixture
    hd = config["head_dim"]
    mutations = {
        "norm weights ignored": {k: (torch.ones_like(v) if k.endswith("norm.weight") else v)
                                 for k, v in state.items()},
        "RoPE adjacent pairs": {k: (rope_interleaved(v, hd) if k.endswith(("q_proj.weight",
                                                                           "k_proj.weight")) else v)
                                for k, v in state.items()},
        "query heads regrouped": swap_query_heads(state, hd),
    }
    for what, mutated in mutations.items():
        model = hf_model(config, "eager")
        load_checkpoint(model, mutated, bool(config["tie_word_embeddings"]))
        with torch.no_grad():
            ref = model(input_ids=ids).logits.float()
        rel = ((logits - ref).abs().max() / ref.abs().max()).item()
        print(f"{name} {what}: max relative error {rel:.3e}")
        assert rel > 100 * MAX_REL_ERR, f"{name}: {what} went unnoticed (error {rel:.3e})"
