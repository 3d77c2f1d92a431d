"""Pruning and recovery end to end through the CLI, checked against the checkpoints themselves
and against transformers.

`condense prune` (wanda, magnitude, N:M) writes a checkpoint whose projection weights hold
exactly the masked zeros (per row for wanda, per group for N:M) and whose masks are stored;
bad options are refused with the option named and nothing written. Recovery recipes
(`finetune`, `distill`) keep the masks through training: with PERP every frozen tensor is
bitwise unchanged, only norms and MaskLoRA adapters train, the export merges the adapters
with every zero kept (counted in the safetensors) and transformers reproduces condense's
log-probabilities of the merged model; full recovery changes the kept weights and never the
pruned ones; LoRA resume is bitwise; a teacher with another tokenizer is refused by name.
"""
import json
import pathlib
import shutil

import h5py
import numpy as np
import pytest
import torch

from conftest import run
from export_fixtures import QUICKSTART as QUICKSTART_PATH
from export_fixtures import score, start_from_step, train_tiny

transformers = pytest.importorskip("transformers")
from safetensors.numpy import load_file  # noqa: E402

PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def proj_names(layers=2):
    out = []
    for i in range(layers):
        for p in PROJ:
            kind = "self_attn" if p[0] in "qkvo" else "mlp"
            out.append(f"model.layers.{i}.{kind}.{p}.weight")
    return out


def read(h5, name):
    with h5py.File(h5, "r") as f:
        return np.asarray(f[name][()])


def read_mask(h5, name):
    """A condense bool tensor: uint8 in HDF5 with the attribute dtype = bool."""
    with h5py.File(h5, "r") as f:
        d = f["mask/" + name]
        dtype = d.attrs["dtype"]
        assert (dtype.decode() if isinstance(dtype, bytes) else dtype) == "bool", name
        return np.asarray(d[()]).astype(bool)


def names_in(h5):
    out = []
    with h5py.File(h5, "r") as f:
        f.visit(lambda n: out.append(n) if isinstance(f[n], h5py.Dataset) else None)
    return out


@pytest.fixture(scope="module")
def base(small_store, tmp_path_factory):
    d = tmp_path_factory.mktemp("base")
    return train_tiny(small_store, d / "run", steps=30)


@pytest.fixture(scope="module")
def wanda(base, tmp_path_factory):
    out = tmp_path_factory.mktemp("wanda") / "wanda.h5"
    run("prune", base, "--method", "wanda", "--sparsity", 0.5, "--calib-windows", 8, "--out", out)
    return out


def recover(store, init, out_dir, *extra, steps=4):
    o = {"name": "r", "out_dir": out_dir, "init": init, "data.dataset": store, "data.seq_len": 64,
         "data.batch_size": 4, "train.steps": steps, "train.warmup_steps": 1, "train.lr": 3e-3,
         "train.min_lr": 3e-4, "train.eval_every": 0, "train.threads": 1, "train.log_every": 10,
         "checkpoint.every": 0, "checkpoint.keep": 2}
    args = [f"{k}={v}" for k, v in o.items()] + list(extra)
    return run("train", QUICKSTART_PATH, "kind=finetune", *args)


def last_ckpt(out_dir):
    return sorted((pathlib.Path(out_dir) / "checkpoints").glob("step_*.h5"))[-1]


