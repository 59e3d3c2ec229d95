#!/usr/bin/env bash
# Where a server's CPU per message goes, side by side: each server runs on core 0 under the same load
# (core 1) while `perf record -g` samples it; bench/cost_split.py classes every sample (user space, the
# TCP/IP stack, sleeping and waking, lock spinning, the loop's own kernel work) and this script turns
# the shares into microseconds per message (server utime+stime over the sampled window / messages in
# it), beside the TCP segments sent per message (both ends, /proc/net/snmp). Interleaved reps, the server order rotated by one each rep; medians printed at the end.
#
# Usage: bench/cost-split.sh [--reps N] [--duration S] --scenario KIND,CONNS --server NAME=CMD ...
#   KIND: echo (ringload echo, 64 B ping-pong), http (ringload http /plaintext), wrk (wrk -t1 /plaintext)
#   CMD:  a server command that prints `listening on HOST:PORT` (ringside serve, the C reference,
#         bench/nginx-peer.sh); it is pinned to core 0 and stopped with SIGINT.
# Example (issue 15's question: what is left once the loop is no longer the difference):
#   bench/cost-split.sh --reps 5 --scenario echo,50 --server "ringside=.build/release/ringside serve --port 0" \
#       --server "c-ref=bench/c/build/ref_echo_server --port 0"
# --symbols N: also print, for each server after the first, the N kernel functions (self time, the
# sampled leaf) whose µs per message differ most from the first server's, averaged over the reps: the
# kernel cost that remains per message between two servers (issue 15 asked for it from perf).
# Needs perf (linux-perf) and root or perf_event_paranoid <= 1. Perf's own sampling cost is in every
# figure alike: compare servers within one run, not with `ringload compare`.
set -euo pipefail
cd "$(dirname "$0")/.."
reps=3; duration=3; scenario=""; symbols=0; names=(); cmds=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --reps) reps=$2; shift 2;;
        --duration) duration=$2; shift 2;;
        --scenario) scenario=$2; shift 2;;
        --symbols) symbols=$2; shift 2;;
        --server) names+=("${2%%=*}"); cmds+=("${2#*=}"); shift 2;;
        *) echo "unknown option $1" >&2; exit 2;;
    esac
done
[[ -n $scenario && ${#names[@]} -gt 0 ]] || { sed -n 2,20p "$0" >&2; exit 2; }
kind=${scenario%%,*}; conns=${scenario#*,}
command -v perf >/dev/null || { echo "cost-split: perf not found (apt-get install linux-perf)" >&2; exit 1; }
ringload=.build/release/ringload
[[ -x $ringload ]] || { echo "cost-split: build ringload first (swift build -c release)" >&2; exit 1; }
[[ $kind != wrk ]] || command -v wrk >/dev/null || { echo "cost-split: wrk not found" >&2; exit 1; }
tmp=$(mktemp -d /tmp/cost-split.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
results=$tmp/results

# One measurement: prints "name total user network sleepwake lockspin loop samples" (µs per message).
measure() {
    local name=$1 cmd=$2 log=$tmp/server.log port srv load u0 s0 u1 s1 msgs shares
    taskset -c 0 bash -c "exec $cmd" >"$log" 2>&1 &
    srv=$!
    for _ in $(seq 100); do grep -q "listening on" "$log" && break; sleep 0.1; done
    port=$(grep -o "listening on [0-9.]*:[0-9]*" "$log" | head -1 | sed 's/.*://')
    [[ -n $port ]] || { echo "cost-split: $name did not start: $(tail -3 "$log")" >&2; kill -INT $srv 2>/dev/null; return 1; }
    local total=$((duration + 2))
    case $kind in
        echo) taskset -c 1 $ringload echo --target 127.0.0.1:$port --connections "$conns" --size 64 \
                  --duration ${total}s --warmup 1s --json >"$tmp/load.json" 2>"$tmp/load.err" & load=$!;;
        http) taskset -c 1 $ringload http --target 127.0.0.1:$port --connections "$conns" \
                  --duration ${total}s --warmup 1s --json >"$tmp/load.json" 2>"$tmp/load.err" & load=$!;;
        wrk) taskset -c 1 wrk -t1 -c"$conns" -d$((total + 1))s http://127.0.0.1:$port/plaintext >"$tmp/load.txt" 2>&1 & load=$!;;
        *) echo "cost-split: unknown scenario kind $kind" >&2; exit 2;;
    esac
    sleep 1.5
    read -r u0 s0 < <(awk '{print $14, $15}' /proc/$srv/stat)
    local seg0 t0 t1; seg0=$(segments); t0=$(date +%s.%N)
    perf record -q -g -F 2999 -p $srv -o "$tmp/perf.data" -- sleep "$duration" >/dev/null 2>&1
    read -r u1 s1 < <(awk '{print $14, $15}' /proc/$srv/stat)
    local seg1; seg1=$(segments); t1=$(date +%s.%N)
    wait $load || true
    kill -INT $srv 2>/dev/null; wait $srv 2>/dev/null || true
    # Messages in the window (from before perf starts to after it stops): the load generator's steady
    # rate (its whole run) times the window.
    local window; window=$(echo "$t0 $t1" | awk '{print $2 - $1}')
    case $kind in
        echo|http) msgs=$(python3 -c "import json,sys; d=json.load(open('$tmp/load.json')); print(float(d['messagesPerSecond'])*$window)");;
        wrk) msgs=$(awk -v d="$window" '/Requests\/sec/{print $2*d}' "$tmp/load.txt");;
    esac
    shares=$(perf script -i "$tmp/perf.data" -F ip,sym 2>/dev/null | COST_SPLIT_LEAVES=$tmp/leaves.json python3 bench/cost_split.py)
    python3 - "$name" "$((u1 - u0 + s1 - s0))" "$msgs" "$shares" "$(getconf CLK_TCK)" "$((seg1 - seg0))" "$tmp" <<'PY'
