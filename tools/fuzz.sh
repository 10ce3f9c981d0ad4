#!/usr/bin/env bash
# Fuzzes the parsers that take outside bytes: client frames, the HTTP
# handshake, client messages and ingest lines (targets in fuzz/).
#
#   tools/fuzz.sh            replay the committed corpus once (what the tests run)
#   tools/fuzz.sh run [SEC]  fuzz each target for SEC seconds (default 60),
#                            growing fuzz/corpus/; minimize it before committing
#                            with: cd fuzz && cargo +nightly fuzz cmin -O TARGET
#
# Needs a nightly toolchain (cargo-fuzz builds with sanitizer flags) and
# installs cargo-fuzz from crates.io when it is missing.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

TARGETS=(client_frames handshake client_message ingest_line)
mode=${1:-replay}
seconds=${2:-60}

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz: no nightly toolchain (rustup toolchain list); cargo-fuzz needs one" >&2
  exit 3
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install cargo-fuzz --locked -q
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
for t in "${TARGETS[@]}"; do
  case $mode in
    replay)
      printf 'fuzz %-15s replaying %s inputs\n' "$t" "$(ls "corpus/$t" | wc -l)"
      args=("corpus/$t" -- -runs=0)
      ;;
    run)
      printf 'fuzz %-15s for %ss\n' "$t" "$seconds"
      args=(-- -max_total_time="$seconds" -max_len=4096)
      ;;
    *)
      echo "usage: tools/fuzz.sh [replay | run [SECONDS]]" >&2
      exit 2
      ;;
  esac
  if ! cargo +nightly fuzz run -O "$t" "${args[@]}" >"$log" 2>&1; then
    cat "$log" >&2
    echo "fuzz: $t failed; the input is under fuzz/artifacts/$t/" >&2
    exit 1
  fi
  grep -E '^Done' "$log" || true
done
