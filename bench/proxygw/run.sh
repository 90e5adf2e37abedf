#!/usr/bin/env bash
# proxygw benchmark, one run, same namespaces for every variant:
#   (a) client -> backend directly (routed through the gateway namespace)
#   (b) client -> proxygw frontend (warm, kernel DNAT)
#   (c) client -> systemd-socket-proxyd in the gateway namespace (user-space copy), same backend
# wrk req/s and p99, bulk throughput (curl, 512 MiB), cold start of a static:cmd backend that takes a known time
# to listen, drain latency after the last flow, and heal time after `nft flush ruleset`. Prints a table with
# ratios. Needs root.
#
# Usage: sudo bench/proxygw/run.sh [DURATION_SECONDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
DUR="${1:-10}"
log() { printf '==> %s\n' "$*" >&2; }

[ "$(id -u)" -eq 0 ] || { echo "run as root (network namespaces)" >&2; exit 1; }
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || need+=(nginx-light)
command -v nft >/dev/null || need+=(nftables)
command -v curl >/dev/null || need+=(curl)
[ -x /lib/systemd/systemd-socket-proxyd ] || need+=(systemd)
command -v systemd-socket-activate >/dev/null || need+=(systemd)
if [ "${#need[@]}" -gt 0 ]; then
  log "installing ${need[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
PROXYD=/lib/systemd/systemd-socket-proxyd

log "building proxygw (release)"
cargo build -q --release -p proxygw
BIN="$PWD/target/release"

ID="pgwbench$$"
C="${ID}c" G="${ID}g" B="${ID}b"
WORK="$(mktemp -d /tmp/proxygw-bench.XXXXXX)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  # proxygw drains its targets on SIGTERM; give it time before SIGKILL.
  for _ in $(seq 100); do
    alive=0; for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" -eq 0 ] && break; sleep 0.05
  done
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -9 "$p" 2>/dev/null || true; done
  ip netns pids "$B" 2>/dev/null | xargs -r kill 2>/dev/null || true
  ip netns pids "$G" 2>/dev/null | xargs -r kill 2>/dev/null || true
  for ns in "$C" "$G" "$B"; do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

log "namespaces $C <-> $G <-> $B"
for ns in "$C" "$G" "$B"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
ip -n "$G" link add g0 type veth peer name c0 netns "$C"
ip -n "$G" link add g1 type veth peer name b0 netns "$B"
ip -n "$G" addr add 10.99.1.1/24 dev g0; ip -n "$G" addr add 10.99.2.1/24 dev g1
ip -n "$C" addr add 10.99.1.2/24 dev c0; ip -n "$B" addr add 10.99.2.2/24 dev b0
for pair in "$G g0" "$G g1" "$C c0" "$B b0"; do set -- $pair; ip -n "$1" link set "$2" up; done
ip -n "$C" route add default via 10.99.1.1
ip -n "$B" route add default via 10.99.2.1
ip netns exec "$G" sysctl -qw net.ipv4.ip_forward=1

log "backend: nginx on 10.99.2.2:8080"
mkdir -p "$WORK/www" "$WORK/nginx"
printf 'ok\n' > "$WORK/www/index.html"
head -c $((512 << 20)) /dev/zero > "$WORK/www/big"
chmod -R a+rX "$WORK"   # nginx workers run unprivileged
cat > "$WORK/nginx/nginx.conf" <<NGX
worker_processes 2;
daemon off;
error_log $WORK/nginx/error.log;
pid $WORK/nginx/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  keepalive_requests 1000000;
  client_body_temp_path $WORK/nginx; proxy_temp_path $WORK/nginx; fastcgi_temp_path $WORK/nginx;
  uwsgi_temp_path $WORK/nginx; scgi_temp_path $WORK/nginx;
  server { listen 10.99.2.2:8080; root $WORK/www; }
}
NGX
ip netns exec "$B" nginx -c "$WORK/nginx/nginx.conf" & PIDS+=($!)

# A backend that needs a known time before it listens, for the cold-start figure.
COLD_DELAY_MS=500
cat > "$WORK/nginx/cold.conf" <<NGX
worker_processes 1;
daemon off;
error_log $WORK/nginx/cold-error.log;
pid $WORK/nginx/cold.pid;
events { worker_connections 1024; }
http { access_log off; client_body_temp_path $WORK/nginx; proxy_temp_path $WORK/nginx; fastcgi_temp_path $WORK/nginx;
  uwsgi_temp_path $WORK/nginx; scgi_temp_path $WORK/nginx;
  server { listen 10.99.2.1:9000; root $WORK/www; } }
