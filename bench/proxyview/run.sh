#!/usr/bin/env bash
# proxyview vs rathole on loopback, one run, same machine, same backend.
#   (a) direct to the backend, (b) through proxyview (one agent, Host routing),
#   (c) through rathole 0.5.0 as a plain TCP tunnel.
# Prints wrk small-GET req/s and p50/p99 (median of ROUNDS alternating rounds, default 5, and
# the median, range and count >= 1.0 of the per-round paired req/s ratios), CPU µs per request
# of the tunnel processes, 100 MB download MB/s, and peak RSS, with the ratios b/c.
# Installs its own tools (wrk from apt, rathole built from its crates.io source) under target/.
source "$(dirname "$0")/lib.sh"
TOOLS="$ROOT/target/bench-tools"
DURATION="${DURATION:-10}"
CONNS="${CONNS:-50}"
ROUNDS="${ROUNDS:-5}"
BULK_BYTES=$((100 * 1024 * 1024))
# --- tools -----------------------------------------------------------------------------------
need_wrk
RATHOLE="$TOOLS/bin/rathole"
if [ ! -x "$RATHOLE" ]; then
  # `cargo install rathole --locked` fails on rustc 1.95 (its lock pins time 0.3.29, E0282):
  # fetch the source through cargo, bump `time`, build with the lock (see shared/peer-baselines.md).
  log "building rathole 0.5.0 (once)"
  fetch="$WORK/fetch"; mkdir -p "$fetch/src"
  printf '[package]\nname="fetch-rathole"\nversion="0.0.0"\nedition="2021"\n[dependencies]\nrathole="=0.5.0"\n[workspace]\n' > "$fetch/Cargo.toml"
  echo 'fn main(){}' > "$fetch/src/main.rs"
  (cd "$fetch" && cargo fetch -q)
  src="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/rathole-0.5.0 | head -1)"
  cp -r "$src" "$WORK/rathole-src"
  (cd "$WORK/rathole-src" && cargo update -q -p time --precise 0.3.36 \
    && cargo install -q --path . --locked --root "$TOOLS" --no-default-features --features server,client)
fi

build_pv

# --- processes -------------------------------------------------------------------------------
P_BE=$(port); P_PV_IN=$(port); P_PV_EX=$(port); P_RH_CTL=$(port); P_RH_SVC=$(port)

"$BACKEND" "127.0.0.1:$P_BE" 2>/dev/null & PIDS+=($!)
wait_port "$P_BE"

cat > "$WORK/pv-server.yaml" <<EOF
host: "127.0.0.1"
internal: {port: $P_PV_IN, token: "bench"}
external: {port: $P_PV_EX, token: "bench"}
EOF
cat > "$WORK/pv-agent.yaml" <<EOF
clientId: "bench"
routes: [{name: "svc", value: "127.0.0.1", port: $P_BE, type: "ip"}]
proxyview: {url: "127.0.0.1:$P_PV_IN", token: "bench"}
EOF
PROXYVIEW_LOG=warn "$PV" server --config "$WORK/pv-server.yaml" 2>"$WORK/pv-server.log" & PV_S=$!; PIDS+=($PV_S)
wait_port "$P_PV_IN"
PROXYVIEW_LOG=warn "$PV" client --config "$WORK/pv-agent.yaml" 2>"$WORK/pv-agent.log" & PV_A=$!; PIDS+=($PV_A)
for _ in $(seq 100); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' -H 'Host: svc' -H 'auth-token: bench' "http://127.0.0.1:$P_PV_EX/")" = 200 ] && break
  sleep 0.05
done

cat > "$WORK/rh-server.toml" <<EOF
[server]
bind_addr = "127.0.0.1:$P_RH_CTL"
[server.services.svc]
token = "bench"
bind_addr = "127.0.0.1:$P_RH_SVC"
EOF
cat > "$WORK/rh-client.toml" <<EOF
[client]
remote_addr = "127.0.0.1:$P_RH_CTL"
[client.services.svc]
token = "bench"
local_addr = "127.0.0.1:$P_BE"
EOF
"$RATHOLE" "$WORK/rh-server.toml" >/dev/null 2>&1 & RH_S=$!; PIDS+=($RH_S)
wait_port "$P_RH_CTL"
"$RATHOLE" "$WORK/rh-client.toml" >/dev/null 2>&1 & RH_C=$!; PIDS+=($RH_C)
for _ in $(seq 100); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$P_RH_SVC/")" = 200 ] && break
  sleep 0.05
