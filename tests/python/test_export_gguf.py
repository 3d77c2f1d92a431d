"""GGUF export checked with llama.cpp itself (llama-cpp-python, in a child process) and with the
`gguf` package (llama.cpp's own reader).

A briefly trained condense model (GQA, untied, 384-piece sentencepiece tokenizer) is exported as
F32, F16, BF16 and Q8_0. llama.cpp loads each file, tokenizes held-out text to exactly
condense's ids, and its next-token probabilities at every position are compared with condense's
own forward (`condense score --full`): F32 within 1e-4 absolute with the same top-1 at every
position; F16, BF16 and Q8_0 within the tolerances in TOLERANCE (measured values are printed,
run with -s). The gguf package checks metadata types (counts are u32), the tokenizer arrays,
tensor names, ggml types and shapes. condense's own GGUF reader scores the F32 file exactly
like the checkpoint (the q/k permutation is inverted exactly). Malformed files fail clearly.
"""
import base64
import json
import os
import pathlib
import subprocess
import sys

import h5py
import numpy as np
import pytest

from conftest import run
from export_fixtures import model_tensors, score, trained  # noqa: F401 (fixture)

gguf = pytest.importorskip("gguf")
pytest.importorskip("llama_cpp")

CHILD = pathlib.Path(__file__).resolve().parent / "llama_cpp_child.py"
# max |p_llama.cpp - p_condense| over every position and vocabulary entry, and whether top-1
# must agree everywhere. F32 is the bound; the others are measured values (8.3e-6 f32,
# 6.5e-5 f16, 6.2e-4 bf16, 1.1e-3 q8_0 on this model; top-1 agreement >= 0.99) times ~5-8.
TOLERANCE = {"f32": (1e-4, True), "f16": (5e-4, False), "bf16": (5e-3, False), "q8_0": (5e-3, False)}
GGML_TYPE = {"f32": 0, "f16": 1, "bf16": 30, "q8_0": 8}


