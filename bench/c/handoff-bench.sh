#!/usr/bin/env bash
# handoff-bench.sh - SO_REUSEPORT-per-ring vs acceptor ring + MSG_RING hand-off,
# measured with bench/c/build/accept_handoff (server and client in one binary).
#
# Usage: bench/c/handoff-bench.sh [--reps R] [--duration S] [--warmup S]
#                                 [--concurrency K] [--workers "1 2"]
#                                 [--server-cpu C] [--client-cpu C] [--out FILE]
#   defaults: --reps 3 --duration 5 --warmup 1 --concurrency 50 --workers "1 2"
#             --server-cpu 0 --client-cpu 1
#
# Per repetition, every (workers, mode, workload) runs once, interleaved:
#   for N in workers: for workload in connect pingpong: reuseport, handoff
# Each run: wait until no swift-build / swift-frontend / swift-test / *PackageTests
# process is running
# (zombies ignored; poll every 10 s, at most 20 min, then give up with exit 1),
# wait (at most 60 s) for the machine to be >= 90% idle for 2 s, note the
# 1-minute load average, start the server pinned to SERVER_CPU, run the client
# pinned to CLIENT_CPU (it reads the server's utime+stime from /proc/PID/stat
# at the start and end of its measured window), SIGINT the server, check exit 0.
# Output: raw client lines in --out (default /tmp/handoff-bench-DATE.txt) and a
# table of medians on stdout.
set -uo pipefail

DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BIN="$DIR/build/accept_handoff"
reps=3 duration=5 warmup=1 conc=50 worker_list="1 2" server_cpu=0 client_cpu=1
out="/tmp/handoff-bench-$(date +%Y%m%d-%H%M%S).txt"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --reps) reps=${2:?}; shift 2 ;;
        --duration) duration=${2:?}; shift 2 ;;
        --warmup) warmup=${2:?}; shift 2 ;;
        --concurrency) conc=${2:?}; shift 2 ;;
        --workers) worker_list=${2:?}; shift 2 ;;
        --server-cpu) server_cpu=${2:?}; shift 2 ;;
        --client-cpu) client_cpu=${2:?}; shift 2 ;;
        --out) out=${2:?}; shift 2 ;;
        *) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
    esac
done

make -s -C "$DIR" >&2 || { echo "handoff-bench: build failed" >&2; exit 1; }
: >"$out" || exit 1
work=$(mktemp -d /tmp/handoff-bench.XXXXXX)
spid=""
cleanup() {
    if [[ -n $spid ]] && kill -0 "$spid" 2>/dev/null; then kill -KILL "$spid"; wait "$spid" 2>/dev/null; fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

builds_running() { # any live (non-zombie) swift-build / swift-frontend / test binary?
    local p st
    for p in $(pgrep -f 'swift-build|swift-frontend|swift-test|PackageTests|xctest'); do
        st=$(awk '{ s = $0; sub(/.*\) /, "", s); split(s, a, " "); print a[1] }' "/proc/$p/stat" 2>/dev/null)
        [[ -n $st && $st != Z ]] && return 0
    done
    return 1
}
wait_no_builds() {
    local waited=0
    while builds_running; do
        (( waited == 0 )) && echo "handoff-bench: builds running, waiting (poll 10 s, max 20 min)" >&2
        (( waited >= 1200 )) && { echo "handoff-bench: builds still running after 20 min, giving up" >&2; exit 1; }
        sleep 10; waited=$((waited + 10))
    done
    (( waited > 0 )) && echo "handoff-bench: builds gone after ${waited}s" >&2
    return 0
}
wait_idle() { # >= 90% idle over 2 consecutive 1 s samples, at most 60 s
    local end=$(( $(date +%s) + 60 )) good=0 a b
    while (( $(date +%s) < end )); do
        a=$(head -n 1 /proc/stat); sleep 1; b=$(head -n 1 /proc/stat)
        if awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " "); t = 0
                for (i = 2; i <= 9; i++) t += y[i] - x[i]
                idle = (y[5] - x[5]) + (y[6] - x[6]); exit !(t > 0 && idle * 100 >= 90 * t) }'; then
            good=$((good + 1)); (( good >= 2 )) && return 0
        else good=0; fi
    done
    echo "handoff-bench: machine not idle after 60 s, running anyway" >&2
}

