#!/usr/bin/env python3
"""Writes the training documents of condense token stores back out as text, one file per document,
for a `data.corpus: dir` corpus that mixes them.

Purpose: a compressor fitted to one corpus is measured on others (bench/kv_domain_length.sh); to
train on a mixture without ever training on any store's held-out documents, the mixture is made
from the stores' train splits only. Each document (train/ids between train/doc_offsets, its <s>
and </s> dropped) is decoded with the store's byte-level BPE tokenizer.json through the
`tokenizers` package; byte-level BPE decodes to the original text except bytes the vocabulary
lacks.

Usage:
  tools/store_documents.py --tokenizer tokenizer.json --out DIR NAME=STORE.h5 [NAME=STORE.h5 ...]
Writes DIR/NAME_00000.txt, ... (refuses a DIR that exists) and prints the count per store.
"""
import argparse
import pathlib
import sys

import h5py
from tokenizers import Tokenizer


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", required=True, help="the stores' tokenizer.json")
    ap.add_argument("--out", required=True, help="directory to create")
    ap.add_argument("stores", nargs="+", metavar="NAME=STORE.h5")
    a = ap.parse_args()
    out = pathlib.Path(a.out)
    if out.exists():
        sys.exit(f"{out}: already exists; refusing to mix into it")
    tok = Tokenizer.from_file(a.tokenizer)
    specs = []
    for spec in a.stores:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            sys.exit(f"{spec}: expected NAME=STORE.h5")
        specs.append((name, path))
    out.mkdir(parents=True)
    for name, path in specs:
        with h5py.File(path, "r") as f:
            if "train/ids" not in f or "train/doc_offsets" not in f:
                sys.exit(f"{path}: not a condense token store (no train/ids, train/doc_offsets)")
            ids, offsets = f["train/ids"][:], f["train/doc_offsets"][:]
        n = 0
        for i in range(len(offsets) - 1):
            text = tok.decode(ids[offsets[i]:offsets[i + 1]].tolist(), skip_special_tokens=True)
            if text.strip():
                (out / f"{name}_{i:05d}.txt").write_text(text, encoding="utf-8")
                n += 1
        print(f"{name}: {n} documents from {path}")


if __name__ == "__main__":
    main()
