#!/usr/bin/env bash
# Runs every test of the project on a fresh machine: installs what the tests need (the Python
# oracle venv with the real dstack and gpuhunt), checks formatting and lints, runs the Rust
# tests (unit, integration, doc) and the oracle tests against the real Python programs.
#   usage: bash scripts/test-all.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/dstack-sdk/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
step() { printf '\n==> %s (%s)\n' "$*" "$(date +%T)"; }

step "oracle venv (dstack 0.22.5, gpuhunt 0.1.34, pytest)"
VENV=$(bash scripts/oracle-venv.sh)
PY="$VENV/bin/python"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo test (unit, integration, doc)"
cargo test --workspace --all-targets
cargo test --workspace --doc

step "oracle tests (real dstack / gpuhunt vs dstack-sdk)"
"$PY" -m pytest tests/oracle -q -p no:cacheprovider
