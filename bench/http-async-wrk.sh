#!/usr/bin/env bash
# Async routes side by side with wrk -t1: Ringside's sync `/plaintext`, Ringside's async
# `/async/plaintext` (a task per request on the loop's executor) and a Hummingbird 2 app's `/plaintext`
# (bench/Sources/hummingbird-http, one NIO event loop). Server on CPU 0, wrk on CPU 1, repetitions
# interleaved, medians reported. Server CPU per request comes from the server's utime+stime in /proc
# sampled right before and after wrk (wrk's connect time included).
# Goals (issue 18): async <= 1.5x sync CPU/request, async <= 0.25x Hummingbird's.
# Usage: bench/http-async-wrk.sh [--reps N] [--duration S] [--connections C] [--backend uring|epoll]
set -euo pipefail
cd "$(dirname "$0")/.."
reps=3; duration=5; conns=50; backend=uring
while [[ $# -gt 0 ]]; do
    case "$1" in
        --reps) reps=$2; shift 2;; --duration) duration=$2; shift 2;; --connections) conns=$2; shift 2;;
        --backend) backend=$2; shift 2;;
        *) echo "unknown option $1" >&2; exit 2;;
    esac
done
bash scripts/setup.sh
swift build -c release --product ringside >/dev/null
(cd bench && swift build -c release --product hummingbird-http >/dev/null)
bin=$(swift build -c release --show-bin-path); hb=$(cd bench && swift build -c release --show-bin-path)
names=(sync async hummingbird)
cmds=("$bin/ringside serve --protocol http --backend $backend --port 0"
      "$bin/ringside serve --protocol http --backend $backend --port 0"
      "$hb/hummingbird-http --port 0")
paths=(/plaintext /async/plaintext /plaintext)
tck=$(getconf CLK_TCK)
results=$(mktemp)
for rep in $(seq "$reps"); do
    for k in "${!names[@]}"; do
        out=$(mktemp)
        taskset -c 0 ${cmds[$k]} >"$out" 2>/dev/null &
        sp=$!
        for _ in $(seq 100); do grep -q "listening on" "$out" && break; sleep 0.1; done
        port=$(grep -o 'listening on [^ ]*' "$out" | sed 's/.*://'); rm -f "$out"
        body=$(curl -s "http://127.0.0.1:$port${paths[$k]}")
        [[ "$body" == "Hello, World!" ]] || { echo "${names[$k]}: unexpected body '$body'" >&2; kill -INT $sp; exit 1; }
        t0=$(awk '{print $14+$15}' /proc/$sp/stat)
        rps=$(taskset -c 1 wrk -t1 -c"$conns" -d"${duration}s" "http://127.0.0.1:$port${paths[$k]}" | awk '/Requests\/sec/ {print $2} /Non-2xx|Socket errors/ {print "ERR " $0 > "/dev/stderr"}')
        t1=$(awk '{print $14+$15}' /proc/$sp/stat)
        kill -INT $sp; wait $sp || echo "warning: ${names[$k]} exit status $?" >&2
        us=$(awk -v d=$((t1 - t0)) -v t="$tck" -v r="$rps" -v s="$duration" 'BEGIN{printf "%.2f", d/t*1e6/(r*s)}')
        echo "rep $rep  ${names[$k]}  ${paths[$k]}  req/s=$rps  server_cpu_us_per_req=$us"
        echo "${names[$k]} $rps $us" >>"$results"
    done
done
echo
printf '%-12s %12s %16s %10s %10s\n' server "req/s" "srv µs/req" "x req/s" "x µs/req"
for n in "${names[@]}"; do
    r=$(awk -v n=$n '$1==n {print $2}' "$results" | sort -g | awk '{a[NR]=$1} END{print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}')
    u=$(awk -v n=$n '$1==n {print $3}' "$results" | sort -g | awk '{a[NR]=$1} END{print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}')
    echo "$n $r $u"
done | awk 'NR==1 {r0=$2; u0=$3} {printf "%-12s %12.0f %16.2f %9.2fx %9.2fx\n", $1, $2, $3, $2/r0, $3/u0; u[$1]=$3}
    END {printf "\nasync/sync CPU per request: %.2fx (goal <= 1.5x); async/hummingbird: %.2fx (goal <= 0.25x)\n",
         u["async"]/u["sync"], u["async"]/u["hummingbird"]}'
rm -f "$results"
