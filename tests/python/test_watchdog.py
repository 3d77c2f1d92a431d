"""A stalled rank (SIGSTOP) no longer hangs the job: with comm.timeout_s the other ranks' watchdog
ends it, naming the rank that stopped (comm/watchdog.h). Without the watchdog these runs would
block until the test's own timeout."""
import time

from test_cli_e2e import QUICKSTART, tiny_overrides
from test_data_parallel import mpirun


def stalled_run(store, out, ranks, stall_rank, timeout_s):
    t0 = time.time()
    p = mpirun(ranks, "train", QUICKSTART,
               *tiny_overrides(store, out, 50, **{"comm.timeout_s": timeout_s, "data.batch_size": 2}),
               env={"CONDENSE_TEST_STALL_RANK": str(stall_rank), "CONDENSE_TEST_STALL_STEP": "4"},
               check=False, timeout=120)
    return p, time.time() - t0


def test_a_stopped_rank_is_named_within_the_timeout(small_store, tmp_path):
    out = tmp_path / "w2"
    p, took = stalled_run(small_store, out, 2, 1, 3)
    text = p.stdout + p.stderr
    assert p.returncode != 0, text[-3000:]
    assert "[rank 0] error: collective " in text, text[-3000:]
    assert "has not finished after 3 s (comm.timeout_s = 3); rank(s) 1 did not report" in text, text[-3000:]
    # Timeout 3 s + grace 2 s + start-up and mpirun's teardown.
    assert took < 45, took
    reports = sorted(p.name for p in (out / "watchdog").iterdir())
    assert len(reports) == 1 and reports[0].endswith(".rank0"), reports
    assert "rank 0 waiting in " in (out / "watchdog" / reports[0]).read_text()


def test_four_ranks_name_the_one_that_stopped(small_store, tmp_path):
    out = tmp_path / "w4"
    p, took = stalled_run(small_store, out, 4, 2, 4)
    text = p.stdout + p.stderr
    assert p.returncode != 0, text[-3000:]
    assert "rank(s) 2 did not report" in text, text[-3000:]
    assert took < 60, took
    reports = sorted(p.name.rsplit(".", 1)[1] for p in (out / "watchdog").iterdir())
    assert reports == ["rank0", "rank1", "rank3"], reports
