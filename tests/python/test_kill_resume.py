"""kill -9 under mpirun, during a checkpoint write and at a random moment of training (forward,
backward, the exchange): the job ends within 30 s, `latest` names a complete checkpoint, which
loads, and --resume continues bit for bit as the uninterrupted run did (removing a
half-written temporary file on its first checkpoint)."""
import os
import random
import signal
import subprocess
import time

from conftest import CONDENSE
from test_cli_e2e import QUICKSTART, read_metrics, tiny_overrides
from test_data_parallel import mpirun, rank_pid, start_mpirun, wait_for_metrics


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
    # Each step once: what the killed run logged after step 5 was dropped on resume.
    assert [key(r) for r in rows] == [key(r) for r in read_metrics(ref)]
    assert sorted(q.name for q in ck.iterdir()) == [
        "latest", "step_000005.h5", "step_000010.h5", "step_000015.h5"]


def test_killed_at_a_random_moment(small_store, tmp_path):
    overrides = {"checkpoint.every": 4, "checkpoint.keep": 100, "train.eval_every": 0,
                 "train.log_every": 1}
    steps = 300  # about 5 ms each here: the kill lands well before the end
    ref = tmp_path / "ref"
    mpirun(2, "train", QUICKSTART, *tiny_overrides(small_store, ref, steps, **overrides), timeout=120)

    out = tmp_path / "killed"
    proc = start_mpirun(2, "train", QUICKSTART, *tiny_overrides(small_store, out, steps, **overrides))
    wait_for_metrics(out, 6)
    time.sleep(random.uniform(0, 0.05))  # somewhere inside a step
    victim = rank_pid(out, random.choice([0, 1]))
    assert victim, "rank not found"
    killed_at = time.time()
    os.kill(victim, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert time.time() - killed_at < 30
    assert proc.returncode != 0
    latest = (out / "checkpoints" / "latest").read_text().strip()
    step = int(latest[len("step_"):-len(".h5")])
    assert step >= 4 and step % 4 == 0
    subprocess.run([str(CONDENSE), "info", str(out / "checkpoints" / latest)], check=True,
                   capture_output=True)

    mpirun(2, "train", QUICKSTART, *tiny_overrides(small_store, out, steps, **overrides), "--resume",
           timeout=120)
    key = lambda r: (r["step"], r["loss"], r["grad_norm"], r["comm_bytes"])
    assert [key(r) for r in read_metrics(out)] == [key(r) for r in read_metrics(ref)]
