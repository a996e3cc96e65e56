#!/usr/bin/env bash
# Real sockets at scale (issue 10 item 3), one sitting, side by side: 64 B ping-pong over K
# connections (mtcp-perf pingpong, one mio thread) against a one-thread mio echo server
# (mtcp-perf echo-mio), sent
#   direct       straight to the echo server,
#   socat x2     through a chain of two socat relays (fork per connection),
#   relay2       through a chain of two `mtcp-perf relay` (one mio thread each, bytes copied
#                straight through): the floor of any two-hop relay on this machine,
#   mtcpd-uring  through an mtcpd client + server (--io uring; server 2 workers, client 1),
#   mtcpd-mio    the same pair on --io mio,
#   base-uring, base-mio  with BASE=<dir of another build> (e.g. main's target/release): that
#                build's mtcpd pair, so a change is measured beside its baseline in one sitting,
# ROUNDS times each, interleaved (round 1 of every path, then round 2, ...) so machine noise
# hits them alike. Per mtcpd run it also reports the time until every connection had its first
# echo back (accept + stream open: the "connects" figure) and each daemon's RSS per
# connection (its largest RSS during the run minus its RSS before, over K). Then a hold check:
# HOLD connections (default 9000) through each pair at once, all must echo.
#
#   make socket-scale                       # or:
#   cargo build --release -p mtcpd -p mtcp-perf && perf/scripts/socket-scale.sh
#   CONNS="1000 8000" TIME=10s ROUNDS=3 HOLD=9000 PATHS="direct relay2 socat uring mio" ...
#   BASE=../main/target/release perf/scripts/socket-scale.sh   # adds base-uring base-mio
#
# Output: one line per run, then medians and spreads (min..max), and the ratios against direct,
# against relay2 and against socat x2; raw JSON lines in $OUT (default
# results/socket-scale/runs.jsonl). RELAY=<mtcp-perf binary> picks the relay's build (default
# $R/mtcp-perf; it needs the `relay` subcommand).
# socat is installed with apt-get when missing (the socat path is skipped if that fails).
# Loopback ports PORT..PORT+12 (default 19300). Everything started here is stopped on exit.
set -u
cd "$(dirname "$0")/../.."
R=${R:-${CARGO_TARGET_DIR:-target}/release}
CONNS=${CONNS:-"1000 8000"}
TIME=${TIME:-10s}
ROUNDS=${ROUNDS:-3}
HOLD=${HOLD:-9000}
PATHS=${PATHS:-"direct relay2 socat uring mio"}
BASE=${BASE:-}
if [ -n "$BASE" ]; then
  [ -x "$BASE/mtcpd" ] || { echo "missing $BASE/mtcpd" >&2; exit 2; }
  [[ " $PATHS " == *" uring "* ]] && PATHS="$PATHS base-uring"
  [[ " $PATHS " == *" mio "* ]] && PATHS="$PATHS base-mio"
fi
PORT=${PORT:-19300}
RELAY=${RELAY:-$R/mtcp-perf}
OUT=${OUT:-results/socket-scale/runs.jsonl}
mkdir -p "$(dirname "$OUT")"
: > "$OUT"
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
for bin in "$R/mtcpd" "$R/mtcp-perf"; do
  [ -x "$bin" ] || { echo "missing $bin: cargo build --release -p mtcpd -p mtcp-perf" >&2; exit 2; }
done
if [[ " $PATHS " == *" relay2 "* ]] && ! "$RELAY" relay --help >/dev/null 2>&1; then
  echo "$RELAY has no relay subcommand: set RELAY=<a newer mtcp-perf>" >&2; exit 2
fi
if [[ " $PATHS " == *" socat "* ]] && ! command -v socat >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq socat) >/dev/null 2>&1 \
    || { echo "socat could not be installed: the socat path is skipped" >&2; PATHS=${PATHS/socat/}; }
