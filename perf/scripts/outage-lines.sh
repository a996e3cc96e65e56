#!/usr/bin/env bash
# A 20 s server outage, as the operator's log sees it: one client (pool of 4, default backoff,
# the default log level) in front of one server, on loopback, with --io ${IO:-mio}.
#   crash:   the server is killed (SIGKILL) for 20 s, then started again (it forgets the session)
#   network: a relay between them refuses and cuts connections for 20 s (the server keeps the
#            session, so each tunnel slot's own backoff decides when it comes back)
# Prints the client's log lines during the outage and, for `network`, the time between the first
# and the 4th tunnel re-established afterwards.
#   perf/scripts/outage-lines.sh BINARY [crash|network]     (needs python3 for the relay)
set -u
BIN=$1
MODE=${2:-network}
IO=${IO:-mio}
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill $p 2>/dev/null; done; wait 2>/dev/null; rm -rf "$work"' EXIT
tp=$((20000 + RANDOM % 10000)); rp=$((tp + 1)); ap=$((tp + 2)); bp=$((tp + 3))
key="outage-test-key-0123456789abcdef-0123456789"
printf 'mode = "server"\npsk = "%s"\n[server]\nlisten_ip = "127.0.0.1"\nlisten_port = %s\nbackend_ip = "127.0.0.1"\nbackend_port = %s\n' \
    "$key" $tp $bp > "$work/s.toml"
target=$tp
[ "$MODE" = network ] && target=$rp
printf 'mode = "client"\npsk = "%s"\n[client]\nlocal_listen_ip = "127.0.0.1"\nlocal_listen_port = %s\nserver_ip = "127.0.0.1"\nserver_port = %s\nconnection_pool_size = 4\n' \
    "$key" $ap $target > "$work/c.toml"
export RUST_LOG=info
echo up > "$work/ctl"
"$BIN" server -c "$work/s.toml" --io "$IO" 2>"$work/s.log" & server=$!; pids+=($server)
if [ "$MODE" = network ]; then
    python3 "$here/outage-relay.py" $rp $tp "$work/ctl" & pids+=($!)
fi
sleep 1
"$BIN" client -c "$work/c.toml" --io "$IO" 2>"$work/c.log" & pids+=($!)
sleep 2
before=$(wc -l < "$work/c.log")
if [ "$MODE" = network ]; then echo down > "$work/ctl"; else kill -9 $server; wait $server 2>/dev/null; fi
sleep 20
during=$(wc -l < "$work/c.log")
if [ "$MODE" = network ]; then echo up > "$work/ctl"; else
    "$BIN" server -c "$work/s.toml" --io "$IO" 2>"$work/s2.log" & pids+=($!)
fi
sleep 14
back=$(tail -n +$((during + 1)) "$work/c.log" | grep "tunnel established" | head -4 |
    cut -c12-26 | awk -F: '{print $1*3600+$2*60+$3}')
spread=$(echo "$back" | awk 'NR==1{a=$1} {b=$1} END{printf "%.3f s", b-a}')
echo "io=$IO mode=$MODE lines_during_outage=$((during - before)) tunnels_back=$(echo "$back" | grep -c .) first_to_last=$spread"
