#!/bin/sh
# The cost of TLS on the emulated WAN path, same run. Run inside `mtcp-perf wan run`:
#   target/release/mtcp-perf wan run --name wt --delay 50ms --loss 1% --seed 1 -- \
#       perf/scripts/wan-tls-compare.sh SECONDS TUNNELS CC ROUNDS
# Two mtcpd pairs run side by side on the same path (TUNNELS tunnels each, congestion control
# CC): one with TLS (the default), one with insecure_plaintext. ROUNDS alternating rounds of one
# SECONDS-long upload stream through each. Servers run in namespace B, clients in A; `wan run`
# removes both namespaces and every process in them afterwards.
set -e
T=${1:-20}; N=${2:-8}; CC=${3:-bbr}; ROUNDS=${4:-3}
R=${R:-target/release}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
ip netns exec "$MTCP_WAN_NS_B" "$R/mtcp-perf" server -l "$MTCP_WAN_ADDR_B:5201" --max-time 900s >/dev/null 2>&1 &
pair() { # name tunnel_port app_port extra_top_level_line
  cat > "$work/$1-s.toml" <<EOT
mode = "server"
psk = "wan-benchmark-key-0123456789abcdef"
congestion = "$CC"
$4
[server]
listen_ip = "$MTCP_WAN_ADDR_B"
listen_port = $2
backend_ip = "$MTCP_WAN_ADDR_B"
backend_port = 5201
connection_pool_size = $N
EOT
  # The TLS server keeps its generated key pair in the run's directory.
  [ -z "$4" ] && printf '[tls]\nstate_dir = "%s"\n' "$work/$1-state" >> "$work/$1-s.toml"
  cat > "$work/$1-c.toml" <<EOT
mode = "client"
psk = "wan-benchmark-key-0123456789abcdef"
congestion = "$CC"
$4
[client]
local_listen_ip = "127.0.0.1"
local_listen_port = $3
server_ip = "$MTCP_WAN_ADDR_B"
server_port = $2
connection_pool_size = $N
EOT
  RUST_LOG=warn ip netns exec "$MTCP_WAN_NS_B" "$R/mtcpd" server -c "$work/$1-s.toml" 2>"$work/$1-s.log" &
  sleep 0.3
  RUST_LOG=warn ip netns exec "$MTCP_WAN_NS_A" "$R/mtcpd" client -c "$work/$1-c.toml" 2>"$work/$1-c.log" &
}
pair tls 8000 7000 ""
pair plain 8001 7001 "insecure_plaintext = true"
sleep 2
mbps() { python3 -c 'import json,sys; print("%.1f Mbit/s" % (json.load(sys.stdin)["result"]["sum"]["gbit_per_second"]*1000))'; }
for round in $(seq "$ROUNDS"); do
  echo "round $round, mtcpd TLS, 1 stream over $N tunnels ($CC): $(ip netns exec "$MTCP_WAN_NS_A" "$R/mtcp-perf" client -c 127.0.0.1:7000 --json bulk -t "${T}s" -i 0 | mbps)"
  echo "round $round, mtcpd plaintext, 1 stream over $N tunnels ($CC): $(ip netns exec "$MTCP_WAN_NS_A" "$R/mtcp-perf" client -c 127.0.0.1:7001 --json bulk -t "${T}s" -i 0 | mbps)"
done
grep -iE "error" "$work"/*.log | head -5 || true
