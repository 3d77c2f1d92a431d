#!/usr/bin/env bash
# The newcomer path, tried the way a new user meets it: a clean minimal Debian bookworm root
# (debootstrap --variant=minbase: no compiler, no Python, no CA certificates), this checkout's
# committed files copied into root's home directory (/root/condense, as on a fresh machine where
# one works as root), and README's main command run there:
#
#   bash scripts/quickstart.sh train.steps=N
#
# It prints every line with the seconds since the command started and ends with a summary: the
# time spent installing, building, and until the first logged training step, plus whether the
# run finished. The main job must need nothing the install script does not bring.
#
# Not part of CI: it needs root, network access to Debian and PyPI, about 15 GB of disk and 15-25
# minutes (it downloads torch and its CUDA runtime libraries again, with no pip cache). Run:
#
#   sudo bash scripts/fresh_machine_test.sh [--steps N] [--tests] [--keep] [--dir DIR] [--no-cuda]
#
#   --steps N   training steps of the quickstart (default 30)
#   --tests     afterwards also run README's test command (scripts/test.sh) in the same root
#   --keep      leave the root in place (default: removed at the end)
#   --dir DIR   where to build the root (default /var/tmp/condense-fresh)
#   --ref REF   the commit to copy (default HEAD; an older one measures the path before a change)
#   --no-cuda   do not bind the host's /usr/local/cuda into the root (by default it is bound
#               read-only when present: the machines condense targets have the CUDA toolkit
#               preinstalled, and the torch wheel is a CUDA build either way)
#
# The summary also lands in DIR.summary.txt next to the root.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STEPS=30 TESTS=0 KEEP=0 CUDA=1 REF=HEAD
FRESH=/var/tmp/condense-fresh
while (($#)); do
  case "$1" in
    --steps) STEPS="$2"; shift 2 ;;
    --tests) TESTS=1; shift ;;
    --keep) KEEP=1; shift ;;
    --dir) FRESH="$2"; shift 2 ;;
    --no-cuda) CUDA=0; shift ;;
    --ref) REF="$2"; shift 2 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "fresh_machine_test.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
