#!/usr/bin/env bash
# Runs every check and test of dashgate: format, lint, Rust unit and integration tests, and the
# end-to-end tests with the official Python SDKs. Installs what it needs on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "tools"
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  rustup component add rustfmt clippy
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install --locked cargo-nextest
fi
# The e2e suite runs in its own virtualenv, with the SDK versions pinned in e2e/requirements.txt.
if [ ! -x e2e/.venv/bin/python ]; then
  python3 -m venv e2e/.venv
fi
e2e/.venv/bin/pip install --quiet --disable-pip-version-check -r e2e/requirements.txt
# The console's browser tests: Playwright (pinned) driving Debian's chromium (installed below).
e2e/.venv/bin/pip install --quiet --disable-pip-version-check -r e2e/requirements-browser.txt

step "services (PostgreSQL and Redis on loopback, for the store and shared-limits tests; chromium for the console)"
need=()
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql)
command -v redis-server >/dev/null || need+=(redis-server)
[ -x /usr/bin/chromium ] || need+=(chromium)
# A CJK font, so the console's Chinese screenshots show characters rather than boxes.
[ -n "$(fc-list :lang=zh 2>/dev/null)" ] || need+=(fonts-wqy-microhei)
if [ ${#need[@]} -gt 0 ]; then
  sudo_=""; [ "$(id -u)" -eq 0 ] || sudo_="sudo"
  $sudo_ apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq "${need[@]}" >/dev/null
fi
# Private instances in a scratch directory, on ports of their own; stopped when this script ends.
services=$(mktemp -d /tmp/dashgate-services.XXXXXX)
chmod 777 "$services"
pg_bin=$(dirname "$(ls -d /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)")
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
pg_port=$(free_port)
redis_port=$(free_port)
as_pg() { if [ "$(id -u)" -eq 0 ]; then su postgres -s /bin/sh -c "$*"; else sh -c "$*"; fi; }
mkdir -p "$services/pg"
[ "$(id -u)" -eq 0 ] && chown postgres "$services/pg"
as_pg "'$pg_bin/initdb' -D '$services/pg' -U dashgate --auth=trust -E UTF8 >'$services/initdb.log' 2>&1"
as_pg "'$pg_bin/pg_ctl' -D '$services/pg' -l '$services/pg.log' -w -o \"-p $pg_port -k '$services' -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300\" start >/dev/null"
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
  --pidfile "$services/redis.pid" --logfile "$services/redis.log"
cleanup() {
  as_pg "'$pg_bin/pg_ctl' -D '$services/pg' -m fast stop >/dev/null 2>&1" || true
  [ -f "$services/redis.pid" ] && kill "$(cat "$services/redis.pid")" 2>/dev/null || true
}
trap cleanup EXIT
export DASHGATE_TEST_POSTGRES_URL="postgres://dashgate@127.0.0.1:$pg_port/postgres"
export DASHGATE_TEST_REDIS_URL="redis://127.0.0.1:$redis_port"
export DASHGATE_TEST_PG_BIN="$pg_bin"
echo "PostgreSQL on $pg_port, Redis on $redis_port"

step "format"
cargo fmt --all -- --check

step "import loops (the module graph from crate:: and super:: paths; known loop edges in scripts/import-cycles.baseline)"
python3 scripts/import-cycles.py --baseline scripts/import-cycles.baseline

step "lint"
cargo clippy --locked --all-targets -- -D warnings

step "build"
cargo build --locked --bins

step "rust tests"
cargo nextest run --locked --no-fail-fast

step "e2e (official SDKs; the console in chromium, screenshots in test-artifacts/console/)"
DASHGATE_BIN="$PWD/target/debug/dashgate" e2e/.venv/bin/python -m pytest e2e -q -p no:cacheprovider
