#!/usr/bin/env bash
# Side by side: the simulator straight, behind nginx (a plain reverse proxy, buffering off: the
# floor one extra loopback hop costs), and behind dashgate with auth, per-key limits and
# metering on (a store key with RPM/TPM limits, every request written to the SQLite ledger).
# Prints one markdown table: latency and throughput per load level, stream time to first byte,
# a 5 MB base64 camera frame that needs no resize, and memory (idle, after load, with 1,000
# open streams). Added latency is shown as a ratio to nginx's. Loopback only, bounded in
# requests and time; nothing here is part of the test suite.
#
# Environment (defaults in brackets):
#   CONCURRENCY  levels                              ["1 16 64 256"]
#   REQUESTS     measured requests per run           [20000]
#   MAX_SECONDS  hard stop per run                   [10]
#   LATENCY_MS   simulator's fixed delay per reply   [1]
#   RATES        fixed arrival rates, req/s (open loop) ["2000 4000"]
#   OPEN_STREAMS streams held open for the memory row [1000]
#   ROUNDS       rounds of every run; the contestants' order rotates each round and every
#                cell shows the median over rounds [min-max]; added latency is paired per
#                round (contestant - direct in the same round) before the median   [1]
#   MAX_TOTAL_SECONDS  no round starts after this long; the rounds done are reported  [1800]
#   FRAME_REQUESTS     requests of the camera-frame run             [60]
#   GATEWAY_TOML more TOML for the current build's gateway only, e.g. "[resume]\ngrace_seconds = 0"
#                with BEFORE=target/release/dashgate: what one setting costs   [unset]
#   BEFORE       another dashgate binary (an older build) to run as a fourth contestant,
#                for a before/after table                       [unset]
#   NO_BUILD=1   skip the build
set -euo pipefail
cd "$(dirname "$0")/.."

CONCURRENCY=${CONCURRENCY:-"1 16 64 256"}
REQUESTS=${REQUESTS:-20000}
MAX_SECONDS=${MAX_SECONDS:-10}
LATENCY_MS=${LATENCY_MS:-1}
OPEN_STREAMS=${OPEN_STREAMS:-1000}
RATES=${RATES:-"2000 4000"}
BEFORE=${BEFORE:-}
ROUNDS=${ROUNDS:-1}
MAX_TOTAL_SECONDS=${MAX_TOTAL_SECONDS:-1800}
FRAME_REQUESTS=${FRAME_REQUESTS:-60}

if ! command -v nginx >/dev/null 2>&1; then
    sudo_=""; [ "$(id -u)" -eq 0 ] || sudo_="sudo"
    $sudo_ apt-get install -y -qq nginx-light >/dev/null 2>&1 || $sudo_ apt-get install -y -qq nginx >/dev/null
fi
if [[ -z "${NO_BUILD:-}" ]]; then
    cargo build --release --bin dashgate --example loadgen --example frame >&2
fi
DASHGATE=target/release/dashgate
LOADGEN=target/release/examples/loadgen
ulimit -n 16384

# shellcheck source=bench/lib.sh
source bench/lib.sh

# The contestant is alone on core 1; the load generator and the simulator (the upstream) share
# core 0, so what the contestant does to its tail is not hidden by the upstream's work, nor the
# other way round.
SERVER_PIN=(taskset -c 1)
CLIENT_PIN=(taskset -c 0)
SIM_PIN=(taskset -c 0)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
rss_kib() { # PID...: resident memory of these processes, summed
    local total=0 pid
    for pid in "$@"; do
        total=$((total + $(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")))
    done
    echo "$total"
}

start simulator 3 "${SIM_PIN[@]}" "$DASHGATE" simulate --listen 127.0.0.1:0 --latency-ms "$LATENCY_MS" --chunks 20
SIM=$ADDR
SIM_PID=${PIDS[-1]}

NGINX_PORT=$(free_port)
mkdir -p "$WORK/nginx"
cat >"$WORK/nginx.conf" <<EOF
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    client_max_body_size 64m;
    client_body_temp_path $WORK/nginx;
    proxy_temp_path $WORK/nginx;
    upstream sim { server $SIM; keepalive 512; }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            proxy_pass http://sim;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
        }
    }
}
EOF
"${SERVER_PIN[@]}" nginx -c "$WORK/nginx.conf" -g 'daemon off;' 2>"$WORK/nginx.err" &
PIDS+=($!)
NGINX_MASTER=$!
for _ in $(seq 100); do
    curl -s -o /dev/null "http://127.0.0.1:$NGINX_PORT/" && break
    sleep 0.05
