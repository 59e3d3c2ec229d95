#!/usr/bin/env bash
# gzip of a 100 KB JSON body with wrk, side by side: Ringside io_uring and epoll (`ringside serve
# --compression --compression-level 1`, GET /json/100k) against nginx-light (one worker, access log off,
# `gzip on; gzip_comp_level 1; gzip_types application/json`, the same 102,400 bytes served from a file).
# wrk sends `Accept-Encoding: gzip`. Server on CPU 0, wrk on CPU 1, repetitions interleaved, medians.
# Server CPU per request from the server's utime+stime in /proc sampled right before and after wrk;
# bytes per response from curl (head + body, exactly as sent) and from wrk's Transfer/sec / Requests/sec.
# Usage: bench/gzip-wrk.sh [--reps N] [--duration S] [--connections C]
set -euo pipefail
cd "$(dirname "$0")/.."
reps=5; duration=5; conns=50
while [[ $# -gt 0 ]]; do
    case "$1" in
        --reps) reps=$2; shift 2;; --duration) duration=$2; shift 2;; --connections) conns=$2; shift 2;;
        *) echo "unknown option $1" >&2; exit 2;;
    esac
done
bash scripts/setup.sh
command -v nginx >/dev/null || [[ -x /usr/sbin/nginx ]] || apt-get install -y -qq nginx-light >/dev/null
swift build -c release --product ringside >/dev/null
bin=$(swift build -c release --show-bin-path)
dir=$(mktemp -d /tmp/gzip-wrk.XXXXXX)
trap 'rm -rf "$dir"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$1/json/100k" && return 0; sleep 0.1; done; return 1; }

# The body: Ringside's own /json/100k, so both servers send the same bytes.
port=$(free_port)
"$bin/ringside" serve --protocol http --port "$port" >/dev/null 2>&1 &
sp=$!
wait_port "$port"
curl -s "http://127.0.0.1:$port/json/100k" -o "$dir/100k.json"
kill -INT $sp; wait $sp || true
[[ $(stat -c %s "$dir/100k.json") == 102400 ]] || { echo "unexpected body size" >&2; exit 1; }

nginx_port=$(free_port)
mkdir -p "$dir/nginx"
cat >"$dir/nginx/nginx.conf" <<CONF
worker_processes 1;
master_process off;
daemon off;
pid $dir/nginx/nginx.pid;
error_log $dir/nginx/error.log warn;
events { worker_connections 20000; }
http {
    access_log off;
    keepalive_requests 1000000000;
    keepalive_timeout 60s;
    client_body_temp_path $dir/nginx/body;
    proxy_temp_path $dir/nginx/proxy;
    fastcgi_temp_path $dir/nginx/fastcgi;
    uwsgi_temp_path $dir/nginx/uwsgi;
    scgi_temp_path $dir/nginx/scgi;
    gzip on;
    gzip_comp_level 1;
    gzip_types application/json;
    gzip_min_length 1024;
    gzip_vary on;
    server {
        listen 127.0.0.1:$nginx_port;
        location = /json/100k { default_type application/json; alias $dir/100k.json; }
    }
}
CONF

names=(uring epoll nginx)
cmds=("$bin/ringside serve --protocol http --backend uring --compression --compression-level 1 --port PORT"
      "$bin/ringside serve --protocol http --backend epoll --compression --compression-level 1 --port PORT"
      "$(command -v nginx || echo /usr/sbin/nginx) -c $dir/nginx/nginx.conf -e $dir/nginx/error.log")
tck=$(getconf CLK_TCK)
results=$(mktemp)
for rep in $(seq "$reps"); do
    for k in "${!names[@]}"; do
        if [[ ${names[$k]} == nginx ]]; then p=$nginx_port; else p=$(free_port); fi
        taskset -c 0 ${cmds[$k]//PORT/$p} >/dev/null 2>&1 &
        sp=$!
        wait_port "$p" || { echo "${names[$k]} did not start" >&2; exit 1; }
        # Exact bytes of one response: head + body as sent (and the body must decode to the original).
        wire=$(curl -s -H 'Accept-Encoding: gzip' -o "$dir/resp.gz" -w '%{size_header} %{size_download}' "http://127.0.0.1:$p/json/100k")
        gunzip -c "$dir/resp.gz" | cmp -s - "$dir/100k.json" || { echo "${names[$k]}: the gzip body does not decode to the JSON" >&2; exit 1; }
        bytes=$(echo "$wire" | awk '{print $1 + $2}')
        t0=$(awk '{print $14+$15}' /proc/$sp/stat)
        out=$(taskset -c 1 wrk -t1 -c"$conns" -d"${duration}s" -H 'Accept-Encoding: gzip' "http://127.0.0.1:$p/json/100k")
        t1=$(awk '{print $14+$15}' /proc/$sp/stat)
        kill -INT $sp; wait $sp || true
        if grep -qE "Non-2xx|Socket errors" <<<"$out"; then echo "warning: ${names[$k]}: $(grep -E 'Non-2xx|Socket errors' <<<"$out")" >&2; fi
        rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
        tps=$(awk '/Transfer\/sec/ {v=$2; u=substr(v, length(v)-1); n=v+0; m=(u=="KB")?1024:(u=="MB")?1048576:(u=="GB")?1073741824:1; print n*m}' <<<"$out")
        us=$(awk -v d=$((t1 - t0)) -v t="$tck" -v r="$rps" -v s="$duration" 'BEGIN{printf "%.2f", d/t*1e6/(r*s)}')
        wrkb=$(awk -v a="$tps" -v r="$rps" 'BEGIN{printf "%.0f", a/r}')
        echo "rep $rep  ${names[$k]}  req/s=$rps  server_cpu_us_per_req=$us  bytes_per_response=$bytes (wrk: $wrkb)"
        echo "${names[$k]} $rps $us $bytes" >>"$results"
    done
done
echo
printf '%-8s %10s %14s %16s %10s %10s\n' server "req/s" "srv µs/req" "bytes/response" "x req/s" "x µs/req"
median() { sort -g | awk '{a[NR]=$1} END{print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
for n in "${names[@]}"; do
    r=$(awk -v n=$n '$1==n {print $2}' "$results" | median)
    u=$(awk -v n=$n '$1==n {print $3}' "$results" | median)
    b=$(awk -v n=$n '$1==n {print $4}' "$results" | median)
    echo "$n $r $u $b"
done | awk '{row[NR]=$0; r[NR]=$2; u[NR]=$3} $1=="nginx" {rn=$2; un=$3} END {for (i=1;i<=NR;i++) {split(row[i], f, " "); printf "%-8s %10.0f %14.2f %16d %9.2fx %9.2fx\n", f[1], f[2], f[3], f[4], f[2]/rn, f[3]/un}}'
echo "(x: relative to nginx)"
rm -f "$results"
