"""Hugging Face directories as transformers writes and reads them, where condense read them
otherwise (found by a differential audit against transformers, 2026-12-06): a config.json without
rms_norm_eps means transformers' 1e-6 (condense took its own 1e-5, 6e-3 nats off); a directory
holding model.safetensors and a stale index is read from model.safetensors, as transformers does
(condense read the index's shards); a model whose embedding has more rows than its tokenizer has
pieces generates only ids the tokenizer can decode (generate failed in decode); a Mistral
directory without a window imports as the Llama it is. Tiny random models made with
transformers, one thread."""
import json
import pathlib
import shutil

import h5py
import numpy as np
import pytest
import torch

from conftest import run

transformers = pytest.importorskip("transformers")
from safetensors.numpy import load_file  # noqa: E402

torch.set_num_threads(1)


def tiny_llama(path, vocab, seed=0, **extra):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                   **extra)
    model = transformers.LlamaForCausalLM(cfg).eval()
    model.save_pretrained(path, safe_serialization=True)
    return model


def tokenizer_of(small_store):
    return pathlib.Path(small_store).parent / "tok.model"  # 384 pieces (conftest)


def test_absent_rms_norm_eps_is_transformers_default(small_store, tmp_path):
    hf = tmp_path / "hf"
    model = tiny_llama(hf, 384, rms_norm_eps=1e-6)
    config = json.loads((hf / "config.json").read_text())
    del config["rms_norm_eps"]
    (hf / "config.json").write_text(json.dumps(config))
    assert transformers.AutoConfig.from_pretrained(hf).rms_norm_eps == 1e-6
    shutil.copy(tokenizer_of(small_store), hf / "tokenizer.model")
    text = tmp_path / "t.txt"
    text.write_text("A dictionary of the English language, with its meanings.\n")
    js = tmp_path / "s.json"
    run("score", hf, "--text", text, "--full", "--json", js)
    s = json.loads(js.read_text())
    ids = [p["id"] for p in s["positions"]] + [s["positions"][-1]["next_id"]]
    ours = np.array([p["logprobs"] for p in s["positions"]])
    with torch.no_grad():
        ref = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1].double(), -1).numpy()
    assert np.abs(ours - ref).max() < 1e-4, np.abs(ours - ref).max()  # 6e-3 with eps 1e-5
    run("import", hf, tmp_path / "imp.h5")
    run("export", tmp_path / "imp.h5", tmp_path / "exp")
    assert json.loads((tmp_path / "exp" / "config.json").read_text())["rms_norm_eps"] == 1e-6


def test_model_safetensors_wins_over_a_stale_index(small_store, tmp_path):
    """transformers' save_pretrained, re-saving a sharded model unsharded, leaves the old index."""
    hf = tmp_path / "hf"
    tiny_llama(hf, 384, seed=1)
    (hf / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": 1}, "weight_map": {"model.norm.weight": "model-00001-of-00002.safetensors"}}))
    shutil.copy(tokenizer_of(small_store), hf / "tokenizer.model")
    run("import", hf, tmp_path / "imp.h5")
    run("export", tmp_path / "imp.h5", tmp_path / "exp")
    ours, theirs = load_file(str(tmp_path / "exp" / "model.safetensors")), load_file(str(hf / "model.safetensors"))
    for name, t in theirs.items():
        assert np.array_equal(ours[name], t), name


def test_a_vocabulary_padded_past_the_tokenizer_generates_decodable_ids(small_store, tmp_path):
    hf = tmp_path / "hf"
    tiny_llama(hf, 448, seed=1)  # 64 rows more than the tokenizer's 384 pieces
    shutil.copy(tokenizer_of(small_store), hf / "tokenizer.model")
    run("import", hf, tmp_path / "imp.h5")
    drawn = []
    for extra in ([], ["--aten-decode"], ["--temperature", "1.5", "--seed", "3"]):
        p = run("generate", tmp_path / "imp.h5", "--prompt", "The harbour was quiet at dawn", "--max-new-tokens",
                60, "--ignore-eos", "--print-ids", "--threads", 1, *extra)
        ids = [int(i) for i in next(l for l in p.stderr.splitlines() if " ids: " in l).split(" ids: ")[1].split()]
        assert len(ids) == 60 and max(ids) < 384, (extra, ids)
        drawn += ids
    # The padded rows are not unreachable by construction: unrestricted, the logits rank some
    # of them first (transformers' greedy on the same weights).
    model = transformers.AutoModelForCausalLM.from_pretrained(hf).eval()
    with torch.no_grad():
        top = model(torch.tensor([drawn[:60]])).logits[0].argmax(-1)
    assert (top >= 384).any(), "no padded id was ever ranked first: the test would not see the bug"


def test_mistral_without_a_window_imports_as_llama_and_an_absent_window_is_4096(small_store, tmp_path):
    """MistralForCausalLM is Llama with sliding-window attention. Without a window (Mistral v0.2+)
    it is the Llama it is, compared with transformers' MistralForCausalLM on the same weights (1e-5
    in probability); an absent sliding_window is MistralConfig's default 4096, kept as the model's
    window (test_sliding_window.py computes windows against transformers)."""
    torch.manual_seed(3)
    cfg = transformers.MistralConfig(vocab_size=384, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                                     sliding_window=None, rms_norm_eps=1e-5)
    model = transformers.MistralForCausalLM(cfg).eval()
    hf = tmp_path / "hf"
    model.save_pretrained(hf, safe_serialization=True)
    assert json.loads((hf / "config.json").read_text())["model_type"] == "mistral"
    shutil.copy(tokenizer_of(small_store), hf / "tokenizer.model")
    run("import", hf, tmp_path / "imp.h5")
    text = tmp_path / "t.txt"
    text.write_text("A dictionary of the English language, with its meanings and its words.")
    js = tmp_path / "s.json"
    run("score", tmp_path / "imp.h5", "--text", text, "--full", "--json", js)
    s = json.loads(js.read_text())
    ids = [p["id"] for p in s["positions"]] + [s["positions"][-1]["next_id"]]
    with torch.no_grad():
        ref = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1].double(), -1).numpy()
    ours = np.array([p["logprobs"] for p in s["positions"]])
    assert np.abs(np.exp(ours) - np.exp(ref)).max() < 1e-5
    with h5py.File(tmp_path / "imp.h5", "r") as f:
        assert json.loads(f["config"][()])["model_type"] == "llama"  # no window: the Llama it is
    cfg_json = json.loads((hf / "config.json").read_text())
    del cfg_json["sliding_window"]
    cfg_json["max_position_embeddings"] = 8192
    (hf / "config.json").write_text(json.dumps(cfg_json))
    assert transformers.AutoConfig.from_pretrained(hf).sliding_window == 4096
    run("import", hf, tmp_path / "absent.h5")
    with h5py.File(tmp_path / "absent.h5", "r") as f:
        cfg = json.loads(f["config"][()])
    assert cfg["max_position_embeddings"] == 8192 and cfg["sliding_window"] == 4096
