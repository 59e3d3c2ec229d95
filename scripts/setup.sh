#!/usr/bin/env bash
# Installs what Ringside needs on a fresh Debian machine, once: liburing-dev (the engine), libssl-dev and
# openssl (RingsideTLS and its tests), and for the
# benchmarks wrk, nghttp2-client (h2load), linux-perf; haproxy for the rolling-restart test; binutils
# (objdump) for the release binary's hot-path check. Swift itself is expected on PATH.
# Idempotent: does nothing when everything is present.
set -euo pipefail
need=()
for pkg in liburing-dev libssl-dev openssl zlib1g-dev libzstd-dev zstd wrk nghttp2-client curl haproxy binutils; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if ((${#need[@]})); then
    echo "setup: installing ${need[*]}"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v swift >/dev/null || { echo "setup: swift is not on PATH (Swift 6.x toolchain required)" >&2; exit 1; }
