#!/usr/bin/env bash
# Loopback, same run: one mtcpd server with --cores 1 and then --cores 2, each carrying
# SESSIONS client sessions (one mtcpd client process each, 4 tunnels) with one bulk stream per
# session, all at once; prints the aggregate per setting and the ratio. Run ROUNDS times,
# alternating. Needs a release build:
#   cargo build --release -p mtcpd -p mtcp-perf && perf/scripts/workers-compare.sh
# Ports 9200-9220 on 127.0.0.1. Everything started here is stopped on exit.
set -u
cd "$(dirname "$0")/../.."
R=${R:-target/release}
IO=${IO:-uring}
SESSIONS=${SESSIONS:-4}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-6}
ROUNDS=${ROUNDS:-2}
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; wait 2>/dev/null; }
trap 'cleanup; rm -rf "$work"' EXIT
$R/mtcp-perf server -l 127.0.0.1:9200 --max-time 600s >/dev/null 2>&1 &
backend=$!
trap 'kill $backend 2>/dev/null; cleanup; rm -rf "$work"' EXIT
cat > "$work/s.toml" <<EOT
mode = "server"
psk = "workers-benchmark-key-0123456789"
[server]
listen_ip = "127.0.0.1"
listen_port = 9201
backend_ip = "127.0.0.1"
backend_port = 9200
connection_pool_size = 4
EOT
run() { # $1 = server cores
  pids=()
  RUST_LOG=warn $R/mtcpd server -c "$work/s.toml" --io "$IO" --cores "$1" 2>"$work/srv$1.log" & pids+=($!)
  sleep 0.3
  for i in $(seq 1 "$SESSIONS"); do
    cat > "$work/c$i.toml" <<EOT
mode = "client"
psk = "workers-benchmark-key-0123456789"
[client]
local_listen_ip = "127.0.0.1"
local_listen_port = $((9201 + i))
server_ip = "127.0.0.1"
server_port = 9201
connection_pool_size = 4
EOT
    RUST_LOG=warn $R/mtcpd client -c "$work/c$i.toml" --io "$IO" --cores 1 2>"$work/c$i.log" & pids+=($!)
  done
  sleep 1
  loads=()
  for i in $(seq 1 "$SESSIONS"); do
    $R/mtcp-perf client -c 127.0.0.1:$((9201 + i)) --json bulk -t "${SECONDS_PER_RUN}s" -i 0 >"$work/r$i.json" 2>/dev/null &
    loads+=($!)
  done
  wait "${loads[@]}"
  # CPU seconds each server worker thread used: do the sessions spread over the workers?
  for t in /proc/"${pids[0]}"/task/*; do
    name=$(cat "$t/comm" 2>/dev/null) || continue
    case $name in mtcpd-server-*) awk -v n="$name" '{printf "%s %.2fs ", n, ($14 + $15) / 100}' "$t/stat" ;; esac
  done >"$work/cpu$1"
  python3 - "$work" "$SESSIONS" <<'PY'
import json, sys
work, n = sys.argv[1], int(sys.argv[2])
total = 0.0
for i in range(1, n + 1):
    try:
        total += json.load(open(f"{work}/r{i}.json"))["result"]["sum"]["gbit_per_second"]
    except Exception as e:
        print(f"session {i}: no result ({e})", file=sys.stderr)
print(f"{total:.2f}")
PY
  cleanup
  sleep 0.5
}
declare -A sums
for round in $(seq 1 "$ROUNDS"); do
  for cores in 1 2; do
    g=$(run "$cores")
    echo "round $round: server --cores $cores, $SESSIONS sessions x 1 stream (--io $IO): $g Gbit/s aggregate; server CPU: $(cat "$work/cpu$cores")"
    sums[$cores]="${sums[$cores]:-} $g"
  done
done
python3 - "${sums[1]}" "${sums[2]}" <<'PY'
import statistics, sys
one = [float(x) for x in sys.argv[1].split()]
two = [float(x) for x in sys.argv[2].split()]
m1, m2 = statistics.median(one), statistics.median(two)
print(f"median: --cores 1 {m1:.2f} Gbit/s, --cores 2 {m2:.2f} Gbit/s, ratio {m2 / m1 if m1 else float('nan'):.2f}")
PY