NGX

# The same server for the freeze tier (idle: freeze), on its own port.
sed -e "s/10.99.2.1:9000/10.99.2.1:9001/" -e "s/cold-error.log/frz-error.log/" -e "s/cold.pid/frz.pid/" \
  "$WORK/nginx/cold.conf" > "$WORK/nginx/frz.conf"

cat > "$WORK/proxygw.yaml" <<YAML
version: v1
log: {output: $WORK/proxygw.log, level: INFO}
plugins:
  ctl: {socket: $WORK/ctl.sock}
targets:
  - name: web
    kind: static:none
    idle_timeout: 1h
    endpoints: [{name: http, protocol: tcp, address: "10.99.2.2:8080"}]
  - name: cold
    kind: static:cmd
    idle_timeout: 2s
    endpoints: [{name: http, protocol: tcp, address: "10.99.2.1:9000"}]
    options:
      command: "sleep $(awk "BEGIN{print $COLD_DELAY_MS/1000}"); exec nginx -c $WORK/nginx/cold.conf"
      stop_timeout: 2s
  - name: frz
    kind: static:cmd
    idle_timeout: 1h
    endpoints: [{name: http, protocol: tcp, address: "10.99.2.1:9001"}]
    options:
      command: "exec nginx -c $WORK/nginx/frz.conf"
      idle: freeze
frontends:
  - name: web
    kind: static:http
    protocol: tcp
    listen: "10.99.1.1:8080"
    flow_timeout: 30s
    target: web:http
    options: {content: "cold"}
  - name: cold
    kind: static:tcp
    protocol: tcp
    listen: "10.99.1.1:7000"
    flow_timeout: 30s
    target: cold:http
  - name: frz
    kind: static:tcp
    protocol: tcp
    listen: "10.99.1.1:7001"
    flow_timeout: 30s
    target: frz:http
YAML
log "proxygw in $G"
ip netns exec "$G" "$BIN/proxygw" --config "$WORK/proxygw.yaml" & PIDS+=($!)
ctl() { "$BIN/proxygwctl" --config "$WORK/proxygw.yaml" "$@"; }
state() { ctl status | python3 -c "import json,sys; print({t['name']:t['state'] for t in json.load(sys.stdin)['targets']}['$1'])"; }
for _ in $(seq 100); do ctl status >/dev/null 2>&1 && break; sleep 0.05; done
ctl warm web
for _ in $(seq 100); do [ "$(state web)" = active ] && break; sleep 0.05; done

log "systemd-socket-proxyd on 10.99.1.1:9090"
ip netns exec "$G" systemd-socket-activate -l 10.99.1.1:9090 "$PROXYD" 10.99.2.2:8080 >/dev/null 2>&1 & PIDS+=($!)
sleep 0.5

cwrk() { ip netns exec "$C" wrk -t2 -c64 -d"${DUR}s" --latency "$1" 2>&1; }
rps() { awk '/Requests\/sec/ {print $2}'; }
p99() { awk '$1=="99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v*=1000}; print v}'; }
bulk() { ip netns exec "$C" curl -sf -o /dev/null -w '%{speed_download}' "$1" | awk '{printf "%.0f", $1/1048576}'; }
check() { ip netns exec "$C" curl -sf "$1/" | grep -qx ok || { echo "no 200 ok from $1" >&2; exit 1; }; }

declare -A R P T
for v in a b c; do
  case $v in a) url=http://10.99.2.2:8080 ;; b) url=http://10.99.1.1:8080 ;; c) url=http://10.99.1.1:9090 ;; esac
  check "$url"
  log "wrk $v $url"
  out="$(cwrk "$url/")"
  R[$v]="$(rps <<<"$out")"; P[$v]="$(p99 <<<"$out")"
  log "bulk $v"
  T[$v]="$(bulk "$url/big")"
done
[ "$(state web)" = active ] || { echo "proxygw target fell cold during the run" >&2; exit 1; }

