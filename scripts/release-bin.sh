#!/usr/bin/env bash
# Prints the directory of release `ringside` and `ringload` binaries, building them if needed.
# RINGSIDE_RELEASE_BIN (a directory holding both) is used as it is: `make test` sets it to the bench
# package's release build, which has just compiled the same modules for the malloc benchmarks, so CI
# does not compile the engine in release twice. Otherwise: `swift build -c release` in this package.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -n ${RINGSIDE_RELEASE_BIN:-} ]]; then
    for b in ringside ringload; do
        [[ -x $RINGSIDE_RELEASE_BIN/$b ]] || { echo "release-bin: no $b in RINGSIDE_RELEASE_BIN=$RINGSIDE_RELEASE_BIN" >&2; exit 1; }
    done
    echo "$RINGSIDE_RELEASE_BIN"
    exit 0
fi
swift build -c release --product ringside >/dev/null
swift build -c release --product ringload >/dev/null
swift build -c release --show-bin-path
