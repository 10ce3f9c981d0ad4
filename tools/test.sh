#!/usr/bin/env bash
# Runs every check and test of the repository: formatting, lints, the engine's
# unit and loopback integration tests, the tools' tests, each benchmark once
# in test mode, tickwire.js's unit tests, the browser and EventSource tests
# (tools/js-tests.sh, which installs Debian's chromium and the npm packages of
# tests/js when missing), the Autobahn conformance cases (tools/autobahn.sh,
# which installs its runner from PyPI) and a replay of the fuzz corpus. Tests start the real
# binaries on ephemeral loopback ports. The fuzz replay (tools/fuzz.sh) installs
# what it needs: cargo-fuzz from crates.io, and the nightly toolchain with
# rustup when it is missing (falling back to the stable toolchain with
# RUSTC_BOOTSTRAP=1); it fails when it cannot run.
#
# Prints each step's time after it and ends with one line:
#   tools/test.sh: PASS (N steps, T s)
#   tools/test.sh: FAIL at step "NAME" after T s
set -euo pipefail
cd "$(dirname "$0")/.."

# Microseconds since the epoch (bash 5's EPOCHREALTIME, whatever the locale's
# decimal separator), and a microsecond count as seconds with one decimal.
now_us() { local t=${EPOCHREALTIME/[.,]/}; echo "$((10#$t))"; }
secs() { printf '%d.%d' "$(($1 / 1000000))" "$(($1 / 100000 % 10))"; }

t_start=$(now_us)
steps=0
current="prerequisites"
t_step=$t_start
finished=0
failed_cmd=""

end_step() {
  if [[ -n $current ]]; then
    printf '== %s (%s s)\n' "$current" "$(secs $(($(now_us) - t_step)))"
  fi
}
step() {
  end_step
  current=$*
  steps=$((steps + 1))
  t_step=$(now_us)
  printf '\n== %s\n' "$current"
}
on_err() { failed_cmd=$BASH_COMMAND; }
on_exit() {
  local rc=$?
  local total
  total=$(secs $(($(now_us) - t_start)))
  if ((rc == 0 && finished)); then
    echo "tools/test.sh: PASS ($steps steps, $total s)"
  else
    ((rc != 0)) || rc=1
    [[ -z $failed_cmd ]] || echo "failed: $failed_cmd (exit $rc)" >&2
    printf '== %s: FAILED (%s s)\n' "$current" "$(secs $(($(now_us) - t_step)))"
    echo "tools/test.sh: FAIL at step \"$current\" after $total s"
  fi
  exit "$rc"
}
trap on_err ERR
trap on_exit EXIT

if ! command -v cargo >/dev/null; then
  echo "cargo not found: install a Rust toolchain (rustup) first" >&2
  exit 1
fi
need_node() {
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "node and npm not found: the client library and browser tests need Node.js (apt-get install nodejs npm)" >&2
    return 1
  fi
}
# 1,000-client and toolkit tests open a few thousand sockets.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
current=""

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
step "tickwire.js unit tests (node --test, fake transport)"
need_node
(cd clients/js && node --test test/*.test.js)
step "browser and EventSource tests (headless Chromium, npm eventsource)"
tools/js-tests.sh
step "WebSocket conformance (Autobahn cases against /echo)"
tools/autobahn.sh
step "fuzz corpus replay"
tools/fuzz.sh replay
end_step
finished=1
