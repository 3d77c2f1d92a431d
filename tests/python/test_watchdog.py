"""A stalled rank (SIGSTOP) no longer hangs the job: with comm.timeout_s the other ranks' watchdog
ends it, naming the rank that stopped (comm/watchdog.h). Without the watchdog these runs would
block until the test's own timeout."""
import time

import pytest

from test_cli_e2e import QUICKSTART, tiny_overrides
from test_data_parallel import mpirun


# ranks, the rank that stops itself, comm.timeout_s, seconds allowed for the whole job
# (timeout + the 2 s grace + start-up and mpirun's teardown).
CASES = [(2, 1, 3, 45), (4, 2, 4, 60)]


@pytest.mark.parametrize("ranks,stalled,timeout_s,allowed", CASES)
def test_a_stopped_rank_is_named_within_the_timeout(small_store, tmp_path, ranks, stalled, timeout_s,
                                                     allowed):
    out = tmp_path / "w"
    t0 = time.time()
    p = mpirun(ranks, "train", QUICKSTART,
               *tiny_overrides(small_store, out, 50, **{"comm.timeout_s": timeout_s, "data.batch_size": 2}),
               env={"CONDENSE_TEST_STALL_RANK": str(stalled), "CONDENSE_TEST_STALL_STEP": "4"},
               check=False, timeout=120)
    took = time.time() - t0
    text = p.stdout + p.stderr
    assert p.returncode != 0, text[-3000:]
    assert "error: collective " in text, text[-3000:]
    assert (f"has not finished after {timeout_s} s (comm.timeout_s = {timeout_s}); "
            f"rank(s) {stalled} did not report") in text, text[-3000:]
    assert took < allowed, took
    # Every live rank wrote what it was waiting in; the stopped one wrote nothing.
    reports = sorted((out / "watchdog").iterdir())
    assert [q.name.rsplit(".", 1)[1] for q in reports] == [f"rank{r}" for r in range(ranks) if r != stalled]
    assert all(f"{q.name.rsplit('.', 1)[1].replace('rank', 'rank ')} waiting in " in q.read_text()
               for q in reports)