log "cold start (backend listens after ${COLD_DELAY_MS} ms)"
[ "$(state cold)" = inactive ] || { echo "cold target not inactive" >&2; exit 1; }
COLD_S="$(ip netns exec "$C" curl -s -o /dev/null -w '%{time_starttransfer}' --max-time 30 http://10.99.1.1:7000/)"
T_CLOSE="$(date +%s.%N)"
for _ in $(seq 400); do [ "$(state cold)" = inactive ] && break; sleep 0.02; done
T_DRAIN="$(date +%s.%N)"

log "heal: nft flush ruleset, then time until a new connection is routed again (5 rounds)"
HEALS=()
for _ in 1 2 3 4 5; do
  ip netns exec "$G" nft flush ruleset
  t0="$(date +%s%N)"
  until ip netns exec "$C" curl -sf --max-time 0.2 http://10.99.1.1:8080/ 2>/dev/null | grep -qx ok; do
    [ $(( ($(date +%s%N) - t0) / 1000000 )) -lt 10000 ] || { echo "not healed within 10 s" >&2; exit 1; }
    sleep 0.005
  done
  HEALS+=($(( ($(date +%s%N) - t0) / 1000000 )))
  sleep 0.3
done
log "freeze tier: frozen backend, first client's SYN to first byte (20 rounds)"
ctl warm frz
for _ in $(seq 200); do [ "$(state frz)" = active ] && break; sleep 0.05; done
FRZ=()
for _ in $(seq 20); do
  ctl drain frz
  for _ in $(seq 200); do [ "$(state frz)" = inactive ] && break; sleep 0.02; done
  s="$(ip netns exec "$C" curl -s -o /dev/null -w '%{time_starttransfer}' --max-time 10 http://10.99.1.1:7001/)"
  FRZ+=("$(awk "BEGIN{printf \"%.0f\", $s*1000}")")
  for _ in $(seq 200); do [ "$(state frz)" = active ] && break; sleep 0.02; done
done
FRZ_SORTED=($(printf '%s\n' "${FRZ[@]}" | sort -n))
HEAL_SORTED="$(printf '%s\n' "${HEALS[@]}" | sort -n | tr '\n' ' ')"

ratio() { awk "BEGIN{ if ($2 > 0) printf \"%.3f\", $1/$2; else print \"n/a\" }"; }
COLD_MS="$(awk "BEGIN{printf \"%.0f\", $COLD_S*1000}")"
DRAIN_EXTRA_MS="$(awk "BEGIN{printf \"%.0f\", ($T_DRAIN-$T_CLOSE-2)*1000}")"
echo
echo "proxygw benchmark ($(uname -r), wrk -t2 -c64 -d${DUR}s, nginx backend, veth namespaces)"
printf '%-34s %12s %12s %12s %10s %10s\n' "" "direct (a)" "DNAT (b)" "proxyd (c)" "b/a" "b/c"
printf '%-34s %12s %12s %12s %10s %10s\n' "requests/s" "${R[a]}" "${R[b]}" "${R[c]}" "$(ratio "${R[b]}" "${R[a]}")" "$(ratio "${R[b]}" "${R[c]}")"
printf '%-34s %12s %12s %12s %10s %10s\n' "p99 latency ms (lower is better)" "${P[a]}" "${P[b]}" "${P[c]}" "$(ratio "${P[b]}" "${P[a]}")" "$(ratio "${P[b]}" "${P[c]}")"
printf '%-34s %12s %12s %12s %10s %10s\n' "bulk MiB/s (512 MiB)" "${T[a]}" "${T[b]}" "${T[c]}" "$(ratio "${T[b]}" "${T[a]}")" "$(ratio "${T[b]}" "${T[c]}")"
echo
echo "cold start, SYN to first byte: ${COLD_MS} ms (backend listens after ${COLD_DELAY_MS} ms; overhead $((COLD_MS-COLD_DELAY_MS)) ms, goal <= 50)"
echo "drain after the last flow: idle_timeout 2s + ${DRAIN_EXTRA_MS} ms (goal <= 1000; poll granularity 20 ms + ctl round trip)"
echo "freeze tier, frozen -> first byte ms (20 rounds): p50 ${FRZ_SORTED[9]}, p95 ${FRZ_SORTED[18]}, max ${FRZ_SORTED[19]} (goal p99 <= 300)"
echo "heal after nft flush ruleset, ms to the first routed connection (5 rounds, sorted): ${HEAL_SORTED}(goal <= 2000)"
