#!/usr/bin/env bash
# Where the usage ledger's work runs, in instructions (callgrind: repeatable on a busy machine,
# where wall-clock tails are not). `bench/ledger_callgrind.sh [DASHGATE...]` runs each binary
# (default target/release/dashgate) pinned to one core under callgrind, one thread per output
# file, with metering on (a store key with RPM/TPM, the SQLite ledger), sends REQUESTS (2000)
# non-stream requests one at a time, stops it with SIGTERM and prints per binary: instructions
# per request on the request runtime's worker thread(s) and on other threads, how many of those
# are the ledger writer's (`ship_range` and below, wherever it ran), and how many SQL statements
# SQLite prepared. Needs valgrind; loopback only, bounded.
set -euo pipefail
cd "$(dirname "$0")/.."

REQUESTS=${REQUESTS:-2000}
BINARIES=("$@")
[[ ${#BINARIES[@]} -gt 0 ]] || BINARIES=(target/release/dashgate)
LOADGEN=target/release/examples/loadgen

# shellcheck source=bench/lib.sh
source bench/lib.sh

start simulator 3 taskset -c 0 "${BINARIES[0]}" simulate --listen 127.0.0.1:0 --latency-ms 1
SIM=$ADDR

# sum_ir FILE...: instructions in callgrind output files (their "summary:" lines).
sum_ir() { awk '/^summary:/ { s += $2 } END { printf "%.0f", s }' "$@"; }
# fn_ir PATTERN FILE...: inclusive instructions of the functions matching PATTERN.
fn_ir() {
    local pattern=$1
    shift
    local f total=0 v
    for f in "$@"; do
        v=$(callgrind_annotate --inclusive=yes --threshold=100 "$f" 2>/dev/null |
            awk -v p="$pattern" '$0 ~ p { gsub(",", "", $1); print $1; exit }')
        total=$((total + ${v:-0}))
    done
    echo "$total"
}
# calls FUNCTION FILE...: how often FUNCTION was called.
calls() {
    local fn=$1
    shift
    awk -v fn="$fn" '
        /^fn=/ { cur = $0 }
        /^cfn=/ { callee = $0; next }
        /^calls=/ { if (callee ~ fn) { split($1, c, "="); n += c[2] } callee = "" }
        END { print n + 0 }' "$@"
}

echo "| binary | worker thread(s) Ir/request | other threads Ir/request | ledger writer Ir/request (on worker / elsewhere) | SQL statements prepared |"
echo "| --- | ---: | ---: | ---: | ---: |"
i=0
for bin in "${BINARIES[@]}"; do
    i=$((i + 1))
    dir="$WORK/cg$i"
    mkdir -p "$dir"
    cat >"$dir/gateway.toml" <<EOF
[store]
url = "sqlite://$dir/gateway.db"

[usage]
spill_path = "$dir/usage.spill"
journal_path = "$dir/usage.journal"

[files]
dir = "$dir/files"

[[upstreams]]
name = "sim"
provider = "dashscope"
base_url = "http://$SIM"
api_key = "sk-upstream"
models = ["*"]
EOF
    key=$("$bin" keys create --config "$dir/gateway.toml" --name bench --rpm 100000000 --tpm 100000000000 2>/dev/null)
    start "gw$i" $((3 + i)) taskset -c 1 valgrind --tool=callgrind --separate-threads=yes --compress-strings=no --compress-pos=no \
        --callgrind-out-file="$dir/cg.out" "$bin" serve --config "$dir/gateway.toml" --listen 127.0.0.1:0
    pid=${PIDS[-1]}
    taskset -c 0 "$LOADGEN" --url "http://$ADDR/compatible-mode/v1/chat/completions" --key "$key" \
        --concurrency 1 --requests "$REQUESTS" --warmup 50 --max-seconds 300 --label "cg$i" >"$dir/load.json"
    kill -TERM "$pid"
    wait "$pid" 2>/dev/null || true
    n=$(( REQUESTS + 50 ))
    workers=()
    others=()
    for f in "$dir"/cg.out-*; do
        if grep -q "tokio-runtime-worker\|^fn=.*tokio::runtime::scheduler::multi_thread::worker::run" "$f"; then
            workers+=("$f")
        else
            others+=("$f")
        fi
    done
    w=$(sum_ir "${workers[@]}")
    o=$(sum_ir "${others[@]}")
    lw=$(fn_ir "Writer::ship_range" "${workers[@]}")
    lo=$(fn_ir "Writer::ship_range" "${others[@]}")
    prepared=$(calls "sqlite3_prepare_v3" "$dir"/cg.out-*)
    echo "| $bin | $((w / n)) | $((o / n)) | $((lw / n)) / $((lo / n)) | $prepared |"
done
