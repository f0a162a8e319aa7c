#!/usr/bin/env bash
# What telemetry costs per request: the same gateway set-up four times over, side by side:
# `off` (no access log, no traces), `log` (the JSON access log, stdout drained), `trace-1.0`
# and `trace-0.01` (the access log plus OTLP/HTTP export at that sample ratio to a small sink
# collector on loopback). Prints latency over `off`, requests/s, the gateway's CPU per request,
# and the spans exported and dropped. Loopback only, bounded in requests and time.
#
# Environment (defaults in brackets):
#   REQUESTS     measured requests per run   [20000]
#   MAX_SECONDS  hard stop per run           [10]
#   LATENCY_MS   simulator's fixed delay     [1]
#   NO_BUILD=1   skip the build
set -euo pipefail
cd "$(dirname "$0")/.."

REQUESTS=${REQUESTS:-20000}
MAX_SECONDS=${MAX_SECONDS:-10}
LATENCY_MS=${LATENCY_MS:-1}
if [[ -z "${NO_BUILD:-}" ]]; then
    cargo build --release --bin dashgate --example loadgen >&2
fi
DASHGATE=target/release/dashgate
LOADGEN=target/release/examples/loadgen
ulimit -n 16384

# shellcheck source=bench/lib.sh
source bench/lib.sh

# Gateways and simulator share core 1; the load generator and the sink collector have core 0.
SERVER_PIN=(taskset -c 1)
CLIENT_PIN=(taskset -c 0)

start simulator 3 "${SERVER_PIN[@]}" "$DASHGATE" simulate --listen 127.0.0.1:0 --latency-ms "$LATENCY_MS" --chunks 20
SIM=$ADDR

# The sink: takes OTLP/HTTP export requests and answers 200 (an empty ExportTraceServiceResponse).
cat >"$WORK/sink.py" <<'EOF'
import http.server, sys
class Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sink)
print(f"sink listening on http://127.0.0.1:{server.server_address[1]}", flush=True)
server.serve_forever()
EOF
start sink 4 "${CLIENT_PIN[@]}" python3 "$WORK/sink.py"
SINK=$ADDR

CONTESTANTS=(off log trace-1.0 trace-0.01)
declare -A URL PID
fd=5
for c in "${CONTESTANTS[@]}"; do
    case $c in
        off) telemetry='access_log = false' ;;
        log) telemetry='log_format = "json"' ;;
        trace-*) telemetry="log_format = \"json\"
otlp_endpoint = \"http://$SINK\"
sample_ratio = ${c#trace-}" ;;
    esac
    cat >"$WORK/$c.toml" <<EOF
[store]
url = "sqlite://$WORK/$c.db"

[usage]
spill_path = "$WORK/$c.spill"

[files]
dir = "$WORK/files-$c"

[telemetry]
$telemetry

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
    start "gateway-$c" "$fd" "${SERVER_PIN[@]}" "$DASHGATE" serve --config "$WORK/$c.toml" --listen 127.0.0.1:0
    URL[$c]="http://$ADDR/compatible-mode/v1/chat/completions"
    PID[$c]=${PIDS[-1]}
    # The access log is read (and thrown away), as a log shipper would.
    "${CLIENT_PIN[@]}" cat <&"$fd" >/dev/null &
    PIDS+=($!)
    fd=$((fd + 1))
done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

declare -A P50 P99 RPS CPU T50
ROW=0
LABELS=()
measure() { # LABEL ARGS...: every contestant, the order rotated per row
    local label=$1 n=${#CONTESTANTS[@]} i
    shift
    for ((i = 0; i < n; i++)); do
        local c=${CONTESTANTS[$(((i + ROW) % n))]}
        local before ticks out
        before=$(cpu_ticks "${PID[$c]}")
        out=$("${CLIENT_PIN[@]}" "$LOADGEN" --url "${URL[$c]}" --key sk-bench --label "$c-$label" "$@")
        ticks=$(($(cpu_ticks "${PID[$c]}") - before))
        P50[$c$label]=$(field "$out" p50_ms)
        P99[$c$label]=$(field "$out" p99_ms)
        RPS[$c$label]=$(field "$out" rps)
        T50[$c$label]=$(field "$out" ttfb_p50_ms)
        CPU[$c$label]=$(awk -v t="$ticks" -v hz="$(getconf CLK_TCK)" -v n="$(field "$out" completed)" \
            'BEGIN { if (n > 0) printf "%.1f", t / hz * 1e6 / n; else print "-" }')
    done
    ROW=$((ROW + 1))
    LABELS+=("$label")
}

measure json-c64 --concurrency 64 --requests "$REQUESTS" --max-seconds "$MAX_SECONDS" --warmup 500
measure stream-c16 --stream --concurrency 16 --requests "$REQUESTS" --max-seconds "$MAX_SECONDS" --warmup 500
measure json-c16 --concurrency 16 --requests "$REQUESTS" --max-seconds "$MAX_SECONDS" --warmup 500

minus() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%+.3f", a - b }'; }
metric() { # URL NAME: a counter from the gateway's /metrics
    curl -s "${1%/compatible-mode/*}/metrics" | awk -v n="$2" '$1 == n {print $2}'
}

echo
echo "simulator --latency-ms $LATENCY_MS; $REQUESTS requests or ${MAX_SECONDS}s per run; gateways + simulator on core 1, loadgen + sink on core 0"
echo
echo "| run | contestant | p50 / p99 ms | vs off p50 / p99 ms | rps | gateway CPU µs/request | vs off µs | stream TTFB p50 ms |"
echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"
for l in "${LABELS[@]}"; do
    for c in "${CONTESTANTS[@]}"; do
        ttfb="-"
        [[ $l == stream-* ]] && ttfb=${T50[$c$l]}
        echo "| $l | $c | ${P50[$c$l]} / ${P99[$c$l]} | $(minus "${P50[$c$l]}" "${P50[off$l]}") / $(minus "${P99[$c$l]}" "${P99[off$l]}") | ${RPS[$c$l]} | ${CPU[$c$l]} | $(minus "${CPU[$c$l]}" "${CPU[off$l]}") | $ttfb |"
    done
done
echo
echo "| contestant | spans exported | spans dropped | export errors | access log lines dropped |"
echo "| --- | ---: | ---: | ---: | ---: |"
for c in "${CONTESTANTS[@]}"; do
    echo "| $c | $(metric "${URL[$c]}" dashgate_trace_spans_exported_total) | $(metric "${URL[$c]}" dashgate_trace_spans_dropped_total) | $(metric "${URL[$c]}" dashgate_trace_export_errors_total) | $(metric "${URL[$c]}" dashgate_access_log_dropped_total) |"
done