done
NGINX="127.0.0.1:$NGINX_PORT"

cat >"$WORK/gateway.toml" <<EOF
[server]
max_body_bytes = 67108864

[store]
url = "sqlite://$WORK/gateway.db"

[usage]
spill_path = "$WORK/usage.spill"

[files]
dir = "$WORK/files"

[media]
max_image_bytes = 33554432
max_image_pixels = 12845056

[[upstreams]]
name = "sim"
provider = "dashscope"
base_url = "http://$SIM"
api_key = "sk-upstream"
models = ["*"]
EOF
# GATEWAY_TOML: more TOML for the current build's gateway only (not BEFORE's), to measure what
# one setting costs with BEFORE set to the same binary.
[[ -n ${GATEWAY_TOML:-} ]] && cp "$WORK/gateway.toml" "$WORK/gateway-base.toml" && printf '\n%b\n' "$GATEWAY_TOML" >>"$WORK/gateway.toml"
# A store key with limits: auth goes through the key cache, every request through the limiter
# and into the ledger.
KEY=$("$DASHGATE" keys create --config "$WORK/gateway.toml" --name bench --rpm 100000000 --tpm 100000000000 2>/dev/null)
start gateway 4 "${SERVER_PIN[@]}" "$DASHGATE" serve --config "$WORK/gateway.toml" --listen 127.0.0.1:0
GATEWAY=$ADDR
GATEWAY_PID=${PIDS[-1]}
CONTESTANTS=(direct nginx dashgate)
if [[ -n $BEFORE ]]; then
    # The same set-up in its own store.
    sed "s#$WORK/gateway.db#$WORK/before.db#; s#$WORK/usage.spill#$WORK/before.spill#" \
        "$WORK/gateway${GATEWAY_TOML:+-base}.toml" >"$WORK/before.toml"
    BEFORE_KEY=$("$BEFORE" keys create --config "$WORK/before.toml" --name bench --rpm 100000000 --tpm 100000000000 2>/dev/null)
    start before 5 "${SERVER_PIN[@]}" "$BEFORE" serve --config "$WORK/before.toml" --listen 127.0.0.1:0
    BEFORE_GATEWAY=$ADDR
    BEFORE_PID=${PIDS[-1]}
    CONTESTANTS+=(before)
fi
NGINX_PIDS=$(pgrep -P "$NGINX_MASTER" | tr '\n' ' ')
IDLE_GW=$(rss_kib "$GATEWAY_PID")
IDLE_NGINX=$(rss_kib "$NGINX_MASTER" $NGINX_PIDS)

PATH_CHAT=/compatible-mode/v1/chat/completions
target_url() {
    case $1 in
        direct) echo "http://$SIM$PATH_CHAT" ;;
        nginx) echo "http://$NGINX$PATH_CHAT" ;;
        dashgate) echo "http://$GATEWAY$PATH_CHAT" ;;
        before) echo "http://$BEFORE_GATEWAY$PATH_CHAT" ;;
    esac
}
target_key() {
    case $1 in
        dashgate) echo "$KEY" ;;
        before) echo "$BEFORE_KEY" ;;
        *) echo sk-upstream ;;
    esac
}

# cpu_ticks PID...: user + system clock ticks these processes have used.
cpu_ticks() {
    local total=0 pid
    for pid in "$@"; do
        total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
    done
    echo "$total"
}
# The processes whose CPU a contestant's run costs (the simulator's for `direct`).
target_pids() {
    case $1 in
        direct) echo "$SIM_PID" ;;
        nginx) echo "$NGINX_MASTER $NGINX_PIDS" ;;
        dashgate) echo "$GATEWAY_PID" ;;
        before) echo "$BEFORE_PID" ;;
    esac
}

