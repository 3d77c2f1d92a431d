"""The local multi-node simulator (launch/netsim.sh, launch/netns_rsh.sh), for real.

Brings up network namespaces joined by shaped veth links, runs tests/tools/mpi_probe.c (built
here with mpicc) over Open MPI's rsh launcher, and checks: ranks run in different namespaces with
their own addresses and hostnames, the measured bandwidth at 100mbit is within 30% of the rate,
latency is at least the configured delay (where the kernel has netem), `up` refuses a running
simulator, and `down` (explicit, or exec's trap after a failing mpirun or Ctrl-C) leaves no
namespace behind and the root namespace's interfaces and routes untouched.

Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN), iproute2 and Open MPI. Without them the tests FAIL with
the reason; they are skipped only when CONDENSE_NO_NETNS=1 is set explicitly.

The simulator here uses its own prefix (cnsimt), so a simulator you have up (cnsim) is never
touched.
"""
import os
import pathlib
import re
import shutil
import tempfile
import signal
import subprocess
import time

import pytest

SRC = pathlib.Path(os.environ.get("CONDENSE_SOURCE_DIR", pathlib.Path(__file__).resolve().parents[2]))
NETSIM = SRC / "launch" / "netsim.sh"
RSH = SRC / "launch" / "netns_rsh.sh"
PREFIX = "cnsimt"
ENV = {**os.environ, "CONDENSE_NETSIM_PREFIX": PREFIX}
ENV.pop("CONDENSE_NETSIM_STATE", None)
STATE = pathlib.Path("/run/condense-netsim") / PREFIX
RATE_MBIT = 100
TOLERANCE = 0.30


def netsim(*args, check=True, timeout=120):
    proc = subprocess.run([str(NETSIM), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=ENV)
    if check and proc.returncode != 0:
        raise AssertionError(f"netsim.sh {' '.join(map(str, args))} failed ({proc.returncode}):\n"
                             f"{proc.stdout}\n{proc.stderr}")
    return proc


def namespaces():
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return sorted(n for n in (line.split()[0] for line in out.splitlines() if line.strip())
                  if re.fullmatch(PREFIX + r"(\d+|sw)", n))


def root_namespace_snapshot():
    link = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True, check=True).stdout
    route = subprocess.run(["ip", "route"], capture_output=True, text=True, check=True).stdout
    return link, route


def parse_probe(out):
    ranks = {}
    for m in re.finditer(r"^PROBE rank=(\d+) size=(\d+) host=(\S+) netns=(\S+) ips=(\S+)", out, re.M):
        ranks[int(m[1])] = {"size": int(m[2]), "host": m[3], "netns": m[4], "ips": m[5]}
    pp = re.search(r"^PINGPONG latency_us=([\d.]+) bandwidth_mbit=([\d.]+)", out, re.M)
    allreduce = re.search(r"^ALLREDUCE (\S+)", out, re.M)
    return ranks, (float(pp[1]), float(pp[2])) if pp else None, allreduce[1] if allreduce else None


@pytest.fixture(scope="module")
def netns_ok():
    if os.environ.get("CONDENSE_NO_NETNS") == "1":
        pytest.skip("CONDENSE_NO_NETNS=1: network-namespace tests disabled explicitly")
    hint = " (set CONDENSE_NO_NETNS=1 to skip these tests explicitly)"
    if os.geteuid() != 0:
        pytest.fail("the simulator needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) to create network "
                    "namespaces; this test runs as uid %d%s" % (os.geteuid(), hint))
    for tool in ("ip", "tc", "mpirun", "mpicc"):
        if shutil.which(tool) is None:
            pytest.fail(f"'{tool}' not found (scripts/install.sh installs iproute2 and Open MPI){hint}")
    netsim("down")  # a simulator left by an interrupted earlier run
    probe_up = netsim("up", 1, "--delay", "0", check=False)
    netsim("down")
    if probe_up.returncode != 0:
        pytest.fail(f"cannot create network namespaces here:\n{probe_up.stderr}{hint}")
    yield
    netsim("down")
    assert namespaces() == []


