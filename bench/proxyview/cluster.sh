#!/usr/bin/env bash
# proxyview cluster on loopback, one run: two nodes on one redis-server, one agent on node 1.
#   (1) same-node (caller → node 1) vs cross-node (caller → node 2 → peer link → node 1) small GETs:
#       wrk req/s and p50/p99, ROUNDS alternating rounds of DURATION seconds, medians;
#   (2) registry traffic at idle with 1,000 routes (one agent registering 1,000 routes):
#       Redis commands/s and bytes/s over IDLE seconds, from INFO stats deltas;
#   (3) route convergence over 100 registrations: for each, a new agent on node 1, then the time
#       between node 1 first serving the route and node 2 first serving it (polled every 2 ms).
# PROFILE=release by default (dev for a quick look; then only ratios mean anything).
source "$(dirname "$0")/lib.sh"
PROFILE="${PROFILE:-release}"
DURATION="${DURATION:-5}"
CONNS="${CONNS:-50}"
ROUNDS="${ROUNDS:-3}"
IDLE="${IDLE:-10}"
REGS="${REGS:-100}"
command -v wrk >/dev/null && command -v redis-server >/dev/null && command -v redis-cli >/dev/null \
  || { echo "needs wrk, redis-server, redis-cli (apt-get install wrk redis-server)" >&2; exit 1; }

build_pv "$PROFILE"

P_R=$(port); P_BE=$(port)
redis-server --port "$P_R" --bind 127.0.0.1 --save '' --appendonly no >/dev/null & PIDS+=($!)
"$BACKEND" "127.0.0.1:$P_BE" 2>/dev/null & PIDS+=($!)
wait_port "$P_R"; wait_port "$P_BE"
declare -A IN EX
for n in 1 2; do
  IN[$n]=$(port); EX[$n]=$(port)
  cat > "$WORK/n$n.yaml" <<YAML
host: "127.0.0.1"
internal: {port: ${IN[$n]}, token: "bench"}
external: {port: ${EX[$n]}, token: "bench"}
cluster: {registry: "redis://127.0.0.1:$P_R/0", advertise: "127.0.0.1:${IN[$n]}", secret: "bench-cluster-secret", nodeId: "n$n"}
YAML
  PROXYVIEW_LOG=warn "$PV" server --config "$WORK/n$n.yaml" 2>"$WORK/n$n.log" & PIDS+=($!)
  wait_port "${IN[$n]}"
