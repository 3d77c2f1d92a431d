"""Minitron structured pruning through the CLI, checked with the real consumers.

A briefly trained model (hidden 64, 4 heads of 16 in 2 KV groups, FFN 128, 2 layers) is pruned
with `condense prune --method minitron` in width and depth at once: hidden 64 -> 48 (so head_dim
16 no longer equals hidden / heads and must be explicit), FFN 128 -> 64, 4 -> 2 query heads (one
per KV group), 2 -> 1 layers. The pruned checkpoint holds exactly slices of the original's
tensors (recovered here from the tensors themselves). Exported `--format hf`, transformers loads
it (config.json carries head_dim) and its log-probabilities match condense's to 1e-5; exported
`--format gguf` (F32), llama.cpp runs it (key_length / value_length / rope.dimension_count =
head_dim) with next-token probabilities within 1e-4 and the same top-1 everywhere. drop_layers
renumbers the kept layer, a num_parameters target lands within a few percent, and bad targets
fail naming the key with nothing written.
"""
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import run
from export_fixtures import model_tensors, score, trained  # noqa: F401 (fixture)

transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")
pytest.importorskip("llama_cpp")

CHILD = pathlib.Path(__file__).resolve().parent / "llama_cpp_child.py"
TARGETS = ["hidden_size=48", "intermediate_size=64", "num_attention_heads=2", "num_hidden_layers=1"]


def prune(ckpt, out, *targets, check=True):
    args = ["prune", ckpt, "--method", "minitron", "--calib-windows", 8, "--threads", 1, "--out", out]
    for t in targets:
        args += ["--target", t]
    return run(*args, check=check)


def n_params(tensors):
    return sum(t.size for t in tensors.values())


@pytest.fixture(scope="module")
def pruned(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("minitron") / "pruned.h5"
    prune(trained[0], out, *TARGETS)
    return out


def column_index(original, sliced):
    """For every column of `sliced`, the index of the identical column of `original`."""
    idx = []
    for j in range(sliced.shape[1]):
        hits = np.flatnonzero((original == sliced[:, j:j + 1]).all(0))
        assert len(hits) == 1, f"column {j} matches {len(hits)} original columns"
        idx.append(int(hits[0]))
    return np.array(idx)


def test_pruned_checkpoint_holds_slices_of_the_original(trained, pruned):
    orig, oc, _ = model_tensors(trained[0])
    new, c, tok = model_tensors(pruned)
    assert tok, "the pruned checkpoint keeps the tokenizer"
    assert (c["hidden_size"], c["intermediate_size"], c["num_attention_heads"],
            c["num_key_value_heads"], c["head_dim"], c["num_hidden_layers"]) == (48, 64, 2, 2, 16, 1)
    assert oc["hidden_size"] == 64 and oc["num_attention_heads"] == 4 and oc["head_dim"] == 16
    ch = column_index(orig["model.embed_tokens.weight"], new["model.embed_tokens.weight"])
    assert list(ch) == sorted(ch)
    # The kept layer: the one whose q_proj holds the new one's rows; then the heads and neurons.
    q_new = new["model.layers.0.self_attn.q_proj.weight"]
    layer = [i for i in range(2) if all(
        (orig[f"model.layers.{i}.self_attn.q_proj.weight"][:, ch] == q_new[r]).all(1).any()
        for r in range(q_new.shape[0]))]
    assert len(layer) == 1
    L = f"model.layers.{layer[0]}."
    heads = column_index(orig[L + "self_attn.q_proj.weight"][:, ch].T[:, ::16], q_new[::16].T)
    assert [h // 2 for h in heads] == [0, 1], "one query head kept per KV group"
    rows = np.concatenate([np.arange(h * 16, h * 16 + 16) for h in heads])
    neurons = column_index(orig[L + "mlp.gate_proj.weight"][:, ch].T, new["model.layers.0.mlp.gate_proj.weight"].T)
    want = {
        "model.embed_tokens.weight": orig["model.embed_tokens.weight"][:, ch],
        "lm_head.weight": orig["lm_head.weight"][:, ch],
        "model.norm.weight": orig["model.norm.weight"][ch],
        "model.layers.0.input_layernorm.weight": orig[L + "input_layernorm.weight"][ch],
        "model.layers.0.post_attention_layernorm.weight": orig[L + "post_attention_layernorm.weight"][ch],
        "model.layers.0.self_attn.q_proj.weight": orig[L + "self_attn.q_proj.weight"][rows][:, ch],
        "model.layers.0.self_attn.k_proj.weight": orig[L + "self_attn.k_proj.weight"][:, ch],
        "model.layers.0.self_attn.v_proj.weight": orig[L + "self_attn.v_proj.weight"][:, ch],
        "model.layers.0.self_attn.o_proj.weight": orig[L + "self_attn.o_proj.weight"][ch][:, rows],
        "model.layers.0.mlp.gate_proj.weight": orig[L + "mlp.gate_proj.weight"][neurons][:, ch],
        "model.layers.0.mlp.up_proj.weight": orig[L + "mlp.up_proj.weight"][neurons][:, ch],
        "model.layers.0.mlp.down_proj.weight": orig[L + "mlp.down_proj.weight"][ch][:, neurons],
    }
    assert sorted(new) == sorted(want)
    for k, v in want.items():
        assert np.array_equal(new[k], v), k


def test_hf_export_loads_in_transformers_and_matches(trained, pruned, tmp_path):
    text = trained[2]
    ids, lp, _ = score(pruned, text)
    out = tmp_path / "hf"
    run("export", pruned, out, "--format", "hf")
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["hidden_size"], cfg["head_dim"], cfg["num_attention_heads"]) == (48, 16, 2)
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        out, output_loading_info=True, dtype=torch.float32, attn_implementation="eager")
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [], info
    assert info["mismatched_keys"] == [] and info["error_msgs"] == [], info
    assert model.model.layers[0].self_attn.head_dim == 16
    model.eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    lp_hf = torch.log_softmax(logits, -1)[:-1].numpy()
    err = np.abs(lp_hf - lp).max()
    print(f"minitron HF export: max |logprob diff| = {err:.3g}")
    assert err <= 1e-5
    assert (lp_hf.argmax(-1) == lp.argmax(-1)).all()