@pytest.fixture(scope="module")
def probe(tmp_path_factory, netns_ok):
    out = tmp_path_factory.mktemp("mpi_probe") / "mpi_probe"
    subprocess.run(["mpicc", "-O2", "-o", str(out), str(SRC / "tests" / "tools" / "mpi_probe.c")],
                   check=True, capture_output=True, text=True)
    return out


def test_link_delay_or_its_refusal(probe):
    """--delay needs the kernel's netem qdisc. With it, a ping-pong's one-way latency is at
    least the delay; without it (the machines CI runs on), `up --delay` refuses, says how to
    go on, and leaves nothing behind. Either way one of the two is checked, never neither."""
    up = netsim("up", 2, "--rate", f"{RATE_MBIT}mbit", "--delay", "2ms", check=False)
    if up.returncode != 0:
        assert "netem" in up.stderr and "--delay 0" in up.stderr, up.stderr
        assert namespaces() == [], "a refused up must leave nothing behind"
        return
    try:
        config = dict(line.split("=", 1) for line in (STATE / "config").read_text().split())
        assert int(config["DELAY_US"]) == 2000
        latency_us, _ = parse_probe(netsim("run", "--", "-np", 2, probe, "--seconds", 1.5).stdout)[1]
        assert latency_us >= 2000, latency_us
    finally:
        netsim("down")


def test_up_run_down_two_nodes(probe):
    before = root_namespace_snapshot()
    netsim("up", 2, "--rate", f"{RATE_MBIT}mbit", "--delay", "0")
    try:
        assert namespaces() == [f"{PREFIX}0", f"{PREFIX}1", f"{PREFIX}sw"]
        config = dict(line.split("=", 1) for line in (STATE / "config").read_text().split())
        assert int(config["DELAY_US"]) == 0 and config["RATE"] == f"{RATE_MBIT}mbit"
        st = netsim("status")
        assert "up" in st.stdout and f"{PREFIX}1" in st.stdout, st.stdout

        refused = netsim("up", 2, check=False)
        assert refused.returncode != 0 and "already up" in refused.stderr, refused.stderr

        run = netsim("run", "--", "-np", 2, probe, "--seconds", 1.5)
        ranks, pingpong, allreduce = parse_probe(run.stdout)
        assert sorted(ranks) == [0, 1], run.stdout
        assert {r["netns"] for r in ranks.values()} == {f"{PREFIX}0", f"{PREFIX}1"}, run.stdout
        assert ranks[0]["host"] == f"{PREFIX}0" and ranks[1]["host"] == f"{PREFIX}1", run.stdout
        assert ranks[0]["ips"] == "198.51.100.1" and ranks[1]["ips"] == "198.51.100.2", run.stdout
        assert allreduce == "ok", run.stdout
        latency_us, mbit = pingpong
        print(f"100mbit link: measured {mbit:.1f} Mbit/s, one-way latency {latency_us:.1f} us")
        assert abs(mbit - RATE_MBIT) <= TOLERANCE * RATE_MBIT, run.stdout

        # A failing program: mpirun's status comes back, and down still cleans everything.
        failing = netsim("run", "--", "-np", 2, "false", check=False)
        assert failing.returncode != 0
    finally:
        netsim("down")
    assert namespaces() == []
    assert not STATE.exists()
    again = netsim("down")  # idempotent
    assert "already down" in again.stderr
    assert netsim("status", check=False).returncode == 3
    assert root_namespace_snapshot() == before, "the root namespace's links or routes changed"