fi
work=$(mktemp -d)
pids=()
cleanup() {
  # socat's forked children first (by parent id: they are re-parented once the relay is gone).
  for p in "${pids[@]}"; do pkill -P "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  wait 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

ECHO=$PORT; S1=$((PORT + 1)); S2=$((PORT + 2))
TUN_U=$((PORT + 3)); APP_U=$((PORT + 4)); TUN_M=$((PORT + 5)); APP_M=$((PORT + 6))
TUN_BU=$((PORT + 7)); APP_BU=$((PORT + 8)); TUN_BM=$((PORT + 9)); APP_BM=$((PORT + 10))
R1=$((PORT + 11)); R2=$((PORT + 12))
KEY=socket-scale-benchmark-key-0123456789

"$R/mtcp-perf" echo-mio -l 127.0.0.1:$ECHO & pids+=($!)
if [[ " $PATHS " == *" socat "* ]]; then
  socat TCP-LISTEN:$S2,fork,reuseaddr,backlog=4096 TCP:127.0.0.1:$ECHO 2>>"$work/socat.log" & pids+=($!)
  socat TCP-LISTEN:$S1,fork,reuseaddr,backlog=4096 TCP:127.0.0.1:$S2 2>>"$work/socat.log" & pids+=($!)
fi
if [[ " $PATHS " == *" relay2 "* ]]; then
  # Chained like socat: the pingpong connects to R1, R1 relays to R2, R2 to the echo server.
  "$RELAY" relay -l 127.0.0.1:$R2 --to 127.0.0.1:$ECHO >/dev/null & pids+=($!); RPID2=$!
  "$RELAY" relay -l 127.0.0.1:$R1 --to 127.0.0.1:$R2 >/dev/null & pids+=($!); RPID1=$!
  echo "relay2 pids: $RPID1 (first) $RPID2 (second)"
fi

declare -A SPID CPID APP
start_pair() { # path tunnel_port app_port (path: uring, mio, base-uring, base-mio)
  local bin=$R/mtcpd io=${1#base-}
  [[ $1 == base-* ]] && bin=$BASE/mtcpd
  cat > "$work/s-$1.toml" <<EOT
mode = "server"
psk = "$KEY"
cores = 2
[server]
listen_ip = "127.0.0.1"
listen_port = $2
backend_ip = "127.0.0.1"
backend_port = $ECHO
[limits]
max_backend_connections = 12000
EOT
  cat > "$work/c-$1.toml" <<EOT
mode = "client"
psk = "$KEY"
cores = 1
[client]
local_listen_ip = "127.0.0.1"
local_listen_port = $3
server_ip = "127.0.0.1"
server_port = $2
EOT
  RUST_LOG=warn "$bin" server -c "$work/s-$1.toml" --io "$io" 2>"$work/s-$1.log" & pids+=($!); SPID[$1]=$!
  sleep 0.3
  RUST_LOG=warn "$bin" client -c "$work/c-$1.toml" --io "$io" 2>"$work/c-$1.log" & pids+=($!); CPID[$1]=$!
  APP[$1]=$3
}
[[ " $PATHS " == *" uring "* ]] && start_pair uring $TUN_U $APP_U
[[ " $PATHS " == *" mio "* ]] && start_pair mio $TUN_M $APP_M
[[ " $PATHS " == *" base-uring "* ]] && start_pair base-uring $TUN_BU $APP_BU
[[ " $PATHS " == *" base-mio "* ]] && start_pair base-mio $TUN_BM $APP_BM
sleep 2

rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

# run path K round [time]: one pingpong; for mtcpd paths, RSS sampled every 0.5 s.
run() {
  local path=$1 k=$2 round=$3 t=${4:-$TIME} port c0=0 s0=0 cmax=0 smax=0 sampler=
  case $path in
    direct) port=$ECHO ;;
    socat) port=$S1 ;;
    relay2) port=$R1 ;;
    *) port=${APP[$path]}; c0=$(rss ${CPID[$path]}); s0=$(rss ${SPID[$path]}) ;;
  esac
  if [ -n "${CPID[$path]:-}" ]; then
    ( cm=0; sm=0; while :; do c=$(rss ${CPID[$path]}); s=$(rss ${SPID[$path]});
        [ "$c" -gt "$cm" ] && cm=$c; [ "$s" -gt "$sm" ] && sm=$s; echo "$cm $sm" > "$work/max.tmp"; mv "$work/max.tmp" "$work/max";
        sleep 0.5; done ) & sampler=$!
  fi
  local json
  json=$(RUST_BACKTRACE=0 "$R/mtcp-perf" pingpong -c 127.0.0.1:$port -n "$k" -t "$t" --setup-limit 60s --json 2>"$work/err") \
    || { echo "{\"path\":\"$path\",\"conns\":$k,\"round\":$round,\"failed\":\"$(tr -d '\"\n' < "$work/err")\"}" >> "$OUT"; 
         echo "$path K=$k round=$round: FAILED $(cat "$work/err")"; [ -n "$sampler" ] && kill $sampler; return; }
  if [ -n "$sampler" ]; then kill $sampler 2>/dev/null; wait $sampler 2>/dev/null; read -r cmax smax < "$work/max"; cmax=${cmax:-0}; smax=${smax:-0}; fi
  echo "$json" | python3 -c '
import json, sys
r = json.load(sys.stdin)
path, k, rnd, c0, s0, cmax, smax = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), *map(int, sys.argv[4:8])
r.update(path=path, conns=k, round=rnd)
if cmax:
    r["client_rss_kib"] = [c0, cmax]; r["server_rss_kib"] = [s0, smax]
    r["client_kib_per_conn"] = (cmax - c0) / k; r["server_kib_per_conn"] = (smax - s0) / k