die() { echo "fresh_machine_test.sh: $*" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || die "needs root (debootstrap, chroot and mounts)"
[[ "$STEPS" =~ ^[1-9][0-9]*$ ]] || die "--steps '$STEPS': must be a positive integer"
command -v debootstrap >/dev/null || die "debootstrap not found: apt-get install debootstrap"
[[ ! -e "$FRESH" ]] || die "$FRESH exists: remove it, or name another place with --dir"
# The commit, fixed now: the summary must name what was copied, not where HEAD is by the end.
REF=$(git -C "$ROOT" rev-parse --verify --short "$REF^{commit}") || die "--ref '$REF': not a commit"

cleanup() {
  for m in usr/local/cuda dev sys proc; do
    mountpoint -q "$FRESH/$m" 2>/dev/null && umount -R "$FRESH/$m" 2>/dev/null || true
  done
  # The root's bind mount onto itself, with whatever the tests left under it (ip netns).
  mountpoint -q "$FRESH" 2>/dev/null && umount -R "$FRESH" 2>/dev/null || true
  if ((KEEP == 0)) && [[ -d "$FRESH" ]]; then
    # Only remove the root when nothing is mounted under it any more.
    if grep -q " $FRESH/" /proc/mounts; then
      echo "fresh_machine_test.sh: mounts remain under $FRESH; not removing it" >&2
    else
      rm -rf "$FRESH"
    fi
  fi
}
trap cleanup EXIT
trap "exit 130" INT TERM  # the EXIT trap then unmounts and removes the root

echo "== debootstrap --variant=minbase bookworm $FRESH (not timed)"
debootstrap --variant=minbase bookworm "$FRESH" http://deb.debian.org/debian >/dev/null
# Debian's security and updates suites, as a fresh install lists them.
cat > "$FRESH/etc/apt/sources.list" <<'SOURCES'
deb http://deb.debian.org/debian bookworm main
deb http://deb.debian.org/debian bookworm-updates main
deb http://deb.debian.org/debian-security bookworm-security main
SOURCES
# The site's network configuration, as a site's machines carry it before anyone installs
# anything: name servers, local CA certificates (a TLS-intercepting proxy's; the ca-certificates
# package that install.sh brings adds them to the system bundle) and pip's settings (which
# bundle to trust). Nothing of condense's.
cp /etc/resolv.conf "$FRESH/etc/resolv.conf"
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  mkdir -p "$FRESH/usr/local/share/ca-certificates"
  cp /usr/local/share/ca-certificates/*.crt "$FRESH/usr/local/share/ca-certificates/"
fi
[[ -f /etc/pip.conf ]] && cp /etc/pip.conf "$FRESH/etc/pip.conf"
# The root as a mount point of its own (before the mounts inside it): in the chroot "/" is then
# a mount, which the tests that make private mount namespaces need (tests/python/
# test_disk_faults.py, test_netsim.py: "unshare: cannot change root filesystem propagation:
# Invalid argument" in a plain directory).
mount --bind "$FRESH" "$FRESH"
mount --rbind /proc "$FRESH/proc"
mount --rbind /sys "$FRESH/sys"
mount --rbind /dev "$FRESH/dev"  # with /dev/shm, which Open MPI's shared-memory transport uses
if ((CUDA)) && [[ -d /usr/local/cuda/ ]]; then
  mkdir -p "$FRESH/usr/local/cuda"
  mount --bind /usr/local/cuda "$FRESH/usr/local/cuda"
  mount -o remount,bind,ro "$FRESH/usr/local/cuda"
fi

echo "== copying the committed files of $ROOT (git archive $REF) to /root/condense"
mkdir -p "$FRESH/root/condense"
git -C "$ROOT" archive "$REF" | tar -x -C "$FRESH/root/condense"

# Runs a command in the root as a login shell of root, each output line prefixed with the
# seconds since it started; the lines also go to LOG.
run_timed() {
  local log="$1"; shift
  local start now
  printf -v start '%(%s)T' -1
  chroot "$FRESH" /usr/bin/env -i HOME=/root TERM=dumb PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    /bin/bash -c "cd /root/condense && $*" 2>&1 |
    while IFS= read -r line; do
      printf -v now '%(%s)T' -1
      printf '%5ds %s\n' $((now - start)) "$line"
    done | tee "$log"
  return "${PIPESTATUS[0]}"
}

LOG="$FRESH.quickstart.log"
echo "== bash scripts/quickstart.sh train.steps=$STEPS"
rc=0
run_timed "$LOG" "bash scripts/quickstart.sh train.steps=$STEPS" || rc=$?

# Phase boundaries from the quickstart's own progress lines.
at() { { grep -m1 -E "$1" "$LOG" || true; } | awk '{print $1}' | tr -d s; }
t_build=$(at '\[quickstart [0-9:]+\] 2/4')
t_train=$(at '\[quickstart [0-9:]+\] 3/4')
t_step=$(at 'info (\[rank [0-9]+\] )?step [0-9]+/')
t_end=$(tail -n1 "$LOG" | awk '{print $1}' | tr -d s)
first_step=$({ grep -m1 -oE 'step [0-9]+/[0-9]+ loss' "$LOG" || true; } | awk '{print $2}')
{
  echo "fresh-machine quickstart ($(date -u +%Y-%m-%dT%H:%MZ), commit $REF, $(nproc) cores, CUDA toolkit bound: $CUDA)"
  echo "  install (apt + pip):        ${t_build:-?} s"
  echo "  build (condense):           $(( ${t_train:-0} - ${t_build:-0} )) s"
  echo "  to the first logged step:   ${t_step:-never} s (step ${first_step:-?}; includes tokenizing GCIDE)"
  echo "  whole command:              ${t_end:-?} s, exit status $rc"
} | tee "$FRESH.summary.txt"

if ((TESTS)) && ((rc == 0)); then
  echo "== bash scripts/test.sh"
  run_timed "$FRESH.test.log" "bash scripts/test.sh" || rc=$?
  echo "  test command: exit status $rc ($(tail -n1 "$FRESH.test.log"))" | tee -a "$FRESH.summary.txt"
fi
exit "$rc"
