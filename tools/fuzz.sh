#!/usr/bin/env bash
# Fuzzes the parsers that take outside bytes: client frames, the HTTP
# handshake, client messages and ingest lines (targets in fuzz/).
#
#   tools/fuzz.sh            replay the committed corpus once (what the tests run):
#                            every file of fuzz/corpus/TARGET/ goes through TARGET's
#                            checks, under AddressSanitizer; any failure exits 1
#   tools/fuzz.sh run [SEC]  fuzz each target for SEC seconds (default 60),
#                            growing fuzz/corpus/; minimize it before committing
#                            with: cd fuzz && cargo +nightly fuzz cmin -O TARGET
#
# cargo-fuzz builds with unstable compiler flags (-Zsanitizer=address). The
# toolchain is, in this order: nightly when rustup has it; nightly installed
# with `rustup toolchain install nightly --profile minimal` when it is missing;
# else the stable toolchain with RUSTC_BOOTSTRAP=1, which accepts the same
# flags (the same libFuzzer and AddressSanitizer build). FUZZ_TOOLCHAIN=nightly
# or FUZZ_TOOLCHAIN=stable forces one. cargo-fuzz itself is installed from
# crates.io (`cargo install cargo-fuzz --locked`) when it is missing.
# Exits non-zero whenever the replay could not run.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

TARGETS=(client_frames handshake client_message ingest_line)
mode=${1:-replay}
seconds=${2:-60}
case $mode in
  replay | run) ;;
  *)
    echo "usage: tools/fuzz.sh [replay | run [SECONDS]]" >&2
    exit 2
    ;;
esac

have_nightly() { cargo +nightly --version >/dev/null 2>&1; }
toolchain=${FUZZ_TOOLCHAIN:-}
if [[ -z $toolchain ]]; then
  if have_nightly; then
    toolchain=nightly
  elif command -v rustup >/dev/null; then
    echo "fuzz: no nightly toolchain; installing it (rustup toolchain install nightly --profile minimal)"
    if timeout 600 rustup toolchain install nightly --profile minimal --no-self-update && have_nightly; then
      toolchain=nightly
    else
      echo "fuzz: nightly could not be installed; using stable with RUSTC_BOOTSTRAP=1"
      toolchain=stable
    fi
  else
    toolchain=stable
  fi
fi
case $toolchain in
  nightly)
    if ! have_nightly; then
      echo "fuzz: FUZZ_TOOLCHAIN=nightly but there is no nightly toolchain" >&2
      exit 3
    fi
    cargo=(cargo +nightly)
    ;;
  stable)
    # The stable compiler with its unstable flags unlocked: what cargo-fuzz
    # passes (-Zsanitizer=address, sanitizer coverage) works as on nightly.
    export RUSTC_BOOTSTRAP=1
    if command -v rustup >/dev/null && rustup run stable cargo --version >/dev/null 2>&1; then
      cargo=(cargo +stable)
    else
      cargo=(cargo)
    fi
    ;;
  *)
    echo "fuzz: FUZZ_TOOLCHAIN must be nightly or stable, not '$toolchain'" >&2
    exit 2
    ;;
esac
echo "fuzz: toolchain $("${cargo[@]}" --version)${RUSTC_BOOTSTRAP:+ (RUSTC_BOOTSTRAP=1)}"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz (cargo install cargo-fuzz --locked)"
  cargo install cargo-fuzz --locked -q
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT
for t in "${TARGETS[@]}"; do
  if [[ $mode == replay ]]; then
    n=$(find "corpus/$t" -type f | wc -l)
    if ((n == 0)); then
      echo "fuzz: corpus/$t is empty: nothing to replay" >&2
      exit 1
    fi
    printf 'fuzz %-15s replaying %s inputs\n' "$t" "$n"
    # -runs=0: run every corpus file once, generate nothing new.
    args=("corpus/$t" -- -runs=0)
  else
    printf 'fuzz %-15s for %ss\n' "$t" "$seconds"
    args=(-- -max_total_time="$seconds" -max_len=4096)
  fi
  if ! "${cargo[@]}" fuzz run -O "$t" "${args[@]}" >"$log" 2>&1; then
    cat "$log" >&2
    echo "fuzz: $t failed; the input is under fuzz/artifacts/$t/" >&2
    exit 1
  fi
  if [[ $mode == replay ]]; then
    # libFuzzer reports "N files found" and then "Done M runs" (the files plus
    # one empty input): check that every file really ran.
    found=$(sed -nE 's/^INFO: +([0-9]+) files found in .*/\1/p' "$log" | tail -1)
    done_runs=$(sed -nE 's/^Done ([0-9]+) runs.*/\1/p' "$log" | tail -1)
    if [[ -z $found || -z $done_runs || $found -ne $n || $done_runs -lt $n ]]; then
      cat "$log" >&2
      echo "fuzz: $t: expected $n inputs to run, libFuzzer reported ${found:-?} found and ${done_runs:-?} runs" >&2
      exit 1
    fi
  fi
  grep -E '^Done' "$log" || true
done
