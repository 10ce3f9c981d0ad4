#!/usr/bin/env bash
# Runs every check and test of the repository: formatting, lints, the engine's
# unit and loopback integration tests, the tools' tests, and each benchmark
# once in test mode, and a replay of the fuzz corpus. Tests start the real
# binaries on ephemeral loopback ports. The fuzz replay needs the nightly
# toolchain and installs cargo-fuzz from crates.io when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

if ! command -v cargo >/dev/null; then
  echo "cargo not found: install a Rust toolchain (rustup) first" >&2
  exit 1
fi
# 1,000-client and toolkit tests open a few thousand sockets.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
step "rustdoc -D warnings"
RUSTDOCFLAGS="-D warnings" cargo doc -p tickwire --no-deps -q
step "tests (debug)"
cargo test --workspace
step "engine tests (release)"
cargo test --release -p tickwire
step "benches compile and run once"
cargo test --benches -p tickwire
step "fuzz corpus replay"
if cargo +nightly --version >/dev/null 2>&1; then
  tools/fuzz.sh replay
else
  echo "NOT RUN: no nightly toolchain, which cargo-fuzz needs (rustup toolchain install nightly)"
fi
