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

step "format"
cargo fmt --all -- --check

step "lint"
cargo clippy --locked --all-targets -- -D warnings

step "build"
cargo build --locked --bins

step "rust tests"
cargo nextest run --locked --no-fail-fast

step "e2e (official SDKs)"
DASHGATE_BIN="$PWD/target/debug/dashgate" e2e/.venv/bin/python -m pytest e2e -q -p no:cacheprovider
