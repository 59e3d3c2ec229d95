#!/usr/bin/env bash
# The malloc thresholds check (bench/Thresholds) without the package plugin's own build, so that the
# engine is compiled in release once for it and for the release binaries of `make test`.
#
# `swift package benchmark thresholds check` builds through the plugin API (its host tools in debug);
# after it, `swift build -c release --product ringside` compiled every engine module again, and the
# plugin did the same after that (measured on a fresh clone: 249 s for the check, then 91 s for ringside;
# this script, both binaries included, 323 s). Here one `swift build -c release`
# configuration builds the BenchmarkTool, the EngineMallocs benchmark and both binaries, and the tool
# runs with the arguments the plugin passes it (`swift package benchmark --debug thresholds check`
# prints them; benchmark 1.38.1 is pinned exactly in bench/Package.swift) and the malloc interposer
# preloaded, as the plugin does on Linux. The plugin path stays for `thresholds update` and runs by hand.
# Checked that it counts: a benchmark client patched to strdup/free once per round trip fails every
# benchmark with 10,000 mallocs per iteration (exit 2).
#
# Prints nothing but the tool's report; exits non-zero when a threshold is exceeded or a build fails.
set -euo pipefail
cd "$(dirname "$0")/../bench"
for p in BenchmarkTool EngineMallocs ringside ringload; do
    swift build -c release --product "$p" >/dev/null
done
bin=$(swift build -c release --show-bin-path)
interposer=$bin/libMallocInterposerSwift.so
[[ -f $interposer ]] || { echo "bench-check: $interposer was not built (malloc counts need it)" >&2; exit 1; }
LD_PRELOAD=$interposer "$bin/BenchmarkTool" --command thresholds --baseline-storage-path "$PWD/" \
    --format text --grouping benchmark --benchmark-package-identifier benchmark --no-progress \
    --thresholds-operation check --targets EngineMallocs --benchmark-executable-paths "$bin/EngineMallocs"
