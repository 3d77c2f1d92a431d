"""A full disk and a read-only output directory, for real: each case runs in its own mount
namespace (unshare -m, root) on a small tmpfs. The run ends with a clear error naming the file
and the OS's reason, the previous checkpoint stays intact and loadable, no temporary file is
left, and a resume once there is room continues the run."""
import os
import shlex
import subprocess

from conftest import CONDENSE
from test_cli_e2e import QUICKSTART, tiny_overrides


def in_namespace(script, timeout=300):
    """Runs a bash script in a private mount namespace (mounts vanish with it); returns its
    output. Needs root, as the netsim tests do."""
    assert os.geteuid() == 0, "these tests mount a tmpfs in a private mount namespace: run as root"
    p = subprocess.run(["unshare", "-m", "bash", "-c", "set -u\n" + script], capture_output=True,
                       text=True, timeout=timeout)
    assert p.returncode == 0, f"namespace script failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
    return p.stdout


def train_cmd(store, out, steps, *extra):
    args = tiny_overrides(store, out, steps, **{"train.eval_every": 0, "checkpoint.keep": 1})
    return shlex.join([str(CONDENSE), "train", str(QUICKSTART), *args, *extra])


def test_disk_full_at_a_checkpoint(small_store, tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    out = mnt / "run"
    # One checkpoint of this model is about 1.26 MB: the first fits, the second does not.
    text = in_namespace(f"""
mount -t tmpfs -o size=1500k tmpfs {mnt}
{train_cmd(small_store, out, 30)} > {mnt}/log 2>&1; echo "rc=$?"
tail -n 1 {mnt}/log
echo "files: $(ls -A {out}/checkpoints | tr '\\n' ' ')"
{CONDENSE} info {out}/checkpoints/step_000010.h5 > /dev/null && echo "step 10 loads"
mount -o remount,size=8m {mnt}
{train_cmd(small_store, out, 30)} --resume > {mnt}/log2 2>&1; echo "resume rc=$?"
tail -n 1 {out}/metrics.jsonl
""")
    assert text.startswith("rc=1\n"), text
    assert ("error: cannot write checkpoint " + str(out / "checkpoints" / "step_000020.h5")) in text, text
    assert "MB free; free space, lower checkpoint.keep" in text
    assert "files: latest step_000010.h5 \n" in text, text  # no temporary file left
    assert "step 10 loads" in text
    assert "resume rc=0" in text and '"step":30' in text, text


def test_read_only_output(small_store, tmp_path):
    mnt = tmp_path / "ro"
    mnt.mkdir()
    out = mnt / "run"
    text = in_namespace(f"""
mount -t tmpfs -o size=16m tmpfs {mnt}
{train_cmd(small_store, out, 10)} > /dev/null 2>&1 || echo "first run failed"
sha256sum {out}/checkpoints/* {out}/recipe.yaml {out}/metrics.jsonl > {tmp_path}/before
mount -o remount,ro {mnt}
{train_cmd(small_store, out, 20)} --resume > {tmp_path}/log 2>&1; echo "resume rc=$?"
tail -n 1 {tmp_path}/log
{CONDENSE} export {out} {mnt}/hf --format hf > {tmp_path}/log2 2>&1; echo "export rc=$?"
tail -n 1 {tmp_path}/log2
sha256sum -c --quiet {tmp_path}/before && echo "run directory unchanged"
echo "files: $(ls -A {out}/checkpoints | tr '\\n' ' ')"
""")
    assert "first run failed" not in text, text
    assert "resume rc=1" in text, text
    assert "Read-only file system" in text.split("resume rc=1")[1].split("export rc=")[0], text
    assert "export rc=1" in text, text
    assert "Read-only file system" in text.split("export rc=1")[1], text
    assert "run directory unchanged" in text, text
    assert "files: latest step_000010.h5 \n" in text, text
