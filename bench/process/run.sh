#!/bin/sh
# Inspector-mode figures for crates/process (Linux):
#   1. time from the child's listen() to detection at the default 100 ms poll (goal <= 150 ms),
#      and to the first successful TCP connect to the detected address;
#   2. CPU cost of polling a 50-process tree every 100 ms (goal < 1 % of one core), for the
#      PortWatcher that wait_for_listen_port uses and for a full tree walk on every poll,
#      against the peer `ss -Htlnp` (iproute2) run at the same rate in the same run.
# Needs python3 and iproute2 (for the peer); installs them on Debian when missing and run as root.
# Knobs: DETECT_RUNS (30), CPU_SECONDS (10), TREE_SIZE (50).
set -eu
cd "$(dirname "$0")/../.."
need=""
command -v python3 >/dev/null 2>&1 || need="$need python3"
command -v ss >/dev/null 2>&1 || need="$need iproute2"
if [ -n "$need" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && apt-get install -y -qq $need >/dev/null
    else
        echo "missing:$need (install them, or the peer row is skipped)" >&2
    fi
fi
echo "machine: $(nproc) cores, $(uname -sr), load $(cut -d' ' -f1-3 /proc/loadavg)"
cargo bench -p process --bench detect
