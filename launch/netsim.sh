#!/usr/bin/env bash
# netsim.sh: a small cluster on one machine for data-parallel runs under Open MPI.
#
# K network namespaces (the "nodes", PREFIX0..PREFIX{K-1}) each get one interface eth0 with an
# address from SUBNET; eth0 is one end of a veth pair whose other end (pI) is a port of the
# bridge br0 in a dedicated switch namespace (PREFIXsw). Every node's link is shaped in both
# directions with tc: tbf at RATE on the node's egress (eth0) and on the switch port's egress
# (pI, i.e. the node's ingress), plus netem adding DELAY on the node's egress, so any message
# between two nodes crosses one delay and two rate limiters (one-way latency >= DELAY, RTT >=
# 2*DELAY). The namespaces have no route and no link to the root namespace: nothing here touches
# the root namespace's interfaces or routes, and no packet can leave the machine.
#
# `run` starts mpirun inside node 0 with a generated hostfile of the node addresses; remote ranks
# start through launch/netns_rsh.sh (--mca plm_rsh_agent), which runs Open MPI's daemon command
# in the node's namespace with `ip netns exec`. Each node also gets its own UTS namespace whose
# hostname is the namespace name, so gethostname()/MPI_Get_processor_name differ per node.
#
# Usage (root; needs iproute2's `ip` and `tc`):
#   netsim.sh up K [--rate 1gbit] [--delay 0.1ms] [--subnet 198.51.100.0/24] [--slots 1] [--force]
#   netsim.sh run [--slots N] -- [mpirun] <mpirun args...>      e.g. run -- -np 2 ./a.out
#   netsim.sh exec K [RATE [DELAY]] [up options] -- [mpirun] <mpirun args...>
#                                          up + run + down; always tears down (errors, Ctrl-C)
#   netsim.sh down                         idempotent; also ends processes left in the namespaces
#   netsim.sh status                       exit 0 when up, 3 when down
#
# RATE takes tc units (bit, kbit, mbit, gbit, tbit; bps, kbps, mbps, gbps = bytes/s; decimal
# prefixes like tc). DELAY takes us, ms or s (0 for none). Delay needs the kernel's netem qdisc
# (CONFIG_NET_SCH_NETEM); without it an explicit --delay > 0 is an error, while the default delay
# is dropped with a warning (rate shaping needs only tbf).
#
# Environment: CONDENSE_NETSIM_PREFIX (default cnsim: names of namespaces and state; lets two
# simulators, e.g. a test's and yours, coexist), CONDENSE_NETSIM_STATE (default
# /run/condense-netsim; the state lives in $CONDENSE_NETSIM_STATE/$PREFIX: config, hosts,
# hostfile).
#
# mpirun is given: --allow-run-as-root --hostfile <state>/hostfile
#   --mca plm_rsh_agent launch/netns_rsh.sh --mca pml ob1 --mca btl tcp,self
#   --mca btl_tcp_if_include SUBNET --mca oob_tcp_if_include SUBNET --mca mpi_yield_when_idle 1
#   --bind-to none (every node is this machine; default binding would put them all on core 0)
# each unless your own arguments set it (Open MPI refuses an MCA parameter given twice). pml ob1
# keeps UCX, which ignores the btl settings, out of the way; yield_when_idle because all nodes
# share this machine's cores, and busy-polling ranks starve the kernel's packet processing.
# Add --oversubscribe for more ranks than slots.
set -Eeuo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
RSH="$HERE/netns_rsh.sh"
PREFIX="${CONDENSE_NETSIM_PREFIX:-cnsim}"
STATE_ROOT="${CONDENSE_NETSIM_STATE:-/run/condense-netsim}"
STATE="$STATE_ROOT/$PREFIX"
SW="${PREFIX}sw"

DEFAULT_RATE=1gbit
DEFAULT_DELAY=0.1ms
DEFAULT_SUBNET=198.51.100.0/24

die() { echo "netsim: error: $*" >&2; exit 1; }
warn() { echo "netsim: warning: $*" >&2; }
log() { echo "netsim: $*" >&2; }