print(json.dumps(r))
extra = " rss/conn client %.1f KiB server %.1f KiB" % (r["client_kib_per_conn"], r["server_kib_per_conn"]) if cmax else ""
print("%-10s K=%-5d round=%d: %8.0f rt/s p50 %7.0f us p99 %8.0f us setup %.2f s errors %d%s" % (
    path, k, rnd, r["round_trips_per_second"], r["latency"]["p50_us"], r["latency"]["p99_us"],
    r["setup_seconds"], r["errors"], extra), file=sys.stderr)
' "$path" "$k" "$round" "$c0" "$s0" "$cmax" "$smax" >> "$OUT"
}

for round in $(seq 1 "$ROUNDS"); do
  for k in $CONNS; do
    for path in $PATHS; do run "$path" "$k" "$round"; sleep 1; done
  done
done

echo "--- hold: $HOLD connections at once through each pair (3 s of ping-pong, every one must echo)"
for io in uring mio base-uring base-mio; do
  [[ " $PATHS " == *" $io "* ]] && run "$io" "$HOLD" 0 3s
done

python3 - "$OUT" <<'EOF'
import json, sys, statistics
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
ok = [r for r in runs if "failed" not in r and r["round"] > 0]
def med(xs): return statistics.median(xs) if xs else float("nan")
print("\n--- medians (spread min..max) over rounds")
table = {}
for (path, k) in sorted({(r["path"], r["conns"]) for r in ok}, key=lambda x: (x[1], x[0])):
    rs = [r for r in ok if r["path"] == path and r["conns"] == k]
    rt = [r["round_trips_per_second"] for r in rs]
    p99 = [r["latency"]["p99_us"] for r in rs]
    p50 = [r["latency"]["p50_us"] for r in rs]
    setup = [r["setup_seconds"] for r in rs]
    table[(path, k)] = (med(rt), med(p99))
    line = "%-10s K=%-5d %8.0f rt/s (%.0f..%.0f)  p50 %6.0f us  p99 %7.0f us (%.0f..%.0f)  setup %.2f s (%.2f..%.2f)" % (
        path, k, med(rt), min(rt), max(rt), med(p50), med(p99), min(p99), max(p99), med(setup), min(setup), max(setup))
    if "client_kib_per_conn" in rs[0]:
        line += "  rss/conn client %.1f KiB server %.1f KiB" % (
            med([r["client_kib_per_conn"] for r in rs]), med([r["server_kib_per_conn"] for r in rs]))
    print(line)
print("\n--- ratios (medians): rt/s vs direct (target >= 0.5) and vs relay2 (the two-hop floor),")
print("    p99 vs relay2 and socat x2 (target <= 2)")
for (path, k), (rt, p99) in sorted(table.items(), key=lambda x: (x[0][1], x[0][0])):
    if path in ("uring", "mio", "base-uring", "base-mio", "relay2"):
        d = table.get(("direct", k)); s = table.get(("socat", k)); r2 = table.get(("relay2", k))
        print("%-10s K=%-5d %.2fx direct%s%s" % (path, k, rt / d[0] if d else float("nan"),
              ", %.2fx relay2 rt/s, p99 %.2fx relay2" % (rt / r2[0], p99 / r2[1]) if r2 and path != "relay2" else "",
              ", p99 %.2fx socat x2" % (p99 / s[1]) if s else ""))
# Per round, the ratio within the round (the same load hit both paths).
per = {}
for r in ok:
    per[(r["path"], r["conns"], r["round"])] = r["round_trips_per_second"]
for (path, k, rnd), rt in sorted(per.items(), key=lambda x: (x[0][1], x[0][0], x[0][2])):
    d = per.get(("direct", k, rnd)); r2 = per.get(("relay2", k, rnd))
    if path != "direct" and d:
        print("round %d %-10s K=%-5d %.2fx direct%s" % (rnd, path, k, rt / d,
              ", %.2fx relay2" % (rt / r2) if r2 and path != "relay2" else ""))
for (path, k), (rt, p99) in sorted(table.items(), key=lambda x: (x[0][1], x[0][0])):
    b = table.get(("base-" + path, k))
    if path in ("uring", "mio") and b:
        print("%-10s K=%-5d this build / BASE: %.2fx rt/s, p99 %.2fx" % (path, k, rt / b[0], p99 / b[1]))
for r in runs:
    if r["round"] == 0:
        print("hold %-10s %d connections: %s" % (r["path"], r["conns"], "FAILED " + r["failed"] if "failed" in r else
              "all echoed, %d errors, rss/conn client %.1f KiB server %.1f KiB" % (r["errors"], r["client_kib_per_conn"], r["server_kib_per_conn"])))
EOF
