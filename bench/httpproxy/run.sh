#!/usr/bin/env bash
# In-process benchmark of one exchange through the httpproxy server from a raw client socket (Go: BenchmarkHandlerRoundTrip,
# 64–84 µs and 171 allocs/op as documented in PERFORMANCE.md of awsutils/cwproxy; Go is not run here).
# Usage: bench/httpproxy/run.sh [iterations]   (default 20000)
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p bench/out
cargo bench -p httpproxy --bench roundtrip -- "${1:-20000}" 2>/dev/null | tee bench/out/httpproxy-roundtrip.md
