"""End-to-end tests of the condense CLI on real text (GCIDE): training lowers the loss, metrics
land in JSONL and TensorBoard, an interrupted + resumed run reproduces the uninterrupted loss
sequence bit for bit, eval/generate/info work, and bad input fails loudly without touching
anything already on disk."""
import hashlib
import json
import os
import pathlib
import signal
import subprocess
import time

import pytest

from conftest import CONDENSE, run

SOURCE = pathlib.Path(os.environ.get("CONDENSE_SOURCE_DIR", pathlib.Path(__file__).resolve().parents[2]))
QUICKSTART = SOURCE / "recipes" / "quickstart.yaml"


def tiny_overrides(store, out_dir, steps, **extra):
    o = {
        "name": "t", "out_dir": out_dir, "data.dataset": store, "data.seq_len": 32,
        "data.batch_size": 4, "model.hidden_size": 64, "model.intermediate_size": 128,
        "model.num_hidden_layers": 2, "model.num_attention_heads": 4,
        "model.num_key_value_heads": 2, "model.max_position_embeddings": 64,
        "train.steps": steps, "train.warmup_steps": 5, "train.lr": 3e-3, "train.min_lr": 3e-4,
        "train.eval_every": 10, "train.eval_batches": 2, "train.threads": 1,
        "train.log_every": 5, "checkpoint.every": 10, "checkpoint.keep": 2,
    }
    o.update(extra)
    return [f"{k}={v}" for k, v in o.items()]


