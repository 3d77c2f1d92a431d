"""llama.cpp's sentencepiece tables (GGUF tokenizer.ggml.model "llama": Llama 2, Mistral,
TinyLlama, CodeLlama) rebuilt by condense into a sentencepiece model (text/sentencepiece_proto.h).

A BPE model trained by the sentencepiece package with Llama 2's settings (byte fallback, split
digits, identity normalization, a space prefix, no whitespace collapsing), plus two user-defined
symbols and one control symbol, is written into a vocab-only GGUF as llama.cpp's converter writes
one (pieces, scores, token types, special ids, add_bos / add_eos / add_space_prefix). condense
reads the file as every --tokenizer option does (tests/tools/tokenize_file) and must encode a few
thousand mixed texts exactly as the original .model does in the sentencepiece package, and as
llama.cpp does (vocab only), except texts holding a user-defined symbol: llama.cpp handles those
its own way (it puts a space before the text after such a token, which sentencepiece does not,
and here matched <|im_start|> as a token but spelled <|im_end|> out: 31 of 3853 texts differ),
so the differing texts are counted and each must hold one.
decode(encode(x)) == x. Bad tables are refused naming the file and what is wrong.
"""
import io
import subprocess

import pytest

from conftest import BUILD_DIR, run
from tokenizer_texts import corpus, llama_cpp_ids, run_tool

gguf = pytest.importorskip("gguf")
spm = pytest.importorskip("sentencepiece")
pytest.importorskip("llama_cpp")

TOOL = BUILD_DIR / "tests" / "tokenize_file"
USER_DEFINED = ["<|im_start|>", "<|im_end|>"]
CONTROL = ["<ctrl>", "[INST]", "[/INST]"]  # Mistral v0.3's turn markers are control pieces


def texts_for_test():
    texts, _ = corpus(set())
    return texts


@pytest.fixture(scope="module")
def sp_model():
    """(serialized .model, the texts) for a Llama-2-style BPE trained on GCIDE and fortunes."""
    texts = texts_for_test()
    lines = [l for name in ("gcide", "fortunes") for t in texts[name] for l in t.split("\n") if l.strip()]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=buf, model_type="bpe", vocab_size=2000,
        byte_fallback=True, split_digits=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=True, allow_whitespace_only_pieces=True,
        user_defined_symbols=USER_DEFINED, control_symbols=CONTROL, character_coverage=0.9995,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, minloglevel=2)
    return buf.getvalue(), texts


def tables(model_bytes):
    sp = spm.SentencePieceProcessor(model_proto=model_bytes)
    n = sp.get_piece_size()
    types = []
    for i in range(n):  # sentencepiece's type numbering, which GGUF's token_type shares
        types.append(2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i)
                     else 5 if sp.is_unused(i) else 4 if sp.id_to_piece(i) in USER_DEFINED else 1)
    return {"tokens": [sp.id_to_piece(i) for i in range(n)], "scores": [sp.get_score(i) for i in range(n)],
            "types": types}


def vocab_gguf(path, t, unk=0, bos=1, eos=2, add_bos=True, add_eos=False, scores=True):
    """A vocab-only GGUF of llama.cpp's llama architecture (llama.cpp reads no tensors then)."""
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(128)
    w.add_embedding_length(64)
    w.add_block_count(1)
    w.add_feed_forward_length(128)
    w.add_head_count(4)
    w.add_head_count_kv(4)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(16)
    w.add_tokenizer_model("llama")
    w.add_token_list(t["tokens"])
    if scores:
        w.add_token_scores(t["scores"])
    w.add_token_types(t["types"])
    w.add_unk_token_id(unk)
    w.add_bos_token_id(bos)
    w.add_eos_token_id(eos)
    w.add_add_bos_token(add_bos)
    w.add_add_eos_token(add_eos)
    w.add_add_space_prefix(True)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    return path