done
agent() { # name routes...
  local name=$1; shift
  { echo "clientId: \"$name\""; echo "proxyview: {url: \"127.0.0.1:${IN[1]}\", token: \"bench\"}"; echo "routes:"
    for r in "$@"; do echo "  - {name: \"$r\", value: \"127.0.0.1\", port: $P_BE, type: \"ip\"}"; done; } > "$WORK/$name.yaml"
  PROXYVIEW_LOG=warn "$PV" client --config "$WORK/$name.yaml" 2>"$WORK/$name.log" &
}
served() { [ "$(curl -s -o /dev/null -w '%{http_code}' -H "Host: $2" -H 'auth-token: bench' "http://127.0.0.1:$1/")" = 200 ]; }
agent bench svc; PIDS+=($!)
for _ in $(seq 400); do served "${EX[2]}" svc && break; sleep 0.025; done
served "${EX[2]}" svc || { echo "svc never served via node 2" >&2; cat "$WORK"/*.log >&2; exit 1; }

# --- (1) same-node vs cross-node ---------------------------------------------------------------
run_wrk() { # port → "rps p50ms p99ms"
  wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency -H 'Host: svc' -H 'auth-token: bench' "http://127.0.0.1:$1/" \
    | awk '/Requests\/sec/{r=$2} /^ +50%/{p50=$2} /^ +99%/{p99=$2}
           function ms(v){ if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
           END{printf "%s %.3f %.3f\n", r, ms(p50), ms(p99)}'
}
wrk -t2 -c"$CONNS" -d2s -H 'Host: svc' -H 'auth-token: bench' "http://127.0.0.1:${EX[2]}/" >/dev/null  # warm-up
: > "$WORK/same"; : > "$WORK/cross"
for r in $(seq "$ROUNDS"); do
  run_wrk "${EX[1]}" >> "$WORK/same"
  run_wrk "${EX[2]}" >> "$WORK/cross"
done
# The alternative peer transport, for comparison: an HTTP/1.1 keep-alive hop (nginx with an
# upstream keep-alive pool) in front of node 1 stands in for forwarding over HTTP/1.1.
if command -v nginx >/dev/null; then
  P_NG=$(port)
  cat > "$WORK/nginx.conf" <<NG
worker_processes 1; daemon off; pid $WORK/nginx.pid; error_log $WORK/nginx.err warn;
events { worker_connections 1024; }
http { access_log off;
  upstream n1 { server 127.0.0.1:${EX[1]}; keepalive 64; }
  server { listen 127.0.0.1:$P_NG; location / { proxy_pass http://n1; proxy_http_version 1.1;
    proxy_set_header Connection ""; proxy_set_header Host \$host; proxy_set_header auth-token bench; } } }
NG
  nginx -c "$WORK/nginx.conf" -p "$WORK" & PIDS+=($!)
  wait_port "$P_NG"
  : > "$WORK/h1"
  for r in $(seq "$ROUNDS"); do run_wrk "$P_NG" >> "$WORK/h1"; done
fi
# fcol FILE C → the median of column C of the rounds in $WORK/FILE.
fcol() { awk -v c="$2" '{print $c}' "$WORK/$1" | median; }
S_RPS=$(fcol same 1); C_RPS=$(fcol cross 1)
S50=$(fcol same 2); C50=$(fcol cross 2); S99=$(fcol same 3); C99=$(fcol cross 3)
echo "same-node  req/s $S_RPS  p50 ${S50} ms  p99 ${S99} ms"
echo "cross-node req/s $C_RPS  p50 ${C50} ms  p99 ${C99} ms"
if [ -s "$WORK/h1" ]; then
  echo "h1-hop     req/s $(fcol h1 1)  p50 $(fcol h1 2) ms  p99 $(fcol h1 3) ms   (nginx keep-alive hop → node 1)"
fi
awk -v s="$S_RPS" -v c="$C_RPS" -v s50="$S50" -v c50="$C50" -v s99="$S99" -v c99="$C99" \
  'BEGIN{printf "cross/same req/s %.2f; added p50 %.3f ms, p99 %.3f ms\n", c/s, c50-s50, c99-s99}'

# --- (2) registry traffic at idle with 1,000 routes ----------------------------------------------
routes=(); for i in $(seq 1000); do routes+=("idle$i"); done
agent idle "${routes[@]}"; PIDS+=($!)
for _ in $(seq 400); do served "${EX[2]}" idle1000 && break; sleep 0.025; done
sleep 2
stat() { redis-cli -p "$P_R" info stats | tr -d '\r' | awk -F: -v k="$1" '$1==k{print $2}'; }
c0=$(stat total_commands_processed); i0=$(stat total_net_input_bytes); o0=$(stat total_net_output_bytes)
sleep "$IDLE"
c1=$(stat total_commands_processed); i1=$(stat total_net_input_bytes); o1=$(stat total_net_output_bytes)
awk -v c=$((c1-c0)) -v i=$((i1-i0)) -v o=$((o1-o0)) -v t="$IDLE" \
  'BEGIN{printf "idle, 2 nodes, 1000 routes: %.1f commands/s (incl. the INFO calls), %.1f KB/s in, %.1f KB/s out\n", (c-2)/t, i/t/1000, o/t/1000}'
echo "  (Redis counts the commands a script runs; an idle node's heartbeat script runs a handful)"

# --- (3) convergence over REGS registrations ------------------------------------------------------
python3 - "$PV" "$WORK" "${IN[1]}" "${EX[1]}" "${EX[2]}" "$P_BE" "$REGS" <<'PY'
import subprocess, sys, time, socket, os
pv, work, in1, ex1, ex2, be, regs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6], int(sys.argv[7])
def ok(port, host):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=1)
        s.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\nauth-token: bench\r\nConnection: close\r\n\r\n".encode())
        d = s.recv(16); s.close()
        return d.startswith(b"HTTP/1.1 200")
    except OSError:
        return False
out = []
for i in range(regs):
    route = f"conv{i}"
    cfg = os.path.join(work, f"conv{i}.yaml")
    open(cfg, "w").write(f'clientId: "conv{i}"\nproxyview: {{url: "127.0.0.1:{in1}", token: "bench"}}\nroutes:\n  - {{name: "{route}", value: "127.0.0.1", port: {be}, type: "ip"}}\n')
    p = subprocess.Popen([pv, "client", "--config", cfg], stderr=subprocess.DEVNULL, env=dict(os.environ, PROXYVIEW_LOG="warn"))
    end = time.time() + 10
    while not ok(ex1, route):
        if time.time() > end: sys.exit(f"{route} never served on node 1")
        time.sleep(0.001)
    t1 = time.monotonic()
    while not ok(ex2, route):
        if time.time() > end: sys.exit(f"{route} never served on node 2")
        time.sleep(0.002)
    out.append((time.monotonic() - t1) * 1000)
    p.kill(); p.wait()
out.sort()
p50 = out[len(out) // 2]; p99 = out[min(len(out) - 1, int(len(out) * 0.99))]
print(f"convergence over {len(out)} registrations (node 1 serves → node 2 serves): p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {out[-1]:.1f} ms")
PY
