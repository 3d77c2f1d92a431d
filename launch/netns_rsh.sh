#!/usr/bin/env bash
# netns_rsh.sh: an ssh stand-in for Open MPI's rsh launcher (--mca plm_rsh_agent) on the local
# multi-node simulator (launch/netsim.sh). It is called like ssh:
#
#   netns_rsh.sh [ssh options] [user@]HOST [COMMAND...]
#
# HOST is a node address (or namespace name) of the running simulator; the command runs in that
# node's network namespace (`ip netns exec`) and its own UTS namespace whose hostname is the
# namespace name. Like ssh, the words of COMMAND are joined with spaces and handed to the shell
# ($SHELL -c, /bin/sh when unset), which is how Open MPI's orted command line (one word:
# " orted -mca ess \"env\" ...", with PATH=...; export PATH; before it where needed) is meant to
# be read. Without a COMMAND the shell starts there (interactive on a terminal, else reading
# commands from stdin). ssh options (-x, -q, -T, -o Opt=v, -p 22, -l user, ...) are accepted and ignored; tree
# spawn works because the namespaces are reachable from one another by their names.
#
# The simulator is found through CONDENSE_NETSIM_PREFIX / CONDENSE_NETSIM_STATE (netsim.sh run
# exports both; defaults cnsim and /run/condense-netsim). Exit status: the command's, or 255 for
# an unknown host or a usage error (as ssh does).
set -euo pipefail

PREFIX="${CONDENSE_NETSIM_PREFIX:-cnsim}"
STATE="${CONDENSE_NETSIM_STATE:-/run/condense-netsim}/$PREFIX"

die() { echo "netns_rsh: error: $*" >&2; exit 255; }

while (($#)); do
  case $1 in
    --) shift; break ;;
    # ssh options that take a value, separate (-p 22) or attached (-p22)
    -[BbcDEeFIiJLlmOopQRSWw]) (($# >= 2)) || die "option $1 needs a value"; shift 2 ;;
    -[BbcDEeFIiJLlmOopQRSWw]?*) shift ;;
    # flag options, possibly bundled (-xq)
    -[146AaCfGgKkMNnqsTtVvXxYy]*) shift ;;
    -*) die "unsupported option '$1'" ;;
    *) break ;;
  esac
done
(($#)) || die "usage: netns_rsh.sh [ssh options] [user@]HOST [COMMAND...]"
host=${1#*@}
shift

ns=""
if [[ -f $STATE/hosts ]]; then
  while read -r a n; do
    if [[ $host == "$a" || $host == "$n" ]]; then ns=$n; break; fi
  done <"$STATE/hosts"
fi
if [[ -z $ns ]]; then
  # No state file (or no match): look for a node namespace of this simulator holding the address.
  for n in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^${PREFIX}[0-9]+\$" || true); do
    if [[ $host == "$n" ]] || ip -n "$n" -4 -o addr show 2>/dev/null | grep -q " inet $host/"; then
      ns=$n
      break
    fi
  done
fi
[[ -n $ns ]] || die "unknown host '$host': not an address or namespace of the simulator '$PREFIX' (see 'launch/netsim.sh status')"

shell=${SHELL:-/bin/sh}
[[ -x $shell ]] || shell=/bin/sh
# `exec "$0" ...` keeps the chain of execs so signals sent to this script's pid reach the command.
if (($#)); then
  exec ip netns exec "$ns" unshare --uts /bin/sh -c 'hostname "$1" && exec "$0" -c "$2"' "$shell" "$ns" "$*"
elif [[ -t 0 ]]; then
  exec ip netns exec "$ns" unshare --uts /bin/sh -c 'hostname "$1" && exec "$0" -i' "$shell" "$ns"
else  # like ssh without a terminal: the shell reads commands from stdin
  exec ip netns exec "$ns" unshare --uts /bin/sh -c 'hostname "$1" && exec "$0"' "$shell" "$ns"
fi
