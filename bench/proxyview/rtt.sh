#!/usr/bin/env bash
# 20 MB download through the tunnel with 20 ms RTT between agent and server (a relay that delays
# each direction by 10 ms), to show what the flow-control window sizes in src/protocol.rs buy.
source "$(dirname "$0")/lib.sh"
HERE="$ROOT/bench/proxyview"
build_pv
P_BE=$(port); P_IN=$(port); P_EX=$(port); P_RELAY=$(port)
printf 'host: "127.0.0.1"\ninternal: {port: %s, token: "b"}\nexternal: {port: %s, token: "b"}\n' "$P_IN" "$P_EX" > "$WORK/s.yaml"
printf 'clientId: "b"\nroutes: [{name: "svc", value: "127.0.0.1", port: %s}]\nproxyview: {url: "127.0.0.1:%s", token: "b"}\n' "$P_BE" "$P_RELAY" > "$WORK/a.yaml"
"$BACKEND" "127.0.0.1:$P_BE" 2>/dev/null & PIDS+=($!)
PROXYVIEW_LOG=warn "$PV" server --config "$WORK/s.yaml" 2>/dev/null & PIDS+=($!)
python3 "$HERE/delay.py" "$P_RELAY" "$P_IN" 0.010 & PIDS+=($!)
sleep 0.5
PROXYVIEW_LOG=warn "$PV" client --config "$WORK/a.yaml" 2>/dev/null & PIDS+=($!)
for _ in $(seq 100); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' -H 'Host: svc' -H 'auth-token: b' "http://127.0.0.1:$P_EX/")" = 200 ] && break
  sleep 0.1
done
for i in 1 2; do
  curl -s -o /dev/null -w "run $i: %{speed_download} B/s\n" -H 'Host: svc' -H 'auth-token: b' "http://127.0.0.1:$P_EX/bytes/20971520"
done
