"""Child process for test_export_gguf.py and bench/generate_vs_llama_cpp.py: loads a GGUF file
with llama.cpp (llama-cpp-python) and writes, as JSON, llama.cpp's own tokenization of a text
and its per-position logits for given token ids. Run in a child so that a crash inside llama.cpp
fails the test instead of killing pytest.

usage: llama_cpp_child.py MODEL.gguf TEXT_FILE IDS_JSON OUT.npz

With CONDENSE_LLAMA_KV_F32=1 the KV cache is float32 (llama.cpp's default is f16, which alone
moves a 30-layer model's probabilities by ~2e-3) and flash attention is off. With
CONDENSE_LLAMA_VERBOSE=1 llama.cpp logs its load (KV cache size among it) to stderr.
"""
import json
import os
import sys

import numpy as np
from llama_cpp import Llama


def main():
    model, text_file, ids_json, out = sys.argv[1:5]
    ids = json.loads(open(ids_json).read())
    kv = {}
    if os.environ.get("CONDENSE_LLAMA_KV_F32") == "1":
        kv = {"type_k": 0, "type_v": 0, "flash_attn": False}  # GGML_TYPE_F32
    llm = Llama(model_path=model, n_ctx=max(64, len(ids) + 8), n_batch=512, logits_all=True,
                n_threads=1, verbose=os.environ.get("CONDENSE_LLAMA_VERBOSE") == "1", **kv)
    text = open(text_file, encoding="utf-8").read()
    tokens = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
    llm.reset()
    llm.eval(ids)
    logits = np.array(llm.scores[: len(ids)], dtype=np.float64)
    np.savez(out, tokens=np.array(tokens, dtype=np.int64), logits=logits,
             n_vocab=np.array(llm.n_vocab()))


if __name__ == "__main__":
    main()