def test_exec_four_nodes_and_cleanup_after_failure_and_ctrl_c(probe):
    run = netsim("exec", 4, "1gbit", "0", "--", "mpirun", "-np", 4, probe, "--seconds", 0.5)
    ranks, pingpong, allreduce = parse_probe(run.stdout)
    assert sorted(ranks) == [0, 1, 2, 3] and allreduce == "ok", run.stdout
    assert len({r["netns"] for r in ranks.values()}) == 4, run.stdout
    assert len({r["ips"] for r in ranks.values()}) == 4, run.stdout
    print(f"1gbit link (4 nodes): measured {pingpong[1]:.1f} Mbit/s, one-way latency {pingpong[0]:.1f} us")
    assert namespaces() == []

    failing = netsim("exec", 2, "100mbit", "0", "--", "-np", 2, "false", check=False)
    assert failing.returncode != 0, failing.stderr
    assert namespaces() == [], "exec must tear down after a failing mpirun"

    # Ctrl-C: SIGINT to the whole process group, as a terminal sends it.
    proc = subprocess.Popen([str(NETSIM), "exec", "2", "100mbit", "0", "--", "-np", "2", "sleep", "60"],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    deadline = time.time() + 20
    while time.time() < deadline and (STATE / "config").exists() is False:
        time.sleep(0.1)
    time.sleep(2)  # mpirun starts its daemons
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130, out
    assert namespaces() == [], out


def test_netns_rsh_arguments(netns_ok):
    netsim("up", 2, "--rate", "1gbit", "--delay", "0")
    try:
        def rsh(*args):
            return subprocess.run([str(RSH), *args], capture_output=True, text=True, env=ENV, timeout=30)

        # The way Open MPI calls it: host, then the command as one string for the remote shell.
        r = rsh("198.51.100.2", ' echo "$(hostname) $(ip netns identify)"; exit 3')
        assert r.returncode == 3 and r.stdout.split() == [f"{PREFIX}1", f"{PREFIX}1"], r
        # ssh options are accepted and ignored; user@host and namespace names work; words are
        # joined with spaces like ssh does.
        r = rsh("-x", "-q", "-o", "BatchMode=yes", "-p", "22", "-l", "root", f"root@{PREFIX}0",
                "echo", "a", "'b  c'")
        assert r.returncode == 0 and r.stdout == "a b  c\n", r
        r = rsh("198.51.100.1", "ip -4 -o addr show dev eth0")
        assert " 198.51.100.1/24 " in r.stdout, r
        r = rsh("198.51.100.77", "true")
        assert r.returncode == 255 and "unknown host '198.51.100.77'" in r.stderr, r
        r = rsh()
        assert r.returncode == 255 and "usage" in r.stderr, r
    finally:
        netsim("down")
    assert namespaces() == []


def test_clear_errors(netns_ok):
    r = netsim("up", 2, "--rate", "fast", check=False)
    assert r.returncode == 1 and "--rate 'fast'" in r.stderr
    r = netsim("up", 2, "--subnet", "10.0.0.1/24", check=False)
    assert r.returncode == 1 and "host bits set" in r.stderr
    r = netsim("run", "--", "-np", 2, "true", check=False)
    assert r.returncode == 1 and "not up" in r.stderr
    # The refusal without root, run as nobody through setpriv (in util-linux, essential, on bookworm).
    assert shutil.which("setpriv"), "setpriv (util-linux) is missing"
    # A copy in a directory everyone can enter: the checkout may live where an unprivileged
    # user cannot (root's home), which would fail with "Permission denied" instead.
    public = pathlib.Path(tempfile.mkdtemp(prefix="condense-netsim-"))
    try:
        public.chmod(0o755)
        script = public / "netsim.sh"
        shutil.copy(NETSIM, script)
        script.chmod(0o755)
        r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(script),
                            "up", "2"], capture_output=True, text=True, env=ENV, timeout=30)
    finally:
        shutil.rmtree(public)
    assert r.returncode == 1 and "must run as root" in r.stderr, r.stderr
    assert namespaces() == []
