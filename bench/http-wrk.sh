#!/usr/bin/env bash
# HTTP/1.1 /plaintext with wrk, side by side: Ringside io_uring, Ringside epoll, the SwiftNIO HTTP peer
# and nginx (bench/nginx-peer.sh: Debian's nginx-light, one worker, access log off), plus any
# `--peer NAME=COMMAND` (the command prints `listening on HOST:PORT` and serves /plaintext).
# Server on CPU 0, wrk on CPU 1, repetitions interleaved (the order rotated by one server each rep). Server CPU per request comes from the
# server's utime+stime in /proc sampled right before and after wrk (wrk's connect time included).
# Usage: bench/http-wrk.sh [--reps N] [--duration S] [--connections C] [--no-nio] [--peer NAME=COMMAND]...
#        [--static DIR --path /static/FILE] [--ringside-args "ARGS"]
# --static DIR serves DIR under /static/ from Ringside (`--static`) and nginx (`root`, sendfile on) and
# adds server CPU seconds per GB sent; --path is what wrk asks for (default /plaintext); --ringside-args
# go to both Ringside servers (e.g. a larger send pool for big files).
set -euo pipefail
cd "$(dirname "$0")/.."
reps=3; duration=5; conns=50; nio_peer=1; extra_names=(); extra_cmds=(); static=""; path=/plaintext; rargs=""
bytes_per_req=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --reps) reps=$2; shift 2;; --duration) duration=$2; shift 2;; --connections) conns=$2; shift 2;;
        --no-nio) nio_peer=0; shift;;
        --static) static=$2; shift 2;; --path) path=$2; shift 2;; --ringside-args) rargs=$2; shift 2;;
        --peer) extra_names+=("${2%%=*}"); extra_cmds+=("${2#*=}"); shift 2;;
        *) echo "unknown option $1" >&2; exit 2;;
    esac
done
bash scripts/setup.sh
swift build -c release --product ringside >/dev/null
bin=$(swift build -c release --show-bin-path)
names=(uring epoll nginx)
sarg=""; nargs=""
if [[ -n $static ]]; then
    sarg="--static $static"; nargs="--static $static"; nio_peer=0
    bytes_per_req=$(stat -c %s "$static/${path#/static/}")
fi
cmds=("$bin/ringside serve --protocol http --backend uring --port 0 $sarg $rargs"
      "$bin/ringside serve --protocol http --backend epoll --port 0 $sarg $rargs"
      "bash bench/nginx-peer.sh $nargs")
if ((nio_peer)); then
    (cd bench && swift build -c release --product nio-http >/dev/null)
    nio=$(cd bench && swift build -c release --show-bin-path)
    names+=(swiftnio); cmds+=("$nio/nio-http --port 0")
fi
names+=("${extra_names[@]}"); cmds+=("${extra_cmds[@]}")
tck=$(getconf CLK_TCK)
results=$(mktemp)
for rep in $(seq "$reps"); do
    # Rotated by one server per rep (A B C, B C A, ...): no server always runs first.
    for j in "${!names[@]}"; do
        k=$(( (j + rep - 1) % ${#names[@]} ))
        out=$(mktemp)
        taskset -c 0 ${cmds[$k]} >"$out" 2>/dev/null &
        sp=$!
        for _ in $(seq 100); do grep -q "listening on" "$out" && break; sleep 0.1; done
        port=$(grep -o 'listening on [^ ]*' "$out" | sed 's/.*://'); rm -f "$out"
        t0=$(awk '{print $14+$15}' /proc/$sp/stat)
        rps=$(taskset -c 1 wrk -t1 -c"$conns" -d"${duration}s" "http://127.0.0.1:$port$path" | awk '/Requests\/sec/ {print $2} /Non-2xx|Socket errors/ {print "ERR " $0 > "/dev/stderr"}')
        t1=$(awk '{print $14+$15}' /proc/$sp/stat)
        kill -INT $sp; wait $sp || echo "warning: ${names[$k]} exit status $?" >&2
        us=$(awk -v d=$((t1 - t0)) -v t="$tck" -v r="$rps" -v s="$duration" 'BEGIN{printf "%.2f", d/t*1e6/(r*s)}')
        gb=$(awk -v u="$us" -v b="$bytes_per_req" 'BEGIN{printf "%.3f", (b > 0 ? u / b * 1e3 : 0)}')
        echo "rep $rep  ${names[$k]}  req/s=$rps  server_cpu_us_per_req=$us$( ((bytes_per_req)) && echo "  server_cpu_s_per_GB=$gb")"
        echo "${names[$k]} $rps $us" >>"$results"
    done
done
echo
printf '%-10s %12s %16s %10s %10s\n' server "req/s" "srv µs/req" "x req/s" "x µs/req"
for n in "${names[@]}"; do
    r=$(awk -v n=$n '$1==n {print $2}' "$results" | sort -g | awk '{a[NR]=$1} END{print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}')
    u=$(awk -v n=$n '$1==n {print $3}' "$results" | sort -g | awk '{a[NR]=$1} END{print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}')
    echo "$n $r $u"
done | awk -v b="$bytes_per_req" 'NR==1 {r0=$2; u0=$3} {printf "%-10s %12.0f %16.2f %9.2fx %9.2fx", $1, $2, $3, $2/r0, $3/u0; if (b > 0) printf "  srv s/GB %.3f", $3 / b * 1e3; printf "\n"}'
rm -f "$results"
