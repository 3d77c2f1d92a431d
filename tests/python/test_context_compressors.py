"""Context compressors through the CLI (kind context_compressor; compressors/context_arc.h,
compressors/context_compllm.h).

On a briefly trained small model as the frozen decoder, for the ARC-style encoder
(recipes/context_arc.yaml) and CompLLM (context.method=compllm): training changes only the
compressor's tensors (every decoder tensor in the run's checkpoints is bitwise the init's, with
no optimizer state), lowers the continuation loss with compressed context below the untrained
compressor's, and resumes bitwise. `condense context-eval` reports every baseline on the same
tokens, with gap closed computed from its own NLLs, and KV bytes that follow the layout;
`compress` and generate / score --context / --context-vectors agree, chunks are independent, and
vectors made for another decoder are refused. Bad options fail naming the key, with no run
directory written.
"""
import json
import shutil

import h5py
import numpy as np
import pytest

from conftest import run
from export_fixtures import SOURCE, assert_same_datasets, model_tensors, start_from_step, trained  # noqa: F401

RECIPE = SOURCE / "recipes" / "context_arc.yaml"


def arc_args(trained, store, out, steps=30, *extra):
    return ["train", RECIPE, f"init={trained[0]}", f"out_dir={out}", f"data.dataset={store}",
            "data.seq_len=32", "data.batch_size=4", "context.chunk_len=16", "context.pooling_factor=4",
            "context.encoder_layers=1", f"train.steps={steps}", "train.warmup_steps=2", "train.lr=2e-3",
            "train.eval_every=0", "train.eval_batches=2", "train.threads=1", "train.log_every=10",
            "checkpoint.every=10", "checkpoint.keep=5", *extra]