import json, sys
name, ticks, msgs, shares, hz, segs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), json.loads(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
us = ticks / hz * 1e6 / msgs
# This rep's ns per message by leaf function, for --symbols.
with open(sys.argv[7] + "/leaves.json") as f, open(sys.argv[7] + "/leaves", "a") as out:
    out.write(json.dumps([name, {k: v * us * 1000 for k, v in json.load(f).items()}]) + "\n")
parts = [us * shares[k] for k in ("user", "network", "sleepwake", "lockspin", "loop")]
print(name, f"{us:.2f}", *(f"{p:.2f}" for p in parts), f"{segs / msgs:.2f}", shares["samples"])
PY
}

# TCP segments sent on this host (both ends of every loopback connection), from /proc/net/snmp.
segments() { awk '/^Tcp:/ && $1=="Tcp:" {if (h) {print $12; exit} h=1}' /proc/net/snmp; }
steal() { awk '/^cpu /{print $9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat; }
st0=$(steal)
n=${#names[@]}
for ((r = 0; r < reps; r++)); do
    for ((k = 0; k < n; k++)); do
        i=$(((k + r) % n))
        line=$(measure "${names[$i]}" "${cmds[$i]}") || continue
        echo "rep $((r + 1))  $line" | awk '{printf "%-6s %-3s %-12s total %6s  user %5s  network %6s  sleep/wake %5s  lock spin %5s  loop %5s  segments/msg %s  (%s samples)\n", $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11}'
        echo "$line" >>"$results"
    done
done
st1=$(steal)
echo
echo "$scenario: server CPU µs per message, medians of $reps reps (perf -g at 2999 Hz running: all figures include its cost)"
python3 - "$results" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    f = line.split()
    rows.setdefault(f[0], []).append([float(x) for x in f[1:8]])
first = None
print(f"{'server':<12} {'total':>7} {'user':>6} {'network':>8} {'sleep/wake':>10} {'lock spin':>9} {'loop':>6} {'segs/msg':>8} {'vs first':>8}")
for name, rs in rows.items():
    med = [statistics.median(c) for c in zip(*rs)]
    first = first or med[0]
    print(f"{name:<12} {med[0]:7.2f} {med[1]:6.2f} {med[2]:8.2f} {med[3]:10.2f} {med[4]:9.2f} {med[5]:6.2f} {med[6]:8.2f} {med[0] / first:7.2f}x")
PY
if ((symbols > 0)); then
    python3 - "$tmp/leaves" "$symbols" <<'PY'
import json, sys
sums, reps = {}, {}
for line in open(sys.argv[1]):
    name, ns = json.loads(line)
    reps[name] = reps.get(name, 0) + 1
    acc = sums.setdefault(name, {})
    for sym, v in ns.items():
        acc[sym] = acc.get(sym, 0.0) + v
means = {n: {k: v / reps[n] for k, v in acc.items()} for n, acc in sums.items()}
names = list(means)
a = means[names[0]]
for other in names[1:]:
    b = means[other]
    keys = sorted(set(a) | set(b), key=lambda k: -abs(a.get(k, 0) - b.get(k, 0)))
    print(f"\nns per message by function (self time, mean of reps): {names[0]} vs {other}")
    print(f"{names[0]:>12} {other:>12} {'difference':>10}  function")
    for k in keys[:int(sys.argv[2])]:
        print(f"{a.get(k, 0):12.1f} {b.get(k, 0):12.1f} {a.get(k, 0) - b.get(k, 0):+10.1f}  {k}")
PY
fi
echo "$st0 $st1" | awk '{printf "host CPU steal during the run: %.1f%%\n", 100*($3-$1)/($4-$2)}'