def test_wanda_masks_rows_exactly(base, wanda):
    for name in proj_names():
        w = read(wanda, name)
        mask = read_mask(wanda, name)
        assert mask.shape == w.shape
        assert ((w != 0) == mask).all(), name
        assert (mask.sum(1) == w.shape[1] - w.shape[1] // 2).all(), name  # 50% of every row
        kept = np.abs(read(base, name))
        assert np.array_equal(w[mask], kept[mask] * np.sign(read(base, name))[mask])
    # Norms and embeddings are untouched.
    assert np.array_equal(read(wanda, "model.norm.weight"), read(base, "model.norm.weight"))


def test_magnitude_and_nm_patterns(base, tmp_path):
    mag = tmp_path / "mag.h5"
    run("prune", base, "--method", "magnitude", "--sparsity", 0.25, "--out", mag)
    for name in proj_names():
        m = read_mask(mag, name)
        assert m.size - m.sum() == int(0.25 * m.size), name
    nm = tmp_path / "nm.h5"
    run("prune", base, "--method", "wanda", "--pattern", "2:4", "--calib-windows", 4, "--out", nm)
    for name in proj_names():
        groups = read_mask(nm, name).reshape(-1, 4)
        assert (groups.sum(1) == 2).all(), name


@pytest.mark.parametrize("args,needle", [
    (["--method", "wanda", "--sparsity", "1.0"], "sparsity must be in [0, 1)"),
    (["--method", "magnitude", "--sparsity", "-0.5"], "sparsity must be in [0, 1)"),
    (["--method", "magnitude", "--pattern", "4:4"], "N must be in [1, M)"),
    (["--method", "magnitude", "--pattern", "2:5"], "does not divide the input width"),
    (["--method", "magnitude", "--pattern", "2-4"], "expected N:M"),
    (["--method", "magnitude", "--weights", "model.layers.9.*"], "matches no weight"),
    (["--method", "magnitude", "--sparsity", "0.5", "--pattern", "2:4"], "not both"),
    (["--method", "magnitude", "--target", "hidden_size=32"], "--target belongs to minitron"),
    (["--method", "minitron"], "--method minitron needs --target"),
])
def test_prune_bad_options_write_nothing(base, tmp_path, args, needle):
    out = tmp_path / "p.h5"
    proc = run("prune", base, *args, "--out", out, check=False)
    assert proc.returncode != 0 and needle in proc.stderr, proc.stderr
    assert list(tmp_path.iterdir()) == []


def test_prune_refuses_existing_output(base, tmp_path):
    out = tmp_path / "p.h5"
    out.write_bytes(b"keep me")
    proc = run("prune", base, "--method", "magnitude", "--out", out, check=False)
    assert proc.returncode != 0 and "refusing to overwrite" in proc.stderr
    assert out.read_bytes() == b"keep me"


def test_perp_trains_only_norms_and_adapters_and_exports_sparse(small_store, wanda, tmp_path):
    out = tmp_path / "perp"
    proc = recover(small_store, wanda, out, "recovery.method=perp", "recovery.rank=4")
    log = proc.stdout + proc.stderr
    assert "masklora adapters of rank 4" in log and "training " in log, log
    ckpt = last_ckpt(out)
    names = names_in(ckpt)
    assert "lora.model.layers.0.self_attn.q_proj.A" in names and "lora/kind" in names
    changed = []
    for name in [n for n in names_in(wanda) if n.startswith(("model.", "lm_head."))]:
        same = np.array_equal(read(ckpt, name), read(wanda, name))
        if "norm" in name:
            changed.append(not same)
        else:
            assert same, f"frozen {name} changed"
        # Frozen tensors carry no optimizer state.
        assert ("optimizer/" + name + "/exp_avg" in names) == ("norm" in name), name
    assert all(changed)
    for name in proj_names():
        assert np.array_equal(read_mask(ckpt, name), read_mask(wanda, name))
    info = run("info", ckpt).stdout
    assert "masks on 14 matrices: 50.00%" in info and "masklora on 14 matrices" in info, info

    # Export merges W + s (BA) * M: every pruned zero survives, the kept weights moved.
    hf = tmp_path / "hf"
    run("export", ckpt, hf, "--format", "hf")
    tensors = load_file(str(hf / "model.safetensors"))
    for name in proj_names():
        mask = read_mask(wanda, name)
        assert (tensors[name][~mask] == 0).all() and (tensors[name] == 0).sum() == (~mask).sum(), name
    assert not np.array_equal(tensors["model.layers.0.self_attn.q_proj.weight"],
                              read(wanda, "model.layers.0.self_attn.q_proj.weight"))
    # GGUF (F32) too: every projection tensor holds exactly the mask's zeros.
    gguf = pytest.importorskip("gguf")
    run("export", ckpt, tmp_path / "m.gguf", "--format", "gguf")
    zeros = {t.name: int((np.asarray(t.data) == 0).sum()) for t in gguf.GGUFReader(tmp_path / "m.gguf").tensors}
    gguf_names = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
                  "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
    for name in proj_names():
        layer, proj = name.split(".")[2], name.split(".")[4]
        assert zeros[f"blk.{layer}.{gguf_names[proj]}.weight"] == (~read_mask(wanda, name)).sum(), name
    # transformers on the export equals condense on the (merged) checkpoint.
    text = tmp_path / "t.txt"
    text.write_text("A small harbour town, quiet at dawn.", encoding="utf-8")
    ids, lp, _ = score(ckpt, text)
    model = transformers.AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32,
                                                              attn_implementation="eager")
    with torch.no_grad():
        ref = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)[:-1].numpy()
    assert np.abs(ref - lp).max() <= 1e-5


