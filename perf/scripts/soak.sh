#!/usr/bin/env bash
# The soak (issue 10 item 6): an mtcpd client + server (release build, --io ${IO:-auto}) in
# front of a one-thread echo server, driven by `mtcp-perf soak`: CONCURRENCY (500) connections
# in flight for DURATION, each moving 64 KiB each way (verified) and closing; then a peak of
# PEAK (4000) connections for PEAK_TIME (30s), then QUIET (30s) without load. Both daemons' RSS
# and open descriptors are sampled every INTERVAL (10s) to $CSV (results/soak/soak-$IO.csv).
# Prints PASS/FAIL (exit code 0/1): no failed connection, RSS and descriptors flat within 10 %
# after warm-up, and back to the steady level after the peak.
#
#   make soak DURATION=10m IO=uring
# Loopback ports PORT..PORT+2 (default 19400). Everything started here is stopped on exit.
set -u
cd "$(dirname "$0")/../.."
R=${R:-${CARGO_TARGET_DIR:-target}/release}
IO=${IO:-auto}
DURATION=${DURATION:-10m}
INTERVAL=${INTERVAL:-10s}
CONCURRENCY=${CONCURRENCY:-500}
PEAK=${PEAK:-4000}
PEAK_TIME=${PEAK_TIME:-30s}
QUIET=${QUIET:-30s}
PORT=${PORT:-19400}
CSV=${CSV:-results/soak/soak-$IO.csv}
mkdir -p "$(dirname "$CSV")"
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
for bin in "$R/mtcpd" "$R/mtcp-perf"; do
  [ -x "$bin" ] || { echo "missing $bin: cargo build --release -p mtcpd -p mtcp-perf" >&2; exit 2; }
done
work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill $p 2>/dev/null; done; wait 2>/dev/null; rm -rf "$work"' EXIT
KEY=soak-benchmark-key-0123456789abcdef
cat > "$work/s.toml" <<EOT
mode = "server"
psk = "$KEY"
io = "$IO"
[server]
listen_ip = "127.0.0.1"
listen_port = $((PORT + 1))
backend_ip = "127.0.0.1"
backend_port = $PORT
EOT
cat > "$work/c.toml" <<EOT
mode = "client"
psk = "$KEY"
io = "$IO"
[client]
local_listen_ip = "127.0.0.1"
local_listen_port = $((PORT + 2))
server_ip = "127.0.0.1"
server_port = $((PORT + 1))
EOT
"$R/mtcp-perf" echo-mio -l 127.0.0.1:$PORT & pids+=($!)
RUST_LOG=warn "$R/mtcpd" server -c "$work/s.toml" 2>"$work/s.log" & pids+=($!); spid=$!
sleep 0.3
RUST_LOG=warn "$R/mtcpd" client -c "$work/c.toml" 2>"$work/c.log" & pids+=($!); cpid=$!
sleep 1.5
"$R/mtcp-perf" soak -c 127.0.0.1:$((PORT + 2)) --client-pid $cpid --server-pid $spid \
  --concurrency "$CONCURRENCY" -t "$DURATION" --interval "$INTERVAL" \
  --peak-concurrency "$PEAK" --peak-time "$PEAK_TIME" --quiet "$QUIET" --csv "$CSV"
rc=$?
if [ $rc -ne 0 ]; then
  echo "--- server log"; tail -20 "$work/s.log"; echo "--- client log"; tail -20 "$work/c.log"
fi
exit $rc
