"""Text and helpers the tokenizer tests share: a mixed corpus (GCIDE, fortunes, synthetic
digits / punctuation / scripts / whitespace / special tokens), the tests/tools record helpers'
runner, and llama.cpp's own tokenization (llama-cpp-python, vocab only, in a child process)."""
import gzip
import json
import pathlib
import random
import struct
import subprocess
import sys

LLAMA_CHILD = r"""
import json, sys
from llama_cpp import Llama
model, texts, out, special = sys.argv[1:]
llm = Llama(model_path=model, vocab_only=True, verbose=False)
ids = [llm.tokenize(t.encode("utf-8"), add_bos=False, special=special == "1") for t in json.load(open(texts))]
json.dump(ids, open(out, "w"))
"""


def corpus(missing):
    """Mixed text: GCIDE lines, fortunes, and synthetic digits / punctuation / scripts / whitespace."""
    rng = random.Random(13)
    texts = {}
    with gzip.open("/usr/share/dictd/gcide.dict.dz", "rb") as f:
        raw = f.read(6_000_000).decode("utf-8", errors="ignore").split("\n")
    lines = [l for l in raw if l.strip()]
    texts["gcide"] = [lines[i] for i in range(0, len(lines), max(1, len(lines) // 1500))][:1500]
    fortunes = []
    fdir = pathlib.Path("/usr/share/games/fortunes")
    for p in sorted(fdir.glob("*")):
        if p.suffix in (".dat", ".u8") or p.is_dir() or p.is_symlink():
            continue
        try:
            fortunes += p.read_text(encoding="utf-8").split("\n%\n")
        except UnicodeDecodeError:
            continue
    rng.shuffle(fortunes)
    texts["fortunes"] = [f for f in fortunes if f.strip()][:800]
    pools = {
        "digits": "0123456789" * 3 + " .,-+/:%$e",
        "punct": "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~ \u2014\u2026\u00ab\u00bb\u201c\u201d",
        "scripts": "caf\u00e9 na\u00efve \u00df \u00e6 \u03b1\u03b2\u03b3 \u0416\u0438\u0437\u043d\u044c \u4e2d\u6587\u5b57 "
                   "\u65e5\u672c\u8a9e \ud55c\uad6d\uc5b4 \u0627\u0644\u0639\u0631\u0628\u064a\u0629 "
                   "\u0939\u093f\u0928\u094d\u0926\u0940 \U0001F600\U0001F680 e\u0301 \u0660\u0661\u0662 "
                   "\u2167 \u00bd \u00b2 \uff21\uff11 \u017f",
        "space": "  \t\n\r\n\u00a0\u3000\u2009\u200b\u2028\u0085\u180e\x0b\x0c\x1c\x1f ab 1 ,",
    }
    for name, pool in pools.items():
        texts[name] = ["".join(rng.choice(pool) for _ in range(rng.randint(1, 60))) for _ in range(300)]
    words = ["the", "The", "don't", "I'M", "we've", "it'll", "3.14159", "1,000,000", "2024-12-04", "x",
             "hello", "\u00e9t\u00e9", "   ", "\n", "\n\n\n", "\t", "!!", "...", "--", "(a)", "'s", "'S", "'ll"]
    texts["mixed"] = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 20))) for _ in range(300)]
    specials = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<filename>"]
    texts["special"] = [f"{rng.choice(specials)}user\n{rng.choice(words)} {rng.choice(words)}{rng.choice(specials)}"
                        for _ in range(50)] + ["<|im_start|><|im_end|>", "<|im_start", "x<|endoftext|>y"]
    kept, dropped = {}, 0
    for name, items in texts.items():
        ok = [t for t in items if not (set(t.encode("utf-8")) & missing)]
        dropped += len(items) - len(ok)
        kept[name] = ok
    return kept, dropped


