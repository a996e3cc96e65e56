#!/usr/bin/env bash
# The cost of TLS on loopback, same run: direct TCP, mtcpd with TLS (the default) and mtcpd with
# insecure_plaintext, 4 tunnels each, --io ${IO:-mio}, ROUNDS alternating rounds of a 4 s bulk
# transfer and a 64 B request/response. Needs a release build:
#   cargo build --release -p mtcpd -p mtcp-perf && ROUNDS=5 perf/scripts/tls-cost.sh
# Ports 9110-9115 on 127.0.0.1. Everything started here is stopped on exit.
set -u
cd "$(dirname "$0")/../.."
R=${R:-target/release}
IO=${IO:-mio}
ROUNDS=${ROUNDS:-3}
work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill $p 2>/dev/null; done; wait 2>/dev/null; rm -rf "$work"' EXIT
pair() { # name tunnel_port app_port extra_top_level_line
  cat > "$work/$1-s.toml" <<EOT
mode = "server"
psk = "loopback-benchmark-key-0123456789abcdef"
$4
[server]
listen_ip = "127.0.0.1"
listen_port = $2
backend_ip = "127.0.0.1"
backend_port = 9110
connection_pool_size = 4
EOT
  cat > "$work/$1-c.toml" <<EOT
mode = "client"
psk = "loopback-benchmark-key-0123456789abcdef"
$4
[client]
local_listen_ip = "127.0.0.1"
local_listen_port = $3
server_ip = "127.0.0.1"
server_port = $2
connection_pool_size = 4
EOT
  RUST_LOG=warn $R/mtcpd server -c "$work/$1-s.toml" --io "$IO" 2>"$work/$1-srv.log" & pids+=($!)
  RUST_LOG=warn $R/mtcpd client -c "$work/$1-c.toml" --io "$IO" 2>"$work/$1-cli.log" & pids+=($!)
}
$R/mtcp-perf server -l 127.0.0.1:9110 --max-time 600s >/dev/null 2>&1 & pids+=($!)
pair tls 9111 9112 ""
pair plain 9113 9114 "insecure_plaintext = true"
sleep 1.5
label() { case $1 in 9110) echo direct;; 9112) echo mtcpd-tls;; 9114) echo mtcpd-plaintext;; esac; }
for round in $(seq "$ROUNDS"); do
  for port in 9110 9112 9114; do
    echo "bulk $(label $port) round=$round: $($R/mtcp-perf client -c 127.0.0.1:$port --json bulk -t 4s -i 0 2>/dev/null | python3 -c 'import json,sys; d=json.load(sys.stdin)["result"]["sum"]; print("%.2f Gbit/s" % d["gbit_per_second"])')"
  done
  for port in 9110 9112 9114; do
    echo "rr 64B $(label $port) round=$round: $($R/mtcp-perf client -c 127.0.0.1:$port --json rr -s 64 -t 3s 2>/dev/null | python3 -c 'import json,sys; l=json.load(sys.stdin)["result"]["latency"]; print("p50 %.1f us p99 %.1f us" % (l["p50_us"], l["p99_us"]))')"
  done
done
grep -iE "error" "$work"/*.log | head -5 || true
