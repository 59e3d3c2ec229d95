#!/usr/bin/env bash
# HTTPS /plaintext with wrk (keep-alive), side by side: Ringside io_uring and epoll behind its TLS layer,
# and nginx-light (bench/nginx-peer.sh --tls: one worker, the same certificate, ssl_session_cache on).
# Server on CPU 0, wrk on CPU 1, repetitions interleaved, medians. Server CPU per request comes from
# the server's utime+stime in /proc sampled right before and after wrk (handshakes of wrk's
# connections included). Then, on the same server, handshakes with `ringload handshake` (--hs-connections
# connections at once, each connect, handshake, GET /plaintext, close, again; the certificate verified):
# full (--no-tls-resume) and resumed (each connection presents the ticket of its previous one), server
# CPU per handshake = the server's CPU over the ringload run / every handshake ringload completed (its
# totalHandshakes; the first handshake of each connection is a full one in the resumed row). With
# --s-time, `openssl s_time` (one connection at a time, -new and -reuse) measures them instead, as before.
# A throwaway P-256 certificate is generated into a temporary directory.
# The SwiftNIO peer (bench/ nio-https: NIO HTTP/1.1 behind NIOSSL, one event loop) runs too unless
# --no-nio (its first build compiles BoringSSL: minutes; --nio-bin PATH runs a nio-https built already).
# Usage: bench/https-wrk.sh [--reps N] [--duration S] [--connections C] [--hs-connections C] [--s-time]
#                           [--no-nio | --nio-bin PATH]
set -euo pipefail
cd "$(dirname "$0")/.."
reps=3; duration=5; conns=50; nio_peer=1; hs_conns=4; s_time=0; nio_bin=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --reps) reps=$2; shift 2;; --duration) duration=$2; shift 2;; --connections) conns=$2; shift 2;;
        --no-nio) nio_peer=0; shift;;
        --hs-connections) hs_conns=$2; shift 2;; --s-time) s_time=1; shift;;
        --nio-bin) nio_bin=$(realpath "$2"); shift 2;;
        *) echo "unknown option $1" >&2; exit 2;;
    esac
done
bash scripts/setup.sh
swift build -c release --product ringside >/dev/null
((s_time)) || swift build -c release --product ringload >/dev/null
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
    if [[ -n $nio_bin ]]; then
        nio_exe=$nio_bin
    else
        (cd bench && swift build -c release --product nio-https >/dev/null)
        nio_exe="$(cd bench && swift build -c release --show-bin-path)/nio-https"
    fi
    names+=(swiftnio); cmds+=("$nio_exe --port 0 --cert $certdir/cert.pem --key $certdir/key.pem")
fi
# Handshakes on the server at 127.0.0.1:$1, full ($2 = -new) or resumed (-reuse), for $duration seconds
# on CPU 1; prints "<handshakes> <resumed> <errors>".
handshakes() {
    if ((s_time)); then
        local n
        n=$(taskset -c 1 openssl s_time -connect "127.0.0.1:$1" "$2" -time "$duration" -www /plaintext 2>/dev/null | awk '/connections in .* real seconds/ {print $1}')
        echo "${n:-0} - 0"
    else
        local resume=--tls-resume
        [[ $2 == -new ]] && resume=--no-tls-resume
        taskset -c 1 "$bin/ringload" handshake --target "127.0.0.1:$1" --tls-ca "$certdir/cert.pem" --tls-server-name localhost \
            --connections "$hs_conns" --duration "${duration}s" --warmup 0 $resume --json |
            python3 -c 'import json,sys; r=json.load(sys.stdin); e=r["errors"]; print(r["totalHandshakes"], r["totalResumed"], sum(e.values()))'
    fi
}
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
        hs=(); hsinfo=""
        for mode in -new -reuse; do
            h0=$(awk '{print $14+$15}' /proc/$sp/stat)
            read -r n resumed errs < <(handshakes "$port" "$mode" || echo "0 - 1")
            h1=$(awk '{print $14+$15}' /proc/$sp/stat)
            hs+=("$(awk -v d=$((h1 - h0)) -v t="$tck" -v n="${n:-0}" 'BEGIN{printf "%.1f", (n > 0 ? d/t*1e6/n : -1)}')")
            hsinfo+=" ${mode#-}: $n handshakes ($resumed resumed, $errs errors)"
            ((errs == 0)) || echo "ERR ${names[$k]} handshakes $mode: $errs errors" >&2
        done
        kill -INT $sp; wait $sp || echo "warning: ${names[$k]} exit status $?" >&2
        echo "rep $rep  ${names[$k]}  req/s=$rps  server_cpu_us_per_req=$us  us_per_full_handshake=${hs[0]}  us_per_resumed=${hs[1]} ;$hsinfo"
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