def field_value(reader, key):
    f = reader.fields[key]
    return f.parts[f.data[0]][0].item()


def test_gguf_export_runs_in_llama_cpp(trained, pruned, tmp_path):
    text = trained[2]
    ids, lp, _ = score(pruned, text)
    out = tmp_path / "pruned.gguf"
    run("export", pruned, out, "--format", "gguf", "--dtype", "f32")
    r = gguf.GGUFReader(out)
    for key, want in {"llama.embedding_length": 48, "llama.feed_forward_length": 64,
                      "llama.block_count": 1, "llama.attention.head_count": 2,
                      "llama.attention.head_count_kv": 2, "llama.attention.key_length": 16,
                      "llama.attention.value_length": 16, "llama.rope.dimension_count": 16}.items():
        assert field_value(r, key) == want, key
    ids_json = tmp_path / "ids.json"
    ids_json.write_text(json.dumps(ids))
    npz = tmp_path / "llama.npz"
    p = subprocess.run([sys.executable, str(CHILD), str(out), str(text), str(ids_json), str(npz)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, f"llama.cpp child failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    z = np.load(npz)
    assert z["tokens"].tolist() == ids
    logits = z["logits"][:-1]
    e = np.exp(logits - logits.max(-1, keepdims=True))
    prob = e / e.sum(-1, keepdims=True)
    err = np.abs(prob - np.exp(lp)).max()
    print(f"minitron GGUF f32: max |dp| = {err:.3g}")
    assert err <= 1e-4
    assert (prob.argmax(-1) == lp.argmax(-1)).all()


def test_drop_layers_and_num_parameters(trained, tmp_path):
    orig, oc, _ = model_tensors(trained[0])
    prune(trained[0], tmp_path / "drop.h5", "drop_layers=0")
    new, c, _ = model_tensors(tmp_path / "drop.h5")
    assert c["num_hidden_layers"] == 1 and c["hidden_size"] == 64
    assert sorted(new) == sorted(k for k in orig if not k.startswith("model.layers.1."))
    for k in new:  # layer 1 became layer 0, bit for bit; everything else untouched
        assert np.array_equal(new[k], orig[k.replace("layers.0.", "layers.1.")]), k

    target = 0.6 * n_params(orig)
    prune(trained[0], tmp_path / "np.h5", f"num_parameters={target:.0f}")
    new, c, _ = model_tensors(tmp_path / "np.h5")
    assert abs(n_params(new) / target - 1) < 0.03, (n_params(new), target)
    assert c["hidden_size"] < 64 and c["intermediate_size"] < 128 and c["head_dim"] == 16
    assert c["num_attention_heads"] == 4 and c["num_hidden_layers"] == 2


@pytest.mark.parametrize("target,needles", [
    ("num_attention_heads=3", ["num_attention_heads=3", "num_key_value_heads=2"]),
    ("hidden_size=65", ["hidden_size=65", "1..64"]),
    ("drop_layers=0,1", ["drop_layers=0,1", "all 2 layers"]),
    ("drop_layers=2", ["drop_layers=2", "0..1"]),
])
def test_bad_targets_fail_clearly(trained, tmp_path, target, needles):
    out = tmp_path / "bad.h5"
    res = prune(trained[0], out, target, check=False)
    assert res.returncode == 1, res.stderr
    for n in needles:
        assert n in res.stderr, res.stderr
    assert not out.exists()
