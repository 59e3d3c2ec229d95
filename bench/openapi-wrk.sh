#!/usr/bin/env bash
# The OpenAPI example (Examples/OpenAPIService: the same openapi.yaml, the same generated code, the same
# ItemsHandler) on Ringside (ringside-openapi-example, RingsideOpenAPI's transport, one loop thread) and
# on Hummingbird 2 (bench/Sources/openapi-hummingbird, swift-openapi-hummingbird, one NIO event loop),
# side by side with wrk -t1. Server on CPU 0, wrk on CPU 1, repetitions interleaved, medians reported.
# Server CPU per request comes from the server's utime+stime in /proc sampled right before and after
# wrk (as bench/http-wrk.sh and bench/http-async-wrk.sh do).
# Operations: getItem (GET /items/1: a path parameter, a small JSON answer) and listItems
# (GET /items?prefix=a&limit=2: query parameters, a JSON array).
# Then (unless --openapi-only) what swift-http-types cost per request on Ringside, same way, one server
# (bench/Sources/ringside-httptypes): sync /plaintext vs /httptypes/plaintext, async /async/plaintext vs
# /async/httptypes/plaintext (request.httpRequest + HTTPServerResponse(HTTPTypes.HTTPResponse)).
# Usage: bench/openapi-wrk.sh [--reps N] [--duration S] [--connections C] [--backend uring|epoll] [--openapi-only]
set -euo pipefail
cd "$(dirname "$0")/.."
reps=3; duration=5; conns=50; backend=uring; httptypes=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --reps) reps=$2; shift 2;; --duration) duration=$2; shift 2;; --connections) conns=$2; shift 2;;
        --backend) backend=$2; shift 2;; --openapi-only) httptypes=0; shift;;
        -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0;;
        *) echo "unknown option $1" >&2; exit 2;;
    esac
done
command -v wrk >/dev/null || { echo "wrk not found (apt-get install wrk)" >&2; exit 1; }
swift build -c release --product ringside-openapi-example >/dev/null
(cd bench && swift build -c release --product openapi-hummingbird >/dev/null && swift build -c release --product ringside-httptypes >/dev/null)
bin=$(swift build -c release --show-bin-path); hb=$(cd bench && swift build -c release --show-bin-path)
servers=(ringside hummingbird)
cmds=("$bin/ringside-openapi-example --backend $backend --port 0" "$hb/openapi-hummingbird --port 0")
ops=(getItem listItems)
paths=("/items/1" "/items?prefix=a&limit=2")
expect=('{
  "id" : 1,
  "name" : "apple",
  "tags" : [
    "fruit"
  ]
}' '[
  {
    "id" : 1,
    "name" : "apple",
    "tags" : [
      "fruit"
    ]
  },
  {
    "id" : 2,
    "name" : "avocado",
    "tags" : [
      "fruit",
      "green"
    ]
  }
]')
tck=$(getconf CLK_TCK)
results=$(mktemp)
for rep in $(seq "$reps"); do
    for o in "${!ops[@]}"; do
        for k in "${!servers[@]}"; do
            out=$(mktemp)
            taskset -c 0 ${cmds[$k]} >"$out" 2>/dev/null &
            sp=$!
            for _ in $(seq 100); do grep -q "listening on" "$out" && break; sleep 0.1; done
            port=$(grep -o 'listening on [^ ]*' "$out" | sed 's/.*://'); rm -f "$out"
            url="http://127.0.0.1:$port${paths[$o]}"
            body=$(curl -s "$url")
            [[ "$body" == "${expect[$o]}" ]] || { echo "${servers[$k]} ${ops[$o]}: unexpected body '$body'" >&2; kill -INT $sp; exit 1; }
            t0=$(awk '{print $14+$15}' /proc/$sp/stat)
            rps=$(taskset -c 1 wrk -t1 -c"$conns" -d"${duration}s" "$url" | awk '/Requests\/sec/ {print $2} /Non-2xx|Socket errors/ {print "ERR " $0 > "/dev/stderr"}')
            t1=$(awk '{print $14+$15}' /proc/$sp/stat)
            kill -INT $sp; wait $sp || echo "warning: ${servers[$k]} exit status $?" >&2
            us=$(awk -v d=$((t1 - t0)) -v t="$tck" -v r="$rps" -v s="$duration" 'BEGIN{printf "%.2f", d/t*1e6/(r*s)}')
            echo "rep $rep  ${ops[$o]}  ${servers[$k]}  req/s=$rps  server_cpu_us_per_req=$us"
            echo "${ops[$o]} ${servers[$k]} $rps $us" >>"$results"
        done
    done
