"""kill -9 during a checkpoint write under mpirun: the job ends within 30 s, `latest` still
names the previous complete checkpoint, which loads, and --resume continues bit for bit as the
uninterrupted run did, removing the half-written temporary file on its first checkpoint."""
import time

from test_cli_e2e import QUICKSTART, read_metrics, tiny_overrides
from test_data_parallel import mpirun


def test_killed_while_writing_a_checkpoint(small_store, tmp_path):
    overrides = {"checkpoint.every": 5, "checkpoint.keep": 10, "train.eval_every": 0}
    ref = tmp_path / "ref"
    mpirun(2, "train", QUICKSTART, *tiny_overrides(small_store, ref, 15, **overrides), timeout=120)

    out = tmp_path / "killed"
    t0 = time.time()
    p = mpirun(2, "train", QUICKSTART, *tiny_overrides(small_store, out, 15, **overrides),
               env={"CONDENSE_TEST_KILL_IN_CHECKPOINT": "10"}, check=False, timeout=120)
    assert p.returncode != 0
    assert time.time() - t0 < 60
    ck = out / "checkpoints"
    assert (ck / "latest").read_text().strip() == "step_000005.h5"
    temporaries = [q.name for q in ck.iterdir() if q.name.startswith(".step_000010.h5.tmp.")]
    assert len(temporaries) == 1, sorted(q.name for q in ck.iterdir())
    assert not (ck / "step_000010.h5").exists()

    mpirun(2, "train", QUICKSTART, *tiny_overrides(small_store, out, 15, **overrides), "--resume",
           timeout=120)
    key = lambda r: (r["step"], r["loss"], r["grad_norm"], r["comm_bytes"])
    rows = read_metrics(out)
    assert [key(r) for r in rows[-10:]] == [key(r) for r in read_metrics(ref)[5:]]
    assert sorted(q.name for q in ck.iterdir()) == [
        "latest", "step_000005.h5", "step_000010.h5", "step_000015.h5"]