# load TARGET LABEL ARGS...: one loadgen run; its JSON line in OUT, and the contestant's CPU
# time per completed request (µs) in CPU_US.
load() {
    local target=$1 label=$2
    shift 2
    local ticks_before ticks
    # shellcheck disable=SC2046
    ticks_before=$(cpu_ticks $(target_pids "$target"))
    OUT=$("${CLIENT_PIN[@]}" "$LOADGEN" --url "$(target_url "$target")" --key "$(target_key "$target")" \
        --label "$target-$label" "$@")
    echo "$OUT" >>"$WORK/results.jsonl"
    # shellcheck disable=SC2046
    ticks=$(($(cpu_ticks $(target_pids "$target")) - ticks_before))
    CPU_US=$(awk -v t="$ticks" -v hz="$(getconf CLK_TCK)" -v n="$(field "$OUT" completed)" \
        'BEGIN { if (n > 0) printf "%.0f", t / hz * 1e6 / n; else print "-" }')
}

# Each run's figures, one value per round, space-separated: the medians below come from them.
declare -A L50 L99 LRPS LT50 LT99 LCPU
measure() { # LABEL ARGS...: every contestant, the order rotated per row and per round
    local label=$1 n=${#CONTESTANTS[@]} i
    shift
    for ((i = 0; i < n; i++)); do
        local t=${CONTESTANTS[$(((i + ROW + ROUND) % n))]}
        load "$t" "$label" "$@"
        L50[$t$label]+=" $(field "$OUT" p50_ms)"
        L99[$t$label]+=" $(field "$OUT" p99_ms)"
        LRPS[$t$label]+=" $(field "$OUT" rps)"
        LT50[$t$label]+=" $(field "$OUT" ttfb_p50_ms)"
        LT99[$t$label]+=" $(field "$OUT" ttfb_p99_ms)"
        LCPU[$t$label]+=" $CPU_US"
    done
    ROW=$((ROW + 1))
}

printf '{"model":"qwen-plus","messages":[{"role":"user","content":"%s"}],"sim":{"chunk_delay_ms":5}}' \
    "Benchmark prompt: please answer with a short friendly greeting, thank you." >"$WORK/paced.json"
target/release/examples/frame 3600 2700 >"$WORK/frame.json" 2>/dev/null
FRAME_BYTES=$(stat -c %s "$WORK/frame.json")
# The paced stream run at 200/s lasts at most half the run time (1,000 streams at the default).
PACED_RATE_REQUESTS=$((MAX_SECONDS * 100 < 1000 ? MAX_SECONDS * 100 : 1000))

one_round() {
    ROW=0
    LABELS=()
    for conc in $CONCURRENCY; do
        measure "json-c$conc" --concurrency "$conc" --requests "$REQUESTS" --max-seconds "$MAX_SECONDS" --warmup 500
        LABELS+=("json-c$conc")
    done
    # Open loop: requests arrive at a fixed rate whatever the latency (at most 256 in flight).
    for rate in $RATES; do
        measure "json-r$rate" --rate "$rate" --concurrency 256 --requests "$((rate * MAX_SECONDS / 2))" --max-seconds "$MAX_SECONDS" --warmup 500
        LABELS+=("json-r$rate")
    done
    for conc in 16 64; do
        measure "stream-c$conc" --stream --concurrency "$conc" --requests "$REQUESTS" --max-seconds "$MAX_SECONDS" --warmup 500
        LABELS+=("stream-c$conc")
    done
    # Paced: the 20 events 5 ms apart, as a model emits tokens, so each arrives on its own (in
    # the rows above the simulator writes all 20 at once and they arrive as one burst).
    measure "paced-c64" --stream --concurrency 64 --requests "$REQUESTS" --max-seconds "$MAX_SECONDS" --warmup 200 --body "$WORK/paced.json"
    LABELS+=("paced-c64")
    # The same streams arriving at a fixed rate that leaves the core mostly idle (about four
    # open at a time): what the gateway adds to the first token when it is not queueing.
    measure "paced-r200" --stream --rate 200 --concurrency 64 --requests "$PACED_RATE_REQUESTS" --max-seconds "$MAX_SECONDS" --warmup 100 --body "$WORK/paced.json"
    LABELS+=("paced-r200")
    # A camera frame of about 5 MB as base64, within the pixel budget and without metadata:
    # it passes byte-identical after validation.
    measure "frame" --concurrency 1 --requests "$FRAME_REQUESTS" --max-seconds 60 --warmup 4 --body "$WORK/frame.json"
    LABELS+=("frame")
}

STARTED=$SECONDS
ROUNDS_DONE=0
for ((ROUND = 0; ROUND < ROUNDS; ROUND++)); do
    if ((ROUND > 0 && SECONDS - STARTED > MAX_TOTAL_SECONDS)); then
        echo "MAX_TOTAL_SECONDS ($MAX_TOTAL_SECONDS) reached: $ROUNDS_DONE of $ROUNDS rounds run" >&2
        break
    fi
    one_round
    ROUNDS_DONE=$((ROUND + 1))
    echo "round $ROUNDS_DONE of $ROUNDS done after $((SECONDS - STARTED)) s" >&2
done

# stats VALUES...: "median min max" ("-" values, from runs that completed nothing, left out).
stats() {
    tr ' ' '\n' <<<"$*" | awk '$1 != "" && $1 != "-"' | sort -g | awk '
        { v[NR] = $1 }
        END {
            if (NR == 0) { print "- - -"; exit }
            m = NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
            print m, v[1], v[NR]
        }'
}
median() { local s; s=$(stats "$@"); echo "${s%% *}"; }
# cell VALUES...: the median, and with more than one round its spread "[min-max]".
cell() {
    local m lo hi
    read -r m lo hi <<<"$(stats "$@")"
    if ((ROUNDS_DONE > 1)) && [[ $m != - ]]; then echo "$m [$lo–$hi]"; else echo "$m"; fi
}
# paired A_VALUES B_VALUES: per-round differences a - b, space-separated.
paired() {
    awk -v a="$1" -v b="$2" 'BEGIN {
        n = split(a, x, " "); split(b, y, " ")
        for (i = 1; i <= n; i++) if (x[i] != "-" && y[i] != "-") printf "%.3f ", x[i] - y[i]
    }'
}

