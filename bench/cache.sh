#!/usr/bin/env bash
# The response cache's cost and gain: one gateway with `[cache] enabled`, in front of the
# simulator, the same seeded request over and over. Per mode (JSON, stream), three rows:
#   off      `x-dashgate-cache: off`: the cache is not consulted (the gateway as it is without it)
#   miss     `x-dashgate-cache: refresh`: key made, upstream called, reply kept (a miss every time)
#   hit      `x-dashgate-cache: on`: answered from the kept reply, nothing goes upstream
# The added latency of a hit is hit − miss (negative: faster). The simulator answers after
# LATENCY_MS, standing in for the upstream's time. Loopback only, bounded in requests and time.
#
# Environment (defaults in brackets):
#   CONCURRENCY  workers per run                   [16]
#   REQUESTS     measured requests per run         [5000]
#   MAX_SECONDS  hard stop per run                 [10]
#   WARMUP       unmeasured requests before a run  [200]
#   LATENCY_MS   simulator delay before first byte [0]
#   CHUNKS       content deltas per stream         [20]
#   NO_BUILD=1   skip the build
set -euo pipefail
cd "$(dirname "$0")/.."

CONCURRENCY=${CONCURRENCY:-16}
REQUESTS=${REQUESTS:-5000}
MAX_SECONDS=${MAX_SECONDS:-10}
WARMUP=${WARMUP:-200}
LATENCY_MS=${LATENCY_MS:-0}
CHUNKS=${CHUNKS:-20}

if [[ -z "${NO_BUILD:-}" ]]; then
    cargo build --release --bin dashgate --example loadgen >&2
fi
DASHGATE=target/release/dashgate
LOADGEN=target/release/examples/loadgen

# shellcheck source=bench/lib.sh
source bench/lib.sh

start simulator 3 "$DASHGATE" simulate --listen 127.0.0.1:0 \
    --latency-ms "$LATENCY_MS" --chunks "$CHUNKS"
SIM=$ADDR

cat >"$WORK/gateway.toml" <<EOF
[store]
url = "sqlite://$WORK/gateway.db"

# Everything the gateway writes goes into the work directory, not the checkout.
[usage]
spill_path = "$WORK/usage.spill"
journal_path = "$WORK/usage.journal"

[files]
dir = "$WORK/files"

[[keys]]
name = "bench"
key = "sk-bench"

[[upstreams]]
name = "sim"
provider = "dashscope"
base_url = "http://$SIM"
api_key = "sk-upstream"
models = ["*"]

[cache]
enabled = true
EOF
start gateway 4 "$DASHGATE" serve --config "$WORK/gateway.toml" --listen 127.0.0.1:0
GATEWAY=$ADDR

cat >"$WORK/body.json" <<EOF
{"model": "qwen-plus", "seed": 42, "temperature": 0,
 "messages": [{"role": "user", "content": "Benchmark prompt: please answer with a short friendly greeting, thank you."}]}
EOF

# load MODE CACHE: one loadgen run, its JSON line in OUT.
load() {
    local mode=$1 cache=$2 stream=()
    [[ "$mode" == stream ]] && stream=(--stream)
    "$LOADGEN" --url "http://$GATEWAY/compatible-mode/v1/chat/completions" --key sk-bench \
        --body "$WORK/body.json" --header "x-dashgate-cache: $cache" \
        --concurrency "$CONCURRENCY" --requests "$REQUESTS" --max-seconds "$MAX_SECONDS" \
        --warmup "$WARMUP" --label "$mode-$cache" "${stream[@]}" >"$WORK/run.json" &
    local pid=$!
    PIDS+=("$pid")
    wait "$pid"
    unset 'PIDS[-1]'
    OUT=$(<"$WORK/run.json")
    local errors
    errors=$(field "$OUT" errors)
    if [[ "$errors" != 0 ]]; then
        echo "cache.sh: $mode $cache: $errors error(s): $(field "$OUT" first_error)" >&2
    fi
}

echo "simulator --latency-ms $LATENCY_MS --chunks $CHUNKS; $REQUESTS requests or ${MAX_SECONDS}s per run, c=$CONCURRENCY"
echo
echo "| mode | cache | req/s | p50 / p99 ms | first event p50 / p99 ms |"
echo "| --- | --- | --- | --- | --- |"
for mode in json stream; do
    for cache in off refresh on; do
        load "$mode" "$cache"
        name=$cache
        [[ "$cache" == refresh ]] && name=miss
        [[ "$cache" == on ]] && name=hit
        row="| $mode | $name | $(field "$OUT" rps) | $(field "$OUT" p50_ms) / $(field "$OUT" p99_ms)"
        if [[ "$mode" == stream ]]; then
            row+=" | $(field "$OUT" ttfb_p50_ms) / $(field "$OUT" ttfb_p99_ms) |"
        else
            row+=" | - |"
        fi
        echo "$row"
    done
done