def run_tool(tool, args, records, tmp_path, tag):
    """Runs a tests/tools tokenizer helper (`tool ARGS IN OUT`) over `records` (bytes); returns
    (ids per record, decoded bytes per record, the key-value lines it printed)."""
    inp, out = tmp_path / f"{tag}.in", tmp_path / f"{tag}.out"
    inp.write_bytes(b"".join(struct.pack("<I", len(r)) + r for r in records))
    p = subprocess.run([str(tool), *map(str, args), str(inp), str(out)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    data, pos, ids, decoded = out.read_bytes(), 0, [], []
    for _ in records:
        (n,) = struct.unpack_from("<I", data, pos)
        ids.append(list(struct.unpack_from(f"<{n}i", data, pos + 4)))
        pos += 4 + 4 * n
        (m,) = struct.unpack_from("<I", data, pos)
        decoded.append(data[pos + 4:pos + 4 + m])
        pos += 4 + m
    assert pos == len(data)
    info = dict(line.split(" ", 1) for line in p.stdout.strip().splitlines())
    return ids, decoded, info


def llama_cpp_ids(model, texts, tmp_path, special=True):
    """llama.cpp's ids of each text (vocab-only load, no bos; control tokens in the text parsed
    when `special`), from a child process so a crash in llama.cpp fails the test."""
    texts_json, out_json = tmp_path / "texts.json", tmp_path / "llama_ids.json"
    texts_json.write_text(json.dumps(texts))
    p = subprocess.run([sys.executable, "-c", LLAMA_CHILD, str(model), str(texts_json), str(out_json), "1" if special else "0"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(out_json.read_text())


# tokenizer.json pre-tokenizers of the byte-level BPEs condense reads.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")
# GPT-4o's (tiktoken o200k_base), as Phi-4-mini's tokenizer.json writes it.
GPT4O_SPLIT = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
               r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
               r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
PRE_TOKENIZERS = {
    "smollm": {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, BYTE_LEVEL]},
    "gpt2": BYTE_LEVEL,
    "llama-bpe": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": False},
        dict(BYTE_LEVEL, use_regex=False)]},
    "qwen2": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": QWEN2_SPLIT}, "behavior": "Isolated", "invert": False},
        dict(BYTE_LEVEL, use_regex=False)]},
    "gpt-4o": {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": GPT4O_SPLIT}, "behavior": "Isolated", "invert": False},
        dict(BYTE_LEVEL, use_regex=False)]},
}


def tokenizer_json(fields, pre, normalizer=None):
    """A tokenizer.json with GGUF's vocabulary (merges in the [a, b] array form), under the
    pre-tokenizer `pre` (a key of PRE_TOKENIZERS) and `normalizer` (a tokenizers normalizer or None)."""
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
              "special": True} for i, (t, ty) in enumerate(zip(fields["tokens"], fields["token_types"])) if ty == 3]
    assert len(added) == 17
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": normalizer,
            "pre_tokenizer": PRE_TOKENIZERS[pre], "post_processor": None,
            "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                      "vocab": {t: i for i, t in enumerate(fields["tokens"])},
                      "merges": [m.split(" ", 1) for m in fields["merges"]]}}


def gguf_bpe_fields(path):
    """The byte-level BPE vocabulary of a GGUF file (tokenizer.ggml.model "gpt2"), as the gguf
    package reads it: tokens, token types, merges, pre-tokenizer name and special ids."""
    import gguf
    f = gguf.GGUFReader(str(path)).fields
    out = {"tokens": f["tokenizer.ggml.tokens"].contents(), "token_types": f["tokenizer.ggml.token_type"].contents(),
           "merges": f["tokenizer.ggml.merges"].contents(), "pre": f["tokenizer.ggml.pre"].contents()}
    for key, name in [("bos_id", "bos_token_id"), ("eos_id", "eos_token_id"), ("pad_id", "padding_token_id"),
                      ("unk_id", "unknown_token_id")]:
        if f"tokenizer.ggml.{name}" in f:
            out[key] = int(f[f"tokenizer.ggml.{name}"].contents())
    assert f["tokenizer.ggml.model"].contents() == "gpt2"
    return out
