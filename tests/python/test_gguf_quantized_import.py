"""GGUF files quantized by llama.cpp's own quantizer (`llama_model_quantize` through
llama-cpp-python, in a child process) import into condense: Q2_K, Q3_K_S/M/L, Q4_K_M, Q5_0, Q5_1,
Q5_K_M, Q6_K, IQ4_NL, IQ4_XS, IQ3_S, IQ3_M, TQ1_0 and TQ2_0 of a briefly trained model whose matrices are multiples of 256 wide, so the K and IQ4
types apply without llama.cpp's fallbacks.

For each file: every tensor as condense dequantizes it is bitwise equal to the gguf package's
dequantization (the types llama.cpp chose per tensor are listed, and together they must cover
the types condense added); `condense import` then scores a held-out text, and its mean NLL
and greedy choices are compared with llama.cpp running the same file (which rounds activations
to 8 bits in its quantized dot products, so the two differ by that rounding: bounds are the
measured values with a margin, printed with -s)."""
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from conftest import run
from export_fixtures import HELD_OUT, score, train_tiny
from test_export_gguf import llama_cpp, softmax
from test_gguf_dequant import compare, run_tool

gguf = pytest.importorskip("gguf")
pytest.importorskip("llama_cpp")

QUANT_CHILD = r"""
import ctypes, sys
import llama_cpp
inp, out, ftype = sys.argv[1:]
p = llama_cpp.llama_model_quantize_default_params()
p.ftype = getattr(llama_cpp, "LLAMA_FTYPE_MOSTLY_" + ftype)
p.nthread = 1
sys.exit(llama_cpp.llama_model_quantize(inp.encode(), out.encode(), ctypes.byref(p)))
"""
FTYPES = ["Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_M", "Q5_0", "Q5_1", "Q5_K_M", "Q6_K", "IQ4_NL",
          "IQ4_XS", "IQ3_S", "IQ3_M", "TQ1_0", "TQ2_0"]
# (IQ3_XXS and the IQ2 / IQ1 types need an importance matrix, which llama_model_quantize cannot be
# handed from Python; test_gguf_dequant.py compares them with the gguf package on random blocks.)
# mean-NLL relative difference and greedy agreement against llama.cpp on the same file: measured
# at most 0.02% (IQ4_NL) and at least 0.992 (121 of 122 positions, IQ4_NL; 1.0 for the others).
NLL_BOUND, AGREE_BOUND = 0.002, 0.95


@pytest.fixture(scope="module")
def model(small_store, tmp_path_factory):
    d = tmp_path_factory.mktemp("quantized")
    ckpt = train_tiny(small_store, d / "run", steps=30, **{
        "model.hidden_size": 256, "model.intermediate_size": 512, "model.num_attention_heads": 4,
        "model.num_key_value_heads": 2})
    f32 = d / "model-f32.gguf"
    run("export", ckpt, f32, "--format", "gguf")
    text = d / "held_out.txt"
    text.write_text(HELD_OUT, encoding="utf-8")
    return ckpt, f32, text, d


def quantize(f32, out, ftype):
    p = subprocess.run([sys.executable, "-c", QUANT_CHILD, str(f32), str(out), ftype],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0 and out.is_file(), f"llama.cpp quantize {ftype} failed:\n{p.stderr[-3000:]}"


def test_llama_cpp_quantized_files_import(model, tmp_path):
    ckpt, f32, text, d = model
    ids, lp_f32, _ = score(ckpt, text)
    seen = set()
    for ftype in FTYPES:
        q = d / f"model-{ftype}.gguf"
        quantize(f32, q, ftype)
        # Every tensor bitwise as the gguf package dequantizes it.
        out = tmp_path / f"{ftype}.f32"
        manifest = [json.loads(line) for line in run_tool("file", q, out).splitlines()]
        ours_all = np.fromfile(out, dtype=np.float32)
        reader = gguf.GGUFReader(str(q))
        types = {}
        for m, t in zip(manifest, reader.tensors, strict=True):
            qtype = gguf.GGMLQuantizationType(int(t.tensor_type))
            assert m["name"] == t.name and m["type"] == qtype.name
            differ, maxdiff = compare(ours_all[m["offset"]:m["offset"] + m["numel"]],
                                      gguf.quants.dequantize(t.data, qtype))
            assert differ == 0, f"{ftype} {t.name} ({qtype.name}): {differ} values differ, max {maxdiff}"
            types[qtype.name] = types.get(qtype.name, 0) + 1
        seen |= set(types)

        # condense scores the import; llama.cpp scores the file.
        ckpt_q = d / f"model-{ftype}.h5"
        run("import", q, ckpt_q)
        ids_q, lp_q, _ = score(ckpt_q, text)
        assert ids_q == ids  # the tokenizer travels in the file
        tokens, logits, n_vocab = llama_cpp(q, text, ids, tmp_path)
        assert tokens == ids and n_vocab == lp_q.shape[1]
        lp_ref = np.log(softmax(logits[:-1]))
        nll_ours = -lp_q[np.arange(len(ids) - 1), ids[1:]].mean()
        nll_ref = -lp_ref[np.arange(len(ids) - 1), ids[1:]].mean()
        nll_f32 = -lp_f32[np.arange(len(ids) - 1), ids[1:]].mean()
        agree = (lp_q.argmax(-1) == lp_ref.argmax(-1)).mean()
        rel = abs(nll_ours - nll_ref) / nll_ref
        print(f"\n{ftype}: tensor types {types}; mean NLL condense {nll_ours:.4f}, llama.cpp "
              f"{nll_ref:.4f} ({rel:.2%}), unquantized {nll_f32:.4f}; greedy agreement {agree:.3f} "
              f"over {len(ids) - 1} positions")
        assert rel <= NLL_BOUND and agree >= AGREE_BOUND, (ftype, rel, agree)
    assert {"Q2_K", "Q3_K", "Q5_0", "Q5_1", "IQ4_NL", "IQ4_XS", "IQ3_S", "TQ1_0", "TQ2_0"} <= seen, seen
