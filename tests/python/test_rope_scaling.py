"""RoPE scaling (config.json's rope_scaling: linear, and llama3 as Llama 3.1/3.2 use it) through
import, scoring and both exports, checked against transformers and llama.cpp.

A briefly trained model is exported to Hugging Face, its config.json given a rope_scaling, and
imported back. condense's log-probabilities on held-out text then equal transformers' on that
directory (1e-5, the HF parity bound); the original context is set to 64 positions so that at
head_dim 16 the Llama 3 rule keeps, blends and divides different frequencies within the text.
The import's own HF export writes the same rope_scaling, and its GGUF export (llama.cpp's keys
for linear, rope_freqs.weight for llama3, whose divisors must equal transformers' unscaled over
scaled inverse frequencies) runs in llama.cpp with condense's probabilities (1e-4, F32 with a
float32 KV cache) and imports back to the same scores. Without the scaling the scores differ
(the checks have teeth). Kinds condense does not compute (yarn, dynamic, unknown keys) are
refused naming the key, and so is a pretrain run from a scaled init."""
import json
import shutil

import numpy as np
import pytest
import torch

from conftest import run
from export_fixtures import QUICKSTART, score, train_tiny, trained  # noqa: F401 (fixture)
from test_export_gguf import llama_cpp, softmax

transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")
pytest.importorskip("llama_cpp")

SCALINGS = {
    "llama3": {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64},
    "linear": {"rope_type": "linear", "factor": 2.5},
}


def with_scaling(ckpt, tmp_path, rope_scaling):
    """The checkpoint exported to HF with `rope_scaling` in config.json, and that imported."""
    hf = tmp_path / "hf"
    run("export", ckpt, hf, "--format", "hf")
    cfg = json.loads((hf / "config.json").read_text())
    cfg["rope_scaling"] = rope_scaling  # None: plain RoPE
    (hf / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "scaled.h5"
    run("import", hf, out)
    return hf, out


@pytest.mark.parametrize("kind", sorted(SCALINGS))
def test_rope_scaling_matches_transformers_and_llama_cpp(trained, kind, tmp_path, monkeypatch):
    ckpt, tok_model, text, ids, lp_plain = trained
    hf, scaled = with_scaling(ckpt, tmp_path, SCALINGS[kind])
    ids_s, lp, _ = score(scaled, text)
    assert ids_s == ids and len(ids) > 64
    teeth = np.abs(np.exp(lp) - np.exp(lp_plain)).max()
    assert teeth > 1e-3, teeth  # the scaling changes the probabilities at these positions

    model = transformers.AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32,
                                                              attn_implementation="eager").eval()
    with torch.no_grad():
        ref = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)[:-1].numpy()
    err = np.abs(np.exp(lp) - np.exp(ref)).max()
    print(f"\n{kind}: max |dp| vs transformers {err:.2e} (unscaled differs by {teeth:.2e})")
    assert err <= 1e-5

    out_hf = tmp_path / "again"
    run("export", scaled, out_hf, "--format", "hf")
    assert json.loads((out_hf / "config.json").read_text())["rope_scaling"] == SCALINGS[kind]

    g = tmp_path / "scaled.gguf"
    run("export", scaled, g, "--format", "gguf")
    r = gguf.GGUFReader(str(g))
    if kind == "llama3":
        freqs = next(t for t in r.tensors if t.name == "rope_freqs.weight")
        inv = model.model.rotary_emb.inv_freq.double().numpy()
        plain = 1.0 / (10000.0 ** (np.arange(0, 16, 2) / 16))
        assert np.allclose(np.asarray(freqs.data, dtype=np.float64), plain / inv, rtol=1e-5), (freqs.data, plain / inv)
        assert len(set(np.round(plain / inv, 4))) >= 3  # kept, blended and divided frequencies
    else:
        assert bytes(r.fields["llama.rope.scaling.type"].parts[-1]).decode() == "linear"
        assert r.fields["llama.rope.scaling.factor"].parts[-1][0] == 2.5
    monkeypatch.setenv("CONDENSE_LLAMA_KV_F32", "1")  # float32 against float32
    tokens, logits, _ = llama_cpp(g, text, ids, tmp_path)
    assert tokens == ids
    err_cpp = np.abs(softmax(logits[:-1]) - np.exp(lp)).max()
    print(f"{kind}: max |dp| vs llama.cpp {err_cpp:.2e}")
    assert err_cpp <= 1e-4

    back = tmp_path / "back.h5"
    run("import", g, back)
    _, lp_back, _ = score(back, text)
    assert np.abs(lp_back - lp).max() < 1e-6


