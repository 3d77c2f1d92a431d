"""`touch <out_dir>/STOP` stops a run the way SIGTERM does, without a signal: every rank finishes
the step, one checkpoint is written, the job exits 0 and the file is removed; --resume then
continues. Under mpirun this is the reliable stop (a signal to mpirun reaches the ranks as
SIGTERM followed by SIGKILL one second later), so it is tested on 2 ranks (the warning that
points at it: tests/test_trainer.cpp). Only rank 0 looks for the file; the others learn of it
through the step's small collective, which each exchange mode reaches its own way (data
parallel, DiLoCo's inner steps, 1-bit Adam's momentum steps): each mode is tested."""
import subprocess
import time

import pytest

from conftest import CONDENSE
from test_cli_e2e import QUICKSTART, read_metrics, tiny_overrides
from test_data_parallel import MPIRUN

MODES = {
    "ddp": {},
    "diloco": {"comm.sync.mode": "diloco", "comm.sync.inner_steps": 4},
    "onebit_adam": {"comm.sync.mode": "onebit_adam", "comm.sync.freeze_steps": 2,
                    "comm.compression.codec": "sign", "comm.compression.error_control": "ef"},
}


@pytest.mark.parametrize("mode", MODES)
def test_stop_file_stops_every_rank_at_a_checkpoint(small_store, tmp_path, mode):
    out = tmp_path / "run"
    steps = 4000
    args = [*MPIRUN, "-np", "2", str(CONDENSE), "train", str(QUICKSTART),
            *tiny_overrides(small_store, out, steps, **{"checkpoint.every": 1000, "train.log_every": 1},
                            **MODES[mode])]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline and not (metrics.exists() and len(read_metrics(out)) >= 5):
        time.sleep(0.05)
    (out / "STOP").touch()
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr[-3000:]
    assert "stopped by the STOP file" in stderr, stderr[-3000:]
    stopped_at = len(read_metrics(out))
    assert 5 <= stopped_at < steps, stopped_at
    assert (out / "checkpoints" / f"step_{stopped_at:06d}.h5").exists()
    assert not (out / "STOP").exists()
    # A resume continues (the removed file does not stop it again).
    p = subprocess.run([*MPIRUN, "-np", "2", str(CONDENSE), "train", str(QUICKSTART),
                        *tiny_overrides(small_store, out, stopped_at + 3, **MODES[mode]), "--resume"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and "done at step" in p.stderr, p.stderr[-3000:]
    assert len(read_metrics(out)) == stopped_at + 3