def test_rebuilt_tables_encode_as_sentencepiece_and_llama_cpp(sp_model, tmp_path):
    model_bytes, texts = sp_model
    t = tables(model_bytes)
    assert sum(ty == 4 for ty in t["types"]) == 2 and sum(ty == 6 for ty in t["types"]) == 256
    path = vocab_gguf(tmp_path / "vocab.gguf", t)
    flat = [x for items in texts.values() for x in items]
    assert len(flat) > 3000
    records = [x.encode("utf-8") for x in flat]
    ours, decoded, info = run_tool(TOOL, [path], records, tmp_path, "gguf")
    assert info["kind"] == "sentencepiece" and info["vocab_size"] == "2000"
    assert (info["bos_id"], info["eos_id"], info["unk_id"]) == ("1", "2", "0")
    counts = {}
    for ty in t["types"]:
        counts[ty] = counts.get(ty, 0) + 1
    assert info["types"] == " ".join(f"{k}:{counts[k]}" for k in sorted(counts))  # token_type()

    sp = spm.SentencePieceProcessor(model_proto=model_bytes)
    reference = sp.encode(flat)
    mism_sp = [i for i, (a, b) in enumerate(zip(ours, reference, strict=True)) if a != b]
    llama = llama_cpp_ids(path, flat, tmp_path, special=False)
    mism_llama = [i for i, (a, b) in enumerate(zip(ours, llama, strict=True)) if a != b]
    print(f"\n{len(flat)} texts, {sum(map(len, ours))} tokens; differ from sentencepiece: {len(mism_sp)}, "
          f"from llama.cpp: {len(mism_llama)}")
    for i in (mism_sp + mism_llama)[:5]:
        print(repr(flat[i]), ours[i], reference[i], llama[i])
    assert not mism_sp, f"{len(mism_sp)} texts differ from sentencepiece, first {flat[mism_sp[0]]!r}"
    # Only texts with a user-defined symbol may differ from llama.cpp (see the module docstring).
    assert all(any(u in flat[i] for u in USER_DEFINED) for i in mism_llama), \
        [flat[i] for i in mism_llama if not any(u in flat[i] for u in USER_DEFINED)][:3]
    plain = [i for i, x in enumerate(flat) if not any(u in x for u in USER_DEFINED)]
    assert len(plain) > 3000
    assert decoded == records  # decode(encode(x)) == x

    # The rebuilt model is an ordinary sentencepiece model: the package loads it and agrees.
    saved = tmp_path / "rebuilt.model"
    ours2, _, info2 = run_tool(TOOL, ["--save-serialized", saved, path], records[:50], tmp_path, "save")
    assert info2["sha256"] == info["sha256"] and ours2 == ours[:50]
    rebuilt = spm.SentencePieceProcessor(model_proto=saved.read_bytes())
    assert rebuilt.encode(flat[:500]) == reference[:500]
    # ... and reading the rebuilt model back (as a .model file) gives the same tokenizer.
    again, _, info3 = run_tool(TOOL, [saved], records[:50], tmp_path, "again")
    assert info3["sha256"] == info["sha256"] and again == ours[:50]


def expect_refused(tmp_path, path, *needles):
    out = tmp_path / f"{path.stem}.h5"
    p = run("prepare", "--corpus", "fortunes", "--max-documents", 5, "--tokenizer", path, "--out", out,
            check=False)
    assert p.returncode == 1, p.stdout + p.stderr
    for n in (str(path),) + needles:
        assert n in p.stderr, (n, p.stderr)
    assert not out.exists()