def test_rope_scaling_condense_does_not_compute_is_refused(trained, tmp_path):
    ckpt = trained[0]
    hf = tmp_path / "hf"
    run("export", ckpt, hf, "--format", "hf")
    base = json.loads((hf / "config.json").read_text())
    cases = {
        "yarn": ({"rope_type": "yarn", "factor": 4.0}, "rope_scaling type 'yarn' is not supported"),
        "dynamic": ({"type": "dynamic", "factor": 2.0}, "rope_scaling type 'dynamic' is not supported"),
        "extra": (dict(SCALINGS["linear"], attention_factor=0.5), "rope_scaling.attention_factor"),
        "missing": ({"rope_type": "llama3", "factor": 8.0}, "missing field 'low_freq_factor'"),
        "notype": ({"factor": 8.0}, "has no rope_type"),
    }
    for name, (rs, needle) in cases.items():
        d = tmp_path / name
        shutil.copytree(hf, d)
        (d / "config.json").write_text(json.dumps(dict(base, rope_scaling=rs)))
        p = run("import", d, tmp_path / f"{name}.h5", check=False)
        assert p.returncode == 1 and needle in p.stderr and "config.json" in p.stderr, (name, p.stderr)
        assert not (tmp_path / f"{name}.h5").exists()


def test_a_pretrain_recipe_refuses_an_init_with_rope_scaling(trained, small_store, tmp_path):
    """A pretrain recipe's model section has no rope_scaling: training a scaled init at plain
    frequencies would change the model silently, so the run is refused (finetune keeps it)."""
    _, scaled = with_scaling(trained[0], tmp_path, SCALINGS["llama3"])
    with pytest.raises(AssertionError, match="uses rope_scaling"):
        train_tiny(small_store, tmp_path / "run", steps=1, init=scaled)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_finetune_keeps_rope_scaling_and_resume_checks_it(trained, small_store, tmp_path):
    """A finetune's model is its init's, scaling included, in every checkpoint it writes; a
    --resume whose init lost the scaling is refused (the check compares both ways)."""
    (tmp_path / "s").mkdir()
    (tmp_path / "p").mkdir()
    _, scaled = with_scaling(trained[0], tmp_path / "s", SCALINGS["llama3"])
    _, plain = with_scaling(trained[0], tmp_path / "p", None)
    out = tmp_path / "run"
    o = {"name": "ft", "out_dir": out, "data.dataset": small_store, "data.seq_len": 64, "data.batch_size": 2,
         "train.steps": 4, "train.warmup_steps": 1, "train.eval_every": 0, "train.threads": 1,
         "checkpoint.every": 2, "checkpoint.keep": 2}
    args = ["train", QUICKSTART, "kind=finetune", *[f"{k}={v}" for k, v in o.items()]]
    run(*args, f"init={scaled}", "train.steps=2")
    line = next(l for l in run("info", out).stdout.splitlines() if l.startswith("rope"))
    assert '"rope_type":"llama3"' in line.replace(" ", ""), line
    p = run(*args, f"init={plain}", "--resume", check=False)
    assert p.returncode == 1 and "rope_scaling" in p.stderr and "absent in the recipe" in p.stderr, p.stderr
    run(*args, f"init={scaled}", "--resume")
    _, lp, _ = score(out, trained[2])
    assert np.isfinite(lp).all()