def test_full_recovery_keeps_pruned_zeros(small_store, wanda, tmp_path):
    out = tmp_path / "full"
    recover(small_store, wanda, out, "recovery.method=full")
    ckpt = last_ckpt(out)
    for name in proj_names():
        mask = read_mask(wanda, name)
        w = read(ckpt, name)
        assert (w[~mask] == 0).all(), name
        assert not np.array_equal(w[mask], read(wanda, name)[mask]), name
        m = read(ckpt, f"optimizer/{name}/exp_avg")
        assert (m[~mask] == 0).all(), name


@pytest.mark.parametrize("method", ["lora", "perp-scalelora"])
def test_adapter_resume_is_bitwise(small_store, base, wanda, tmp_path, method):
    """LoRA on the unpruned model; PERP with ScaleLoRA on the masked one (masks through resume)."""
    init = base if method == "lora" else wanda
    extra = (["recovery.method=lora"] if method == "lora"
             else ["recovery.method=perp", "recovery.adapter=scalelora"])
    a = tmp_path / "a"
    recover(small_store, init, a, *extra, "checkpoint.every=2", steps=4)
    b = tmp_path / "b"
    start_from_step(a, b, 2)
    recover(small_store, init, b, *extra, "checkpoint.every=2", "--resume", steps=4)
    fa, fb = a / "checkpoints" / "step_000004.h5", b / "checkpoints" / "step_000004.h5"
    compared = 0
    for name in names_in(fa):
        if name.startswith(("model.", "lm_head.", "lora", "optimizer/", "mask/")):
            assert np.array_equal(read(fa, name), read(fb, name)), name
            compared += 1
    assert compared > 30
    if method != "lora":
        # ScaleLoRA's merge W * (1 + BA) keeps every pruned zero.
        hf = tmp_path / "hf"
        run("export", fb, hf, "--format", "hf")
        tensors = load_file(str(hf / "model.safetensors"))
        for name in proj_names():
            assert ((tensors[name] == 0) == ~read_mask(wanda, name)).all(), name


def test_recovery_refusals(small_store, base, wanda, tmp_path):
    cases = [
        (["recovery.method=perp"], base, "has no masks"),
        (["train.trainable=[nothing.*]"], wanda, "train.trainable: 'nothing.*' matches no parameter"),
        (["distill.teacher=" + str(base)], wanda, "use kind: distill"),
        (["kind=distill", "distill.teacher=" + str(base), "distill.hidden_loss=mse",
          "distill.hidden_layers=[\"9:1\"]"], wanda, "pair 9:1 is outside [0, 2] x [0, 2]"),
        (["kind=distill", "distill.teacher=" + str(base), "recovery.selection=paser",
          "recovery.budget=0"], wanda, "recovery.budget"),
    ]
    for extra, init, needle in cases:
        out = tmp_path / f"x{len(list(tmp_path.iterdir()))}"
        proc = run("train", QUICKSTART_PATH, "kind=finetune", f"out_dir={out}", f"init={init}",
                   f"data.dataset={small_store}", "data.seq_len=64", *extra, check=False)
        assert proc.returncode != 0 and needle in proc.stderr, (extra, proc.stderr)
        assert not (out / "checkpoints").exists()