def read_metrics(out_dir, split="train"):
    lines = (pathlib.Path(out_dir) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


def tree_digest(path):
    h = {}
    for p in sorted(pathlib.Path(path).rglob("*")):
        if p.is_file():
            h[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return h


def test_help_for_every_command(condense_bin):
    for cmd in ["train", "prepare", "eval", "generate", "info"]:
        p = run(cmd, "--help")
        assert "Usage" in p.stdout or "usage" in p.stdout.lower()


def test_train_metrics_eval_generate_info(small_store, tmp_path):
    out = tmp_path / "run"
    run("train", QUICKSTART, *tiny_overrides(small_store, out, 30))
    train = read_metrics(out)
    assert [r["step"] for r in train] == list(range(1, 31))
    for key in ["loss", "lr", "grad_norm", "tokens_per_s", "elapsed_s"]:
        assert all(isinstance(r[key], float) for r in train), key
    first, last = train[0]["loss"], sum(r["loss"] for r in train[-5:]) / 5
    assert first > 5.5 and last < first - 1.0, (first, last)  # ln(384) = 5.95 at start
    val = read_metrics(out, "val")
    assert [r["step"] for r in val] == [10, 20, 30]
    assert abs(val[-1]["perplexity"] - pow(2.718281828459045, val[-1]["loss"])) < 1e-3 * val[-1]["perplexity"]

    # TensorBoard: the real reader sees every step's train/loss.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    events = acc.Scalars("train/loss")
    assert [e.step for e in events] == list(range(1, 31))
    assert abs(events[-1].value - train[-1]["loss"]) < 1e-5 * abs(train[-1]["loss"])
    assert "val/perplexity" in acc.Tags()["scalars"]

    # Checkpoints: keep=2 leaves the last two.
    ckpts = sorted(p.name for p in (out / "checkpoints").glob("step_*.h5"))
    assert ckpts == ["step_000020.h5", "step_000030.h5"]

    ev = json.loads(run("eval", out, "--batches", 2).stdout)
    assert ev["step"] == 30 and abs(ev["val_loss"] - val[-1]["loss"]) < 1e-4, (ev, val[-1])
    # Other windows than the recipe's: the token count follows them; too long is refused.
    ev2 = json.loads(run("eval", out, "--batches", 3, "--seq-len", 16, "--batch-size", 2).stdout)
    assert ev2["tokens"] == 3 * 2 * 16 and ev2["val_loss"] > 0
    p = run("eval", out, "--seq-len", 65, check=False)
    assert p.returncode != 0 and "max_position_embeddings" in p.stderr
    # --skip-batches: batch 1 alone, and the mean of batches 0 and 1 (the loss is their mean).
    first = json.loads(run("eval", out, "--batches", 1).stdout)["val_loss"]
    second = json.loads(run("eval", out, "--batches", 1, "--skip-batches", 1).stdout)["val_loss"]
    assert second != first and abs((first + second) / 2 - ev["val_loss"]) < 2e-6, (first, second, ev)
    p = run("eval", out, "--batches", 0, "--skip-batches", 100000, check=False)
    assert p.returncode == 1 and "--skip-batches 100000: the validation split of" in p.stderr, p.stderr
    info = run("info", out).stdout
    assert "step         30 of 30" in info and "384 pieces" in info
    g = run("generate", out, "--prompt", "Apple, n.", "--max-new-tokens", 12, "--threads", 1)
    assert g.stdout.startswith("Apple, n.") and len(g.stdout) > len("Apple, n.") + 1
    assert "tokens/s" in g.stderr
    # More new tokens than the context holds: said up front, and generation stops at the context.
    g = run("generate", out, "--prompt", "Apple, n.", "--max-new-tokens", 200, "--ignore-eos",
            "--print-ids", "--threads", 1)
    assert "so at most" in g.stderr and "positions" in g.stderr, g.stderr
    room = int(g.stderr.split("so at most ")[1].split()[0])
    assert room < 200 and f"{room} tokens: prefill" in g.stderr, g.stderr


@pytest.mark.parametrize("optimizer,precision", [("adamw", "fp32"), ("sgd", "fp32"), ("adamw", "bf16")])
def test_interrupted_and_resumed_run_is_bitwise_identical(small_store, tmp_path, optimizer, precision):
    steps = 60
    # RNG state must be restored exactly too; each optimizer's state round-trips the checkpoint;
    # bf16 autocast keeps fp32 master weights and optimizer state, so its resume is exact too.
    extra = {"model.attention_dropout": 0.1, "train.optimizer": optimizer, "train.precision": precision}
    if optimizer == "sgd":
        extra["train.lr"] = 0.3
    ref = tmp_path / "ref"
    run("train", QUICKSTART, *tiny_overrides(small_store, ref, steps, **extra))

    out = tmp_path / "cut"
    args = [str(CONDENSE), "train", str(QUICKSTART), *tiny_overrides(small_store, out, steps, **extra)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 13:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "stopped by signal" in stderr, stderr
    stopped_at = len(read_metrics(out))
    assert 13 <= stopped_at < steps, stopped_at
    assert (out / "checkpoints" / f"step_{stopped_at:06d}.h5").exists()

    run("train", QUICKSTART, *tiny_overrides(small_store, out, steps, **extra), "--resume")
    a = [(r["step"], r["loss"], r["grad_norm"]) for r in read_metrics(ref)]
    b = [(r["step"], r["loss"], r["grad_norm"]) for r in read_metrics(out)]
    assert a == b  # exact float equality, every step
    assert [r["loss"] for r in read_metrics(ref, "val")] == [r["loss"] for r in read_metrics(out, "val")]


def test_bf16_mixed_precision_tracks_fp32(small_store, tmp_path):
    """train.precision=bf16 (autocast forward, fp32 weights/grads/optimizer) on CPU: every
    step's loss within 1% of the fp32 run's and the final validation loss within 0.5%, yet not
    bit-identical (autocast really ran in bf16). bf16 on a CPU without AVX-512 (LibTorch's
    reference bf16 GEMMs there) warns, read from /proc/cpuinfo independently; fp32 never does."""
    losses, val, warned = {}, {}, {}
    for p in ["fp32", "bf16"]:
        out = tmp_path / p
        proc = run("train", QUICKSTART, *tiny_overrides(small_store, out, 30, **{"train.precision": p}))
        warned[p] = "bf16 on a CPU without AVX-512" in proc.stderr
        losses[p] = [r["loss"] for r in read_metrics(out)]
        val[p] = read_metrics(out, "val")[-1]["loss"]
    flags = set()
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    assert warned == {"fp32": False, "bf16": not {"avx512bw", "avx512vl", "avx512dq"} <= flags}, warned
    assert losses["fp32"] != losses["bf16"]
    for a, b in zip(losses["fp32"], losses["bf16"]):
        assert abs(a - b) <= 0.01 * a, (a, b)
    assert abs(val["fp32"] - val["bf16"]) <= 0.005 * val["fp32"], val
    assert losses["bf16"][-1] < losses["bf16"][0] - 1.0


def expect_error(args, *fragments, cwd=None):
    p = run(*args, check=False, cwd=cwd)
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr[-2000:])  # README: one line, exit 1
    for f in fragments:
        assert f in p.stderr, (f, p.stderr)
    assert p.stderr.count("error:") == 1, p.stderr
    return p


def test_bad_recipes_fail_with_clear_errors(tmp_path, condense_bin):
    expect_error(["train", tmp_path / "nope.yaml"], "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: pretrain\ntrain:\n  steps: [1, 2\n")
    expect_error(["train", bad], "bad.yaml:")
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("kind: pretrain\ntrain:\n  stepz: 3\n")
    expect_error(["train", unknown], "unknown.yaml:3", "train.stepz", "valid keys")
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("train:\n  steps: many\n")
    expect_error(["train", wrong], "wrong.yaml:2", "train.steps", "integer")
    expect_error(["train", QUICKSTART, "train.lr=fast"], "train.lr")
    expect_error(["train", QUICKSTART, "kind=kv_merge"], "pretrain, finetune, distill, kv_heads, kv_project")
    expect_error(["train", QUICKSTART, "kind=kv_heads"], "kind kv_heads needs init")
    expect_error(["train", QUICKSTART, "kv.heads=2"], "the kv: section applies to kinds kv_heads and kv_project")
    expect_error(["train", QUICKSTART, "context.pooling_factor=8"], "the context: section applies to kind context_compressor")
    expect_error(["train", QUICKSTART, "kind=distill"], "kind distill needs init")
    expect_error(["train", QUICKSTART, "train.device=gpu"], "train.device", "cpu, cuda or cuda:N")
    expect_error(["train", QUICKSTART, "train.precision=fp16"], "train.precision", "bf16")
    import torch
    if not torch.cuda.is_available():
        out = tmp_path / "cuda_run"
        expect_error(["train", QUICKSTART, f"out_dir={out}", "train.device=cuda"],
                     "train.device=cuda", "no CUDA device")
        assert not out.exists()


def test_command_line_mistakes(tmp_path, condense_bin):
    # One "error:" line and exit status 1, as for every other error (CLI11's own codes were 10x).
    expect_error(["nosuch"], "unknown command 'nosuch'; commands: train, prepare, eval")
    expect_error(["--bogus"], "unknown command '--bogus'")
    expect_error(["generate", tmp_path / "x.h5", "--promt", "a"], "--promt", "see `condense generate --help`")
    expect_error(["train"], "recipe is required", "see `condense train --help`")
    # An unknown option is named even when a required argument is missing too.
    expect_error(["train", "--bogus"], "unknown option '--bogus'", "see `condense train --help`")
    expect_error(["eval", "-z"], "unknown option '-z'", "see `condense eval --help`")
    assert run("--help").returncode == 0


def test_the_split_follows_data_seed_not_train_seed(tmp_path, condense_bin):
    """The held-out documents come from data.seed: a finetune at another train.seed reuses its
    init's store (same split, nothing rebuilt, no warning); another data.seed builds another split
    and is warned about (some held-out documents were the init's training text); a checkpoint
    whose recipe predates data.seed is read with train.seed as its split seed."""
    import h5py
    import numpy as np
    cache = tmp_path / "cache"
    tok = tmp_path / "tok.model"  # one tokenizer for every split, so that only the split differs
    run("prepare", "--corpus", "fortunes", "--max-documents", 300, "--vocab-size", 400,
        "--save-tokenizer", tok, "--out", tmp_path / "tok_store.h5")
    data = ["data.corpus=fortunes", "data.max_documents=300", f"data.tokenizer={tok}",
            f"data.cache_dir={cache}", "data.seq_len=32", "data.val_fraction=0.1"]
    shape = ["model.hidden_size=32", "model.intermediate_size=64", "model.num_hidden_layers=1",
             "model.num_attention_heads=2", "model.num_key_value_heads=1"]
    loop = ["train.steps=2", "train.warmup_steps=1", "train.eval_every=0", "train.threads=1",
            "checkpoint.every=2"]
    base = tmp_path / "base"
    run("train", QUICKSTART, f"out_dir={base}", "train.seed=1", *data, *shape, *loop)
    stores = [p.name for p in cache.iterdir()]
    assert len(stores) == 1 and stores[0].endswith("-even300-val0.1-seed1234.h5"), stores
    ckpt = base / "checkpoints" / "step_000002.h5"
    same = run("train", QUICKSTART, "kind=finetune", f"init={ckpt}", f"out_dir={tmp_path / 'same'}",
               "train.seed=2", *data, *loop)
    assert "preparing token store" not in same.stderr and "training split" not in same.stderr, same.stderr
    other = run("train", QUICKSTART, "kind=finetune", f"init={ckpt}", f"out_dir={tmp_path / 'other'}",
                "data.seed=7", *data, *loop)
    assert "split seed 1234" in other.stderr and "split seed 7" in other.stderr, other.stderr
    assert "some of them may be in the init's training split" in other.stderr, other.stderr
    # The split travels with the weights: training records it, prune carries it, so a run from
    # a pruned model (step 0) is warned too.
    pruned = tmp_path / "pruned.h5"
    run("prune", ckpt, "--method", "magnitude", "--out", pruned)
    with h5py.File(ckpt, "r") as f, h5py.File(pruned, "r") as g:
        recorded = f.attrs["data_split"]
        assert "split seed 1234" in str(recorded) and g.attrs["data_split"] == recorded
    from_pruned = run("train", QUICKSTART, "kind=finetune", f"init={pruned}",
                      f"out_dir={tmp_path / 'from_pruned'}", "data.seed=7", *data, *loop)
    assert "some of them may be in the init's training split" in from_pruned.stderr, from_pruned.stderr
    # A resume on another split is refused before anything is tokenized or written.
    before = sorted(p.name for p in (base / "checkpoints").iterdir())
    refused = run("train", QUICKSTART, f"out_dir={base}", "train.seed=1", "data.seed=7", *data, *shape,
                  "train.steps=4", "train.warmup_steps=1", "train.eval_every=0", "train.threads=1",
                  "--resume", check=False)
    assert refused.returncode == 1 and "resume with data.seed=1234" in refused.stderr, refused.stderr
    assert sorted(p.name for p in (base / "checkpoints").iterdir()) == before
    assert len(list(cache.iterdir())) == 2  # the seed-7 store of the finetune above, no other
    # The same data settings but a store that holds other documents (here: another val_fraction):
    # refused against the split the checkpoint recorded.
    other_store = run("train", QUICKSTART, f"out_dir={base}", "train.seed=1", *data, *shape,
                      f"data.dataset={tmp_path / 'tok_store.h5'}", "train.steps=4", "train.warmup_steps=1",
                      "train.eval_every=0", "train.threads=1", "--resume", check=False)
    assert other_store.returncode == 1, other_store.stderr
    assert "was trained on the split" in other_store.stderr and "val_fraction 0.02" in other_store.stderr, \
        other_store.stderr
    assert sorted(p.name for p in (base / "checkpoints").iterdir()) == before
    # A recipe without data.seed (written before it existed): its split seed was train.seed.
    old = tmp_path / "old.h5"
    old.write_bytes(ckpt.read_bytes())
    with h5py.File(old, "r+") as f:
        text = bytes(f["recipe"][()]).decode()
        lines = text.splitlines()
        data_at = lines.index("data:")
        seed_at = next(i for i in range(data_at, len(lines)) if lines[i].strip().startswith("seed:"))
        del lines[seed_at]
        del f["recipe"]
        f["recipe"] = np.bytes_("\n".join(lines) + "\n")
        del f.attrs["data_split"]  # recorded since the same change as data.seed
    ev = run("eval", old, "--batches", 1)
    assert "-even300-val0.1-seed1.h5" in ev.stderr, ev.stderr  # built from train.seed's split


def test_missing_corpus_and_checkpoint_errors(tmp_path, condense_bin):
    expect_error(["train", QUICKSTART, f"out_dir={tmp_path / 'r'}", "data.corpus=dir",
                  f"data.path={tmp_path / 'no_such_dir'}", f"data.cache_dir={tmp_path}"],
                 "no_such_dir")
    expect_error(["info", tmp_path / "missing.h5"], "missing.h5")
    expect_error(["eval", tmp_path / "missing.h5"], "missing.h5")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not an hdf5 file at all" * 10)
    expect_error(["info", junk], "junk.h5")


@pytest.mark.parametrize("option,value,needle", [
    ("--temperature", "-1", "--temperature -1: must be >= 0"),
    ("--temperature", "nan", "--temperature nan: must be >= 0"),
    ("--top-p", "2", "--top-p 2: valid is (0, 1]"),
    ("--top-p", "0", "--top-p 0: valid is (0, 1]"),
    ("--top-k", "-3", "--top-k -3: must be >= 0"),
    ("--max-new-tokens", "-5", "--max-new-tokens -5: must be at least 1"),
    ("--kv-rank", "-2", "--kv-rank -2: must be >= 0"),
    ("--kv-cache", "int4", "--kv-cache 'int4': valid are fp"),
])
def test_generate_option_ranges(tmp_path, condense_bin, option, value, needle):
    # Checked before anything loads: the checkpoint need not exist.
    expect_error(["generate", tmp_path / "any.h5", "--prompt", "a", option, value], needle)


@pytest.mark.parametrize("option,value,needle", [
    ("--max-documents", "-5", "prepare: max_documents -5 must be >= 0"),
    ("--threads", "-1", "prepare: threads -1 must be >= 0"),
    ("--vocab-size", "10", "prepare: vocab_size 10 must be at least 260"),
    ("--val-fraction", "2", "prepare: val_fraction 2 must be in [0, 1)"),
])
def test_prepare_option_ranges(tmp_path, condense_bin, option, value, needle):
    out = tmp_path / "store.h5"
    args = {"--corpus": "fortunes", "--max-documents": "50", "--out": out, option: value}
    p = expect_error(["prepare", *[x for kv in args.items() for x in kv]], needle)
    assert "corpus fortunes:" not in p.stderr  # refused before the corpus was read
    assert not out.exists()


def test_corrupt_checkpoint_and_existing_run_leave_disk_untouched(small_store, tmp_path):
    out = tmp_path / "run"
    run("train", QUICKSTART, *tiny_overrides(small_store, out, 10))
    ckpt = out / "checkpoints" / "step_000010.h5"
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    expect_error(["info", truncated], "truncated.h5")
    expect_error(["generate", truncated, "--prompt", "a"], "truncated.h5")

    before = tree_digest(out)
    # Starting the same run again without --resume is refused; nothing is overwritten.
    expect_error(["train", QUICKSTART, *tiny_overrides(small_store, out, 10)], "--resume")
    assert tree_digest(out) == before
    # A --resume whose overrides change the model is refused before recipe.yaml is rewritten.
    expect_error(["train", QUICKSTART, *tiny_overrides(small_store, out, 20, **{"model.hidden_size": 96}),
                  "--resume"], "the recipe's model differs", "hidden_size: 64 in the checkpoint, 96 in the recipe",
                 "nothing was changed")
    assert tree_digest(out) == before


def test_tokenizer_mismatch_is_refused(small_store, tmp_path):
    other = tmp_path / "other.h5"
    run("prepare", "--corpus", "fortunes", "--max-documents", 800, "--vocab-size", 512,
        "--out", other, "--save-tokenizer", tmp_path / "other.model")
    expect_error(["train", QUICKSTART, *tiny_overrides(small_store, tmp_path / "r", 5),
                  f"data.tokenizer={tmp_path / 'other.model'}"], "tokenizer mismatch")
    # A checkpoint evaluated against a store with another tokenizer is refused too.
    out = tmp_path / "run"
    run("train", QUICKSTART, *tiny_overrides(small_store, out, 5))
    expect_error(["eval", out, "--data", other], "tokenizer mismatch")


def test_refusals_before_anything_is_written(small_store, tmp_path, condense_bin):
    """Settings that cannot work are refused at start, naming the key, with nothing created."""
    out = tmp_path / "run"
    base = tiny_overrides(small_store, out, 5)
    # Host offload is for CUDA activations (this hung forever on the CPU before).
    expect_error(["train", QUICKSTART, *base, "memory.offload=host"], "memory.offload=host",
                 "train.device is cpu")
    # A mistyped store path is not a request to build a store there.
    missing = tmp_path / "typo.h5"
    expect_error(["train", QUICKSTART, *base, f"data.dataset={missing}"], "data.dataset=", "no such token store")
    assert not missing.exists()
    # Directories that cannot be created (a file in the way).
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    expect_error(["train", QUICKSTART, *base, f"checkpoint.dir={blocker / 'ck'}"], "checkpoint.dir=",
                 "is not a directory")
    expect_error(["train", QUICKSTART, *tiny_overrides(small_store, blocker / "run", 5)], "out_dir=",
                 "is not a directory")
    # NCCL on the CPU: refused by name (was LibTorch's CUDA error with a 25-frame backtrace).
    expect_error(["train", QUICKSTART, *base, "comm.backend=nccl"], "comm.backend=nccl", "train.device is cpu")
    # Thread counts have a ceiling.
    expect_error(["train", QUICKSTART, *base, "train.threads=100000"], "train.threads", "[0, 1024]")
    expect_error(["generate", tmp_path / "any.h5", "--prompt", "a", "--threads", "100000"],
                 "--threads must be between 0 (one per core) and 1024")
    assert not out.exists()
    # The model's shape is checked before the token store is built (which takes minutes).
    cache = tmp_path / "cache"
    expect_error(["train", QUICKSTART, f"out_dir={out}", f"data.cache_dir={cache}",
                  "model.num_attention_heads=3"], "model.num_attention_heads (3)")
    expect_error(["train", QUICKSTART, f"out_dir={out}", f"data.cache_dir={cache}", "data.seq_len=4096"],
                 "data.seq_len (4096) exceeds model.max_position_embeddings")
    assert not cache.exists() and not out.exists()


def test_run_directories_as_init_and_a_reused_recipe(small_store, tmp_path):
    ref = tmp_path / "ref"
    run("train", QUICKSTART, *tiny_overrides(small_store, ref, 10))
    latest = ref / "checkpoints" / "step_000010.h5"
    # init= takes a run directory, as eval and generate do: its latest checkpoint.
    child = tmp_path / "child"
    p = run("train", QUICKSTART, *tiny_overrides(small_store, child, 2, init=ref))
    assert f"initialized weights from {latest}" in p.stderr + p.stdout
    # A run's recipe.yaml reused under another out_dir writes its checkpoints there, not into
    # the run it came from (checkpoint.dir stays implied by out_dir).
    saved = (ref / "recipe.yaml").read_text()
    assert "\n  dir: \"\"\n" in saved, saved
    reused = tmp_path / "reused.yaml"
    reused.write_text(saved)
    before = tree_digest(ref)
    again = tmp_path / "again"
    run("train", reused, f"out_dir={again}", "train.steps=3")
    assert (again / "checkpoints" / "step_000003.h5").exists()
    assert tree_digest(ref) == before


def test_resume_after_a_crash_keeps_each_step_once(small_store, tmp_path):
    """A run that dies after its last checkpoint has logged steps it will redo: the resumed run
    drops them from metrics.jsonl and TensorBoard (SessionLog START), so each step shows once,
    with the resumed run's values."""
    from tensorboard.backend.event_processing import event_accumulator
    out = tmp_path / "run"
    args = ["train", QUICKSTART, *tiny_overrides(small_store, out, 15, **{
        "train.log_every": 1, "train.eval_every": 0, "checkpoint.every": 10})]
    p = run(*args, check=False, env={**os.environ, "CONDENSE_TEST_FAIL_RANK": "0",
                                     "CONDENSE_TEST_FAIL_STEP": "14"})
    assert p.returncode != 0 and "injected failure at step 14" in p.stderr
    assert [r["step"] for r in read_metrics(out)] == list(range(1, 14))
    run(*args, "--resume")
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == list(range(1, 16))
    acc = event_accumulator.EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    assert len(list((out / "tensorboard").iterdir())) == 2
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == list(range(1, 16))
    assert loss[-1].value == pytest.approx(rows[-1]["loss"], rel=1e-6)


def test_second_run_in_the_same_directory_is_refused(small_store, tmp_path):
    out = tmp_path / "run"
    args = [str(CONDENSE), "train", str(QUICKSTART), *tiny_overrides(small_store, out, 100000, **{
        "train.eval_every": 0, "checkpoint.every": 100000, "train.log_every": 1})]
    first = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while not (out / "metrics.jsonl").exists() or not (out / "metrics.jsonl").read_text():
            assert time.time() < deadline and first.poll() is None
            time.sleep(0.1)
        p = expect_error(["train", QUICKSTART, *tiny_overrides(small_store, out, 100000), "--resume"],
                         f"another condense process (pid {first.pid}) is training in {out}")
        assert "nothing was changed" in p.stderr
    finally:
        first.send_signal(signal.SIGINT)
        first.wait(timeout=60)
    # The lock went with the process: the run resumes (one more step).
    latest = (out / "checkpoints" / "latest").read_text().strip()
    step = int(latest[len("step_"):-len(".h5")])
    run("train", QUICKSTART, *tiny_overrides(small_store, out, step + 1), "--resume")
    assert read_metrics(out)[-1]["step"] == step + 1
    # A checkpoint past train.steps is refused clearly, before anything changes.
    before = tree_digest(out)
    expect_error(["train", QUICKSTART, *tiny_overrides(small_store, out, 1), "--resume"],
                 f"is at step {step + 1}, past train.steps=1")
    assert tree_digest(out) == before


def test_outputs_are_checked_before_work_and_never_overwritten(small_store, tmp_path):
    # prepare: before the corpus is read.
    expect_error(["prepare", "--corpus", "fortunes", "--out", tmp_path / "nodir" / "s.h5"],
                 "directory", "does not exist")
    p = expect_error(["prepare", "--corpus", "fortunes", "--out", tmp_path], "already exists; refusing to overwrite it")
    assert "corpus fortunes:" not in p.stderr
    out = tmp_path / "run"
    run("train", QUICKSTART, *tiny_overrides(small_store, out, 2))
    gguf = tmp_path / "m.gguf"
    expect_error(["export", out, tmp_path / "nodir" / "m.gguf", "--format", "gguf"], "does not exist")
    run("export", out, gguf, "--format", "gguf")
    digest = hashlib.sha256(gguf.read_bytes()).hexdigest()
    expect_error(["export", out, gguf, "--format", "gguf", "--dtype", "f16"], "refusing to overwrite")
    assert hashlib.sha256(gguf.read_bytes()).hexdigest() == digest


def test_an_allocation_that_fails_is_an_error_not_an_abort(small_store, tmp_path):
    """A model too large for memory: LibTorch's allocation error reaches condense's one catch
    (exit 1, one line) instead of SIGABRT. Debian's libsentencepiece overwrote c10's
    FLAGS_caffe2_use_fatal_for_enforce at load time, which turned every failed CAFFE_ENFORCE into
    an abort (launch/main.cpp restores it)."""
    if pathlib.Path("/proc/sys/vm/overcommit_memory").read_text().strip() == "1":
        pytest.skip("vm.overcommit_memory=1: a 275 GB allocation succeeds here and is not a test")
    p = expect_error(["train", QUICKSTART, *tiny_overrides(small_store, tmp_path / "r", 1),
                      "model.hidden_size=262144", "model.intermediate_size=64"],
                     "can't allocate memory")
    assert "frame #" not in p.stderr  # no C++ backtrace


def test_eval_without_data_when_the_runs_store_is_gone(small_store, tmp_path):
    """A run whose token store is not here (moved to another machine, deleted): eval without
    --data names the missing store and asks for --data instead of building one at its path."""
    store = tmp_path / "store.h5"
    store.write_bytes(pathlib.Path(small_store).read_bytes())
    out = tmp_path / "run"
    run("train", QUICKSTART, *tiny_overrides(store, out, 2))
    store.unlink()
    expect_error(["eval", out], "no --data given", str(store), "pass --data STORE.h5")
    assert not store.exists()
    assert "val_loss" in run("eval", out, "--data", small_store, "--batches", 1).stdout
