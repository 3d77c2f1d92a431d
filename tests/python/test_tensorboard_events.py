"""TensorBoard event files written by condense (io/tensorboard_writer) read back with
TensorBoard's own EventAccumulator: tags, steps, wall times and float32 values must match.
A malformed file (bad CRC, bad protobuf) makes the reader drop or reject events, and the
exact-count assertions below then fail."""
import os
import pathlib
import struct
import subprocess

import pytest
from tensorboard.backend.event_processing import event_accumulator

SCALARS = {
    "train/loss": [(1, 4.5), (2, 3.25), (300, 2.0), (70000, 1.875)],
    "train/lr": [(1, 3e-3), (2, 1e-8), (300, 1.5e-30)],
    "eval/delta": [(5, -7.25), (6, -1e-3), (7, 0.0)],
}


def tool_path():
    build = os.environ.get("CONDENSE_BUILD_DIR")
    assert build, "CONDENSE_BUILD_DIR is not set (run through ctest)"
    path = pathlib.Path(build) / "tests" / "write_tb_events"
    assert path.is_file(), f"{path} not built: ninja write_tb_events"
    return path


def write(log_dir, scalars):
    args = [str(tool_path()), str(log_dir)]
    for tag, points in scalars.items():
        for step, value in points:
            args += [tag, str(step), repr(value)]
    out = subprocess.run(args, check=True, capture_output=True, text=True)
    return pathlib.Path(out.stdout.strip())


def load(log_dir):
    acc = event_accumulator.EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return acc


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def test_scalars_round_trip(tmp_path):
    path = write(tmp_path / "tb", SCALARS)
    assert path.parent == tmp_path / "tb"
    assert path.name.startswith("events.out.tfevents.")
    acc = load(tmp_path / "tb")
    assert sorted(acc.Tags()["scalars"]) == sorted(SCALARS)
    for tag, points in SCALARS.items():
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [s for s, _ in points]
        for e, (step, value) in zip(events, points):
            assert e.value == f32(value), (tag, step)
            assert e.value == pytest.approx(value, rel=1e-6, abs=0)
            assert e.wall_time == 1000.0 + step


def test_file_version_event(tmp_path):
    write(tmp_path, {"x": [(1, 1.0)]})
    acc = load(tmp_path)
    assert acc.file_version == 2.0


def test_corrupted_file_is_detected(tmp_path):
    """Sanity check of the test itself: flipping one byte of a value record loses events."""
    path = write(tmp_path / "tb", {"x": [(1, 1.0), (2, 2.0)]})
    data = bytearray(path.read_bytes())
    data[-6] ^= 0xFF  # inside the last record's payload: its data CRC no longer matches
    path.write_bytes(bytes(data))
    acc = load(tmp_path / "tb")
    steps = [e.step for e in acc.Scalars("x")] if "x" in acc.Tags()["scalars"] else []
    assert steps != [1, 2]
