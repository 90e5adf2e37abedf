#!/usr/bin/env bash
# proxyview over TLS vs plain proxyview, one run, same machine, same backend and agent build.
# Small GET through the tunnel (wrk, keep-alive): req/s, p99 and CPU µs per request of server +
# agent, ROUNDS alternating rounds (default 3), medians. Then new TLS connections per second on
# the one-thread server (wrk with `Connection: close`: one full handshake + one request each),
# with the server's CPU µs per connection. Self-signed P-256 certificate from openssl.
source "$(dirname "$0")/lib.sh"
DURATION="${DURATION:-5}"
CONNS="${CONNS:-50}"
ROUNDS="${ROUNDS:-3}"
need_wrk
build_pv
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=svc \
  -addext subjectAltName=DNS:svc -keyout "$WORK/svc.key" -out "$WORK/svc.pem" 2>/dev/null

P_BE=$(port)
"$BACKEND" "127.0.0.1:$P_BE" 2>/dev/null & PIDS+=($!)
wait_port "$P_BE"

# start_pair NAME EXTRA_EXTERNAL → SERVER_PID AGENT_PID EXT_PORT
start_pair() {
  local name=$1 extra=$2 pin pex
  pin=$(port); pex=$(port)
  printf 'host: "127.0.0.1"\ninternal: {port: %s, token: "bench"}\nexternal:\n  port: %s\n  token: "bench"\n%b' \
    "$pin" "$pex" "$extra" > "$WORK/$name-server.yaml"
  printf 'clientId: "bench"\nroutes: [{name: "svc", value: "127.0.0.1", port: %s, type: "ip"}]\nproxyview: {url: "127.0.0.1:%s", token: "bench"}\n' \
    "$P_BE" "$pin" > "$WORK/$name-agent.yaml"
  PROXYVIEW_LOG=warn "$PV" server --config "$WORK/$name-server.yaml" 2>"$WORK/$name-server.log" & SERVER_PID=$!; PIDS+=($!)
  wait_port "$pin"
  PROXYVIEW_LOG=warn "$PV" client --config "$WORK/$name-agent.yaml" 2>"$WORK/$name-agent.log" & AGENT_PID=$!; PIDS+=($!)
  EXT_PORT=$pex
}
start_pair plain ""
PL_S=$SERVER_PID PL_A=$AGENT_PID PL_P=$EXT_PORT
start_pair tls "  tls:\n    certificates: [{cert: \"$WORK/svc.pem\", key: \"$WORK/svc.key\"}]\n"
TL_S=$SERVER_PID TL_A=$AGENT_PID TL_P=$EXT_PORT
for _ in $(seq 100); do
  a=$(curl -s -o /dev/null -w '%{http_code}' -H 'Host: svc' -H 'auth-token: bench' "http://127.0.0.1:$PL_P/")
  b=$(curl -sk -o /dev/null -w '%{http_code}' -H 'auth-token: bench' --resolve "svc:$TL_P:127.0.0.1" "https://svc:$TL_P/")
  [ "$a$b" = 200200 ] && break
  sleep 0.05
done

# run_wrk NAME URL EXTRA_HEADER PIDS... → RPS P99 CPU_US
run_wrk() {
  local name=$1 url=$2 extra=$3; shift 3
  local hdr=(-H "Host: svc" -H "auth-token: bench"); [ -n "$extra" ] && hdr+=(-H "$extra")
  wrk -t2 -c"$CONNS" -d1s "${hdr[@]}" "$url" >/dev/null 2>&1
  local c0 c1 out reqs; c0=$(cpu_ticks "$@")
  out=$(wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency "${hdr[@]}" "$url")
  c1=$(cpu_ticks "$@")
  RPS=$(awk '/Requests\/sec/{print $2}' <<<"$out")
  reqs=$(awk '/requests in/{print $1}' <<<"$out")
  P99=$(awk '$1=="99%"{print $2}' <<<"$out" | to_ms)
  CPU_US=$(awk -v d=$((c1 - c0)) -v hz="$HZ" -v n="$reqs" 'BEGIN{printf "%.1f", d/hz*1e6/n}')
  log "$name: $RPS req/s p99 ${P99}ms cpu ${CPU_US}us/req"
}
A=(); B=()
for _ in $(seq "$ROUNDS"); do
  run_wrk plain "http://127.0.0.1:$PL_P/" "" "$PL_S" "$PL_A"; A+=("$RPS $P99 $CPU_US")
  run_wrk tls "https://127.0.0.1:$TL_P/" "" "$TL_S" "$TL_A"; B+=("$RPS $P99 $CPU_US")
done
# New connections: each wrk request on a fresh TLS connection (server CPU only: the handshake).
run_wrk "tls new connections" "https://127.0.0.1:$TL_P/" "Connection: close" "$TL_S"
H_RPS=$RPS H_CPU=$CPU_US
run_wrk "plain new connections" "http://127.0.0.1:$PL_P/" "Connection: close" "$PL_S"
N_RPS=$RPS N_CPU=$CPU_US
printf '\n%-34s %12s %12s %10s\n' "metric" "plain" "tls" "tls/plain"
printf '%-34s %12s %12s %10s\n' "small GET req/s (keep-alive)" "$(col 1 "${A[@]}")" "$(col 1 "${B[@]}")" "$(ratio "$(col 1 "${B[@]}")" "$(col 1 "${A[@]}")")"
printf '%-34s %12s %12s %10s\n' "p99 ms" "$(col 2 "${A[@]}")" "$(col 2 "${B[@]}")" "$(ratio "$(col 2 "${B[@]}")" "$(col 2 "${A[@]}")")"
printf '%-34s %12s %12s %10s\n' "CPU us/req (server + agent)" "$(col 3 "${A[@]}")" "$(col 3 "${B[@]}")" "$(ratio "$(col 3 "${B[@]}")" "$(col 3 "${A[@]}")")"
printf '%-34s %12s %12s %10s\n' "new connections/s (1 req each)" "$N_RPS" "$H_RPS" "$(ratio "$H_RPS" "$N_RPS")"
printf '%-34s %12s %12s %10s\n' "server CPU us per new connection" "$N_CPU" "$H_CPU" "$(ratio "$H_CPU" "$N_CPU")"
