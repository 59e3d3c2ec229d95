#!/usr/bin/env bash
# The full comparison matrix, in release mode, side by side in one run:
#   echo 64 B with 1, 50 and 500 connections, echo 4 KiB with 50, pipelined echo (depth 16),
#   10,000 idle connections (server RSS per connection), HTTP/1.1 plaintext keep-alive,
# each against Ringside io_uring, Ringside epoll, the SwiftNIO peers (bench/) and the C liburing
# reference (bench/c/; for HTTP its --http mode, the floor: CRLFCRLF counted, a fixed answer, no
# parsing). Servers on CPU 0, ringload on CPU 1, repetitions interleaved.
# Results (JSON + self-contained HTML report) land in bench/results/compare-DATE/.
#
# Usage: bench/compare.sh [--quick] [extra ringload compare options]
set -euo pipefail
cd "$(dirname "$0")/.."
reps=3; duration=5s; warmup=1s
if [[ "${1:-}" == "--quick" ]]; then reps=1; duration=2s; warmup=0.5s; shift; fi

bash scripts/setup.sh
swift build -c release --product ringside >/dev/null
swift build -c release --product ringload >/dev/null
make -s -C bench/c >/dev/null
bin=$(swift build -c release --show-bin-path)
peers=(--peer "c-ref=$PWD/bench/c/build/ref_echo_server --port 0"
       --peer "http:c-http=$PWD/bench/c/build/ref_echo_server --http --port 0")
if (cd bench && swift build -c release --product nio-echo >/dev/null && swift build -c release --product nio-http >/dev/null); then
    nio=$(cd bench && swift build -c release --show-bin-path)
    peers+=(--peer "echo:swiftnio=$nio/nio-echo --port 0" --peer "http:swiftnio=$nio/nio-http --port 0")
else
    echo "compare.sh: the SwiftNIO peers did not build; comparing without them" >&2
fi
ulimit -n 20000 2>/dev/null || true
exec "$bin/ringload" compare --reps "$reps" --duration "$duration" --warmup "$warmup" \
    --scenario echo,64,1,1 --scenario echo,64,50,1 --scenario echo,64,500,1 \
    --scenario echo,4096,50,1 --scenario echo,64,50,16 --scenario idle,0,10000,0 \
    --scenario http,0,50,1 \
    "${peers[@]}" "$@"
