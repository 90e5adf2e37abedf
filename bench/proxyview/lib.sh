# Sourced by the proxyview bench scripts (run.sh, tls.sh, cluster.sh, rtt.sh): the shared
# preamble and helpers. Leaves the shell at the workspace root with ROOT, WORK (a temporary
# directory removed on exit) and PIDS (processes killed on exit) set.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
ROOT="$PWD"
WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
log() { printf '==> %s\n' "$*" >&2; }

# Installs wrk from apt when it is missing.
need_wrk() {
  command -v wrk >/dev/null && return 0
  log "installing wrk"
  local sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq wrk >/dev/null
}

# build_pv [PROFILE] → PV, BACKEND: builds proxyview and the bench backend (release unless
# PROFILE says otherwise). PV_BIN=path runs that proxyview binary instead (e.g. the build of an
# earlier commit, for a before/after comparison in one sitting); then nothing is built unless
# the backend is missing.
build_pv() {
  local profile=${1:-release} dir
  dir=$profile; [ "$profile" = dev ] && dir=debug
  PV="${PV_BIN:-$ROOT/target/$dir/proxyview}"
  BACKEND="$ROOT/target/$dir/examples/bench_backend"
  if [ -z "${PV_BIN:-}" ] || [ ! -x "$BACKEND" ]; then
    log "building proxyview and the backend ($profile)"
    cargo build -q --profile "$profile" -p proxyview --bin proxyview --example bench_backend
  fi
  [ -x "$PV" ] || { echo "PV_BIN=$PV is not an executable" >&2; exit 1; }
}

port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
# Waits up to 10 s for a listener on 127.0.0.1:PORT.
wait_port() {
  for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.05; done
  echo "port $1 never opened" >&2; exit 1
}

# CPU clock ticks (user + system) of the given pids so far; HZ ticks per second.
cpu_ticks() { local t=0; for p in "$@"; do t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo "$t"; }
HZ=$(getconf CLK_TCK)
hwm_kib() { awk '/VmHWM/{print $2}' "/proc/$1/status"; }
# Median of the numbers on stdin (space or newline separated; the mean of the middle two for
# an even count).
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END{print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
# col I ROWS... → the median of column I of the space-separated ROWS.
col() { local i=$1; shift; for r in "$@"; do echo "$r" | awk -v i="$i" '{print $i}'; done | tr '\n' ' ' | median; }
# A wrk latency (e.g. 812.00us, 1.20ms, 2.01s) in ms.
to_ms() { awk '{v=$1; if (v ~ /us$/) {sub(/us/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v*=1000}; printf "%.3f", v}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b+0 == 0) print "-"; else printf "%.2f", a/b }'; }
