"""Two `condense train` runs that race for one run directory or one checkpoint.dir: one of them
trains and the other is refused before it writes, so no run's checkpoints are overwritten (a reliability audit found a run that prepared its token store for
seconds, then replaced the checkpoints of a run that had finished in the meantime, and two runs
sharing checkpoint.dir deleting each other's files mid-write)."""
import os
import subprocess
import time

import h5py
import yaml

from conftest import CONDENSE
from test_cli_e2e import QUICKSTART, tiny_overrides

REFUSED = ("another run wrote while this one was starting", "another condense process",
           "already holds checkpoints")


def start(*args, env=None):
    return subprocess.Popen([str(CONDENSE), *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env=None if env is None else {**os.environ, **env})


def finish(procs):
    out = [(p.wait(timeout=600), *p.communicate()) for p in procs]
    codes = sorted(rc for rc, _, _ in out)
    assert codes == [0, 1], [(rc, err[-2000:]) for rc, _, err in out]
    loser = next(err for rc, _, err in out if rc == 1)
    assert any(r in loser for r in REFUSED), loser
    assert "nothing was changed" in loser, loser
    return next(i for i, (rc, _, _) in enumerate(out) if rc == 0), loser


def recorded(checkpoint, section, key):
    """The value of section.key in the recipe a checkpoint was written with."""
    with h5py.File(checkpoint, "r") as f:
        recipe = f["recipe"][()]
    return yaml.safe_load(recipe.decode() if isinstance(recipe, bytes) else recipe)[section][key]


def test_a_run_that_starts_slowly_does_not_overwrite_one_that_finished(small_store, tmp_path):
    out = tmp_path / "race"
    # B passes the start-up check on an empty directory, then (as if preparing a large token
    # store) waits 15 s before taking the lock; A starts a second later and finishes meanwhile.
    slow = start("train", QUICKSTART, *tiny_overrides(small_store, out, 4, **{
        "data.seed": 7, "checkpoint.every": 2}), env={"CONDENSE_TEST_DELAY_BEFORE_LOCK_S": "15"})
    time.sleep(1)
    fast = start("train", QUICKSTART, *tiny_overrides(small_store, out, 4, **{"checkpoint.every": 2}))
    winner, loser = finish([slow, fast])
    assert winner == 1 and "another run wrote while this one was starting" in loser, loser
    # The checkpoints are A's own (its data seed), complete, and `latest` names one.
    ckpts = sorted((out / "checkpoints").glob("step_*.h5"))
    assert [c.name for c in ckpts] == ["step_000002.h5", "step_000004.h5"], ckpts
    assert all(recorded(c, "data", "seed") == 1234 for c in ckpts), [recorded(c, "data", "seed") for c in ckpts]


def test_two_runs_sharing_checkpoint_dir_do_not_interleave(small_store, tmp_path):
    shared = tmp_path / "shared_ck"
    procs = [start("train", QUICKSTART, *tiny_overrides(small_store, tmp_path / f"run{i}", 40, **{
        "checkpoint.dir": shared, "checkpoint.every": 3, "train.seed": 100 + i}))
        for i in range(2)]
    winner, loser = finish(procs)
    # The winner's checkpoints alone, none half-written; the loser made no run directory.
    ckpts = sorted(shared.glob("step_*.h5"))
    assert [c.name for c in ckpts] == ["step_000039.h5", "step_000040.h5"], list(shared.iterdir())
    assert not list(shared.glob(".step_*.tmp.*")), list(shared.iterdir())
    assert all(recorded(c, "train", "seed") == 100 + winner for c in ckpts)
    assert not (tmp_path / f"run{1 - winner}").exists(), loser
