#!/usr/bin/env bash
# ringload vs wrk as HTTP/1.1 load generators against the same server (default: the SwiftNIO HTTP
# peer), server on CPU 0, generator on CPU 1, interleaved repetitions. Prints each run and the
# medians: requests/s and the generator's own CPU µs per request (wrk: /usr/bin/time; ringload: its
# getrusage over the measured window).
# Usage: bench/wrk-vs-ringload.sh [--reps N] [--duration S] [--connections C] [SERVER_COMMAND...]
set -euo pipefail
cd "$(dirname "$0")/.."
reps=3; duration=5; conns=50
while [[ $# -gt 0 && "$1" == --* ]]; do
    case "$1" in
        --reps) reps=$2; shift 2;; --duration) duration=$2; shift 2;; --connections) conns=$2; shift 2;;
        *) echo "unknown option $1" >&2; exit 2;;
    esac
done
bin=$(swift build -c release --show-bin-path)
swift build -c release --product ringload >/dev/null
if [[ $# -eq 0 ]]; then
    (cd bench && swift build -c release --product nio-http >/dev/null)
    set -- "$(cd bench && swift build -c release --show-bin-path)/nio-http" --port 0
fi
command -v wrk >/dev/null || { echo "wrk missing: bash scripts/setup.sh" >&2; exit 1; }
start_server() {
    local out; out=$(mktemp)
    taskset -c 0 "$@" >"$out" 2>/dev/null &
    SP=$!
    for _ in $(seq 100); do grep -q "listening on" "$out" && break; sleep 0.1; done
    PORT=$(grep -o 'listening on [^ ]*' "$out" | sed 's/.*://'); rm -f "$out"
    [[ -n "$PORT" ]] || { echo "server did not start" >&2; kill $SP; exit 1; }
}
wrk_rps=(); wrk_us=(); rl_rps=(); rl_us=()
for rep in $(seq "$reps"); do
    start_server "$@"
    t=$( { /usr/bin/time -f "%U %S" taskset -c 1 wrk -t1 -c"$conns" -d"${duration}s" "http://127.0.0.1:$PORT/plaintext" >/tmp/wrk.$$ ; } 2>&1 | tail -1)
    rps=$(awk '/Requests\/sec/ {print $2}' /tmp/wrk.$$); rm -f /tmp/wrk.$$
    us=$(awk -v t="$t" -v r="$rps" -v d="$duration" 'BEGIN{split(t,a," "); printf "%.2f", (a[1]+a[2])*1e6/(r*d)}')
    wrk_rps+=("$rps"); wrk_us+=("$us")
    echo "rep $rep  wrk       req/s=$rps  client_cpu_us_per_req=$us"
    kill -INT $SP; wait $SP || true
    start_server "$@"
    line=$(taskset -c 1 "$bin/ringload" http --target "127.0.0.1:$PORT" --connections "$conns" --duration "${duration}s" --warmup 0s --json)
    rps=$(python3 -c "import json,sys; print('%.0f' % json.loads(sys.argv[1])['messagesPerSecond'])" "$line")
    us=$(python3 -c "import json,sys; print('%.2f' % json.loads(sys.argv[1])['clientCPUMicrosPerMessage'])" "$line")
    rl_rps+=("$rps"); rl_us+=("$us")
    echo "rep $rep  ringload  req/s=$rps  client_cpu_us_per_req=$us"
    kill -INT $SP; wait $SP || true
done
med() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END{print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
printf '\nmedians over %d reps (%d connections, %ss):\n' "$reps" "$conns" "$duration"
printf '  wrk       req/s=%s  client CPU µs/req=%s\n' "$(med "${wrk_rps[@]}")" "$(med "${wrk_us[@]}")"
printf '  ringload  req/s=%s  client CPU µs/req=%s\n' "$(med "${rl_rps[@]}")" "$(med "${rl_us[@]}")"
