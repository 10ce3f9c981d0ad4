#!/usr/bin/env bash
# Protocol conformance: runs the Autobahn TestSuite cases 1.* to 7.* and 10.*
# (required to pass) and 9.* (reported; performance cases with messages up to
# 16 MiB) against the engine's echo endpoint, /echo, which shares the read and
# write path of /ws; then 1.* to 7.* and 10.* again over wss:// (required).
# The runner is kosoku (PyPI), installed when missing.
#
#   tools/autobahn.sh [--out DIR]    verdicts as JSON in DIR (default: a temp dir)
set -euo pipefail
cd "$(dirname "$0")/.."

out=""
while (($#)); do
  case $1 in
    --out) out=$2; shift 2 ;;
    *) echo "usage: tools/autobahn.sh [--out DIR]" >&2; exit 2 ;;
  esac
done
[[ -n $out ]] || out=$(mktemp -d)
mkdir -p "$out"

if ! python3 -c "import kosoku" 2>/dev/null; then
  echo "autobahn: installing kosoku (pip)"
  python3 -m pip install --quiet --disable-pip-version-check kosoku ||
    python3 -m pip install --quiet --disable-pip-version-check --break-system-packages kosoku
fi
cargo build --release -q -p tickwire
bin=target/release/tickwire

pid=""
stop() { [[ -z $pid ]] || { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; pid=""; }; }
trap stop EXIT

# Starts the engine with the echo endpoint on an ephemeral port; sets $url.
start() {
  local log=$out/engine.log
  "$bin" --listen 127.0.0.1:0 --ingest 127.0.0.1:0 --conformance-echo --new-connections-per-ip-per-second 0 "$@" >"$log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do
    if grep -q "tickwire ready" "$log"; then
      url="ws://$(sed -n 's/.*ready listen=\([^ ]*\).*/\1/p' "$log" | head -1)/echo"
      return
    fi
    sleep 0.1
  done
  echo "autobahn: the engine did not start:" >&2
  cat "$log" >&2
  exit 1
}

echo "autobahn: cases 1.* to 7.* and 10.* with the default limits"
start
timeout 600 python3 tools/autobahn.py "$url" '1.*' '2.*' '3.*' '4.*' '5.*' '6.*' '7.*' '10.*' \
  --json "$out/required.json"
stop

# 9.* sends messages up to 16 MiB: raise the frame limit and the reply budget.
echo "autobahn: cases 9.* (reported) with max_frame_size 16MiB"
start --max-frame-size 16MiB --outbound-budget 32MiB
timeout 900 python3 tools/autobahn.py "$url" '9.*' --concurrency 1 --report-only \
  --json "$out/performance.json"
stop
# wss://: the same required cases through the TLS path, with a certificate
# made here (the runner reaches it through a local TLS bridge).
echo "autobahn: cases 1.* to 7.* and 10.* over wss://"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
  -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
  -addext basicConstraints=critical,CA:FALSE \
  -keyout "$out/tls.key" -out "$out/tls.crt" 2>/dev/null
start --tls-cert "$out/tls.crt" --tls-key "$out/tls.key"
timeout 600 python3 tools/autobahn.py "${url/ws:/wss:}" '1.*' '2.*' '3.*' '4.*' '5.*' '6.*' '7.*' '10.*' \
  --tls-ca "$out/tls.crt" --json "$out/required-wss.json"
stop
echo "autobahn: verdicts in $out"