def test_special_pieces_take_the_types_their_ids_need(sp_model, tmp_path):
    """llama.cpp reads <unk>, <s>, </s> by id; converters type them variously (gguf-py's
    LlamaHfVocab marks <unk> control). The rebuilt model retypes the pieces at those ids, warns,
    and is then the same model as from correctly typed tables."""
    t = tables(sp_model[0])
    records = [b"The harbour was quiet", b"  42 caf\xc3\xa9\n"]
    want, _, info = run_tool(TOOL, [vocab_gguf(tmp_path / "ok.gguf", t)], records, tmp_path, "ok")
    hf_style = dict(t, types=[3 if i == 0 else ty for i, ty in enumerate(t["types"])])
    p = subprocess.run([str(TOOL), vocab_gguf(tmp_path / "hf.gguf", hf_style), "/dev/null", tmp_path / "o"],
                       capture_output=True, text=True)
    assert p.returncode == 0 and "unk 0 '<unk>' (3 -> 2)" in p.stdout + p.stderr, p.stdout + p.stderr
    ids, _, info_hf = run_tool(TOOL, [tmp_path / "hf.gguf"], records, tmp_path, "hf")
    assert ids == want and info_hf["sha256"] == info["sha256"]
    # A bos id naming a normal piece makes it control (sentencepiece finds bos among those).
    ids, _, info_b = run_tool(TOOL, [vocab_gguf(tmp_path / "bos.gguf", t, bos=300)], records, tmp_path, "bos")
    assert info_b["bos_id"] == "300" and info_b["types"] != info["types"]


def test_bad_tables_are_refused_naming_what_is_wrong(sp_model, tmp_path):
    t = tables(sp_model[0])
    expect_refused(tmp_path, vocab_gguf(tmp_path / "addbos.gguf", t, add_bos=False),
                   "tokenizer.ggml.add_bos_token is false")
    expect_refused(tmp_path, vocab_gguf(tmp_path / "addeos.gguf", t, add_eos=True),
                   "tokenizer.ggml.add_eos_token is true")
    expect_refused(tmp_path, vocab_gguf(tmp_path / "range.gguf", t, eos=5000), "eos token id 5000 is not in [0, 2000)")
    expect_refused(tmp_path, vocab_gguf(tmp_path / "unk.gguf", t, unk=2000), "unk token id 2000")
    expect_refused(tmp_path, vocab_gguf(tmp_path / "same.gguf", t, bos=0), "no token of type 2")
    bad_type = dict(t, types=t["types"][:-1] + [7])
    expect_refused(tmp_path, vocab_gguf(tmp_path / "type.gguf", bad_type), "has type 7")
    dup = dict(t, tokens=t["tokens"][:-1] + [t["tokens"][300]])
    expect_refused(tmp_path, vocab_gguf(tmp_path / "dup.gguf", dup), f"'{t['tokens'][300]}' appears twice")
    short = dict(t, scores=t["scores"][:-1])
    expect_refused(tmp_path, vocab_gguf(tmp_path / "scores.gguf", short), "2000 pieces but 1999 scores")
    # Without scores llama.cpp merges at score 0 everywhere; condense follows (not refused).
    ids, _, info = run_tool(TOOL, [vocab_gguf(tmp_path / "noscores.gguf", t, scores=False)], [b"abc"], tmp_path, "ns")
    assert info["kind"] == "sentencepiece" and ids[0]


def test_control_pieces_written_in_text_parse_as_llama_cpp(sp_model, tmp_path):
    """Tokenizer::encode_special (what `generate --chat --chat-format mistral` feeds) turns control
    pieces written in the text into their ids, as llama.cpp tokenizes with special=True: the text
    between them each with a space prefix."""
    model_bytes, texts = sp_model
    path = vocab_gguf(tmp_path / "vocab.gguf", tables(model_bytes))
    plain = [t for t in texts["gcide"][:300] + texts["mixed"][:200] if not any(u in t for u in USER_DEFINED)]
    chats = ["[INST] Hi there[/INST]", "[INST] Be brief.\n\nWhat is 2+2?[/INST]", "x[INST]y[/INST]z",
             "[INST][/INST]", "  [INST]  a  [/INST]  ", "<s>[INST] a</s>", "[INST", "<ctrl>tail",
             "[INST] caf\u00e9 \u4e2d\u6587[/INST] 42"]
    flat = chats + plain
    records = [t.encode("utf-8") for t in flat]
    ours, decoded, _ = run_tool(TOOL, ["--special", path], records, tmp_path, "special")
    llama = llama_cpp_ids(path, flat, tmp_path, special=True)
    mism = [i for i, (a, b) in enumerate(zip(ours, llama, strict=True)) if a != b]
    assert not mism, [(flat[i], ours[i], llama[i]) for i in mism[:3]]
    inst = tables(model_bytes)["tokens"].index("[INST]")
    assert ours[0][0] == inst and inst not in ours[len(chats)]  # parsed; plain text untouched


