#!/usr/bin/env bash
# Runs the daemon pair on this machine with built-in defaults and sends a request through it:
# app -> mtcpd client 127.0.0.1:7000 -> tunnels -> mtcpd server 127.0.0.1:8000 -> backend 127.0.0.1:9000.
# Everything it starts is stopped on exit, success or failure.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/mtcpd}
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

mkdir -p "$work/www"
echo "hello from the backend behind mtcpd" > "$work/www/index.html"
head -c 50000000 /dev/urandom > "$work/www/big.bin"
(cd "$work/www" && exec python3 -m http.server 9000 --bind 127.0.0.1 >/dev/null 2>&1) & pids+=($!)
RUST_LOG=${RUST_LOG:-info} "$BIN" --role server 2> "$work/server.log" & pids+=($!)
RUST_LOG=${RUST_LOG:-info} "$BIN" --role client 2> "$work/client.log" & pids+=($!)
for _ in $(seq 100); do
  curl -s -m 1 -o /dev/null http://127.0.0.1:7000/ && break
  sleep 0.1
done
echo "--- GET / through mtcpd:"
curl -s -m 10 http://127.0.0.1:7000/
echo "--- 50 MB through mtcpd:"
want=$(sha256sum < "$work/www/big.bin" | cut -d' ' -f1)
start=$(date +%s.%N)
got=$(curl -s -m 60 http://127.0.0.1:7000/big.bin | sha256sum | cut -d' ' -f1)
end=$(date +%s.%N)
echo "sha256 sent $want"
echo "sha256 got  $got"
[ "$want" = "$got" ] && echo "byte-exact, $(echo "$start $end" | awk '{printf "%.2f s", $2-$1}')"
echo "--- client log (tail):"
tail -n 5 "$work/client.log"
[ "$want" = "$got" ]