fail=0
run_one() { # mode workers workload rep
    local mode=$1 n=$2 wl=$3 rep=$4 port i line rc load
    wait_no_builds
    wait_idle
    load=$(cut -d' ' -f1 /proc/loadavg)
    taskset -c "$server_cpu" "$BIN" --mode "$mode" --workers "$n" >"$work/srv.out" 2>"$work/srv.err" &
    spid=$!
    for i in $(seq 100); do grep -q 'listening on' "$work/srv.out" && break; sleep 0.05; done
    port=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$work/srv.out")
    if [[ -z $port ]]; then
        echo "handoff-bench: $mode N=$n did not start" >&2; cat "$work/srv.err" >&2
        kill -KILL "$spid" 2>/dev/null; wait "$spid" 2>/dev/null; spid=""; fail=1; return
    fi
    line=$(timeout $(( ${duration%.*} + ${warmup%.*} + 30 )) taskset -c "$client_cpu" "$BIN" --mode "$wl" \
        --target "127.0.0.1:$port" --concurrency "$conc" --duration "$duration" --warmup "$warmup" \
        --server-pid "$spid")
    rc=$?
    kill -INT "$spid"
    for i in $(seq 200); do kill -0 "$spid" 2>/dev/null || break; sleep 0.05; done
    if kill -0 "$spid" 2>/dev/null; then kill -KILL "$spid"; echo "handoff-bench: server hung on SIGINT" >&2; fail=1; fi
    wait "$spid"; local src=$?; spid=""
    [[ $rc -ne 0 || $src -ne 0 ]] && { echo "handoff-bench: $mode N=$n $wl rep $rep: client rc=$rc server rc=$src" >&2; cat "$work/srv.err" >&2; fail=1; }
    echo "server=$mode workers=$n rep=$rep load1=$load rc=$rc src=$src $line" | tee -a "$out"
}

echo "# $(date -Is) kernel=$(uname -r) ncpu=$(nproc) reps=$reps duration=$duration warmup=$warmup concurrency=$conc server_cpu=$server_cpu client_cpu=$client_cpu" | tee -a "$out"
for rep in $(seq "$reps"); do
    for n in $worker_list; do
        for wl in connect pingpong; do
            for mode in reuseport handoff; do
                run_one "$mode" "$n" "$wl" "$rep"
            done
        done
    done
done

echo
python3 - "$out" <<'EOF'
import sys, statistics, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    if line.startswith('#'): continue
    kv = dict(f.split('=', 1) for f in line.split() if '=' in f)
    if 'ops_per_sec' not in kv: continue
    rows[(kv['mode'], int(kv['workers']), kv['server'])].append(kv)
print(f"{'workload':9} {'N':>2} {'server':9} {'runs':>4} {'ops/s':>9} {'srv_us/op':>9} {'srv_cpu%':>8} {'cli_cpu%':>8} {'lat_avg_us':>10} {'load1':>10} {'errors':>6}")
for (wl, n, srv) in sorted(rows, key=lambda k: (k[0], k[1], k[2] != 'reuseport')):
    r = rows[(wl, n, srv)]
    med = lambda k: statistics.median(float(x[k]) for x in r)
    loads = [float(x['load1']) for x in r]
    print(f"{wl:9} {n:>2} {srv:9} {len(r):>4} {med('ops_per_sec'):>9.0f} {med('server_cpu_us_per_op'):>9.2f} "
          f"{med('server_cpu_pct'):>8.1f} {med('client_cpu_pct'):>8.1f} {med('lat_avg_us'):>10.1f} "
          f"{min(loads):>4.2f}-{max(loads):<4.2f} {sum(int(x['errors']) for x in r):>6}")
EOF
echo "raw: $out"
exit $fail
