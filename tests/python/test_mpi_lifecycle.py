"""Data-parallel behaviours README promises, each shown to matter: the rank-0 parameter
broadcast (a rank that starts from other weights is overwritten), comm.overlap false (the same
bits as overlapping), SIGTERM to mpirun (every rank stops after the same step, a checkpoint,
and --resume continues bit for bit), and a second Ctrl-C (exits at once)."""
import signal
import subprocess
import time

from conftest import CONDENSE
from test_cli_e2e import QUICKSTART, read_metrics, tiny_overrides
from test_data_parallel import mpirun, start_mpirun, wait_for_metrics

KEY = lambda r: (r["step"], r["loss"], r["grad_norm"])  # noqa: E731


def test_rank_zero_weights_are_broadcast(small_store, tmp_path):
    ref, perturbed = tmp_path / "ref", tmp_path / "perturbed"
    mpirun(2, "train", QUICKSTART, *tiny_overrides(small_store, ref, 4))
    mpirun(2, "train", QUICKSTART, *tiny_overrides(small_store, perturbed, 4),
           env={"CONDENSE_TEST_PERTURB_RANK": "1"})
    assert [KEY(r) for r in read_metrics(ref)] == [KEY(r) for r in read_metrics(perturbed)]
    # The perturbation is not harmless by itself: on rank 0 it changes the run.
    moved = tmp_path / "moved"
    mpirun(2, "train", QUICKSTART, *tiny_overrides(small_store, moved, 4),
           env={"CONDENSE_TEST_PERTURB_RANK": "0"})
    assert read_metrics(moved)[0]["loss"] != read_metrics(ref)[0]["loss"]


def test_without_overlap_the_same_bits(small_store, tmp_path):
    a, b = tmp_path / "overlap", tmp_path / "serial"
    pa = mpirun(2, "train", QUICKSTART, *tiny_overrides(small_store, a, 6, **{"comm.bucket_cap_mb": 0.05}))
    pb = mpirun(2, "train", QUICKSTART, *tiny_overrides(small_store, b, 6, **{"comm.bucket_cap_mb": 0.05,
                                                                               "comm.overlap": "false"}))
    assert [KEY(r) for r in read_metrics(a)] == [KEY(r) for r in read_metrics(b)]
    # ... and the setting reached the gradient sync (the bits alone cannot show it; that an
    # overlapped exchange starts before backward ends is tests/mpi's FirstBucketIsExchanged...).
    assert "exchanged while backward runs" in pa.stderr, pa.stderr
    assert "exchanged after backward (comm.overlap=false)" in pb.stderr, pb.stderr


def test_sigterm_to_mpirun_stops_with_a_checkpoint(small_store, tmp_path):
    # Steps of several milliseconds (a larger batch), so that the signal arrives well before
    # the run's end on an idle machine too.
    steps = 300
    o = {"train.log_every": 1, "checkpoint.every": 1000, "data.batch_size": 32, "data.seq_len": 64}
    out = tmp_path / "t"
    proc = start_mpirun(2, "train", QUICKSTART, *tiny_overrides(small_store, out, steps, **o))
    wait_for_metrics(out, 5)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    # Open MPI's mpirun (4.1) exits 1 after forwarding a SIGTERM even when every rank stopped
    # cleanly and exited 0; what matters is below.
    assert "stopped by signal" in stderr, stderr[-3000:]
    assert "error:" not in stderr, stderr[-3000:]
    stopped_at = len(read_metrics(out))
    assert 5 <= stopped_at < steps
    assert (out / "checkpoints" / "latest").read_text().strip() == f"step_{stopped_at:06d}.h5"
    # The resumed run continues as the uninterrupted one does.
    mpirun(2, "train", QUICKSTART, *tiny_overrides(small_store, out, steps, **o), "--resume")
    ref = tmp_path / "ref"
    mpirun(2, "train", QUICKSTART, *tiny_overrides(small_store, ref, steps, **o))
    assert [KEY(r) for r in read_metrics(out)][stopped_at:] == [KEY(r) for r in read_metrics(ref)][stopped_at:]


def test_second_ctrl_c_exits_at_once(small_store, tmp_path):
    # Steps of about a second (a wider model, longer windows), so that the first Ctrl-C is
    # still waiting for its step to end when the second arrives.
    out = tmp_path / "c"
    big = {"checkpoint.every": 0, "train.log_every": 1, "model.hidden_size": 256,
           "model.intermediate_size": 1024, "model.num_hidden_layers": 4, "data.seq_len": 64,
           "data.batch_size": 32}
    proc = subprocess.Popen([str(CONDENSE), "train", str(QUICKSTART),
                             *tiny_overrides(small_store, out, 100000, **big)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_metrics(out, 2)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.01)  # delivered separately (pending signals of one kind merge), well inside a step
    proc.send_signal(signal.SIGINT)
    t0 = time.time()
    _, stderr = proc.communicate(timeout=60)
    assert time.time() - t0 < 5
    assert proc.returncode == -signal.SIGINT, (proc.returncode, stderr[-2000:])
    assert "stopped by signal" not in stderr  # it did not wait for the step and the checkpoint
    assert not (out / "checkpoints").exists() or not list((out / "checkpoints").glob("step_*.h5"))