def test_prepare_parse_special_turns_control_pieces_into_their_ids(sp_model, tmp_path):
    """`prepare --parse-special` stores chat-formatted text with its control pieces as their ids (the
    documents' ids are encode_special's, which the test above compares with llama.cpp); without it
    they stay text, as before; the store records the choice."""
    import h5py
    import numpy as np
    model_bytes, _ = sp_model
    model = tmp_path / "sp.model"
    model.write_bytes(model_bytes)
    corpus_dir = tmp_path / "chats"
    corpus_dir.mkdir()
    docs = ["[INST] Which word means a small boat?[/INST] A skiff.", "[INST] Be brief.[/INST] Yes."] * 3
    for i, d in enumerate(docs):
        (corpus_dir / f"{i}.txt").write_text(d)
    inst = tables(model_bytes)["tokens"].index("[INST]")
    stores = {}
    for flag in ([], ["--parse-special"]):
        out = tmp_path / f"store{len(flag)}.h5"
        run("prepare", "--corpus", "dir", "--path", corpus_dir, "--tokenizer", model, "--val-fraction", 0,
            "--out", out, *flag)
        with h5py.File(out, "r") as f:
            stores[bool(flag)] = (f["train/ids"][()], f.attrs.get("parse_special"))
    ids, attr = stores[True]
    assert np.count_nonzero(ids == inst) == len(docs) and attr == 1
    ids, attr = stores[False]
    assert np.count_nonzero(ids == inst) == 0 and attr is None


def test_hf_added_tokens_join_the_sentencepiece_model(sp_model, tmp_path):
    """A Hugging Face directory with a tokenizer.model and tokenizer.json's added tokens after its
    pieces (as Phi-3's <|user|> ... <|end|>): the import appends them (special ones as control
    pieces, others as user-defined), so a chat prompt's control pieces parse to their ids as
    llama.cpp parses them on the import's GGUF export (which carries the added pieces with their
    types), and a user-defined one is matched in plain text. Added tokens that cannot be appended
    (a gap in the ids, a piece the model has) leave tokenizer.model alone, with a warning."""
    import json as json_

    import torch
    transformers = pytest.importorskip("transformers")

    model_bytes, _ = sp_model
    n = len(tables(model_bytes)["tokens"])
    added = [("<|endoftext|>", True), ("<|assistant|>", True), ("<|end|>", True), ("<|user|>", True),
             ("<custom>", False)]
    hf = tmp_path / "hf"
    torch.manual_seed(3)
    cfg = transformers.Phi3Config(vocab_size=n + len(added) + 3, hidden_size=64, intermediate_size=96,
                                  num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=4,
                                  max_position_embeddings=128, original_max_position_embeddings=128,
                                  pad_token_id=None, bos_token_id=1, eos_token_id=2)
    transformers.Phi3ForCausalLM(cfg).save_pretrained(hf, safe_serialization=True)
    (hf / "tokenizer.model").write_bytes(model_bytes)
    entries = [{"id": i, "content": t, "special": True} for i, t in enumerate(["<unk>", "<s>", "</s>"])]
    entries += [{"id": n + i, "content": t, "special": s} for i, (t, s) in enumerate(added)]
    (hf / "tokenizer.json").write_text(json_.dumps({"version": "1.0", "added_tokens": entries}))
    ckpt = tmp_path / "imp.h5"
    run("import", hf, ckpt)
    assert f" {n + len(added)} pieces" in run("info", ckpt).stdout
    gguf_path = tmp_path / "imp.gguf"
    run("export", ckpt, gguf_path, "--format", "gguf")
    r = gguf.GGUFReader(str(gguf_path))
    tokens = [bytes(r.fields["tokenizer.ggml.tokens"].parts[i]).decode() for i in r.fields["tokenizer.ggml.tokens"].data]
    types = [int(r.fields["tokenizer.ggml.token_type"].parts[i][0]) for i in r.fields["tokenizer.ggml.token_type"].data]
    assert tokens[n:n + len(added)] == [t for t, _ in added] and types[n:n + len(added)] == [3, 3, 3, 3, 4]
    # Control pieces written in a prompt parse to their ids, as llama.cpp parses them.
    chat = "<|user|>\nWhich word means a small boat?<|end|>\n<|assistant|>\n"
    ours, _, _ = run_tool(TOOL, ["--special", gguf_path], [chat.encode()], tmp_path, "special")
    assert ours[0] == llama_cpp_ids(gguf_path, [chat], tmp_path, special=True)[0]
    assert n + 3 in ours[0] and n + 2 in ours[0]
    # <custom> is matched in plain text (a user-defined piece).
    text = tmp_path / "t.txt"
    text.write_text("a <custom> word")
    out = tmp_path / "s.json"
    run("score", ckpt, "--text", text, "--json", out)
    positions = json_.loads(out.read_text())["positions"]
    assert n + 4 in [q["id"] for q in positions] + [positions[-1]["next_id"]]
    # The HF export lists them as added tokens: transformers' slow and fast tokenizers read each
    # as one id (special: the control pieces), as condense and llama.cpp do.
    out = tmp_path / "hf_out"
    run("export", ckpt, out, "--format", "hf")
    for fast in (False, True):
        hf_tok = transformers.AutoTokenizer.from_pretrained(str(out), use_fast=fast)
        for i, (t, special) in enumerate(added):
            assert hf_tok.encode(f"a{t}b", add_special_tokens=False).count(n + i) == 1, (fast, t)
            assert hf_tok.added_tokens_decoder[n + i].special == special, (fast, t)
    # A gap after the model's pieces, or a piece the model has: tokenizer.model alone, with a warning.
    for bad, needle in ((n + 7, "without gaps"), (tables(model_bytes)["tokens"][500], "already a piece")):
        wrong = [dict(e) for e in entries]
        if isinstance(bad, int):
            wrong[-1]["id"] = bad
        else:
            wrong[-1]["content"] = bad
        (hf / "tokenizer.json").write_text(json_.dumps({"version": "1.0", "added_tokens": wrong}))
        other = tmp_path / f"other{len(needle)}.h5"
        p = run("import", hf, other)
        assert needle in p.stderr and "tokenizer.model alone" in p.stderr, p.stderr
        assert f" {n} pieces" in run("info", other).stdout


