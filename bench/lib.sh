#!/usr/bin/env bash
# Shared by the bench scripts: a work directory, processes started on port 0 whose announced
# address is read (no fixed ports, no sleeps), cleanup on exit, and reading loadgen's JSON.

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME FD CMD...: runs CMD in the background with stdout on a fifo opened as fd FD, and
# reads the first line ("... listening on http://ADDR") into ADDR. No sleeping: `read` blocks
# until the process announces itself, or fails if it exits first.
start() {
    local name=$1 fd=$2
    shift 2
    local fifo="$WORK/$name.out"
    mkfifo "$fifo"
    "$@" >"$fifo" 2>"$WORK/$name.err" &
    PIDS+=($!)
    eval "exec $fd<\"$fifo\""
    local line=""
    if ! read -r -t 30 -u "$fd" line || [[ "$line" != *"listening on http://"* ]]; then
        echo "run.sh: $name did not start: ${line:-no output}" >&2
        cat "$WORK/$name.err" >&2
        exit 1
    fi
    ADDR=${line##*http://}
}

# field JSON NAME: a number (or null) from loadgen's flat JSON line.
field() {
    sed -n "s/.*\"$2\":\\([^,}]*\\).*/\\1/p" <<<"$1"
}