usage() {  # the header comment from "Usage" on
  awk 'NR > 1 && !/^#/ {exit} /^# Usage/ {on = 1} on {sub(/^# ?/, ""); print}' "${BASH_SOURCE[0]}"
}

# A prefix ends in a letter, so that one simulator's node names (cnsim0) never match another's
# pattern (prefix cnsim1 would make cnsim10).
[[ $PREFIX =~ ^[a-z]([a-z0-9]{0,8}[a-z])?$ ]] ||
  die "CONDENSE_NETSIM_PREFIX='$PREFIX' must be 1-10 lowercase letters/digits, starting and ending with a letter"

require_tools() {
  command -v ip >/dev/null 2>&1 || die "'ip' not found: install iproute2 (scripts/install.sh does)"
  command -v tc >/dev/null 2>&1 || die "'tc' not found: install iproute2 (scripts/install.sh does)"
}

require_root() {
  [[ $(id -u) -eq 0 ]] ||
    die "must run as root: network namespaces, veth pairs and tc need CAP_NET_ADMIN and CAP_SYS_ADMIN (try: sudo $0 $*)"
}

# ---- parsing helpers -------------------------------------------------------------------------

# rate_bits RATE -> bits per second (integer) on stdout; nonzero exit when malformed.
rate_bits() {
  awk -v r="$(tr 'A-Z' 'a-z' <<<"$1")" 'BEGIN {
    if (!match(r, /^[0-9]+(\.[0-9]+)?/)) exit 1
    n = substr(r, 1, RLENGTH); u = substr(r, RLENGTH + 1)
    m["bit"] = 1; m["kbit"] = 1e3; m["mbit"] = 1e6; m["gbit"] = 1e9; m["tbit"] = 1e12
    m["bps"] = 8; m["kbps"] = 8e3; m["mbps"] = 8e6; m["gbps"] = 8e9; m["tbps"] = 8e12
    if (!(u in m)) exit 1
    v = n * m[u]; if (v < 8000 || v > 100e9) exit 1
    printf "%.0f\n", v }'
}

# delay_us DELAY -> microseconds (integer) on stdout; nonzero exit when malformed.
delay_us() {
  awk -v d="$(tr 'A-Z' 'a-z' <<<"$1")" 'BEGIN {
    if (!match(d, /^[0-9]+(\.[0-9]+)?/)) exit 1
    n = substr(d, 1, RLENGTH); u = substr(d, RLENGTH + 1)
    m["us"] = 1; m["usec"] = 1; m["ms"] = 1e3; m["msec"] = 1e3; m["s"] = 1e6; m["sec"] = 1e6
    if (u == "" && n + 0 == 0) { print 0; exit 0 }
    if (!(u in m)) exit 1
    printf "%.0f\n", n * m[u] }'
}

ip2int() { local IFS=.; set -- $1; echo $(( ($1 << 24) | ($2 << 16) | ($3 << 8) | $4 )); }
int2ip() { echo "$(( ($1 >> 24) & 255 )).$(( ($1 >> 16) & 255 )).$(( ($1 >> 8) & 255 )).$(( $1 & 255 ))"; }

# parse_subnet A.B.C.D/LEN -> sets NET_INT, PLEN
parse_subnet() {
  local s=$1
  [[ $s =~ ^([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})/([0-9]{1,2})$ ]] ||
    die "--subnet '$s' is not an IPv4 network like 198.51.100.0/24"
  local o
  for o in 1 2 3 4; do ((BASH_REMATCH[o] <= 255)) || die "--subnet '$s': octet ${BASH_REMATCH[o]} > 255"; done
  PLEN=${BASH_REMATCH[5]}
  ((PLEN >= 8 && PLEN <= 30)) || die "--subnet '$s': prefix length must be 8..30"
  local addr mask
  addr=$(ip2int "${s%/*}")
  mask=$(( (0xffffffff << (32 - PLEN)) & 0xffffffff ))
  NET_INT=$(( addr & mask ))
  ((NET_INT == addr)) || die "--subnet '$s' has host bits set (did you mean $(int2ip "$NET_INT")/$PLEN?)"
}

# ---- state -----------------------------------------------------------------------------------