# Phi-3-mini-4k-instruct's chat template (as projects quote its tokenizer_config.json; Phi-3.5's
# leaves out the bos_token).
PHI3_TEMPLATE = ("{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'system') %}"
                 "{{'<|system|>' + '\n' + message['content'] + '<|end|>' + '\n'}}"
                 "{% elif (message['role'] == 'user') %}"
                 "{{'<|user|>' + '\n' + message['content'] + '<|end|>' + '\n' + '<|assistant|>' + '\n'}}"
                 "{% elif message['role'] == 'assistant' %}{{message['content'] + '<|end|>' + '\n'}}"
                 "{% endif %}{% endfor %}")
# Phi-3's tokenizer.json normalizer (Llama's older layout): a space prefix before every text
# between special tokens, spaces as U+2581; no pre-tokenizer.
PHI3_NORMALIZER = {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u2581"},
                                                       {"type": "Replace", "pattern": {"String": " "},
                                                        "content": "\u2581"}]}


@pytest.mark.parametrize("system", ["", "Answer in one word, please."])
def test_phi3_chat_prompt_is_the_ids_phi3s_tokenizer_and_llama_cpp_give(sp_model, tmp_path, system):
    """generate --chat on a Phi-3-style checkpoint (a tokenizer.model plus tokenizer.json's
    <|system|>, <|user|>, <|assistant|>, <|end|>): the format is picked from those pieces, and the
    prompt's ids are what a fast tokenizer laid out as Phi-3's tokenizer.json (the turn tokens with
    rstrip, a space prefix before each text) gives for Phi-3-mini's chat template, and what llama.cpp
    gives for the rendered text on the checkpoint's GGUF named phi3 (it then strips after special
    tokens too): no newline pieces after the turn tokens, leading whitespace of a message (Unicode
    too) dropped. transformers' slow LlamaTokenizer with legacy=False gives other ids (no space
    prefix after a special token), so the comparison has teeth."""
    import json as json_

    import torch
    transformers = pytest.importorskip("transformers")
    from tokenizers import AddedToken

    from model_peers import chat_prompt_ids

    model_bytes, _ = sp_model
    n = len(tables(model_bytes)["tokens"])
    added = ["<|endoftext|>", "<|assistant|>", "<|system|>", "<|end|>", "<|user|>"]
    hf = tmp_path / "hf"
    torch.manual_seed(3)
    cfg = transformers.Phi3Config(vocab_size=n + len(added), hidden_size=64, intermediate_size=96,
                                  num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=4,
                                  max_position_embeddings=128, original_max_position_embeddings=128,
                                  pad_token_id=None, bos_token_id=1, eos_token_id=n)
    transformers.Phi3ForCausalLM(cfg).save_pretrained(hf, safe_serialization=True)
    (hf / "tokenizer.model").write_bytes(model_bytes)
    entries = [{"id": i, "content": t, "special": True} for i, t in enumerate(["<unk>", "<s>", "</s>"])]
    entries += [{"id": n + i, "content": t, "special": True} for i, t in enumerate(added)]
    (hf / "tokenizer.json").write_text(json_.dumps({"version": "1.0", "added_tokens": entries}))
    ckpt = tmp_path / "phi3.h5"  # the GGUF export's general.name: llama.cpp's Phi-3 rules apply
    run("import", hf, ckpt)
    gguf_path = tmp_path / "phi3.gguf"
    run("export", ckpt, gguf_path, "--format", "gguf")

    def with_turn_tokens(tok):
        tok.add_tokens([AddedToken(t, rstrip=t != "<|endoftext|>", lstrip=False, normalized=False, special=True)
                        for t in added], special_tokens=True)
        assert tok.convert_tokens_to_ids(added) == list(range(n, n + len(added)))
        return tok

    converted = transformers.LlamaTokenizerFast(vocab_file=str(hf / "tokenizer.model"), from_slow=True,
                                                add_bos_token=False, add_eos_token=False)
    layout = json_.loads(converted.backend_tokenizer.to_str())
    layout["normalizer"], layout["pre_tokenizer"] = PHI3_NORMALIZER, None
    (tmp_path / "phi3_tokenizer.json").write_text(json_.dumps(layout))
    fast = with_turn_tokens(transformers.LlamaTokenizerFast(tokenizer_file=str(tmp_path / "phi3_tokenizer.json"),
                                                            add_bos_token=False, add_eos_token=False))
    slow = with_turn_tokens(transformers.LlamaTokenizer(str(hf / "tokenizer.model"), legacy=False,
                                                        add_bos_token=False, add_eos_token=False))
    # Leading whitespace of a message: ASCII (which llama.cpp strips too) and Unicode (a no-break
    # space, which only the tokenizer strips).
    for user in ("\n  Which word means a small boat?\nName one. ", "\n\u00a0 Which word means a small boat?"):
        ours = chat_prompt_ids(ckpt, user, system, "phi3")
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        theirs = fast.apply_chat_template(messages, chat_template=PHI3_TEMPLATE, tokenize=True)
        rendered = fast.apply_chat_template(messages, chat_template=PHI3_TEMPLATE, tokenize=False)
        slow_ids = slow.apply_chat_template(messages, chat_template=PHI3_TEMPLATE, tokenize=True)
        print(f"\nphi3 chat ids, system {bool(system)}, {user[:4]!r}: condense {len(ours)}, Phi-3's fast "
              f"tokenizer {len(theirs)}, slow legacy=False {len(slow_ids)}")
        assert ours == theirs
        assert slow_ids != theirs
        if "\u00a0" not in user:
            assert ours == [1] + llama_cpp_ids(gguf_path, [rendered.removeprefix("<s>")], tmp_path, special=True)[0]
