#!/usr/bin/env bash
# Release-mode smoke test: the optimiser has produced bugs the debug-mode unit tests cannot see (a
# trapping copy of a ~Copyable value, Swift 6.3 -O), so the shipped binaries are exercised too:
# ringside serves echo and HTTP on both backends, ringload drives each for a second and verifies every
# response, curl checks the HTTP routes, and each server must exit 0 on SIGINT.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(bash scripts/release-bin.sh)
fail=0; passed=0
for backend in uring epoll; do
    if [[ $backend == uring && "$(cat /proc/sys/kernel/io_uring_disabled 2>/dev/null || echo 0)" != 0 ]]; then
        echo "SKIP release smoke on io_uring: kernel.io_uring_disabled is set"; continue
    fi
    for proto in echo http; do
        out=$(mktemp)
        "$bin/ringside" serve --protocol $proto --backend $backend --port 0 >"$out" 2>/dev/null &
        sp=$!
        for _ in $(seq 100); do grep -q "listening on" "$out" && break; sleep 0.1; done
        port=$(grep -o 'listening on [^ ]*' "$out" | sed 's/.*://'); rm -f "$out"
        ok=1
        if [[ $proto == echo ]]; then
            "$bin/ringload" echo --target 127.0.0.1:$port --connections 20 --pipeline 4 --duration 1s --warmup 0.2s --json >/dev/null || ok=0
        else
            "$bin/ringload" http --target 127.0.0.1:$port --connections 20 --pipeline 4 --duration 1s --warmup 0.2s --json >/dev/null || ok=0
            [[ "$(curl -s --max-time 5 http://127.0.0.1:$port/plaintext)" == "Hello, World!" ]] || ok=0
            [[ "$(curl -s --max-time 5 --data-binary abc http://127.0.0.1:$port/echo)" == "abc" ]] || ok=0
        fi
        kill -INT $sp; wait $sp || ok=0
        if ((ok)); then passed=$((passed + 1)); echo "ok   $proto on $backend"; else fail=$((fail + 1)); echo "FAIL $proto on $backend"; fi
    done
done
# The binary must start without liburing (a host or container without it serves on epoll): ldd must
# not name it, and with the library hidden (a mount namespace binds /dev/null over it; root only)
# `--backend auto` serves HTTP on epoll and says why.
if ldd "$bin/ringside" | grep -q liburing; then fail=$((fail + 1)); echo "FAIL ringside links liburing at load time"
else passed=$((passed + 1)); echo "ok   ringside does not link liburing"; fi
uring_lib=$(ldconfig -p | awk '/liburing\.so\.2 .*x86-64/ && !found {print $NF; found = 1}')
if [[ $(id -u) != 0 || -z $uring_lib ]] || ! command -v unshare >/dev/null; then
    echo "SKIP serving without liburing: needs root, unshare and an installed liburing.so.2 to hide"
else
    out=$(mktemp)
    if unshare -m bash -c '
        mount --bind /dev/null "$(readlink -f "$1")" || exit 3
        "$2/ringside" serve --protocol http --backend auto --port 0 >"$3" 2>&1 &
        sp=$!
        for _ in $(seq 100); do grep -q "listening on" "$3" && break; sleep 0.1; done
        port=$(grep -o "listening on [^ ]*" "$3" | sed "s/.*://")
        body=$(curl -s --max-time 5 http://127.0.0.1:$port/plaintext)
        kill -INT $sp; wait $sp || exit 4
        [[ $body == "Hello, World!" ]] || exit 5
        grep -q "liburing could not be loaded" "$3" && grep -q "backend=epoll" "$3" || exit 6
    ' _ "$uring_lib" "$bin" "$out"; then
        passed=$((passed + 1)); echo "ok   http on auto without liburing (served on epoll)"
    else
        fail=$((fail + 1)); echo "FAIL http on auto without liburing:"; cat "$out"
    fi
    rm -f "$out"
fi
# What the README claims of the hot path, checked in the binary (scripts/check-hot-path.sh).
if bash scripts/check-hot-path.sh "$bin/ringside"; then passed=$((passed + 1)); else fail=$((fail + 1)); fi
echo "release smoke: $passed passed, $fail failed"
((fail == 0))
