#!/usr/bin/env bash
# System calls and CPU per round trip on the socket-scale paths (docs/BENCHMARKS.md "The floor:
# a chain of two plain relays"): 64 B ping-pong over K connections (default 1000) sent direct
# to `mtcp-perf echo-mio`, through two `mtcp-perf relay` (relay2), and through an mtcpd pair
# on --io mio and --io uring (the socket-scale.sh configs). For each path, while the ping-pong
# runs, `perf stat` counts the system calls of every process for WINDOW seconds and
# /proc/PID/stat gives each one's CPU time over the same window. Round trips in the window are
# the echo server's writes (one per round trip: one 64 B message per connection in flight).
#
#   R=target/release RELAY=target/release/mtcp-perf perf/scripts/socket-syscalls.sh
#   K=8000 PATHS="direct relay2 mio" WINDOW=3 PORT=19750 ...
#
# Needs `perf` with syscall tracepoints (root). Loopback ports PORT..PORT+6 (default 19750).
# Everything started here is stopped on exit.
set -u
cd "$(dirname "$0")/../.."
R=${R:-${CARGO_TARGET_DIR:-target}/release}
RELAY=${RELAY:-$R/mtcp-perf}
K=${K:-1000}
WINDOW=${WINDOW:-2}
PATHS=${PATHS:-"direct relay2 mio uring"}
PORT=${PORT:-19750}
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
command -v perf >/dev/null || { echo "perf is missing" >&2; exit 2; }
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  wait 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
ECHO=$PORT; R1=$((PORT + 1)); R2=$((PORT + 2))
KEY=socket-scale-benchmark-key-0123456789
CALLS=read,write,readv,writev,recvfrom,sendto,recvmsg,sendmsg,epoll_wait,epoll_pwait,epoll_ctl,io_uring_enter,accept4,connect,close,shutdown,futex,sched_yield
EVENTS=$(echo "$CALLS" | tr , '\n' | sed 's/^/syscalls:sys_enter_/' | paste -sd,)

"$R/mtcp-perf" echo-mio -l 127.0.0.1:$ECHO & pids+=($!); EPID=$!
"$RELAY" relay -l 127.0.0.1:$R2 --to 127.0.0.1:$ECHO >/dev/null & pids+=($!); RP2=$!
"$RELAY" relay -l 127.0.0.1:$R1 --to 127.0.0.1:$R2 >/dev/null & pids+=($!); RP1=$!
declare -A PROCS ENTRY
PROCS[direct]="echo:$EPID"; ENTRY[direct]=$ECHO
PROCS[relay2]="relay1:$RP1 relay2:$RP2 echo:$EPID"; ENTRY[relay2]=$R1
n=0
for io in mio uring; do
  [[ " $PATHS " == *" $io "* ]] || continue
  tun=$((PORT + 3 + 2 * n)); app=$((PORT + 4 + 2 * n)); n=$((n + 1))
  printf 'mode = "server"\npsk = "%s"\ncores = 2\n[server]\nlisten_ip = "127.0.0.1"\nlisten_port = %d\nbackend_ip = "127.0.0.1"\nbackend_port = %d\n[limits]\nmax_backend_connections = 12000\n' \
    "$KEY" "$tun" "$ECHO" > "$work/s-$io.toml"
  printf 'mode = "client"\npsk = "%s"\ncores = 1\n[client]\nlocal_listen_ip = "127.0.0.1"\nlocal_listen_port = %d\nserver_ip = "127.0.0.1"\nserver_port = %d\n' \
    "$KEY" "$app" "$tun" > "$work/c-$io.toml"
  RUST_LOG=warn "$R/mtcpd" server -c "$work/s-$io.toml" --io "$io" 2>"$work/s-$io.log" & pids+=($!); sp=$!
  sleep 0.3
  RUST_LOG=warn "$R/mtcpd" client -c "$work/c-$io.toml" --io "$io" 2>"$work/c-$io.log" & pids+=($!); cp=$!
  PROCS[$io]="client:$cp server:$sp echo:$EPID"; ENTRY[$io]=$app
done
sleep 2
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

for path in $PATHS; do
  "$R/mtcp-perf" pingpong -c 127.0.0.1:${ENTRY[$path]} -n "$K" -t $((WINDOW + 6))s --setup-limit 60s --json \
    > "$work/pp.json" 2>"$work/pp.err" & ppid=$!
  # Past the setup (every connection echoed once) into the steady state.
  sleep 4
  procs="pingpong:$ppid ${PROCS[$path]}"
  declare -A T0=()
  stats=()
  for pp in $procs; do
    name=${pp%%:*}; pid=${pp#*:}
    T0[$name]=$(ticks "$pid")
    perf stat -x, -e "$EVENTS" -p "$pid" -o "$work/$name.perf" -- sleep "$WINDOW" 2>/dev/null & stats+=($!)
  done
  wait "${stats[@]}"
  declare -A CPU=()
  for pp in $procs; do
    name=${pp%%:*}; pid=${pp#*:}
    CPU[$name]=$(( $(ticks "$pid") - ${T0[$name]} ))
  done
  wait "$ppid"
  rt=$(awk -F, '$3=="syscalls:sys_enter_write" || $3=="syscalls:sys_enter_sendto" {s += $1} END {print s + 0}' "$work/echo.perf")
  rate=$(python3 -c 'import json,sys; print("%.0f" % json.load(open(sys.argv[1]))["round_trips_per_second"])' "$work/pp.json" 2>/dev/null || echo "?")
  echo "--- $path, K=$K: ~$rt round trips in the ${WINDOW}s window (pingpong: $rate rt/s over its run), load $(cut -d' ' -f1 /proc/loadavg)"
  total=0
  for pp in $procs; do
    name=${pp%%:*}
    line=$(awk -F, -v rt="$rt" '$1 ~ /^[0-9]+$/ && $1 > 0 {
        sub("syscalls:sys_enter_", "", $3); n += $1; s = s sprintf(" %s %.2f", $3, $1 / rt) }
      END { printf "%.2f |%s", n / rt, s }' "$work/$name.perf")
    cpu=$(python3 -c "print('%3.0f %% of a core, %5.1f us CPU/rt' % (100 * ${CPU[$name]} / $hz / $WINDOW, 1e6 * ${CPU[$name]} / $hz / max($rt, 1)))")
    printf '  %-9s %s  %s syscalls/rt\n' "$name" "$cpu" "$line"
    total=$(python3 -c "print($total + float('${line%% *}'))")
  done
  echo "  total     $total syscalls/rt"
  sleep 2
done
