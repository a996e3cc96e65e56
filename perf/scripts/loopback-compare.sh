#!/usr/bin/env bash
# Loopback, same run, side by side: direct TCP vs a chain of two socat relays vs mtcpd
# (client + server, 4 tunnels, --io ${IO:-mio}). Needs socat and a release build:
#   cargo build --release -p mtcpd -p mtcp-perf && perf/scripts/loopback-compare.sh
# Ports 9100-9104 on 127.0.0.1. Everything started here is stopped on exit.
set -u
cd "$(dirname "$0")/../.."
R=${R:-target/release}
IO=${IO:-mio}
work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill $p 2>/dev/null; done; wait 2>/dev/null; rm -rf "$work"' EXIT
cat > "$work/s.toml" <<EOT
mode = "server"
psk = "loopback-benchmark-key-0123456789"
[server]
listen_ip = "127.0.0.1"
listen_port = 9103
backend_ip = "127.0.0.1"
backend_port = 9100
connection_pool_size = 4
EOT
cat > "$work/c.toml" <<EOT
mode = "client"
psk = "loopback-benchmark-key-0123456789"
[client]
local_listen_ip = "127.0.0.1"
local_listen_port = 9104
server_ip = "127.0.0.1"
server_port = 9103
connection_pool_size = 4
EOT
$R/mtcp-perf server -l 127.0.0.1:9100 --max-time 120s >/dev/null 2>&1 & pids+=($!)
socat TCP-LISTEN:9102,fork,reuseaddr TCP:127.0.0.1:9100 & pids+=($!)
socat TCP-LISTEN:9101,fork,reuseaddr TCP:127.0.0.1:9102 & pids+=($!)
RUST_LOG=warn $R/mtcpd server -c "$work/s.toml" --io "$IO" 2>"$work/srv.log" & pids+=($!)
RUST_LOG=warn $R/mtcpd client -c "$work/c.toml" --io "$IO" 2>"$work/cli.log" & pids+=($!)
sleep 1
for round in 1 2; do
for port in 9100 9101 9104; do
  label=$( [ $port = 9100 ] && echo direct || ([ $port = 9101 ] && echo socat-chain || echo mtcpd) )
  echo "bulk $label round=$round: $($R/mtcp-perf client -c 127.0.0.1:$port --json bulk -t 4s -i 0 2>/dev/null | python3 -c 'import json,sys; d=json.load(sys.stdin)["result"]["sum"]; print("%.2f Gbit/s" % d["gbit_per_second"])')"
done
done
for port in 9100 9101 9104; do
  label=$( [ $port = 9100 ] && echo direct || ([ $port = 9101 ] && echo socat-chain || echo mtcpd) )
  echo "rr 64B $label: $($R/mtcp-perf client -c 127.0.0.1:$port --json rr -s 64 -t 4s 2>/dev/null | python3 -c 'import json,sys; l=json.load(sys.stdin)["result"]["latency"]; print("p50 %.1f us p99 %.1f us" % (l["p50_us"], l["p99_us"]))')"
done
