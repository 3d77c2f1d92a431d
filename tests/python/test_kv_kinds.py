"""The kv_heads and kv_project recipe kinds (recipes/kv_compress.h): compress the init's KV cache
and heal it by distillation from the init in one run.

Each one-run result is compared with the two-step path it replaces, which the other KV tests
check against transformers and llama.cpp: `condense prune --method kv-heads | kv-project` on the
same calibration windows gives the run's compressed_init.h5 bit for bit, and a distill run from
that file (recipes/heal_kv_heads.yaml, recipes/kv_project.yaml) ends in bitwise the same
checkpoint. --resume reuses the compressed model; every refusal leaves nothing on disk, also a
refusal that comes after the compression was written.
"""
import numpy as np

from conftest import run
from export_fixtures import SOURCE, assert_same_datasets, model_tensors, start_from_step, trained  # noqa: F401

SEQ = 64      # the tiny model's data.seq_len (export_fixtures.train_tiny)
WINDOWS = 8   # calibration windows, both paths


def common(store, out_dir, steps=4):
    o = {"out_dir": out_dir, "data.dataset": store, "data.seq_len": SEQ, "data.batch_size": 4,
         "train.steps": steps, "train.warmup_steps": 1, "train.lr": 1e-2, "train.eval_every": 0,
         "train.threads": 1, "train.log_every": 10, "checkpoint.every": 2, "checkpoint.keep": 3}
    return [f"{k}={v}" for k, v in o.items()]


def one_run(recipe, store, init, out_dir, *extra, steps=4, check=True):
    return run("train", SOURCE / "recipes" / recipe, f"init={init}", f"kv.calib_windows={WINDOWS}",
               *common(store, out_dir, steps), *extra, check=check)


def prune(init, store, out, *args):
    run("prune", init, *args, "--calib-windows", WINDOWS, "--calib-seq-len", SEQ, "--data", store,
        "--threads", 1, "--out", out)


def test_kv_heads_kind_equals_prune_then_heal(small_store, trained, tmp_path):
    one = tmp_path / "one"
    res = one_run("kv_heads.yaml", small_store, trained[0], one, "kv.heads=1")
    assert "num_key_value_heads 2 -> 1 (svd init)" in res.stderr, res.stderr
    merged = tmp_path / "merged.h5"
    prune(trained[0], small_store, merged, "--method", "kv-heads", "--kv-heads", 1)
    a, ca, _ = model_tensors(one / "compressed_init.h5")
    b, cb, _ = model_tensors(merged)
    assert ca["num_key_value_heads"] == cb["num_key_value_heads"] == 1
    assert sorted(a) == sorted(b)
    for k in a:
        assert np.array_equal(a[k], b[k]), k

    two = tmp_path / "two"
    run("train", SOURCE / "recipes" / "heal_kv_heads.yaml", f"init={merged}",
        f"distill.teacher={trained[0]}", *common(small_store, two))
    fa, fb = one / "checkpoints" / "step_000004.h5", two / "checkpoints" / "step_000004.h5"
    x, _, _ = model_tensors(fa)
    y, _, _ = model_tensors(fb)
    moved = [k for k in x if not np.array_equal(x[k], a[k])]
    assert moved and all(".self_attn." in k for k in moved), moved  # only attention trained
    for k in x:
        assert np.array_equal(x[k], y[k]), k
    assert_same_datasets(fa, fb, ("optimizer",), 8)

    # --resume from step 2 reuses compressed_init.h5 and ends bitwise equal.
    c = tmp_path / "c"
    start_from_step(one, c, 2)
    (c / "compressed_init.h5").write_bytes((one / "compressed_init.h5").read_bytes())
    res = one_run("kv_heads.yaml", small_store, trained[0], c, "kv.heads=1", "--resume")
    assert "of the earlier run is the init" in res.stderr, res.stderr
    z, _, _ = model_tensors(c / "checkpoints" / "step_000004.h5")
    for k in x:
        assert np.array_equal(x[k], z[k]), k
    # ... and without --resume the run directory is refused, unchanged.
    before = sorted(p.name for p in c.rglob("*"))
    res = one_run("kv_heads.yaml", small_store, trained[0], c, "kv.heads=1", check=False)
    assert res.returncode == 1 and "pass --resume" in res.stderr, res.stderr
    assert sorted(p.name for p in c.rglob("*")) == before


def test_kv_project_kind_equals_prune_then_train(small_store, trained, tmp_path):
    one = tmp_path / "one"
    one_run("matryoshka_kv.yaml", small_store, trained[0], one)
    projected = tmp_path / "projected.h5"
    prune(trained[0], small_store, projected, "--method", "kv-project")
    assert_same_datasets(one / "compressed_init.h5", projected, ("kv_proj/", "model."), 8)
    two = tmp_path / "two"
    run("train", SOURCE / "recipes" / "kv_project.yaml", f"init={projected}",
        f"distill.teacher={trained[0]}", *common(small_store, two))
    assert_same_datasets(one / "checkpoints" / "step_000004.h5", two / "checkpoints" / "step_000004.h5",
                         ("kv_proj/", "optimizer", "model."), 12)