LOADED_GW=$(rss_kib "$GATEWAY_PID")
LOADED_NGINX=$(rss_kib "$NGINX_MASTER" $NGINX_PIDS)

# OPEN_STREAMS streams held open (each 20 events 300 ms apart: 6 s), memory read midway.
printf '{"model":"qwen-plus","messages":[{"role":"user","content":"hold on"}],"sim":{"chunk_delay_ms":300,"chunks":20}}' >"$WORK/slow.json"
open_rss() { # TARGET PIDS...
    local target=$1
    shift
    "${CLIENT_PIN[@]}" "$LOADGEN" --url "$(target_url "$target")" --key "$(target_key "$target")" --stream \
        --concurrency "$OPEN_STREAMS" --requests "$OPEN_STREAMS" --max-seconds 30 --body "$WORK/slow.json" \
        --label "$target-open" >>"$WORK/results.jsonl" &
    local lg=$!
    sleep 3 # streams are open and midway: a bench reading, not a synchronisation
    OPEN=$(rss_kib "$@")
    wait "$lg"
}
open_rss dashgate "$GATEWAY_PID"
OPEN_GW=$OPEN
open_rss nginx "$NGINX_MASTER" $NGINX_PIDS
OPEN_NGINX=$OPEN

ratio() { # GATEWAY_ADDED NGINX_ADDED
    awk -v g="$1" -v n="$2" 'BEGIN { if (n <= 0) print "-"; else printf "%.2fx", g / n }'
}
minus() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a - b }'; }
is_stream() { [[ $1 == stream-* || $1 == paced-* ]]; }
# added CONTESTANT LABEL [L50 L99]: "p50 / p99" over direct, paired per round, from the
# per-round lists L50/L99 (or the ones named)
added() {
    local -n a50=${3:-L50} a99=${4:-L99}
    echo "$(cell "$(paired "${a50[$1$2]}" "${a50[direct$2]}")") / $(cell "$(paired "${a99[$1$2]}" "${a99[direct$2]}")")"
}
# added_median CONTESTANT LABEL LIST: the median of the paired per-round differences
added_median() {
    local -n list=$3
    median "$(paired "${list[$1$2]}" "${list[direct$2]}")"
}