done
median() { sort -g | awk '{a[NR]=$1} END{print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
echo
printf '%-10s %-12s %12s %14s %16s\n' operation server "req/s" "srv µs/req" "µs/req vs HB"
for o in "${ops[@]}"; do
    hu=$(awk -v o=$o '$1==o && $2=="hummingbird" {print $4}' "$results" | median)
    for s in "${servers[@]}"; do
        r=$(awk -v o=$o -v s=$s '$1==o && $2==s {print $3}' "$results" | median)
        u=$(awk -v o=$o -v s=$s '$1==o && $2==s {print $4}' "$results" | median)
        awk -v o=$o -v s=$s -v r=$r -v u=$u -v h=$hu 'BEGIN {printf "%-10s %-12s %12.0f %14.2f %15.2fx\n", o, s, r, u, u/h}'
    done
done
echo "(medians of $reps interleaved reps, ${duration}s each, wrk -t1 -c$conns, server on CPU 0, wrk on CPU 1, backend $backend)"
rm -f "$results"
[[ $httptypes == 1 ]] || exit 0

# What swift-http-types cost per request: the same answer with Ringside's own types and through HTTPTypes.
echo
routes=(/plaintext /httptypes/plaintext /async/plaintext /async/httptypes/plaintext)
results=$(mktemp)
for rep in $(seq "$reps"); do
    for route in "${routes[@]}"; do
        out=$(mktemp)
        taskset -c 0 "$hb/ringside-httptypes" --backend "$backend" --port 0 >"$out" 2>/dev/null &
        sp=$!
        for _ in $(seq 100); do grep -q "listening on" "$out" && break; sleep 0.1; done
        port=$(grep -o 'listening on [^ ]*' "$out" | sed 's/.*://'); rm -f "$out"
        body=$(curl -s "http://127.0.0.1:$port$route")
        [[ "$body" == "Hello, World!" ]] || { echo "$route: unexpected body '$body'" >&2; kill -INT $sp; exit 1; }
        t0=$(awk '{print $14+$15}' /proc/$sp/stat)
        rps=$(taskset -c 1 wrk -t1 -c"$conns" -d"${duration}s" "http://127.0.0.1:$port$route" | awk '/Requests\/sec/ {print $2} /Non-2xx|Socket errors/ {print "ERR " $0 > "/dev/stderr"}')
        t1=$(awk '{print $14+$15}' /proc/$sp/stat)
        kill -INT $sp; wait $sp || echo "warning: ringside-httptypes exit status $?" >&2
        us=$(awk -v d=$((t1 - t0)) -v t="$tck" -v r="$rps" -v s="$duration" 'BEGIN{printf "%.2f", d/t*1e6/(r*s)}')
        echo "rep $rep  $route  req/s=$rps  server_cpu_us_per_req=$us"
        echo "$route $rps $us" >>"$results"
    done
done
echo
printf '%-30s %12s %14s\n' route "req/s" "srv µs/req"
for route in "${routes[@]}"; do
    r=$(awk -v o=$route '$1==o {print $2}' "$results" | median)
    u=$(awk -v o=$route '$1==o {print $3}' "$results" | median)
    printf '%-30s %12.0f %14.2f\n' "$route" "$r" "$u"
done
echo "(medians of $reps interleaved reps, ${duration}s each, wrk -t1 -c$conns, server on CPU 0, wrk on CPU 1, backend $backend)"
rm -f "$results"