def test_cskv_through_the_kv_project_kind(small_store, trained, tmp_path):
    one = tmp_path / "one"
    res = one_run("matryoshka_kv.yaml", small_store, trained[0], one, "recovery.method=cskv",
                  "kv.key_rank=8", "kv.value_rank=16", "distill.kd_ratio=1")
    assert "the cache stores 8 + 16 of 64 values" in res.stderr, res.stderr
    low = tmp_path / "cskv.h5"
    prune(trained[0], small_store, low, "--method", "cskv", "--key-rank", 8, "--value-rank", 16)
    assert_same_datasets(one / "compressed_init.h5", low, ("cskv/", "model."), 8)
    # Only the factors train; the model's own weights stay bitwise.
    orig, _, _ = model_tensors(trained[0])
    end, _, _ = model_tensors(one / "checkpoints" / "step_000004.h5")
    for k in orig:
        assert np.array_equal(orig[k], end[k]), k
    import h5py
    with h5py.File(one / "compressed_init.h5", "r") as a, h5py.File(one / "checkpoints" / "step_000004.h5", "r") as b:
        names = [f"cskv/{n}" for n in a["cskv"].keys()]
        assert names and any(not np.array_equal(a[n][()], b[n][()]) for n in names), "the factors did not train"


def test_refusals_leave_nothing_on_disk(small_store, trained, tmp_path):
    out = tmp_path / "r"
    cases = [
        ("kv_heads.yaml", [], "kind kv_heads needs kv.heads"),
        ("kv_heads.yaml", ["kv.heads=3"], "kv_heads"),
        ("kv_heads.yaml", ["kv.heads=1", "kv.init=whiten"], "kind kv_heads takes svd or mean"),
        ("kv_heads.yaml", ["kv.heads=1", "recovery.method=perp"], "kind kv_heads heals"),
        ("matryoshka_kv.yaml", ["recovery.method=full"], "kind kv_project trains kv_project"),
        ("matryoshka_kv.yaml", ["kv.heads=1"], "kv.heads belongs to kind kv_heads"),
        ("matryoshka_kv.yaml", ["recovery.method=cskv"], "needs kv.key_rank"),
        ("matryoshka_kv.yaml", ["kv.key_rank=8"], "belong to recovery.method cskv"),
        # Refused by the training after the compressed model was written: removed again.
        ("kv_heads.yaml", ["kv.heads=1", "train.trainable=[nothing.*]"], "'nothing.*' matches no parameter"),
        ("matryoshka_kv.yaml", ["distill.teacher=/nonexistent/teacher.h5"], "teacher.h5"),
    ]
    for recipe, extra, needle in cases:
        res = one_run(recipe, small_store, trained[0], out, *extra, check=False)
        assert res.returncode == 1 and needle in res.stderr, (extra, res.stderr[-2000:])
        assert not out.exists(), (extra, sorted(out.rglob("*")))
    # A directory holding an earlier run without its compressed model: refused (no --resume),
    # and the compressed model this call made is not left behind in the other run's directory.
    one_run("kv_heads.yaml", small_store, trained[0], out, "kv.heads=1", steps=2)
    (out / "compressed_init.h5").unlink()
    before = sorted(p.name for p in out.rglob("*"))
    res = one_run("kv_heads.yaml", small_store, trained[0], out, "kv.heads=1", check=False)
    assert res.returncode == 1 and "pass --resume" in res.stderr, res.stderr
    assert sorted(p.name for p in out.rglob("*")) == before
    out = tmp_path / "r2"
    res = run("train", SOURCE / "recipes" / "kv_heads.yaml", f"out_dir={out}", "kv.heads=1", check=False)
    assert res.returncode == 1 and "kind kv_heads needs init" in res.stderr, res.stderr
    assert not out.exists()


def test_recipe_yaml_keeps_the_uncompressed_init(small_store, trained, tmp_path):
    """recipe.yaml names the checkpoint the run compressed, not compressed_init.h5: reused under
    another out_dir it compresses again (it used to try to merge the merged model's heads)."""
    one = tmp_path / "one"
    one_run("kv_heads.yaml", small_store, trained[0], one, "kv.heads=1")
    saved = (one / "recipe.yaml").read_text()
    assert "compressed_init" not in saved and f"init: {trained[0]}" in saved, saved
    again = tmp_path / "again"
    run("train", one / "recipe.yaml", f"out_dir={again}")
    a, _, _ = model_tensors(one / "checkpoints" / "step_000004.h5")
    b, _, _ = model_tensors(again / "checkpoints" / "step_000004.h5")
    for k in a:
        assert np.array_equal(a[k], b[k]), k


def test_under_mpirun_rank_0_compresses_and_late_ranks_wait(small_store, trained, tmp_path):
    """Two ranks, the second starting 1.5 s late (as on another node): one compression, written
    by rank 0, and no refusal of the late rank for the file rank 0 just wrote."""
    import subprocess
    from test_data_parallel import MPIRUN
    from conftest import CONDENSE
    out = tmp_path / "m"
    args = [str(CONDENSE), "train", str(SOURCE / "recipes" / "kv_heads.yaml"), f"init={trained[0]}",
            f"kv.calib_windows={WINDOWS}", *common(small_store, out), "kv.heads=1"]
    cmd = [*MPIRUN, "-np", "1", *args, ":", "-np", "1", "bash", "-c",
           "sleep 1.5; exec " + " ".join(f"'{a}'" for a in args)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stderr.count("wrote " + str(out / "compressed_init.h5")) == 1, p.stderr[-3000:]
    assert (out / "checkpoints" / "step_000004.h5").exists()
