#!/usr/bin/env bash
# Memory per open stream, counted in live heap bytes rather than RSS (RSS after load mostly shows
# what the allocator keeps for reuse, and an RSS delta can even come out negative). A gateway
# built with `--features alloc-count` reports its live bytes (src/alloc.rs); OPEN_STREAMS streams
# are held open through it (20 events 300 ms apart: 6 s each) with metering on, and the live
# bytes while they are open, less those before, divided by their number, is the cost of one.
# Also prints RSS idle, with the streams open and after. Loopback only, bounded.
#
# Environment: OPEN_STREAMS [1000]; COUNTING_BIN, a gateway built with the feature
# [target/alloc-count/release/dashgate, built here unless NO_BUILD=1: a build of its own, in its
# own target dir, so the normal release binary stays uncounted]; LOADGEN
# [target/release/examples/loadgen].
set -euo pipefail
cd "$(dirname "$0")/.."

OPEN_STREAMS=${OPEN_STREAMS:-1000}
COUNTING_BIN=${COUNTING_BIN:-target/alloc-count/release/dashgate}
LOADGEN=${LOADGEN:-target/release/examples/loadgen}
if [[ -z "${NO_BUILD:-}" ]]; then
    cargo build --release --features alloc-count --bin dashgate --target-dir target/alloc-count >&2
    cargo build --release --example loadgen >&2
fi
ulimit -n 16384

# shellcheck source=bench/lib.sh
source bench/lib.sh

start simulator 3 "$COUNTING_BIN" simulate --listen 127.0.0.1:0
SIM=$ADDR
cat >"$WORK/gateway.toml" <<EOF
# Metering on, as in production: every request leaves a usage record.
[store]
url = "sqlite://$WORK/gateway.db"

[usage]
spill_path = "$WORK/usage.spill"

[[keys]]
name = "bench"
key = "sk-bench"

[[upstreams]]
name = "sim"
provider = "dashscope"
base_url = "http://$SIM"
api_key = "sk-upstream"
models = ["*"]
EOF
REPORT=$WORK/alloc
start gateway 4 env DASHGATE_ALLOC_REPORT="$REPORT" \
    "$COUNTING_BIN" serve --config "$WORK/gateway.toml" --listen 127.0.0.1:0
GATEWAY=$ADDR
GATEWAY_PID=${PIDS[-1]}
URL="http://$GATEWAY/compatible-mode/v1/chat/completions"

# live: "live_bytes live_blocks allocations" as last written (every 100 ms).
live() {
    for _ in $(seq 50); do
        [[ -s $REPORT ]] && break
        sleep 0.1
    done
    cat "$REPORT"
}
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$GATEWAY_PID/status"; }
IDLE_RSS=$(rss_kib)
read -r IDLE_BYTES IDLE_BLOCKS _ <<<"$(live)"
# Warm up: the first streams allocate what every later one reuses (pools, caches, buffers).
printf '{"model":"qwen-plus","messages":[{"role":"user","content":"hi"}]}' >"$WORK/quick.json"
"$LOADGEN" --url "$URL" --key sk-bench --stream --concurrency 32 --requests 2000 --max-seconds 20 \
    --body "$WORK/quick.json" --label warm >/dev/null
sleep 1 # the ledger flushes its batch: a bench reading, not a synchronisation
read -r BASE_BYTES BASE_BLOCKS _ <<<"$(live)"
BASE_RSS=$(rss_kib)

printf '{"model":"qwen-plus","messages":[{"role":"user","content":"hold on"}],"sim":{"chunk_delay_ms":300,"chunks":20}}' >"$WORK/slow.json"
"$LOADGEN" --url "$URL" --key sk-bench --stream --concurrency "$OPEN_STREAMS" \
    --requests "$OPEN_STREAMS" --max-seconds 30 --body "$WORK/slow.json" --label open >"$WORK/open.json" &
LG=$!
sleep 3 # the streams are open and midway (each lasts 6 s): a bench reading
read -r OPEN_BYTES OPEN_BLOCKS _ <<<"$(live)"
OPEN_RSS=$(rss_kib)
wait "$LG"
sleep 1
read -r AFTER_BYTES AFTER_BLOCKS _ <<<"$(live)"
AFTER_RSS=$(rss_kib)

completed=$(field "$(cat "$WORK/open.json")" completed)
per() { awk -v a="$1" -v b="$2" -v n="$OPEN_STREAMS" 'BEGIN { printf "%.1f", (a - b) / n }'; }
kib() { awk -v b="$1" 'BEGIN { printf "%.0f", b / 1024 }'; }
echo
echo "$OPEN_STREAMS streams open at once through the gateway ($completed completed), metering on"
echo
echo "| | live heap KiB | live blocks | RSS KiB |"
echo "| --- | ---: | ---: | ---: |"
echo "| idle | $(kib "$IDLE_BYTES") | $IDLE_BLOCKS | $IDLE_RSS |"
echo "| after warm-up | $(kib "$BASE_BYTES") | $BASE_BLOCKS | $BASE_RSS |"
echo "| $OPEN_STREAMS streams open | $(kib "$OPEN_BYTES") | $OPEN_BLOCKS | $OPEN_RSS |"
echo "| after they closed | $(kib "$AFTER_BYTES") | $AFTER_BLOCKS | $AFTER_RSS |"
echo "| per open stream | $(per "$OPEN_BYTES" "$BASE_BYTES") bytes | $(per "$OPEN_BLOCKS" "$BASE_BLOCKS") blocks | $(per "$((OPEN_RSS * 1024))" "$((BASE_RSS * 1024))") bytes |"