@pytest.fixture(scope="module")
def arc_run(trained, small_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("arc") / "run"
    run(*arc_args(trained, small_store, out))
    return out


def context_eval(source, *extra):
    out = run("context-eval", source, "--batches", 4, "--threads", 1, *extra)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_only_the_compressor_trains(trained, arc_run):
    orig, _, _ = model_tensors(trained[0])
    ckpt = arc_run / "checkpoints" / "step_000030.h5"
    new, _, _ = model_tensors(ckpt)
    assert orig.keys() == new.keys()
    for k in orig:
        assert np.array_equal(orig[k], new[k]), k
    with h5py.File(ckpt, "r") as f:  # optimizer state only for what trains
        assert set(f["optimizer"].keys()) == {n for n in f.keys() if n.startswith(("encoder.", "projector."))}


def test_training_beats_the_untrained_encoder_and_reports_consistently(arc_run):
    j = context_eval(arc_run)
    nll, gap = j["nll"], j["gap_closed"]
    assert set(nll) == {"none", "full", "compressed", "truncated", "mean_pool", "untrained",
                        "compressed_other_window", "full_other_window"}
    assert nll["full"] < nll["none"]  # the decoder uses its context
    assert nll["compressed"] < nll["untrained"]
    for name in ("compressed", "truncated", "mean_pool", "untrained", "compressed_other_window",
                 "full_other_window"):
        expect = (nll["none"] - nll[name]) / (nll["none"] - nll["full"])
        assert abs(gap[name] - expect) < 1e-9, name
    content = (nll["compressed_other_window"] - nll["compressed"]) / (nll["full_other_window"] - nll["full"])
    assert abs(j["content_gap_closed"] - content) < 1e-9
    assert j["compressed_positions"] == 5 and j["chunk_len"] == 16 and j["continuation_len"] == 16
    # 2 layers x 2 KV heads x 16 x (K, V) x 4 bytes per position; full 32 positions, compressed
    # 4 vectors + <Cont> + 16.
    per_position = 2 * 2 * 16 * 2 * 4
    assert j["kv_bytes_per_window"] == {"full": 32 * per_position, "compressed": 21 * per_position}
    for key in ("", "_untrained", "_uncompressed"):
        assert 0 <= j["reconstruction_accuracy" + key] <= 1
    # Another layout of the same compressor: a plain prefix before a longer chunk.
    k = context_eval(arc_run, "--prefix-len", 4, "--chunk-len", 20, "--seq-len", 40)
    assert k["compressed_positions"] == 6 and k["continuation_len"] == 16


def test_resume_is_bitwise(trained, small_store, arc_run, tmp_path):
    resumed = tmp_path / "resumed"
    start_from_step(arc_run, resumed, 10)
    run(*arc_args(trained, small_store, resumed), "--resume")
    assert_same_datasets(arc_run / "checkpoints" / "step_000030.h5",
                         resumed / "checkpoints" / "step_000030.h5",
                         ["encoder.", "projector.", "optimizer"], at_least=12)


@pytest.mark.parametrize("override, message", [
    ("context.pooling_factor=32", "context.pooling_factor 32 is larger than the chunk"),
    ("context.chunk_len=32", "must leave at least one continuation token"),
    ("context.encoder_layers=3", "context.encoder_layers 3: valid is 1..2"),
    ("context.reconstruction_share=1.5", "context.reconstruction_share"),
    ("context.method=xyz", "context.method"),
])
def test_bad_options_write_nothing(trained, small_store, tmp_path, override, message):
    out = tmp_path / "bad"
    r = run(*arc_args(trained, small_store, out, 2, override), check=False)
    assert r.returncode != 0 and message in r.stderr, r.stderr
    assert not out.exists()


def test_context_eval_refuses_a_plain_checkpoint(trained):
    r = run("context-eval", trained[0], check=False)
    assert r.returncode != 0 and "without a context compressor" in r.stderr, r.stderr


def test_prune_refuses_a_context_compressor_run(arc_run, tmp_path):
    out = tmp_path / "p.h5"
    r = run("prune", arc_run, "--method", "magnitude", "--sparsity", 0.5, "--out", out, check=False)
    assert r.returncode == 1 and "is a context_compressor run" in r.stderr, r.stderr
    assert not out.exists()


def compress(ckpt, text, out, *extra, check=True):
    return run("compress", ckpt, "--text", text, "--out", out, "--threads", 1, *extra, check=check)


def score_json(source, text, *extra):
    return json.loads(run("score", source, "--text", text, "--top-k", 0, *extra).stdout.strip().splitlines()[-1])


def test_compress_generate_and_score_with_context(arc_run, tmp_path):
    context = tmp_path / "context.txt"
    context.write_text("Apple, n. [1913 Webster] The fleshy pome or fruit of a rosaceous tree, cultivated "
                       "in numberless varieties in the temperate zones. " * 2)
    query = tmp_path / "query.txt"
    query.write_text(" The apple tree bears fruit.")
    ctx = tmp_path / "ctx.h5"
    j = json.loads(compress(arc_run, context, ctx).stdout.strip().splitlines()[-1])
    # Chunks of the recipe's 16 tokens, each compressed independently at factor 4.
    chunks = [16] * (j["tokens"] // 16) + ([j["tokens"] % 16] if j["tokens"] % 16 else [])
    assert j["tokens"] > 32 and j["positions"] == sum((c + 3) // 4 for c in chunks) + 1  # + <Cont>
    with h5py.File(ctx, "r") as f:
        vectors = f["context/embeds"][()]
        assert vectors.shape == (j["positions"], 64) and f["context"].attrs["pooling_factor"] == 4
    # On the fly and from the file: the same log-probabilities.
    a = score_json(arc_run, query, "--context", context)
    b = score_json(arc_run, query, "--context-vectors", ctx)
    plain = score_json(arc_run, query)
    assert a["positions"] == b["positions"]
    assert a["positions"][0]["id"] == -1 and a["context_positions"] == j["positions"]
    assert a["context_tokens"] == j["tokens"]
    assert a["predicted"] == plain["predicted"]  # <Cont> predicts what <s> predicted
    assert a["nll"] != plain["nll"]
    # Chunks are independent: changing the last chunk leaves the first chunks' vectors bitwise.
    ids_text = context.read_text()
    other = tmp_path / "other.txt"
    other.write_text(ids_text[:-20] + "zebra crossing road.")
    ctx2 = tmp_path / "ctx2.h5"
    compress(arc_run, other, ctx2)
    with h5py.File(ctx2, "r") as f:
        v2 = f["context/embeds"][()]
    assert np.array_equal(v2[:4], vectors[:4])
    g1 = run("generate", arc_run, "--context", context, "--prompt", "", "--max-new-tokens", 8, "--ignore-eos")
    g2 = run("generate", arc_run, "--context-vectors", ctx, "--max-new-tokens", 8, "--ignore-eos")
    assert g1.stdout == g2.stdout and "compressed into" in g1.stderr


def test_context_vectors_for_another_decoder_are_refused(arc_run, small_store, tmp_path):
    from export_fixtures import train_tiny
    context = tmp_path / "context.txt"
    context.write_text("A dictionary entry, compressed.")
    ctx = tmp_path / "ctx.h5"
    compress(arc_run, context, ctx)
    other = train_tiny(small_store, tmp_path / "other", steps=3)
    query = tmp_path / "q.txt"
    query.write_text("Some text.")
    r = run("score", other, "--text", query, "--context-vectors", ctx, check=False)
    assert r.returncode != 0 and "was compressed for the decoder" in r.stderr, r.stderr
    r = run("score", other, "--text", query, "--context", context, check=False)
    assert r.returncode != 0 and "without a context compressor" in r.stderr, r.stderr
    with h5py.File(ctx, "r+") as f:  # a file whose width does not match the decoder
        v = f["context/embeds"][()]
        del f["context/embeds"]
        f["context/embeds"] = v[:, :32]
    r = run("score", arc_run, "--text", query, "--context-vectors", ctx, check=False)
    assert r.returncode != 0 and "must be [k, 64]" in r.stderr, r.stderr
    # A context whose compressed form and the text do not fit the decoder's 128 positions.
    long = tmp_path / "long.txt"
    long.write_text("The fleshy pome or fruit of a rosaceous tree. " * 80)
    r = run("score", arc_run, "--text", query, "--context", long, check=False)
    assert r.returncode != 0 and "context positions do not fit" in r.stderr, r.stderr
    r = run("compress", arc_run, "--text", tmp_path / "missing.txt", "--out", tmp_path / "x.h5", check=False)
    assert r.returncode != 0 and "missing.txt" in r.stderr, r.stderr
    assert not (tmp_path / "x.h5").exists()


def compllm_args(trained, store, out, steps=30, *extra):
    return arc_args(trained, store, out, steps, "context.method=compllm", "context.segment_len=8",
                    "context.pooling_factor=2", "context.lora_rank=4", *extra)


@pytest.fixture(scope="module")
def compllm_run(trained, small_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("compllm") / "run"
    run(*compllm_args(trained, small_store, out))
    return out


def test_compllm_trains_its_tensors_only_and_resumes_bitwise(trained, small_store, compllm_run, tmp_path):
    orig, _, _ = model_tensors(trained[0])
    ckpt = compllm_run / "checkpoints" / "step_000030.h5"
    new, _, _ = model_tensors(ckpt)
    for k in orig:
        assert np.array_equal(orig[k], new[k]), k
    with h5py.File(ckpt, "r") as f:
        names = list(f.keys())
        # The compression pass's adapters are stored apart from the decoder's (never merged).
        assert not [n for n in names if n.startswith("lora")]
        assert {"compllm.slots", "compllm.proj.weight"} <= set(names)
        assert set(f["optimizer"].keys()) == {n for n in names if n.startswith("compllm.")}
    # eval sees the unchanged decoder.
    ev = [json.loads(run("eval", c, "--batches", 2, "--seq-len", 32, "--batch-size", 4).stdout.splitlines()[-1])["val_loss"]
          for c in (trained[0], ckpt)]
    assert ev[0] == ev[1]
    resumed = tmp_path / "resumed"
    start_from_step(compllm_run, resumed, 10)
    run(*compllm_args(trained, small_store, resumed), "--resume")
    assert_same_datasets(ckpt, resumed / "checkpoints" / "step_000030.h5", ["compllm.", "optimizer"], at_least=20)


def test_compllm_validation_sees_the_current_compressor(trained, small_store, tmp_path):
    # Validation runs without gradients; while that went through CompLLM's segment cache (before a
    # compressor in training mode bypassed it), every validation repeated the first one's loss.
    out = tmp_path / "run"
    run(*compllm_args(trained, small_store, out, 15, "train.eval_every=5"))
    val = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    val = [m["loss"] for m in val if m.get("split") == "val"]
    assert len(val) == 3 and len(set(val)) == 3, val


def test_compllm_context_eval_and_scoring(compllm_run, tmp_path):
    j = context_eval(compllm_run)
    assert j["method"] == "compllm" and j["compressed_positions"] == 8  # 2 segments of 8 -> 4 each
    assert j["reconstruction_accuracy"] is None and j["reconstruction_accuracy_untrained"] is None
    assert j["nll"]["compressed"] < j["nll"]["untrained"]
    context = tmp_path / "context.txt"
    context.write_text("Apple, n. [1913 Webster] The fleshy pome or fruit of a rosaceous tree.")
    query = tmp_path / "query.txt"
    query.write_text(" The apple tree bears fruit.")
    ctx = tmp_path / "ctx.h5"
    c = json.loads(compress(compllm_run, context, ctx).stdout.strip().splitlines()[-1])
    assert c["method"] == "compllm" and c["positions"] == sum((min(8, c["tokens"] - s) + 1) // 2
                                                             for s in range(0, c["tokens"], 8))
    a = score_json(compllm_run, query, "--context", context)
    b = score_json(compllm_run, query, "--context-vectors", ctx)
    # The same tokens and, to float rounding, the same log-probabilities (bitwise on an AVX-512
    # Xeon; MKL's AVX2 GEMMs round differently by row and thread count).
    strip = lambda ps: [{k: v for k, v in p.items() if k != "logprob"} for p in ps]  # noqa: E731
    assert strip(a["positions"]) == strip(b["positions"]) and a["context_positions"] == c["positions"]
    assert max(abs(p["logprob"] - q["logprob"]) for p, q in zip(a["positions"], b["positions"])) < 1e-5


# xRAG (compressors/context_xrag.h): documents with embeddings in a condense-documents/1 file.

XRAG_RECIPE = SOURCE / "recipes" / "context_xrag.yaml"
ENTRIES = ["a. Causing, or implying, abdication.", "n. The act of giving up a high office.",
           "v. t. To hide; to conceal from view.", "n. A place for hiding articles of value.",
           "n. The belly, between the thorax and the pelvis.", "a. Of or pertaining to the belly.",
           "v. t. To draw away by force; to carry off.", "n. A deviation from the common type."]
WORDS = ["Abdicative", "Abdication", "Abscond", "Abditory", "Abdomen", "Abdominal", "Abduct", "Aberrance"]


def write_documents(path, count=40, width=24, seed=0, answers=True):
    """A documents file as tools/embed_documents.py writes it, with seeded unit embeddings."""
    rng = np.random.default_rng(seed)
    texts = [ENTRIES[i % 8] + f" Sense {i}." for i in range(count)]
    e = rng.standard_normal((count, width)).astype(np.float32)
    e /= np.linalg.norm(e, axis=1, keepdims=True)

    def pack(f, group, items):
        raw = [s.encode() for s in items]
        f[group + "/bytes"] = np.frombuffer(b"".join(raw), dtype=np.uint8)
        f[group + "/offsets"] = np.cumsum([0] + [len(r) for r in raw]).astype(np.int64)

    with h5py.File(path, "w") as f:
        f["embeddings"] = e
        pack(f, "documents", texts)
        if answers:
            pack(f, "answers", [WORDS[i % 8] for i in range(count)])
        f.attrs["format"] = np.bytes_("condense-documents/1")
        f.attrs["embedding_model"] = np.bytes_("seeded-random")
        f.attrs["normalized"] = np.int64(1)
    return path


def xrag_args(trained, store, out, docs, steps=20, *extra):
    return ["train", XRAG_RECIPE, f"init={trained[0]}", f"out_dir={out}", f"data.dataset={store}",
            "data.seq_len=32", "data.batch_size=4", "context.chunk_len=16", f"context.documents={docs}",
            "context.held_out=8", f"train.steps={steps}", "train.warmup_steps=2", "train.lr=3e-3",
            "train.eval_every=10", "train.eval_batches=2", "train.threads=1", "train.log_every=10",
            "checkpoint.every=10", "checkpoint.keep=5", *extra]


@pytest.fixture(scope="module")
def xrag_runs(trained, small_store, tmp_path_factory):
    d = tmp_path_factory.mktemp("xrag")
    docs = write_documents(d / "docs.h5")
    run(*xrag_args(trained, small_store, d / "stage1", docs))
    run(*xrag_args(trained, small_store, d / "stage2", docs, 10, "context.stage=2",
                   f"context.start_from={d / 'stage1'}"))
    return d, docs


def test_xrag_trains_its_projector_only_and_resumes_bitwise(trained, small_store, xrag_runs, tmp_path):
    d, docs = xrag_runs
    orig, _, _ = model_tensors(trained[0])
    ckpt = d / "stage1" / "checkpoints" / "step_000020.h5"
    new, _, _ = model_tensors(ckpt)
    for k in orig:
        assert np.array_equal(orig[k], new[k]), k
    names = {"xrag.projector.0.weight", "xrag.projector.0.bias", "xrag.projector.2.weight",
             "xrag.projector.2.bias"}
    with h5py.File(ckpt, "r") as f:
        assert names <= set(f.keys()) and set(f["optimizer"].keys()) == names
        assert f["xrag.projector.0.weight"].shape == (64, 24)
        stage1 = {n: f[n][()] for n in names}
    # Stage 2 starts from stage 1's projector and changes it.
    with h5py.File(d / "stage2" / "checkpoints" / "step_000010.h5", "r") as f:
        assert any(not np.array_equal(f[n][()], stage1[n]) for n in names)
    log = (d / "stage2" / "metrics.jsonl").read_text()
    assert log  # trained
    resumed = tmp_path / "resumed"
    start_from_step(d / "stage1", resumed, 10)
    run(*xrag_args(trained, small_store, resumed, docs), "--resume")
    assert_same_datasets(ckpt, resumed / "checkpoints" / "step_000020.h5", ["xrag.", "optimizer"], at_least=8)


def test_xrag_context_eval_reports_the_task_and_paraphrase(xrag_runs):
    d, docs = xrag_runs
    j = context_eval(d / "stage2", "--documents-count", 40)
    assert j["method"] == "xrag" and j["stage"] == 2 and j["compressed_positions"] == 1
    t = j["task"]
    assert t["documents"] == 40
    conditions = {"none", "full", "compressed", "truncated", "mean_pool", "untrained", "compressed_other"}
    for part in ("answer", "paraphrase"):
        nll, gap = t[part]["nll"], t[part]["gap_closed"]
        assert set(nll) == conditions
        for name in conditions - {"none", "full"}:
            assert abs(gap[name] - (nll["none"] - nll[name]) / (nll["none"] - nll["full"])) < 1e-9
    assert all(0 <= v <= 1 for v in t["answer"]["exact_match"].values())
    assert t["answer"]["context_positions"]["compressed"] == 1 and t["answer"]["context_positions"]["full"] > 5
    assert all(v > 0 for v in t["answer"]["seconds_per_document"].values())
    assert all(0 <= v <= 1 for v in t["paraphrase"]["token_accuracy"].values())
    # Trained on these documents (all 40 scored, 32 of them trained on): better than untrained.
    assert t["answer"]["nll"]["compressed"] < t["answer"]["nll"]["untrained"]
    s1 = context_eval(d / "stage1", "--documents-count", 40)["task"]["paraphrase"]["nll"]
    assert s1["compressed"] < s1["untrained"]


def test_xrag_loss_weighs_batches_by_their_tokens(trained, small_store, xrag_runs, tmp_path):
    """Stage 2's answers differ in length, so a batch's loss is a mean over its answer tokens:
    one batch of 4 documents, two accumulated micro-batches of 2 and two ranks of 2 take the same
    first step (loss and projector), as transformers >= 4.46 weighs accumulated batches. With
    every micro-batch weighing alike they differ (the answers here are 2-5 tokens long)."""
    from test_data_parallel import mpirun
    d, docs = xrag_runs
    # Plain SGD: the step is the gradient (Adam's first step is nearly its sign, blind to weights).
    common = ["context.stage=2", f"context.start_from={d / 'stage1'}", "train.eval_every=0",
              "checkpoint.every=1", "train.optimizer=sgd", "train.momentum=0", "train.weight_decay=0",
              "train.grad_clip=0"]
    one, acc, ranks = tmp_path / "one", tmp_path / "acc", tmp_path / "ranks"
    run(*xrag_args(trained, small_store, one, docs, 1, *common))
    run(*xrag_args(trained, small_store, acc, docs, 1, *common, "data.batch_size=2", "train.grad_accum=2"))
    mpirun(2, *xrag_args(trained, small_store, ranks, docs, 1, *common, "data.batch_size=2"))

    def first(out):
        row = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()
               if json.loads(l)["split"] == "train"][0]
        with h5py.File(out / "checkpoints" / "step_000001.h5", "r") as f:
            w = {n: f[n][()] for n in f.keys() if n.startswith("xrag.")}
        return row["loss"], row["grad_norm"], w
    l1, g1, w1 = first(one)
    with h5py.File(d / "stage1" / "checkpoints" / "step_000020.h5", "r") as f:
        assert any(np.abs(w1[n] - f[n][()]).max() > 1e-5 for n in w1)  # the step moved it
    for other in (acc, ranks):
        l2, g2, w2 = first(other)
        assert l2 == pytest.approx(l1, rel=1e-5), (other.name, l1, l2)
        assert g2 == pytest.approx(g1, rel=1e-5), (other.name, g1, g2)  # the same gradient
        for n in w1:
            assert np.abs(w2[n] - w1[n]).max() < 1e-7, (other.name, n)


def test_xrag_compress_and_score_with_vectors(xrag_runs, arc_run, tmp_path):
    d, docs = xrag_runs
    ctx = tmp_path / "ctx.h5"
    j = json.loads(run("compress", d / "stage2", "--embeddings", docs, "--document", 3, "--out", ctx,
                       "--threads", 1).stdout.strip().splitlines()[-1])
    assert j["method"] == "xrag" and j["positions"] == 1 and j["hidden"] == 64
    query = tmp_path / "q.txt"
    query.write_text(" means the same as a place for hiding.")
    a = score_json(d / "stage2", query, "--context-vectors", ctx)
    plain = score_json(d / "stage2", query)
    assert a["context_positions"] == 1 and a["nll"] != plain["nll"]
    g = run("generate", d / "stage2", "--context-vectors", ctx, "--max-new-tokens", 4, "--ignore-eos")
    assert g.returncode == 0
    text = tmp_path / "t.txt"
    text.write_text(ENTRIES[3])
    r = run("score", d / "stage2", "--text", query, "--context", text, check=False)
    assert r.returncode != 0 and "tools/embed_documents.py" in r.stderr, r.stderr
    r = run("compress", d / "stage2", "--text", text, "--out", tmp_path / "x.h5", check=False)
    assert r.returncode != 0 and "give --embeddings" in r.stderr, r.stderr
    r = run("compress", arc_run, "--embeddings", docs, "--out", tmp_path / "x.h5", check=False)
    assert r.returncode != 0 and "--embeddings is for xRAG" in r.stderr, r.stderr
    r = run("compress", d / "stage2", "--embeddings", docs, "--document", 40, "--out", tmp_path / "x.h5",
            check=False)
    assert r.returncode != 0 and "--document 40 is outside" in r.stderr, r.stderr
    wide = write_documents(tmp_path / "wide.h5", width=30)
    r = run("compress", d / "stage2", "--embeddings", wide, "--out", tmp_path / "x.h5", check=False)
    assert r.returncode != 0 and "reads embeddings [B, 24]" in r.stderr, r.stderr
    assert not (tmp_path / "x.h5").exists()
    # The task for any method: ARC scored on the same documents.
    k = context_eval(arc_run, "--documents", docs, "--documents-count", 8)
    assert set(k["task"]["answer"]["exact_match"]) >= {"none", "full", "compressed", "truncated", "mean_pool"}
    assert "paraphrase" not in k["task"]


@pytest.mark.parametrize("override, message", [
    ("context.embedding_dim=30", "context.embedding_dim 30 does not match"),
    ("context.held_out=40", "leaves none to train on"),
    ("context.chunk_len=40", "must fit data.seq_len 32"),
    ("context.documents=", "needs context.documents"),
    ("context.paraphrase_template=no placeholder", "must hold the placeholder {context} exactly once"),
    ("context.stage=3", "context.stage"),
])
def test_xrag_bad_options_write_nothing(trained, small_store, tmp_path, override, message):
    docs = write_documents(tmp_path / "docs.h5")
    out = tmp_path / "bad"
    r = run(*xrag_args(trained, small_store, out, docs, 2, override), check=False)
    assert r.returncode != 0 and message in r.stderr, r.stderr
    assert not out.exists()


def test_xrag_refuses_files_that_are_not_documents(trained, small_store, tmp_path):
    out = tmp_path / "bad"
    r = run(*xrag_args(trained, small_store, out, small_store, 2), check=False)
    assert r.returncode != 0 and "not a documents file" in r.stderr, r.stderr
    broken = write_documents(tmp_path / "broken.h5")
    with h5py.File(broken, "r+") as f:
        del f["documents/offsets"]
        f["documents/offsets"] = np.arange(41, dtype=np.int64)  # does not end at the bytes' length
    r = run(*xrag_args(trained, small_store, out, broken, 2), check=False)
    assert r.returncode != 0 and "documents/offsets" in r.stderr, r.stderr
    no_answers = write_documents(tmp_path / "plain.h5", answers=False)
    r = run(*xrag_args(trained, small_store, out, no_answers, 2, "context.stage=2"), check=False)
    assert r.returncode != 0 and "needs documents with answers" in r.stderr, r.stderr
    assert not out.exists()


def test_exported_compressor_loads_only_against_its_decoder(arc_run, small_store, tmp_path):
    from safetensors.numpy import load_file
    from export_fixtures import train_tiny
    out = tmp_path / "hf"
    run("export", arc_run, out)
    tensors = load_file(str(out / "context_compressor.safetensors"))
    with h5py.File(arc_run / "checkpoints" / "step_000030.h5", "r") as f:
        names = {n for n in f.keys() if n.startswith(("encoder.", "projector."))}
        assert set(tensors) == names
        for n in names:
            assert np.array_equal(tensors[n], f[n][()]), n
    cfg = json.loads((out / "context_compressor.json").read_text())
    assert cfg["format"] == "condense-context-compressor/1" and cfg["method"] == "arc"
    assert cfg["decoder"]["hidden_size"] == 64 and len(cfg["decoder"]["embedding_sha256"]) == 64
    # The decoder back from its Hugging Face files, with the exported compressor: the same vectors.
    decoder = tmp_path / "decoder.h5"
    run("import", out, decoder)
    context = tmp_path / "context.txt"
    context.write_text("Apple, n. The fleshy pome or fruit of a rosaceous tree, cultivated in many varieties.")
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    compress(arc_run, context, a)
    compress(decoder, context, b, "--compressor", out)
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        assert np.array_equal(fa["context/embeds"][()], fb["context/embeds"][()])
    other = train_tiny(small_store, tmp_path / "other", steps=3)
    r = compress(other, context, tmp_path / "c.h5", "--compressor", out, check=False)
    assert r.returncode != 0 and "this compressor belongs to the decoder" in r.stderr, r.stderr
    assert not (tmp_path / "c.h5").exists()
    r = compress(decoder, context, tmp_path / "c.h5", "--compressor", tmp_path, check=False)
    assert r.returncode != 0 and "no context_compressor.json" in r.stderr, r.stderr
    # The same weights imported with another RoPE (rope_scaling in config.json) are another decoder.
    assert cfg["decoder"]["rope"] == {"rope_theta": 10000.0, "rope_scaling": None}
    scaled_hf = tmp_path / "scaled_hf"
    shutil.copytree(out, scaled_hf)
    hf_cfg = json.loads((scaled_hf / "config.json").read_text())
    hf_cfg["rope_scaling"] = {"rope_type": "linear", "factor": 2.0}
    (scaled_hf / "config.json").write_text(json.dumps(hf_cfg))
    scaled = tmp_path / "scaled.h5"
    run("import", scaled_hf, scaled)
    r = compress(scaled, context, tmp_path / "c.h5", "--compressor", out, check=False)
    assert r.returncode != 0 and "was trained against RoPE" in r.stderr and "linear" in r.stderr, r.stderr
    assert not (tmp_path / "c.h5").exists()


def test_start_from_another_run(trained, small_store, arc_run, xrag_runs, tmp_path):
    # ARC fine-tuned at 2x from the 4x run: its tensors do not depend on the factor.
    out = tmp_path / "arc2"
    # One step at a negligible learning rate: the tensors are the 4x run's.
    r = run(*arc_args(trained, small_store, out, 1, "context.pooling_factor=2", f"context.start_from={arc_run}",
                      "train.lr=1e-12", "train.min_lr=0", "train.warmup_steps=0"))
    assert "context compressor starts from" in r.stderr
    with h5py.File(arc_run / "checkpoints" / "step_000030.h5", "r") as a, \
            h5py.File(out / "checkpoints" / "step_000001.h5", "r") as b:
        names = [n for n in a.keys() if n.startswith(("encoder.", "projector."))]
        assert names and all(np.allclose(a[n][()], b[n][()], rtol=0, atol=1e-9) for n in names)
    d, docs = xrag_runs
    bad = tmp_path / "bad"
    r = run(*xrag_args(trained, small_store, bad, docs, 2, f"context.start_from={arc_run}"), check=False)
    assert r.returncode != 0 and "expected a context_compressor run of method xrag" in r.stderr, r.stderr
    r = run(*arc_args(trained, small_store, bad, 2, "context.encoder_layers=2", f"context.start_from={arc_run}"),
            check=False)  # another encoder depth: the stored tensors do not fit
    assert r.returncode != 0 and "missing ARC encoder tensor" in r.stderr, r.stderr
    assert not bad.exists()
