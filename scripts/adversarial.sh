#!/usr/bin/env bash
# The adversarial suite (ringload attack) against release builds of ringside, both backends: slowloris,
# 5,000 unauthenticated connections, a 200 MB upload that never reads, oversized headers, garbage,
# resets mid-write, floods past the global and per-address caps, clients that stop reading with
# megabytes queued. Each scenario checks the attacker's cut-off, the server's peak RSS, the good
# client's bytes and p99, and the server's descriptors and buffers. SCALE (default 1) scales attacker
# counts; CI uses a smaller one to stay quick.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(bash scripts/release-bin.sh)
backends=uring,epoll
if [[ "$(cat /proc/sys/kernel/io_uring_disabled 2>/dev/null || echo 0)" != 0 ]]; then
    echo "SKIP adversarial suite on io_uring: kernel.io_uring_disabled is set"; backends=epoll
fi
mkdir -p bench/results
out=bench/results/attack-$(date +%Y%m%d-%H%M%S).json
# Server on CPU 0, good client and attackers on CPU 1 (ringload pins itself with --client-cpu).
"$bin/ringload" attack --server "$bin/ringside" --backends $backends --scale "${SCALE:-1}" \
    --server-cpu 0 --client-cpu 1 --json "$out" --check "$@"
echo "results: $out"
