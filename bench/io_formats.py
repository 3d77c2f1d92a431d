"""Format benchmarks for issue 6, run side by side in one process tree:

1. Import / export throughput (MB/s of tensor data) versus model size: transformers writes a
   random Llama (save_pretrained, safetensors, f32) with a real sentencepiece tokenizer;
   `condense import` reads it, `condense export --format hf` and `--format gguf` (f32, q8_0)
   write it back. Times are the commands' own (reported in their log line) and wall clock
   (process start, LibTorch load and model construction included).
2. Greedy decoding tokens/s of `condense generate` (KV cache) versus llama.cpp
   (llama-cpp-python) on the same F32 GGUF model and prompt ids, same thread count, as a ratio.

usage: .venv/bin/python bench/io_formats.py [--build build] [--threads 2] [--new-tokens 64]
Prints a Markdown table for bench/RESULTS.md.
"""
import argparse
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time

import h5py
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
SIZES = [  # (hidden, layers, intermediate, heads, kv heads)
    (256, 4, 704, 4, 2),
    (512, 8, 1408, 8, 4),
    (1024, 8, 2816, 16, 4),
]
PROMPT = "The meaning of the word"


def sh(args, env=None):
    t0 = time.perf_counter()
    p = subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"{args} failed:\n{p.stdout}\n{p.stderr}")
    return p, wall


def tokenizer_model(out):
    stores = sorted((ROOT / "data_cache").glob("*.h5"))
    if not stores:
        raise SystemExit("no token store in data_cache/: run the quickstart or condense prepare first")
    with h5py.File(stores[0], "r") as f:
        out.write_bytes(np.asarray(f["tokenizer"][()]).tobytes())
    import sentencepiece as spm
    return spm.SentencePieceProcessor(model_file=str(out)).get_piece_size()


def make_hf(dir_, tok, vocab, hidden, layers, inter, heads, kv):
    import torch
    import transformers
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
                                   num_hidden_layers=layers, num_attention_heads=heads,
                                   num_key_value_heads=kv, max_position_embeddings=512,
                                   tie_word_embeddings=False, initializer_range=0.05)
    m = transformers.LlamaForCausalLM(cfg)
    m.save_pretrained(dir_, safe_serialization=True, max_shard_size="200MB")
    (dir_ / "tokenizer.model").write_bytes(tok.read_bytes())


def rate(stderr):
    m = re.search(r"\(([\d.]+) MB/s\)", stderr)
    return float(m.group(1)) if m else float("nan")


def llama_cpp_decode(gguf_path, ids, new_tokens, threads, n_ctx=512, kv_q8=False, with_prefill=False):
    """Greedy decode tokens/s and ids after `ids` (and, with_prefill, the seconds llm.eval(ids)
    took). kv_q8: keys and values cached as Q8_0 (ggml type 8; llama.cpp quantizes V only with
    flash attention on), else its default f16 cache."""
    kv = ", type_k=8, type_v=8, flash_attn=True" if kv_q8 else ""
    code = f"""
import time, numpy as np
from llama_cpp import Llama
llm = Llama(model_path={str(gguf_path)!r}, n_ctx={n_ctx}, n_threads={threads}, n_threads_batch={threads}, verbose=False{kv})
ids = {ids!r}
t_prefill = time.perf_counter()
llm.eval(ids)
t_prefill = time.perf_counter() - t_prefill
# The last position's logits from llama.cpp's own buffer: without logits_all, llama-cpp-python
# leaves llm.scores zero (argmax would always be token 0).
n_vocab = llm.n_vocab()
def last_logits():
    return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_vocab,))
out = []
t0 = time.perf_counter()
for i in range({new_tokens}):
    tok = int(np.argmax(last_logits()))
    out.append(tok)
    if i + 1 < {new_tokens}:
        llm.eval([tok])
dt = time.perf_counter() - t0
print(t_prefill, (len(out) - 1) / dt, *out)
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(p.stderr)
    vals = p.stdout.split()
    tps, out = float(vals[1]), [int(v) for v in vals[2:]]
    return (tps, out, float(vals[0])) if with_prefill else (tps, out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=str(ROOT / "build"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=64)
    a = ap.parse_args()
    condense = pathlib.Path(a.build) / "condense"
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    rows, gen_row, gen_info = [], [], None
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        tok = tmp / "tokenizer.model"
        vocab = tokenizer_model(tok)
        for hidden, layers, inter, heads, kv in SIZES:
            d = tmp / f"hf{hidden}"
            make_hf(d, tok, vocab, hidden, layers, inter, heads, kv)
            mb = sum(p.stat().st_size for p in d.glob("*.safetensors")) / 1e6
            ck = tmp / f"c{hidden}.h5"
            p, w_imp = sh([condense, "import", d, ck], env)
            r_imp = rate(p.stderr)
            p, w_hf = sh([condense, "export", ck, tmp / f"out{hidden}"], env)
            r_hf = rate(p.stderr)
            g32 = tmp / f"m{hidden}-f32.gguf"
            p, w_g = sh([condense, "export", ck, g32, "--format", "gguf"], env)
            r_g = rate(p.stderr)
            p, w_q = sh([condense, "export", ck, tmp / f"m{hidden}-q8.gguf", "--format", "gguf",
                         "--dtype", "q8_0"], env)
            r_q = rate(p.stderr)
            rows.append((hidden, layers, mb, r_imp, w_imp, r_hf, w_hf, r_g, w_g, r_q, w_q))
            print(rows[-1], file=sys.stderr)
            if hidden == SIZES[1][0]:
                import sentencepiece as spm
                ids = [1] + spm.SentencePieceProcessor(model_file=str(tok)).encode(PROMPT)
                gen_row = []
                for threads in sorted({1, a.threads}):
                    tenv = dict(env, OMP_NUM_THREADS=str(threads))
                    p, _ = sh([condense, "generate", ck, "--prompt", PROMPT, "--max-new-tokens",
                               a.new_tokens], tenv)
                    m = re.search(r"decode ([\d.]+) tokens/s", p.stderr + p.stdout)
                    l_tps, _ = llama_cpp_decode(g32, ids, a.new_tokens, threads)
                    gen_row.append((threads, float(m.group(1)), l_tps))
                gen_info = (hidden, layers, mb, len(ids))
    print("| model (hidden x layers) | safetensors MB | import MB/s (wall s) | export hf MB/s (wall s) "
          "| export gguf f32 MB/s (wall s) | export gguf q8_0 MB/s (wall s) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for h, l, mb, ri, wi, rh, wh, rg, wg, rq, wq in rows:
        print(f"| {h} x {l} | {mb:.1f} | {ri:.0f} ({wi:.2f}) | {rh:.0f} ({wh:.2f}) | "
              f"{rg:.0f} ({wg:.2f}) | {rq:.0f} ({wq:.2f}) |")
    h, l, mb, n = gen_info
    print(f"\nGreedy decode, {h} x {l} F32 model ({mb:.0f} MB), prompt {n} tokens, "
          f"{a.new_tokens} new tokens:\n")
    print("| threads | condense tokens/s | llama.cpp tokens/s | ratio condense/llama.cpp |")
    print("| --- | --- | --- | --- |")
    for t, c, lc in gen_row:
        print(f"| {t} | {c:.1f} | {lc:.1f} | {c / lc:.2f} |")


if __name__ == "__main__":
    main()
