#!/usr/bin/env bash
# dashgate benchmark: the simulator straight vs. the gateway in front of it.
# See bench/README.md. Everything listens on 127.0.0.1 with ports picked by the OS.
#
# Environment (defaults in brackets):
#   CONCURRENCY   space-separated levels            ["16 64"]
#   MODES         "json stream" or a subset         ["json stream"]
#   REQUESTS      measured requests per run          [50000]
#   MAX_SECONDS   hard stop per run (measured part)  [15]
#   WARMUP        unmeasured requests before each run [500]
#   CHUNKS        content deltas per simulated stream [20]
#   CHUNK_DELAY_MS delay between stream events       [0]
#   LATENCY_MS    simulator delay before first byte  [0]
#   PIN           1: pin with taskset if available   [1]
#   NO_BUILD      1: skip cargo build                [unset]
set -euo pipefail

cd "$(dirname "$0")/.."

CONCURRENCY=${CONCURRENCY:-"16 64"}
MODES=${MODES:-"json stream"}
REQUESTS=${REQUESTS:-50000}
MAX_SECONDS=${MAX_SECONDS:-15}
WARMUP=${WARMUP:-500}
CHUNKS=${CHUNKS:-20}
CHUNK_DELAY_MS=${CHUNK_DELAY_MS:-0}
LATENCY_MS=${LATENCY_MS:-0}
PIN=${PIN:-1}

if [[ -z "${NO_BUILD:-}" ]]; then
    cargo build --release --bin dashgate --example loadgen >&2
fi
DASHGATE=target/release/dashgate
LOADGEN=target/release/examples/loadgen

# Pinning: simulator + gateway share core 1, loadgen gets core 0, so the load generator does
# not steal CPU from what it measures. Without taskset (or with one CPU) nothing is pinned.
SERVER_PIN=()
CLIENT_PIN=()
if [[ "$PIN" == 1 ]] && command -v taskset >/dev/null 2>&1 && [[ "$(nproc)" -ge 2 ]]; then
    SERVER_PIN=(taskset -c 1)
    CLIENT_PIN=(taskset -c 0)
    PINNING="simulator+gateway on core 1, loadgen on core 0"
else
    PINNING="not pinned"
fi

# shellcheck source=bench/lib.sh
source bench/lib.sh

start simulator 3 "${SERVER_PIN[@]}" "$DASHGATE" simulate --listen 127.0.0.1:0 \
    --latency-ms "$LATENCY_MS" --chunks "$CHUNKS" --chunk-delay-ms "$CHUNK_DELAY_MS"
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
start gateway 4 "${SERVER_PIN[@]}" "$DASHGATE" serve --config "$WORK/gateway.toml" --listen 127.0.0.1:0
GATEWAY=$ADDR

PATH_CHAT=/compatible-mode/v1/chat/completions
echo "simulator http://$SIM, gateway http://$GATEWAY; $PINNING" >&2
echo "simulator: --latency-ms $LATENCY_MS --chunks $CHUNKS --chunk-delay-ms $CHUNK_DELAY_MS; per run: $REQUESTS requests or ${MAX_SECONDS}s, warm-up $WARMUP" >&2

# load TARGET MODE CONCURRENCY: one loadgen run; its JSON line goes to OUT. loadgen runs in
# the background so an INT/TERM reaches the trap (and kills it) at once.
load() {
    local target=$1 mode=$2 conc=$3 url key stream=()
    if [[ "$target" == direct ]]; then
        url="http://$SIM$PATH_CHAT"
        key=sk-upstream
    else
        url="http://$GATEWAY$PATH_CHAT"
        key=sk-bench
    fi
    [[ "$mode" == stream ]] && stream=(--stream)
    "${CLIENT_PIN[@]}" "$LOADGEN" --url "$url" --key "$key" --concurrency "$conc" \
        --requests "$REQUESTS" --max-seconds "$MAX_SECONDS" --warmup "$WARMUP" \
        --label "$target-$mode-c$conc" "${stream[@]}" >"$WORK/run.json" &
    local pid=$!
    PIDS+=("$pid")
    wait "$pid"
    unset 'PIDS[-1]'
    OUT=$(<"$WORK/run.json")
    echo "$OUT" >>"$WORK/results.jsonl"
    local errors
    errors=$(field "$OUT" errors)
    if [[ "$errors" != 0 ]]; then
        echo "run.sh: $target $mode c=$conc: $errors error(s): $(field "$OUT" first_error)" >&2
    fi
}

# sub A B: A - B with 3 decimals, "-" if either is missing.
sub() {
    if [[ -z "$1" || -z "$2" || "$1" == null || "$2" == null ]]; then
        echo "-"
    else
        awk -v a="$1" -v b="$2" 'BEGIN { printf "%+.3f", a - b }'
    fi
}

ROWS=()
cell=0
for mode in $MODES; do
    for conc in $CONCURRENCY; do
        # Interleave contestants, alternating who goes first so drift does not favour one.
        if ((cell % 2 == 0)); then
            load direct "$mode" "$conc"
            d=$OUT
            load gateway "$mode" "$conc"
            g=$OUT
        else
            load gateway "$mode" "$conc"
            g=$OUT
            load direct "$mode" "$conc"
            d=$OUT
        fi
        cell=$((cell + 1))
        dp50=$(field "$d" p50_ms) dp99=$(field "$d" p99_ms)
        gp50=$(field "$g" p50_ms) gp99=$(field "$g" p99_ms)
        row="| $mode | $conc | $(field "$d" rps) | $(field "$g" rps)"
        row+=" | $dp50 / $dp99 | $gp50 / $gp99 | $(sub "$gp50" "$dp50") / $(sub "$gp99" "$dp99")"
        if [[ "$mode" == stream ]]; then
            dt50=$(field "$d" ttfb_p50_ms) dt99=$(field "$d" ttfb_p99_ms)
            gt50=$(field "$g" ttfb_p50_ms) gt99=$(field "$g" ttfb_p99_ms)
            row+=" | $dt50 / $dt99 | $gt50 / $gt99 | $(sub "$gt50" "$dt50") / $(sub "$gt99" "$dt99")"
        else
            row+=" | - | - | -"
        fi
        row+=" | $(field "$d" errors) / $(field "$g" errors) |"
        ROWS+=("$row")
    done
done

echo "Raw results:" >&2
cat "$WORK/results.jsonl" >&2
echo
echo "simulator --latency-ms $LATENCY_MS --chunks $CHUNKS --chunk-delay-ms $CHUNK_DELAY_MS; $REQUESTS requests or ${MAX_SECONDS}s per run after $WARMUP warm-up; $PINNING"
echo
echo "| mode | conc | direct rps | gateway rps | direct p50 / p99 ms | gateway p50 / p99 ms | added p50 / p99 ms | TTFB direct p50 / p99 ms | TTFB gateway p50 / p99 ms | TTFB added p50 / p99 ms | errors direct / gateway |"
echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
printf '%s\n' "${ROWS[@]}"