echo
echo "simulator --latency-ms $LATENCY_MS; $REQUESTS requests or ${MAX_SECONDS}s per run; contestant alone on core 1, loadgen + simulator on core 0"
echo "frame body: $FRAME_BYTES bytes; added = contestant - direct; ratio = dashgate added / nginx added"
if ((ROUNDS_DONE > 1)); then
    echo "$ROUNDS_DONE rounds, contestants rotated each round: median [min–max] over rounds; added paired per round; ratio of the medians"
fi
echo
echo "| run | direct p50 / p99 ms | nginx added p50 / p99 ms | dashgate added p50 / p99 ms | ratio p50 / p99 | rps direct / nginx / dashgate |"
echo "| --- | ---: | ---: | ---: | ---: | ---: |"
for l in "${LABELS[@]}"; do
    n50=$(added_median nginx "$l" L50) n99=$(added_median nginx "$l" L99)
    g50=$(added_median dashgate "$l" L50) g99=$(added_median dashgate "$l" L99)
    echo "| $l | $(cell "${L50[direct$l]}") / $(cell "${L99[direct$l]}") | $(added nginx "$l") | $(added dashgate "$l") | $(ratio "$g50" "$n50") / $(ratio "$g99" "$n99") | $(cell "${LRPS[direct$l]}") / $(cell "${LRPS[nginx$l]}") / $(cell "${LRPS[dashgate$l]}") |"
done
echo
echo "CPU per request, µs (the process's own; direct = the simulator's)"
echo
echo "| run | direct | nginx | dashgate |"
echo "| --- | ---: | ---: | ---: |"
for l in "${LABELS[@]}"; do
    echo "| $l | $(cell "${LCPU[direct$l]}") | $(cell "${LCPU[nginx$l]}") | $(cell "${LCPU[dashgate$l]}") |"
done
echo
echo "| stream TTFB | direct p50 / p99 ms | nginx added p50 / p99 ms | dashgate added p50 / p99 ms |"
echo "| --- | ---: | ---: | ---: |"
for l in "${LABELS[@]}"; do
    is_stream "$l" || continue
    echo "| $l | $(cell "${LT50[direct$l]}") / $(cell "${LT99[direct$l]}") | $(added nginx "$l" LT50 LT99) | $(added dashgate "$l" LT50 LT99) |"
done
echo
per_stream() { awk -v o="$1" -v l="$2" -v n="$OPEN_STREAMS" 'BEGIN { printf "%.1f", (o - l) / n }'; }
echo "| memory | nginx (master + worker) | dashgate |"
echo "| --- | ---: | ---: |"
echo "| RSS idle | $((IDLE_NGINX / 1024)) MiB | $((IDLE_GW / 1024)) MiB |"
echo "| RSS after the runs above | $((LOADED_NGINX / 1024)) MiB | $((LOADED_GW / 1024)) MiB |"
echo "| RSS with $OPEN_STREAMS open streams | $((OPEN_NGINX / 1024)) MiB | $((OPEN_GW / 1024)) MiB |"
echo "| per open stream | $(per_stream "$OPEN_NGINX" "$LOADED_NGINX") KiB | $(per_stream "$OPEN_GW" "$LOADED_GW") KiB |"
if [[ -n $BEFORE ]]; then
    echo
    echo "before: $BEFORE; after: $DASHGATE (same set-up, interleaved)"
    echo
    echo "| run | before added p50 / p99 ms | after added p50 / p99 ms | rps before / after | CPU µs/request before / after | stream TTFB added p50 / p99 before | stream TTFB added p50 / p99 after |"
    echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    for l in "${LABELS[@]}"; do
        ttfb="- | -"
        is_stream "$l" && ttfb="$(added before "$l" LT50 LT99) | $(added dashgate "$l" LT50 LT99)"
        echo "| $l | $(added before "$l") | $(added dashgate "$l") | $(cell "${LRPS[before$l]}") / $(cell "${LRPS[dashgate$l]}") | $(cell "${LCPU[before$l]}") / $(cell "${LCPU[dashgate$l]}") | $ttfb |"
    done
fi