def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def llama_cpp(model, text, ids, tmp):
    ids_json = tmp / "ids.json"
    ids_json.write_text(json.dumps(ids))
    out = tmp / f"{pathlib.Path(model).stem}.npz"
    p = subprocess.run([sys.executable, str(CHILD), str(model), str(text), str(ids_json), str(out)],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, f"llama.cpp child failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    z = np.load(out)
    return z["tokens"].tolist(), z["logits"], int(z["n_vocab"])


@pytest.fixture(scope="module")
def exports(trained, tmp_path_factory):
    ckpt = trained[0]
    d = tmp_path_factory.mktemp("gguf")
    paths = {}
    for t in TOLERANCE:
        paths[t] = d / f"model-{t}.gguf"
        run("export", ckpt, paths[t], "--format", "gguf", "--dtype", t)
    return paths


@pytest.mark.parametrize("kind", sorted(TOLERANCE))
def test_llama_cpp_matches_condense(trained, exports, kind, tmp_path):
    ckpt, tok_model, text, ids, lp = trained
    tokens, logits, n_vocab = llama_cpp(exports[kind], text, ids, tmp_path)
    assert tokens == ids, "llama.cpp tokenizes the text differently from condense"
    assert n_vocab == lp.shape[1]
    p_ref = np.exp(lp)
    p = softmax(logits[:-1])
    err = np.abs(p - p_ref).max()
    agree = (p.argmax(-1) == p_ref.argmax(-1)).mean()
    print(f"GGUF {kind}: max |dp| = {err:.3g}, top-1 agreement {agree:.3f} over {len(ids) - 1} "
          f"positions")
    bound, top1 = TOLERANCE[kind]
    assert err <= bound
    if top1:
        assert agree == 1.0
    else:
        assert agree >= 0.95  # measured >= 0.99 (121 of 122 positions at worst)


def field_value(reader, key):
    f = reader.fields[key]
    if f.types[0] == gguf.GGUFValueType.ARRAY:
        if f.types[1] == gguf.GGUFValueType.STRING:
            return [bytes(f.parts[i]).decode("utf-8") for i in f.data]
        return [f.parts[i][0].item() for i in f.data]
    if f.types[0] == gguf.GGUFValueType.STRING:
        return bytes(f.parts[f.data[0]]).decode("utf-8")
    return f.parts[f.data[0]][0].item()


@pytest.mark.parametrize("kind", sorted(TOLERANCE))
def test_gguf_package_reads_metadata_and_tensors(trained, exports, kind):
    ckpt, tok_model = trained[0], trained[1]
    tensors, config, _ = model_tensors(ckpt)
    r = gguf.GGUFReader(exports[kind])
    assert field_value(r, "general.architecture") == "llama"
    u32 = {"llama.context_length": config["max_position_embeddings"],
           "llama.embedding_length": config["hidden_size"],
           "llama.block_count": config["num_hidden_layers"],
           "llama.feed_forward_length": config["intermediate_size"],
           "llama.rope.dimension_count": config["head_dim"],
           "llama.attention.head_count": config["num_attention_heads"],
           "llama.attention.head_count_kv": config["num_key_value_heads"],
           "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
           "tokenizer.ggml.unknown_token_id": 0, "general.file_type": {"f32": 0, "f16": 1, "bf16": 32, "q8_0": 7}[kind]}
    for key, want in u32.items():
        assert r.fields[key].types == [gguf.GGUFValueType.UINT32], key
        assert field_value(r, key) == want, key
    assert abs(field_value(r, "llama.attention.layer_norm_rms_epsilon") - config["rms_norm_eps"]) < 1e-9
    assert field_value(r, "tokenizer.ggml.model") == "llama"
    assert field_value(r, "tokenizer.ggml.add_space_prefix") is True
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=str(tok_model))
    pieces = field_value(r, "tokenizer.ggml.tokens")
    assert pieces == [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    scores = field_value(r, "tokenizer.ggml.scores")
    assert np.allclose(scores, [sp.get_score(i) for i in range(sp.get_piece_size())])
    types = field_value(r, "tokenizer.ggml.token_type")
    want_types = [3 if sp.is_control(i) else 2 if sp.is_unknown(i) else 6 if sp.is_byte(i) else 1
                  for i in range(sp.get_piece_size())]
    assert types == want_types and types.count(6) == 256
    by_name = {t.name: t for t in r.tensors}
    assert len(by_name) == len(tensors)
    assert "output.weight" in by_name  # untied model
    for name, t in by_name.items():
        hf = {"token_embd.weight": "model.embed_tokens.weight", "output.weight": "lm_head.weight",
              "output_norm.weight": "model.norm.weight"}.get(name)
        if hf is None:
            layer, part = name.split(".")[1], name.split(".")[2]
            hf = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj",
                  "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                  "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
                  "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                  "ffn_down": "mlp.down_proj"}[part]
            hf = f"model.layers.{layer}.{hf}.weight"
        shape = tensors[hf].shape
        assert [int(x) for x in t.shape] == list(reversed(shape)), name  # ne = shape reversed
        want = 0 if len(shape) == 1 else GGML_TYPE[kind]
        assert int(t.tensor_type) == want, name
        want = tensors[hf]
        if "attn_q" in name or "attn_k" in name:  # llama.cpp's pairwise RoPE order, as convert_hf_to_gguf.py
            n_head = config["num_attention_heads" if "attn_q" in name else "num_key_value_heads"]
            want = (want.reshape(n_head, 2, want.shape[0] // n_head // 2, *want.shape[1:])
                    .swapaxes(1, 2).reshape(want.shape))
        if kind == "f32" or len(shape) == 1:
            assert np.array_equal(np.asarray(t.data).reshape(shape), want), name
        elif kind == "f16":
            assert np.array_equal(np.asarray(t.data).reshape(shape), want.astype(np.float16)), name
        elif kind == "bf16":  # bit-identical to the gguf package's BF16 (round to nearest even)
            ref = gguf.quants.quantize(np.ascontiguousarray(want, dtype=np.float32),
                                       gguf.GGMLQuantizationType.BF16)
            assert np.array_equal(np.asarray(t.data).reshape(-1).view(np.uint8),
                                  ref.reshape(-1).view(np.uint8)), name
        elif kind == "q8_0":  # bit-identical to the gguf package's port of ggml's quantizer
            ref = gguf.quants.quantize(np.ascontiguousarray(want, dtype=np.float32),
                                       gguf.GGMLQuantizationType.Q8_0)
            assert np.array_equal(np.asarray(t.data).reshape(-1).view(np.uint8),
                                  ref.reshape(-1).view(np.uint8)), name


def test_condense_reads_its_gguf_back(trained, exports):
    ckpt, tok_model, text, ids, lp = trained
    ids_g, lp_g, _ = score(exports["f32"], text, "--tokenizer", tok_model)
    assert ids_g == ids
    assert np.abs(lp_g - lp).max() < 1e-9  # weights identical: permutation inverted exactly
    _, lp_q, _ = score(exports["q8_0"], text, "--tokenizer", tok_model)
    assert 0 < np.abs(np.exp(lp_q) - np.exp(lp)).max() < TOLERANCE["q8_0"][0]
    # The export carries the exact sentencepiece model, so no --tokenizer is needed.
    ids_n, lp_n, _ = score(exports["f32"], text)
    assert ids_n == ids and np.array_equal(lp_n, lp_g)
    reader = gguf.GGUFReader(exports["f32"])
    field = reader.fields["condense.tokenizer.sentencepiece_base64"]
    stored = bytes(field.parts[field.data[0]]).decode("ascii")
    assert base64.b64decode(stored) == pathlib.Path(tok_model).read_bytes()


def test_a_gguf_without_the_embedded_model_imports_with_its_rebuilt_tables(trained, exports, tmp_path):
    """A GGUF as llama.cpp's converter writes it, without condense's embedded .model (the key
    renamed in place, same length, so the file stays valid): import, score and --tokenizer rebuild
    the sentencepiece model from its tables, and the held-out text's ids and probabilities equal
    the checkpoint's."""
    ckpt, tok_model, text, ids, lp = trained
    key = b"condense.tokenizer.sentencepiece_base64"
    raw = exports["f32"].read_bytes()
    assert raw.count(key) == 1
    plain = tmp_path / "plain.gguf"
    plain.write_bytes(raw.replace(key, b"condense.tokenizer.sentencepiece_xxxxxx"))
    out = tmp_path / "imported.h5"
    p = run("import", plain, out)
    assert "no tokenizer" not in p.stdout + p.stderr, p.stdout + p.stderr
    line = next(l for l in run("info", out).stdout.splitlines() if l.startswith("tokenizer"))
    assert "sentencepiece" in line, line
    ids_i, lp_i, _ = score(out, text)
    assert ids_i == ids and np.abs(lp_i - lp).max() < 1e-9
    ids_s, lp_s, _ = score(plain, text)
    assert ids_s == ids and np.array_equal(lp_s, lp_i)
    ids_t, _, _ = score(ckpt, text, "--tokenizer", plain)
    assert ids_t == ids

    # Tables condense cannot follow (add_bos_token false: the bool after the key and its u32
    # type) leave the weights importable: a warning gives the reason, --tokenizer supplies one,
    # and score names the reason when it has no tokenizer.
    raw = plain.read_bytes()
    at = raw.index(b"tokenizer.ggml.add_bos_token") + len(b"tokenizer.ggml.add_bos_token")
    assert raw[at:at + 5] == bytes([7, 0, 0, 0, 1])  # GGUF type 7 (bool), true
    nobos = tmp_path / "nobos.gguf"
    nobos.write_bytes(raw[:at + 4] + b"\0" + raw[at + 5:])
    p = run("import", nobos, tmp_path / "nobos.h5")
    assert "its tokenizer cannot be used" in p.stdout + p.stderr and "add_bos_token is false" in p.stdout + p.stderr
    with h5py.File(tmp_path / "nobos.h5", "r") as f:
        assert "tokenizer" not in f or len(f["tokenizer"][()]) == 0
    run("import", nobos, tmp_path / "nobos-tok.h5", "--tokenizer", tok_model)
    ids_n, lp_n, _ = score(tmp_path / "nobos-tok.h5", text)
    assert ids_n == ids and np.array_equal(lp_n, lp_i)
    p = run("score", nobos, "--text", text, check=False)
    assert p.returncode == 1 and "add_bos_token is false" in p.stderr, p.stderr

def test_bad_gguf_fails_clearly(trained, exports, tmp_path):
    tok_model, text = trained[1], trained[2]
    raw = exports["f16"].read_bytes()
    cases = {"trunc.gguf": (raw[: len(raw) // 2], "past the end"),
             "magic.gguf": (b"GGUX" + raw[4:], "bad magic"),
             "short.gguf": (raw[:20], "truncated")}
    for name, (data, needle) in cases.items():
        p = tmp_path / name
        p.write_bytes(data)
        res = run("score", p, "--text", text, "--tokenizer", tok_model, check=False)
        assert res.returncode == 1 and name in res.stderr and needle in res.stderr, res.stderr
    res = run("export", trained[0], tmp_path / "x.gguf", "--format", "gguf", "--dtype", "q4_0",
              check=False)
    assert res.returncode == 1 and "q4_0" in res.stderr and not (tmp_path / "x.gguf").exists()


def test_tied_mha_with_odd_head_dim(small_store, trained, tmp_path):
    """A tied model (no output.weight: llama.cpp falls back to token_embd) with MHA and
    head_dim 24 != hidden / heads (llama.attention.key_length) runs in llama.cpp too."""
    from export_fixtures import train_tiny
    text = trained[2]
    ckpt = train_tiny(small_store, tmp_path / "run", steps=20, **{
        "model.tie_word_embeddings": "true", "model.num_key_value_heads": 4,
        "model.head_dim": 24})
    ids, lp, _ = score(ckpt, text)
    out = tmp_path / "tied.gguf"
    run("export", ckpt, out, "--format", "gguf")
    r = gguf.GGUFReader(out)
    assert "output.weight" not in {t.name for t in r.tensors}
    tokens, logits, _ = llama_cpp(out, text, ids, tmp_path)
    assert tokens == ids
    p, p_ref = softmax(logits[:-1]), np.exp(lp)
    assert np.abs(p - p_ref).max() <= TOLERANCE["f32"][0]
    assert (p.argmax(-1) == p_ref.argmax(-1)).all()


CHAT_CHILD = r"""
import ctypes, json, sys
import llama_cpp
model, tmpl, system, user = sys.argv[1:]
msgs = ([("system", system)] if system else []) + [("user", user)]
arr = (llama_cpp.llama_chat_message * len(msgs))()
keep = []
for i, (role, content) in enumerate(msgs):
    keep += [role.encode(), content.encode()]
    arr[i].role, arr[i].content = keep[-2], keep[-1]
buf = ctypes.create_string_buffer(1 << 16)
n = llama_cpp.llama_chat_apply_template(tmpl.encode(), arr, len(msgs), True, buf, len(buf))
text = buf.raw[:n].decode()
llm = llama_cpp.Llama(model_path=model, vocab_only=True, verbose=False)
print(json.dumps({"text": text, "ids": llm.tokenize(text.encode(), add_bos=True, special=True)}))
"""


@pytest.mark.parametrize("fmt,tmpl", [("llama2", "llama2-sys"), ("mistral", "mistral-v3")])
@pytest.mark.parametrize("system", ["", "Answer in one word."])
def test_sentencepiece_chat_formats_render_and_tokenize_as_llama_cpp(trained, exports, fmt, tmpl, system):
    """generate --chat --chat-format llama2|mistral on a sentencepiece checkpoint: the prompt equals
    llama.cpp's built-in template of that name, and its ids (<s> first) llama.cpp's tokenization of
    it with special tokens parsed, on the same vocabulary exported to GGUF."""
    user = "Which word means a small boat? 42 caf\u00e9"
    p = run("generate", trained[0], "--chat", user, *(["--system", system] if system else []),
            "--chat-format", fmt, "--show-prompt", "--max-new-tokens", 1)
    rendered = p.stderr.split(f"chat prompt ({fmt}):\n", 1)[1].split("\nprompt ids: ", 1)[0]
    ids = [int(x) for x in p.stderr.split("prompt ids: ", 1)[1].splitlines()[0].split()]
    c = subprocess.run([sys.executable, "-c", CHAT_CHILD, str(exports["f32"]), tmpl, system, user],
                       capture_output=True, text=True, timeout=300)
    assert c.returncode == 0, c.stderr[-2000:]
    ref = json.loads(c.stdout.strip().splitlines()[-1])
    assert rendered == ref["text"]
    assert ids == ref["ids"] and ids[0] == 1
    # Without --chat-format a sentencepiece vocabulary without [INST] pieces has no format to use.
    q = run("generate", trained[0], "--chat", user, check=False)
    assert q.returncode == 1 and "--chat-format llama2|mistral" in q.stderr, q.stderr
