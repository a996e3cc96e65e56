#!/bin/sh
# Run inside `mtcp-perf wan run … -- perf/scripts/wan-client.sh BIN CLIENT-ARGS…`:
# starts `BIN server` in namespace B (bounded by --max-time), then `BIN client` in namespace A
# against it with the given arguments. `wan run` removes both namespaces and every process in
# them afterwards.
set -e
B=$1; shift
ip netns exec "$MTCP_WAN_NS_B" "$B" server -l "$MTCP_WAN_ADDR_B:5201" --max-time 120s >/dev/null 2>&1 &
sleep 0.3
exec ip netns exec "$MTCP_WAN_NS_A" "$B" client -c "$MTCP_WAN_ADDR_B:5201" "$@"