# Namespaces of this simulator that exist now (nodes and switch), one per line.
existing_namespaces() {
  ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^${PREFIX}([0-9]+|sw)\$" || true
}

is_up() { [[ -d $STATE ]] || [[ -n $(existing_namespaces) ]]; }

load_state() {
  [[ -f $STATE/config ]] ||
    die "simulator '$PREFIX' is not up (no $STATE/config): run '$0 up K' first"
  # shellcheck disable=SC1091
  source "$STATE/config"
}

write_hostfile() {  # SLOTS -> $STATE/hostfile
  local slots=$1 ip ns
  {
    echo "# generated by launch/netsim.sh for simulator '$PREFIX': address slots (namespace)"
    while read -r ip ns; do echo "$ip slots=$slots  # $ns"; done <"$STATE/hosts"
  } >"$STATE/hostfile"
}

# ---- down ------------------------------------------------------------------------------------

do_down() {
  local nss ns pids left i
  nss=$(existing_namespaces)
  if [[ -z $nss && ! -d $STATE ]]; then
    log "simulator '$PREFIX' is already down"
    return 0
  fi
  for ns in $nss; do
    # Processes left in a namespace (an orted or rank of a failed run, a shell) keep it alive after
    # `ip netns del`; end them, by pid, TERM first.
    pids=$(ip netns pids "$ns" 2>/dev/null | grep -vx -e "$$" -e "${BASHPID:-$$}" || true)
    if [[ -n $pids ]]; then
      log "ending $(wc -w <<<"$pids") process(es) left in $ns: $(tr '\n' ' ' <<<"$pids")"
      kill -TERM $pids 2>/dev/null || true
      for i in 1 2 3 4 5 6 7 8 9 10; do
        left=$(ip netns pids "$ns" 2>/dev/null | grep -vx -e "$$" -e "${BASHPID:-$$}" || true)
        [[ -z $left ]] && break
        sleep 0.2
      done
      [[ -n $left ]] && kill -KILL $left 2>/dev/null || true
    fi
  done
  for ns in $nss; do
    ip netns del "$ns" 2>/dev/null || warn "could not delete namespace $ns"
  done
  rm -rf "$STATE"
  rmdir "$STATE_ROOT" 2>/dev/null || true
  local still
  still=$(existing_namespaces)
  [[ -z $still ]] || die "namespaces still present after down: $still"
  log "simulator '$PREFIX' is down (removed: $(echo $nss))"
}

