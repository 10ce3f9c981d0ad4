#!/usr/bin/env bash
# Runs the tests of tests/js against the engine's debug binary: the dashboard
# and tickwire.js in real headless Chromium (Debian's chromium package, driven
# by playwright-core; no browser download) and SSE with the npm eventsource
# client. Installs what is missing: chromium with apt-get (needs root), the
# npm packages with `npm ci` from the committed lock file, and a Node 22
# binary from npm (`node-linux-<arch>@22`, into tests/js/.node22) when the
# system node is older than 22: the tickwire.js end-to-end test runs the
# library under Node >= 22 with its global WebSocket. Builds the binary when
# it is not there yet.
#
# TICKWIRE_UPDATE_SCREENSHOT=1 makes the dashboard test rewrite
# docs/dashboard.png (after a minute of demo feed, so the charts have data);
# otherwise its screenshot goes to a temporary directory.
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
# Node >= 22 for the tickwire.js end-to-end test (TICKWIRE_NODE22 may name one).
if [[ -z ${TICKWIRE_NODE22:-} ]]; then
  if (($(node -p 'process.versions.node.split(".")[0]') >= 22)); then
    TICKWIRE_NODE22=$(command -v node)
  else
    node22_dir=$PWD/.node22
    arch=$(node -p 'process.arch')
    TICKWIRE_NODE22=$node22_dir/node_modules/node-linux-$arch/bin/node
    if [[ ! -x $TICKWIRE_NODE22 ]]; then
      echo "js-tests: system node is $(node --version); installing node-linux-$arch@22 from npm into tests/js/.node22"
      npm install --prefix "$node22_dir" --no-save --no-package-lock --no-audit --no-fund --loglevel=error "node-linux-$arch@22"
    fi
  fi
fi
export TICKWIRE_NODE22
exec node --test --test-concurrency=1 --test-timeout=180000 "$@"