def test_distill_from_teacher_and_tokenizer_check(small_store, base, wanda, tmp_path):
    out = tmp_path / "d"
    proc = recover(small_store, wanda, out, "kind=distill", f"distill.teacher={base}",
                   "distill.temperature=2", "distill.kd_ratio=0.5", "distill.hidden_loss=mse",
                   "recovery.method=perp")
    metrics = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in metrics if m["split"] == "train"]
    assert len(losses) == 4 and all(np.isfinite(losses)) and losses[0] > 0
    # A teacher whose tokenizer differs by one byte is refused, naming both hashes.
    other = tmp_path / "other.h5"
    shutil.copy(base, other)
    with h5py.File(other, "r+") as f:
        tok = np.array(f["tokenizer"][()])
        tok[-1] ^= 1
        del f["tokenizer"]
        f["tokenizer"] = tok
    proc = run("train", QUICKSTART_PATH, "kind=distill", f"out_dir={tmp_path / 'e'}", f"init={wanda}",
               f"data.dataset={small_store}", "data.seq_len=64", f"distill.teacher={other}",
               check=False)
    assert proc.returncode != 0 and "must share one tokenizer" in proc.stderr, proc.stderr


def test_distill_loss_closed_forms(small_store, base, wanda, tmp_path):
    """The distill loss reads the teacher: a model distilled from itself has KL 0 and hidden MSE 0,
    so with kd_ratio 1 its first loss is 0, and with kd_ratio 0.5 it is half the plain finetune
    loss on the same first batch; a different teacher (base for the pruned student) gives > 0.
    In bf16 too, against the chunked finetune loss."""
    def first_loss(name, init, *extra):
        out = tmp_path / name
        recover(small_store, init, out, *extra, steps=1)
        rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
        return [m["loss"] for m in rows if m["split"] == "train"][0]
    teacher = f"distill.teacher={base}"
    self_kd1 = first_loss("self1", base, "kind=distill", teacher, "distill.kd_ratio=1",
                          "distill.temperature=2", "distill.hidden_loss=mse")
    self_kd05 = first_loss("self05", base, "kind=distill", teacher, "distill.kd_ratio=0.5")
    plain = first_loss("plain", base, "kind=finetune")
    other = first_loss("other", wanda, "kind=distill", teacher, "distill.kd_ratio=1")
    assert abs(self_kd1) < 1e-6, self_kd1
    assert plain > 1 and self_kd05 == pytest.approx(0.5 * plain, rel=1e-5), (self_kd05, plain)
    assert other > 1e-3, other
    # The same under train.precision=bf16 (the chunked losses' backward runs outside autocast).
    bf16 = "train.precision=bf16"
    self_bf16 = first_loss("self_bf16", base, "kind=distill", teacher, "distill.kd_ratio=0.5", bf16)
    plain_bf16 = first_loss("plain_bf16", base, "kind=finetune", "memory.loss=chunked", bf16)
    assert self_bf16 == pytest.approx(0.5 * plain_bf16, rel=1e-5), (self_bf16, plain_bf16)
    assert plain_bf16 == pytest.approx(plain, rel=1e-2), (plain_bf16, plain)


def test_only_trained_tensors_cross_the_wire(small_store, wanda, tmp_path):
    """Under mpirun every rank sends exactly the trained tensors' gradients (dense fp32), so the
    bytes per step are 4 x the trained parameter count: PERP sends a small fraction of full's."""
    import subprocess
    from conftest import CONDENSE
    sent = {}
    for method in ("full", "perp"):
        out = tmp_path / method
        args = ["train", QUICKSTART_PATH, "kind=finetune", "name=r", f"out_dir={out}", f"init={wanda}",
                f"data.dataset={small_store}", "data.seq_len=64", "data.batch_size=2", "train.steps=2",
                "train.warmup_steps=1", "train.eval_every=0", "train.threads=1", "checkpoint.every=0",
                f"recovery.method={method}", "recovery.rank=4"]
        proc = subprocess.run(["mpirun", "--allow-run-as-root", "--oversubscribe", "--mca",
                               "mpi_yield_when_idle", "1", "--mca", "btl_vader_single_copy_mechanism",
                               "none", "-np", "2", str(CONDENSE), *map(str, args)],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        m = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()][-1]
        ckpt = last_ckpt(out)
        trained = sum(read(ckpt, n).size for n in names_in(ckpt)
                      if n.startswith("optimizer/") and n.endswith("/exp_avg"))
        assert m["comm_bytes"] == 4 * trained, (method, m["comm_bytes"], trained)
        sent[method] = m["comm_bytes"]
    assert sent["perp"] < 0.2 * sent["full"], sent
