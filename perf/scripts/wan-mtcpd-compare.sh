#!/bin/sh
# Run inside `mtcp-perf wan run … -- perf/scripts/wan-mtcpd-compare.sh SECONDS TUNNELS CC`:
# on the emulated path, one direct flow, TUNNELS parallel direct flows, and ONE application
# stream through mtcpd with TUNNELS tunnels (congestion control CC), one after the other, each
# for SECONDS. Servers run in namespace B, clients in A; `wan run` removes both namespaces and
# every process in them afterwards.
set -e
T=${1:-20}; N=${2:-8}; CC=${3:-bbr}
R=${R:-target/release}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
ip netns exec "$MTCP_WAN_NS_B" "$R/mtcp-perf" server -l "$MTCP_WAN_ADDR_B:5201" --max-time 600s >/dev/null 2>&1 &
cat > "$work/s.toml" <<EOT
mode = "server"
psk = "wan-benchmark-key-0123456789abcdef"
congestion = "$CC"
socket_notsent_lowat = "${NOTSENT:-128KiB}"
[server]
listen_ip = "$MTCP_WAN_ADDR_B"
listen_port = 8000
backend_ip = "$MTCP_WAN_ADDR_B"
backend_port = 5201
connection_pool_size = $N
[limits]
stream_window = "${WINDOW:-64MiB}"
session_window = "${SESSION_WINDOW:-256MiB}"
EOT
cat > "$work/c.toml" <<EOT
mode = "client"
psk = "wan-benchmark-key-0123456789abcdef"
congestion = "$CC"
socket_notsent_lowat = "${NOTSENT:-128KiB}"
[client]
local_listen_ip = "127.0.0.1"
local_listen_port = 7000
server_ip = "$MTCP_WAN_ADDR_B"
server_port = 8000
connection_pool_size = $N
[limits]
stream_window = "${WINDOW:-64MiB}"
session_window = "${SESSION_WINDOW:-256MiB}"
EOT
RUST_LOG=warn ip netns exec "$MTCP_WAN_NS_B" "$R/mtcpd" server -c "$work/s.toml" 2>"$work/s.log" &
sleep 0.3
RUST_LOG=warn ip netns exec "$MTCP_WAN_NS_A" "$R/mtcpd" client -c "$work/c.toml" 2>"$work/c.log" &
sleep 1.5
gbps() { python3 -c 'import json,sys; print("%.1f Mbit/s" % (json.load(sys.stdin)["result"]["sum"]["gbit_per_second"]*1000))'; }
echo "direct, 1 flow ($CC):   $(ip netns exec "$MTCP_WAN_NS_A" "$R/mtcp-perf" client -c "$MTCP_WAN_ADDR_B:5201" --congestion "$CC" --json bulk -t "${T}s" -i 0 | gbps)"
echo "direct, $N flows ($CC):  $(ip netns exec "$MTCP_WAN_NS_A" "$R/mtcp-perf" client -c "$MTCP_WAN_ADDR_B:5201" --congestion "$CC" --json bulk -P "$N" -t "${T}s" -i 0 | gbps)"
echo "mtcpd, 1 stream over $N tunnels ($CC): $(ip netns exec "$MTCP_WAN_NS_A" "$R/mtcp-perf" client -c 127.0.0.1:7000 --json bulk -t "${T}s" -i 0 | gbps)"
grep -iE "error|warn" "$work/c.log" "$work/s.log" | head -5 || true
