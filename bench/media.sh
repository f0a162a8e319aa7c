#!/usr/bin/env bash
# Camera frames through the gateway: a 12-megapixel JPEG as base64 (about 5 MB) sent straight to
# the simulator and through two gateways on one core: one that only checks the frame (a budget
# above 12 MP, nothing to strip: the bytes go through unchanged) and one with the default policy
# (downscaled to 1 MP). Prints latency added by each, bytes and estimated tokens saved, and
# throughput with 8 requests in flight. Loopback only, bounded in requests and time.
#
# Environment: REQUESTS (per latency run, default 40), INFLIGHT_REQUESTS (default 64),
# NO_BUILD=1 to skip the build, DASHGATE=path/to/dashgate to measure another build (e.g. an older one).
set -euo pipefail
cd "$(dirname "$0")/.."

REQUESTS=${REQUESTS:-40}
INFLIGHT_REQUESTS=${INFLIGHT_REQUESTS:-64}
if [[ -z "${NO_BUILD:-}" ]]; then
    cargo build --release --bin dashgate --example loadgen --example frame >&2
fi
DASHGATE=${DASHGATE:-target/release/dashgate}
LOADGEN=target/release/examples/loadgen

# shellcheck source=bench/lib.sh
source bench/lib.sh

# The gateways get core 1 to themselves ("on one core"); simulator and loadgen share core 0.
GW_PIN=()
OTHER_PIN=()
if command -v taskset >/dev/null 2>&1 && [[ "$(nproc)" -ge 2 ]]; then
    GW_PIN=(taskset -c 1)
    OTHER_PIN=(taskset -c 0)
fi

target/release/examples/frame 4032 3024 >"$WORK/frame.json"
BODY_BYTES=$(stat -c %s "$WORK/frame.json")

start simulator 3 "${OTHER_PIN[@]}" "$DASHGATE" simulate --listen 127.0.0.1:0
SIM=$ADDR

gateway_config() {
    cat <<TOML
[server]
max_body_bytes = 67108864

# Metering on, as in production: every request leaves a usage record.
[store]
url = "sqlite://$WORK/$2.db"

[usage]
spill_path = "$WORK/$2.spill"

[[keys]]
name = "bench"
key = "sk-bench"

[[upstreams]]
name = "sim"
provider = "dashscope"
base_url = "http://$SIM"
api_key = "sk-upstream"
models = ["*"]

[media]
max_image_bytes = 33554432
$1
TOML
}
gateway_config "max_image_pixels = 12845056" check >"$WORK/check.toml"
gateway_config "" shrink >"$WORK/shrink.toml"
start check 4 "${GW_PIN[@]}" "$DASHGATE" serve --config "$WORK/check.toml" --listen 127.0.0.1:0
CHECK=$ADDR
start shrink 5 "${GW_PIN[@]}" "$DASHGATE" serve --config "$WORK/shrink.toml" --listen 127.0.0.1:0
SHRINK=$ADDR

PATH_CHAT=/compatible-mode/v1/chat/completions
run() { # LABEL URL KEY CONCURRENCY REQUESTS
    "${OTHER_PIN[@]}" "$LOADGEN" --url "$2$PATH_CHAT" --key "$3" --concurrency "$4" --requests "$5" \
        --warmup 4 --max-seconds 120 --body "$WORK/frame.json" --label "$1"
}

declare -A P50 P99 RPS
for conc in 1 8; do
    n=$REQUESTS
    [[ $conc == 8 ]] && n=$INFLIGHT_REQUESTS
    for target in direct check shrink; do
        case $target in
            direct) url="http://$SIM"; key=sk-upstream ;;
            check) url="http://$CHECK"; key=sk-bench ;;
            shrink) url="http://$SHRINK"; key=sk-bench ;;
        esac
        out=$(run "$target-c$conc" "$url" "$key" "$conc" "$n")
        P50[$target$conc]=$(field "$out" p50_ms)
        P99[$target$conc]=$(field "$out" p99_ms)
        RPS[$target$conc]=$(field "$out" rps)
    done
done

headers=$(curl -s -o /dev/null -D - -H "Authorization: Bearer sk-bench" -H "Content-Type: application/json" \
    --data-binary @"$WORK/frame.json" "http://$SHRINK$PATH_CHAT")
h() { sed -n "s/^$1: *\\([0-9]*\\).*/\\1/Ip" <<<"$headers"; }

added() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%+.2f", a - b }'; }
echo
echo "12 MP JPEG frame, request body $BODY_BYTES bytes; gateways pinned to one core"
echo
echo "| path | p50 ms | p99 ms | added p50 ms | req/s with 8 in flight |"
echo "| --- | ---: | ---: | ---: | ---: |"
for target in direct check shrink; do
    label=$target
    [[ $target == check ]] && label="gateway, validation only (frame passes unchanged)"
    [[ $target == shrink ]] && label="gateway, downscale to 1 MP (default policy)"
    [[ $target == direct ]] && label="straight to the simulator"
    add="-"
    [[ $target != direct ]] && add=$(added "${P50[${target}1]}" "${P50[direct1]}")
    echo "| $label | ${P50[${target}1]} | ${P99[${target}1]} | $add | ${RPS[${target}8]} |"
done
echo
echo "downscale: $(h x-dashgate-image-original-bytes) bytes -> $(h x-dashgate-image-sent-bytes) bytes sent;" \
    "estimated image tokens $(h x-dashgate-image-tokens-before) -> $(h x-dashgate-image-tokens-after)"
