#!/usr/bin/env bash
# Runs the tests of tests/js against the engine's debug binary: the dashboard
# and tickwire.js in real headless Chromium (Debian's chromium package, driven
# by playwright-core; no browser download) and SSE with the npm eventsource
# client. Installs what is missing: chromium with apt-get (needs root), the
# npm packages with `npm ci` from the committed lock file. Builds the binary
# when it is not there yet.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "js-tests: node and npm not found (apt-get install nodejs npm)" >&2
  exit 1
fi
chromium_bin=${CHROMIUM:-/usr/bin/chromium}
if [[ ! -x $chromium_bin ]]; then
  if [[ $(id -u) -ne 0 ]]; then
    echo "js-tests: $chromium_bin not found; install Debian's chromium package (apt-get install chromium)" >&2
    exit 1
  fi
  echo "js-tests: installing chromium (apt-get install chromium)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq chromium
fi
export CHROMIUM=$chromium_bin
[[ -x target/debug/tickwire ]] || cargo build -q -p tickwire
export TICKWIRE_BIN=${TICKWIRE_BIN:-$PWD/target/debug/tickwire}
cd tests/js
if [[ ! -d node_modules ]] || [[ package-lock.json -nt node_modules ]]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
exec node --test --test-concurrency=1 --test-timeout=180000 "$@"