done

# --- measurements ----------------------------------------------------------------------------

# run_wrk NAME URL HOSTHEADER PIDS... → sets RPS, P50, P99 (ms), CPU_US
run_wrk() {
  local name=$1 url=$2 host=$3; shift 3
  local hdr=(); [ -n "$host" ] && hdr=(-H "Host: $host" -H "auth-token: bench")
  wrk -t2 -c"$CONNS" -d2s "${hdr[@]}" "$url" >/dev/null 2>&1   # warm-up
  local c0; c0=$(cpu_ticks "$@")
  local out; out=$(wrk -t2 -c"$CONNS" -d"${DURATION}s" --latency "${hdr[@]}" "$url")
  local c1; c1=$(cpu_ticks "$@")
  RPS=$(awk '/Requests\/sec/{print $2}' <<<"$out")
  local reqs; reqs=$(awk '/requests in/{print $1}' <<<"$out")
  P50=$(awk '$1=="50%"{print $2}' <<<"$out" | to_ms)
  P99=$(awk '$1=="99%"{print $2}' <<<"$out" | to_ms)
  if [ "$#" -gt 0 ]; then
    CPU_US=$(awk -v d=$((c1 - c0)) -v hz="$HZ" -v n="$reqs" 'BEGIN{printf "%.1f", d/hz*1e6/n}')
  else
    CPU_US="-"
  fi
  log "$name: $RPS req/s p50 ${P50}ms p99 ${P99}ms cpu ${CPU_US}us/req"
}

bulk() { # URL HOST → MB/s
  local hdr=(); [ -n "$2" ] && hdr=(-H "Host: $2" -H "auth-token: bench")
  curl -s -o /dev/null "${hdr[@]}" -w '%{speed_download}' "$1" | awk '{printf "%.0f", $1/1e6}'
}

# The two tunnels alternate ROUNDS times and each metric is the median of its rounds: on a shared
# VM one run of each can differ by 2x from the next (neighbours' load), alternating keeps both
# under the same conditions.
log "small GET, wrk -t2 -c$CONNS -d${DURATION}s, $ROUNDS rounds"
run_wrk direct "http://127.0.0.1:$P_BE/" ""
D_RPS=$RPS D_P50=$P50 D_P99=$P99
B=(); C=()
for _ in $(seq "$ROUNDS"); do
  run_wrk proxyview "http://127.0.0.1:$P_PV_EX/" "svc" "$PV_S" "$PV_A"
  B+=("$RPS $P50 $P99 $CPU_US")
  run_wrk rathole "http://127.0.0.1:$P_RH_SVC/" "" "$RH_S" "$RH_C"
  C+=("$RPS $P50 $P99 $CPU_US")
done
B_RPS=$(col 1 "${B[@]}") B_P50=$(col 2 "${B[@]}") B_P99=$(col 3 "${B[@]}") B_CPU=$(col 4 "${B[@]}")
C_RPS=$(col 1 "${C[@]}") C_P50=$(col 2 "${C[@]}") C_P99=$(col 3 "${C[@]}") C_CPU=$(col 4 "${C[@]}")
# Each proxyview round against the rathole round right after it: on a noisy VM the spread of
# these paired ratios says more than the ratio of the two medians.
PAIRED=()
for i in "${!B[@]}"; do
  PAIRED+=("$(awk -v a="${B[$i]%% *}" -v b="${C[$i]%% *}" 'BEGIN{printf "%.2f", a/b}')")
done
P_MED=$(echo "${PAIRED[*]}" | median)
P_MIN=$(printf '%s\n' "${PAIRED[@]}" | sort -g | head -1)
P_MAX=$(printf '%s\n' "${PAIRED[@]}" | sort -g | tail -1)
P_MET=$(printf '%s\n' "${PAIRED[@]}" | awk '$1 >= 1.0 {n++} END{print n+0}')

