#!/usr/bin/env bash
# HTTPS /plaintext with wrk (keep-alive), side by side: Ringside io_uring and epoll behind its TLS layer,
# and nginx-light (bench/nginx-peer.sh --tls: one worker, the same certificate, ssl_session_cache on).
# Server on CPU 0, wrk on CPU 1, repetitions interleaved, medians. Server CPU per request comes from
# the server's utime+stime in /proc sampled right before and after wrk (handshakes of wrk's
# connections included). Then, on the same server, handshakes with `openssl s_time` (one connection at a
# time, GET /plaintext each): full (-new) and resumed (-reuse), server CPU per handshake. A throwaway
# P-256 certificate is generated into a temporary directory.
# The SwiftNIO peer (bench/ nio-https: NIO HTTP/1.1 behind NIOSSL, one event loop) runs too unless
# --no-nio (its first build compiles BoringSSL: minutes).
# Usage: bench/https-wrk.sh [--reps N] [--duration S] [--connections C] [--no-nio]
set -euo pipefail
cd "$(dirname "$0")/.."
reps=3; duration=5; conns=50; nio_peer=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --reps) reps=$2; shift 2;; --duration) duration=$2; shift 2;; --connections) conns=$2; shift 2;;
        --no-nio) nio_peer=0; shift;;
        *) echo "unknown option $1" >&2; exit 2;;
    esac
done
bash scripts/setup.sh
swift build -c release --product ringside >/dev/null
bin=$(swift build -c release --show-bin-path)
certdir=$(mktemp -d /tmp/https-wrk.XXXXXX)
trap 'rm -rf "$certdir"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout "$certdir/key.pem" -out "$certdir/cert.pem" 2>/dev/null
tlsargs="--tls-cert $certdir/cert.pem --tls-key $certdir/key.pem"
names=(uring epoll nginx)
cmds=("$bin/ringside serve --protocol http --backend uring --port 0 $tlsargs"
      "$bin/ringside serve --protocol http --backend epoll --port 0 $tlsargs"
      "bash bench/nginx-peer.sh --tls $certdir/cert.pem $certdir/key.pem")
if ((nio_peer)); then
    (cd bench && swift build -c release --product nio-https >/dev/null)
    nio=$(cd bench && swift build -c release --show-bin-path)
    names+=(swiftnio); cmds+=("$nio/nio-https --port 0 --cert $certdir/cert.pem --key $certdir/key.pem")
fi
tck=$(getconf CLK_TCK)
results=$(mktemp)
for rep in $(seq "$reps"); do
    for k in "${!names[@]}"; do
        out=$(mktemp)
        taskset -c 0 ${cmds[$k]} >"$out" 2>/dev/null &
        sp=$!
        for _ in $(seq 100); do grep -q "listening on" "$out" && break; sleep 0.1; done
        port=$(grep -o 'listening on [^ ]*' "$out" | sed 's/.*://'); rm -f "$out"
        t0=$(awk '{print $14+$15}' /proc/$sp/stat)
        rps=$(taskset -c 1 wrk -t1 -c"$conns" -d"${duration}s" "https://127.0.0.1:$port/plaintext" | awk '/Requests\/sec/ {print $2} /Non-2xx|Socket errors/ {print "ERR " $0 > "/dev/stderr"}')
        t1=$(awk '{print $14+$15}' /proc/$sp/stat)
        us=$(awk -v d=$((t1 - t0)) -v t="$tck" -v r="$rps" -v s="$duration" 'BEGIN{printf "%.2f", d/t*1e6/(r*s)}')
        hs=()
        for mode in -new -reuse; do
            h0=$(awk '{print $14+$15}' /proc/$sp/stat)
            n=$(taskset -c 1 openssl s_time -connect "127.0.0.1:$port" $mode -time "$duration" -www /plaintext 2>/dev/null | awk '/connections in .* real seconds/ {print $1}')
            h1=$(awk '{print $14+$15}' /proc/$sp/stat)
            hs+=("$(awk -v d=$((h1 - h0)) -v t="$tck" -v n="${n:-0}" 'BEGIN{printf "%.1f", (n > 0 ? d/t*1e6/n : -1)}')")
        done
        kill -INT $sp; wait $sp || echo "warning: ${names[$k]} exit status $?" >&2
        echo "rep $rep  ${names[$k]}  req/s=$rps  server_cpu_us_per_req=$us  us_per_full_handshake=${hs[0]}  us_per_resumed=${hs[1]}"
        echo "${names[$k]} $rps $us ${hs[0]} ${hs[1]}" >>"$results"
    done
done
echo
median() { sort -g | awk '{a[NR]=$1} END{print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
printf '%-10s %12s %16s %10s %10s %14s %14s\n' server "req/s" "srv µs/req" "x req/s" "x µs/req" "µs/full hs" "µs/resumed hs"
for n in "${names[@]}"; do
    cols=""
    for c in 2 3 4 5; do cols+=" $(awk -v n=$n -v c=$c '$1==n {print $c}' "$results" | median)"; done
    echo "$n$cols"
done | awk 'NR==1 {r0=$2; u0=$3} {printf "%-10s %12.0f %16.2f %9.2fx %9.2fx %14.1f %14.1f\n", $1, $2, $3, $2/r0, $3/u0, $4, $5}'
rm -f "$results"