cmd_down() {
  (($# == 0)) || die "down takes no arguments (got: $*)"
  require_tools
  require_root down
  do_down
}

# ---- up --------------------------------------------------------------------------------------

# shape_tbf NETNS DEV RATE_BITS [PARENT]: token bucket at RATE on DEV's egress.
shape_tbf() {
  local ns=$1 dev=$2 bits=$3 parent=${4:-root}
  # Bucket: 2 ms worth of tokens, at least 64 KiB so that a whole GSO/TSO super-packet fits
  # (smaller buckets force segmentation and under-shoot the rate at high rates); queue limit:
  # 50 ms of traffic, 256 KiB..256 MiB.
  local burst=$(( bits / 8 / 500 ))
  ((burst >= 65536 + 1514)) || burst=$(( 65536 + 1514 ))
  local limit=$(( bits / 8 / 20 ))
  ((limit >= 262144)) || limit=262144
  ((limit <= 268435456)) || limit=268435456
  local where=(root handle 1:)
  [[ $parent != root ]] && where=(parent "$parent" handle 10:)
  ip netns exec "$ns" tc qdisc add dev "$dev" "${where[@]}" tbf rate "${bits}bit" burst "$burst" limit "$limit"
}

netem_available() {  # NETNS DEV: can this kernel attach netem? (leaves DEV unshaped)
  local ns=$1 dev=$2
  if ip netns exec "$ns" tc qdisc add dev "$dev" root handle 1: netem delay 1us 2>/dev/null; then
    ip netns exec "$ns" tc qdisc del dev "$dev" root 2>/dev/null || true
    return 0
  fi
  return 1
}

cmd_up() {
  local k="" rate=$DEFAULT_RATE delay=$DEFAULT_DELAY subnet=$DEFAULT_SUBNET slots=1 force=0
  local delay_given=0
  while (($#)); do
    case $1 in
      --rate) (($# >= 2)) || die "--rate needs a value"; rate=$2; shift 2 ;;
      --rate=*) rate=${1#*=}; shift ;;
      --delay) (($# >= 2)) || die "--delay needs a value"; delay=$2; delay_given=1; shift 2 ;;
      --delay=*) delay=${1#*=}; delay_given=1; shift ;;
      --subnet) (($# >= 2)) || die "--subnet needs a value"; subnet=$2; shift 2 ;;
      --subnet=*) subnet=${1#*=}; shift ;;
      --slots) (($# >= 2)) || die "--slots needs a value"; slots=$2; shift 2 ;;
      --slots=*) slots=${1#*=}; shift ;;
      --force) force=1; shift ;;
      -h|--help) usage; exit 0 ;;
      -*) die "up: unknown option '$1' (options: --rate --delay --subnet --slots --force)" ;;
      *) [[ -z $k ]] || die "up: unexpected argument '$1'"; k=$1; shift ;;
    esac
  done
  require_tools
  [[ -n $k ]] || die "up: number of nodes K missing (e.g. '$0 up 4 --rate 1gbit')"
  [[ $k =~ ^[0-9]+$ ]] && ((k >= 1 && k <= 64)) || die "up: K='$k' must be an integer in 1..64"
  [[ $slots =~ ^[0-9]+$ ]] && ((slots >= 1)) || die "up: --slots '$slots' must be a positive integer"
  local bits us
  bits=$(rate_bits "$rate") || die "--rate '$rate' is not a tc rate in 8kbit..100gbit like 100mbit, 1gbit, 10gbit"
  us=$(delay_us "$delay") || die "--delay '$delay' is not a delay like 0, 100us, 0.1ms, 2ms"
  parse_subnet "$subnet"
  (( k <= (1 << (32 - PLEN)) - 2 )) || die "--subnet $subnet has room for $(( (1 << (32 - PLEN)) - 2 )) nodes, not $k"
  require_root up "$k"

  if is_up; then
    if ((force)); then
      log "--force: tearing down the running simulator '$PREFIX' first"
      do_down
    else
      local what=""
      [[ -f $STATE/config ]] && what=" ($(. "$STATE/config"; echo "$K nodes, rate $RATE, delay ${DELAY_US}us, subnet $SUBNET"))"
      die "simulator '$PREFIX' is already up$what: run '$0 down' first, or pass --force to replace it"
    fi
  fi

  # From here on, a failure (or Ctrl-C) removes whatever was created.
  trap 'rc=$?; trap - ERR INT TERM; echo "netsim: error: up failed; cleaning up" >&2; do_down >/dev/null 2>&1 || true; exit $(( rc ? rc : 1 ))' ERR
  trap 'trap - ERR INT TERM; echo "netsim: interrupted; cleaning up" >&2; do_down >/dev/null 2>&1 || true; exit 130' INT TERM
  mkdir -p "$STATE"

  local err
  if ! err=$(ip netns add "$SW" 2>&1); then
    trap - ERR INT TERM
    do_down >/dev/null 2>&1 || true
    die "cannot create network namespace '$SW': $err
  (needs root with CAP_NET_ADMIN and CAP_SYS_ADMIN; in a container run it with --cap-add NET_ADMIN --cap-add SYS_ADMIN or --privileged)"
  fi
  ip -n "$SW" link set lo up
  ip -n "$SW" link add br0 type bridge
  ip -n "$SW" link set br0 up

  local i ns addr netem=1
  : >"$STATE/hosts"
  for ((i = 0; i < k; i++)); do
    ns="$PREFIX$i"
    addr=$(int2ip $(( NET_INT + 1 + i )))
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    # Quiet the links: no IPv6 autoconfiguration chatter on shaped links (best effort).
    ip netns exec "$ns" sh -c 'echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6' 2>/dev/null || true
    # TCP windows up to 64 MiB so that rate * delay (bandwidth-delay product) does not cap
    # throughput; these sysctls are per network namespace (Linux >= 4.15), the root's stay as are.
    ip netns exec "$ns" sh -c 'echo "4096 131072 67108864" > /proc/sys/net/ipv4/tcp_rmem &&
      echo "4096 65536 67108864" > /proc/sys/net/ipv4/tcp_wmem' 2>/dev/null || true
    ip -n "$SW" link add "p$i" type veth peer name eth0 netns "$ns"
    ip -n "$SW" link set "p$i" master br0
    ip -n "$SW" link set "p$i" up
    ip -n "$ns" addr add "$addr/$PLEN" dev eth0
    ip -n "$ns" link set eth0 up
    echo "$addr $ns" >>"$STATE/hosts"
    if ((i == 0)) && ((us > 0)) && ! netem_available "$ns" eth0; then
      netem=0
      if ((delay_given)); then
        trap - ERR INT TERM
        do_down >/dev/null 2>&1 || true
        die "--delay $delay needs the netem qdisc, which this kernel lacks (CONFIG_NET_SCH_NETEM; 'tc qdisc add ... netem' says 'Specified qdisc kind is unknown'); use --delay 0 for rate shaping only"
      fi
      warn "this kernel has no netem qdisc (CONFIG_NET_SCH_NETEM): links are rate-limited but get no added delay (default --delay $DEFAULT_DELAY dropped; pass --delay 0 to silence this)"
      us=0
    fi
    if ((us > 0)); then
      ip netns exec "$ns" tc qdisc add dev eth0 root handle 1: netem delay "${us}us" limit 100000
      shape_tbf "$ns" eth0 "$bits" 1:1
    else
      shape_tbf "$ns" eth0 "$bits"
    fi
    shape_tbf "$SW" "p$i" "$bits"
  done

  cat >"$STATE/config" <<EOF
K=$k
RATE=$rate
RATE_BITS=$bits
DELAY_US=$us
NETEM=$netem
SUBNET=$(int2ip "$NET_INT")/$PLEN
SLOTS=$slots
EOF
  write_hostfile "$slots"
  trap - ERR INT TERM

  # Node 0 must reach every other node before we call it up: a TCP connection to a closed port
  # is refused at once by a reachable node and times out otherwise.
  local ip0 ipn out
  ip0=$(int2ip $(( NET_INT + 1 )))
  for ((i = 1; i < k; i++)); do
    ipn=$(int2ip $(( NET_INT + 1 + i )))
    if out=$(ip netns exec "${PREFIX}0" timeout 5 bash -c "exec 3<>/dev/tcp/$ipn/9" 2>&1); then
      :  # something listens on port 9 there: reachable
    elif [[ $out != *refused* ]]; then
      do_down >/dev/null 2>&1 || true
      die "node ${PREFIX}$i ($ipn) is not reachable from ${PREFIX}0 ($ip0): ${out:-timeout}"
    fi
  done
  log "simulator '$PREFIX' is up: $k node(s) ${PREFIX}0..${PREFIX}$((k - 1)) on $(int2ip "$NET_INT")/$PLEN" \
      "(first $ip0), rate $rate, delay ${us}us one-way, $slots slot(s) per node"
}

# ---- status ----------------------------------------------------------------------------------

cmd_status() {
  (($# == 0)) || die "status takes no arguments (got: $*)"
  require_tools
  local nss
  nss=$(existing_namespaces)
  if [[ ! -f $STATE/config ]]; then
    if [[ -n $nss ]]; then
      echo "simulator '$PREFIX': INCONSISTENT (namespaces $(echo $nss) exist but $STATE/config does not); run '$0 down'"
      return 1
    fi
    echo "simulator '$PREFIX': down"
    return 3
  fi
  load_state
  echo "simulator '$PREFIX': up"
  echo "  nodes: $K   rate: $RATE   delay: ${DELAY_US}us one-way$( ((NETEM)) || echo ' (no netem in this kernel)')   subnet: $SUBNET   slots/node: $SLOTS"
  echo "  state: $STATE   hostfile: $STATE/hostfile   rsh agent: $RSH"
  local ip ns bad=0 nproc q
  while read -r ip ns; do
    if ! grep -qx "$ns" <<<"$nss"; then
      echo "  $ns  $ip  MISSING"; bad=1; continue
    fi
    if [[ $(id -u) -eq 0 ]]; then
      nproc=$(ip netns pids "$ns" 2>/dev/null | wc -l)
      q=$(ip netns exec "$ns" tc qdisc show dev eth0 2>/dev/null | awk '{print $2}' | paste -sd+ -)
      echo "  $ns  $ip  eth0 qdisc: ${q:-none}  processes: $nproc"
    else
      echo "  $ns  $ip"
    fi
  done <"$STATE/hosts"
  grep -qx "$SW" <<<"$nss" || { echo "  $SW (switch) MISSING"; bad=1; }
  ((bad == 0)) || { echo "  some namespaces are missing: run '$0 down' and 'up' again"; return 1; }
  return 0
}

# ---- run / exec ------------------------------------------------------------------------------

# mpirun_argv SLOTS ARGS... -> fills MPIRUN_ARGV with the full command (after load_state).
mpirun_argv() {
  local slots=$1; shift
  write_hostfile "$slots"
  case "${1:-}" in mpirun|mpiexec|orterun|*/mpirun|*/mpiexec|*/orterun) shift ;; esac
  (($#)) || die "run: no mpirun arguments given (e.g. '$0 run -- -np 2 ./program')"
  [[ -x $RSH ]] || die "rsh agent $RSH is missing or not executable"
  command -v mpirun >/dev/null 2>&1 || die "mpirun not found: install openmpi-bin (scripts/install.sh does)"
  # Defaults, each left out when the user's arguments set it (Open MPI refuses an MCA parameter
  # given twice). mpi_yield_when_idle: all simulated nodes share this machine's cores, and ranks
  # that busy-poll without yielding starve the kernel's packet processing (measured on a 2-core
  # VM: 10 ms instead of 10 us per message).
  local -A user_mca=()
  local user_hostfile=0 user_root=0 user_bind=0 a prev=""
  for a in "$@"; do
    case $prev in -mca|--mca|-gmca|--gmca) user_mca[$a]=1 ;; esac
    case $a in
      -hostfile|--hostfile|-machinefile|--machinefile|--default-hostfile|-default-hostfile) user_hostfile=1 ;;
      --allow-run-as-root|-allow-run-as-root) user_root=1 ;;
      --bind-to|-bind-to|--bind-to=*) user_bind=1 ;;
    esac
    prev=$a
  done
  local defaults=()
  ((user_root)) || defaults+=(--allow-run-as-root)
  ((user_hostfile)) || defaults+=(--hostfile "$STATE/hostfile")
  # Every "node" is this machine: Open MPI would bind each node's first rank to core 0, so all
  # ranks of a 2-node run would share one core. Let the kernel schedule them.
  ((user_bind)) || defaults+=(--bind-to none)
  local kv
  for kv in "plm_rsh_agent=$RSH" pml=ob1 btl=tcp,self "btl_tcp_if_include=$SUBNET" \
            "oob_tcp_if_include=$SUBNET" mpi_yield_when_idle=1; do
    [[ -n ${user_mca[${kv%%=*}]:-} ]] || defaults+=(--mca "${kv%%=*}" "${kv#*=}")
  done
  # Node 0 gets its own UTS namespace (hostname = namespace name), like the remote nodes.
  MPIRUN_ARGV=(ip netns exec "${PREFIX}0" unshare --uts sh -c 'hostname "$0" && exec "$@"' "${PREFIX}0"
    mpirun "${defaults[@]}" "$@")
}

cmd_run() {
  local slots=""
  while (($#)); do
    case $1 in
      --slots) (($# >= 2)) || die "--slots needs a value"; slots=$2; shift 2 ;;
      --slots=*) slots=${1#*=}; shift ;;
      --) shift; break ;;
      -h|--help) usage; exit 0 ;;
      *) break ;;
    esac
  done
  require_tools
  require_root run
  load_state
  slots=${slots:-$SLOTS}
  [[ $slots =~ ^[0-9]+$ ]] && ((slots >= 1)) || die "run: --slots '$slots' must be a positive integer"
  export CONDENSE_NETSIM_PREFIX="$PREFIX" CONDENSE_NETSIM_STATE="$STATE_ROOT"
  mpirun_argv "$slots" "$@"
  exec "${MPIRUN_ARGV[@]}"
}

cmd_exec() {
  local up_args=() positional=()
  while (($#)); do
    case $1 in
      --) shift; break ;;
      --rate|--delay|--subnet|--slots) (($# >= 2)) || die "$1 needs a value"; up_args+=("$1" "$2"); shift 2 ;;
      --force) die "exec: --force is not allowed (exec would tear down a simulator it did not start); run '$0 down' first" ;;
      -*) up_args+=("$1"); shift ;;
      *) positional+=("$1"); shift ;;
    esac
  done
  ((${#positional[@]} >= 1 && ${#positional[@]} <= 3)) ||
    die "exec: usage: $0 exec K [RATE [DELAY]] [--subnet S] [--slots N] -- [mpirun] <mpirun args...>"
  (($#)) || die "exec: no mpirun arguments after '--'"
  local k=${positional[0]}
  ((${#positional[@]} >= 2)) && up_args+=(--rate "${positional[1]}")
  ((${#positional[@]} >= 3)) && up_args+=(--delay "${positional[2]}")
  require_tools
  require_root exec
  is_up && die "exec: simulator '$PREFIX' is already up; exec brings up and tears down its own ('$0 down' first, or use '$0 run')"

  EXEC_CHILD=""
  trap 'exec_cleanup' EXIT
  trap 'exec_signal 130 INT' INT
  trap 'exec_signal 143 TERM' TERM
  trap 'exec_signal 129 HUP' HUP
  cmd_up "$k" "${up_args[@]}"
  # cmd_up replaced our traps while it ran; restore them.
  trap 'exec_cleanup' EXIT
  trap 'exec_signal 130 INT' INT
  trap 'exec_signal 143 TERM' TERM
  trap 'exec_signal 129 HUP' HUP
  load_state
  export CONDENSE_NETSIM_PREFIX="$PREFIX" CONDENSE_NETSIM_STATE="$STATE_ROOT"
  mpirun_argv "$SLOTS" "$@"
  # mpirun runs in the background so that a signal reaches our trap at once; keep its stdin.
  exec 3<&0
  "${MPIRUN_ARGV[@]}" <&3 &
  EXEC_CHILD=$!
  local rc=0
  wait "$EXEC_CHILD" || rc=$?
  EXEC_CHILD=""
  ((rc == 0)) || log "mpirun exited with status $rc"
  exit "$rc"
}

exec_cleanup() {
  local rc=$?
  trap - EXIT INT TERM HUP
  do_down || true
  exit "$rc"
}

exec_signal() {  # RC SIGNAL
  local rc=$1 sig=$2 i
  trap '' INT TERM HUP
  log "interrupted (SIG$sig); stopping mpirun and tearing down"
  if [[ -n ${EXEC_CHILD:-} ]]; then
    # A terminal's Ctrl-C reached mpirun as well (same process group): give it 2 s to stop the
    # job by itself, since a second signal makes it exit at once without cleaning up. Otherwise
    # pass the signal on; `down` ends whatever is left in the namespaces anyway.
    if [[ $sig == INT ]]; then
      for i in $(seq 1 20); do kill -0 "$EXEC_CHILD" 2>/dev/null || break; sleep 0.1; done
    fi
    kill -"$sig" "$EXEC_CHILD" 2>/dev/null || true
    for i in $(seq 1 50); do kill -0 "$EXEC_CHILD" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$EXEC_CHILD" 2>/dev/null || true
  fi
  trap - EXIT
  do_down || true
  exit "$rc"
}

# ---- main ------------------------------------------------------------------------------------

(($#)) || { usage >&2; exit 2; }
sub=$1; shift
case $sub in
  up) cmd_up "$@" ;;
  down) cmd_down "$@" ;;
  status) cmd_status "$@" ;;
  run) cmd_run "$@" ;;
  exec) cmd_exec "$@" ;;
  -h|--help|help) usage ;;
  *) echo "netsim: error: unknown command '$sub'" >&2; usage >&2; exit 2 ;;
esac