# RSS under ~1k req/s (issue goal: <= 10 MB each): 10 connections, each waiting 10 ms between
# requests; VmRSS sampled at the end of the run, before the bulk transfer inflates the peak.
printf 'function delay() return 10 end\n' > "$WORK/delay.lua"
rss_kib() { awk '/VmRSS/{print $2}' "/proc/$1/status"; }
run_1k() { # URL HOSTHEADER → sets RATE, RSS_S, RSS_A for the given pids
  local url=$1 host=$2 ps=$3 pa=$4
  local hdr=(); [ -n "$host" ] && hdr=(-H "Host: $host" -H "auth-token: bench")
  local out; out=$(wrk -t1 -c10 -d5s -s "$WORK/delay.lua" "${hdr[@]}" "$url")
  RSS_S=$(rss_kib "$ps"); RSS_A=$(rss_kib "$pa")
  RATE=$(awk '/Requests\/sec/{printf "%.0f", $2}' <<<"$out")
}
log "RSS at ~1k req/s"
run_1k "http://127.0.0.1:$P_PV_EX/" "svc" "$PV_S" "$PV_A"; B_RATE=$RATE B_RSS_S=$RSS_S B_RSS_A=$RSS_A
run_1k "http://127.0.0.1:$P_RH_SVC/" "" "$RH_S" "$RH_C"; C_RATE=$RATE C_RSS_S=$RSS_S C_RSS_A=$RSS_A

log "bulk download, $BULK_BYTES bytes"
D_BULK=$(bulk "http://127.0.0.1:$P_BE/bytes/$BULK_BYTES" "")
BB=(); CB=()
for _ in $(seq "$ROUNDS"); do
  BB+=("$(bulk "http://127.0.0.1:$P_PV_EX/bytes/$BULK_BYTES" "svc")")
  CB+=("$(bulk "http://127.0.0.1:$P_RH_SVC/bytes/$BULK_BYTES" "")")
done
B_BULK=$(echo "${BB[*]}" | median) C_BULK=$(echo "${CB[*]}" | median)

printf '\n%-28s %12s %12s %12s %10s\n' "metric" "direct" "proxyview" "rathole" "pv/rathole"
printf '%-28s %12s %12s %12s %10s\n' "small GET req/s" "$D_RPS" "$B_RPS" "$C_RPS" "$(ratio "$B_RPS" "$C_RPS")"
printf '%-28s %12s %12s %12s %10s\n' "  paired rounds: median" "" "" "" "$P_MED"
printf '%-28s %12s %12s %12s %10s\n' "  paired rounds: range" "" "" "" "$P_MIN-$P_MAX"
printf '%-28s %12s %12s %12s %10s\n' "  paired rounds >= 1.0" "" "" "" "$P_MET of ${#PAIRED[@]}"
printf '%-28s %12s %12s %12s %10s\n' "p50 ms" "$D_P50" "$B_P50" "$C_P50" "$(ratio "$B_P50" "$C_P50")"
printf '%-28s %12s %12s %12s %10s\n' "p99 ms" "$D_P99" "$B_P99" "$C_P99" "$(ratio "$B_P99" "$C_P99")"
printf '%-28s %12s %12s %12s %10s\n' "tunnel CPU us/req (both)" "-" "$B_CPU" "$C_CPU" "$(ratio "$B_CPU" "$C_CPU")"
printf '%-28s %12s %12s %12s %10s\n' "100 MB download MB/s" "$D_BULK" "$B_BULK" "$C_BULK" "$(ratio "$B_BULK" "$C_BULK")"
printf '%-28s %12s %12s %12s\n' "req/s of the RSS run" "-" "$B_RATE" "$C_RATE"
printf '%-28s %12s %12s %12s\n' "RSS KiB server @1k req/s" "-" "$B_RSS_S" "$C_RSS_S"
printf '%-28s %12s %12s %12s\n' "RSS KiB agent/client @1k" "-" "$B_RSS_A" "$C_RSS_A"
printf '%-28s %12s %12s %12s\n' "peak RSS KiB server" "-" "$(hwm_kib "$PV_S")" "$(hwm_kib "$RH_S")"
printf '%-28s %12s %12s %12s\n' "peak RSS KiB agent/client" "-" "$(hwm_kib "$PV_A")" "$(hwm_kib "$RH_C")"
