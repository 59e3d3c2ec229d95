#!/usr/bin/env bash
# Runs the libFuzzer targets of Fuzz/ (see Fuzz/Package.swift).
#
#   scripts/fuzz.sh                 every target, FUZZ_SECONDS (default 600) shared evenly between them
#   scripts/fuzz.sh --ci            every target for FUZZ_CI_SECONDS (default 15) each
#   scripts/fuzz.sh --merge         after the run, merge new coverage into the committed seed corpora
#   scripts/fuzz.sh --build-only    build the targets, run nothing (CI builds them ahead, see .ci/run)
#   FUZZ_TARGETS="http-parser"      a subset (names: http-parser framing proxy-protocol connection-state inflate)
#
# New corpus entries go to Fuzz/.corpus/<target>/ (git-ignored); the committed seeds in
# Fuzz/Corpus/<target>/ are read but only written with --merge. A crash, hang (FUZZ_TIMEOUT seconds for
# one input, default 10) or OOM leaves its reproducer in Fuzz/.artifacts/<target>/ and the script prints
# the one-line command that replays it, then exits 1. Full libFuzzer output: Fuzz/.logs/<target>.log.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
mode=full
merge=0
build_only=0
for a in "$@"; do
    case "$a" in
        --ci) mode=ci ;;
        --merge) merge=1 ;;
        --build-only) build_only=1 ;;
        *) echo "usage: $0 [--ci] [--merge] [--build-only]" >&2; exit 2 ;;
    esac
done
targets=(${FUZZ_TARGETS:-http-parser framing proxy-protocol connection-state static-path inflate})
timeout_s=${FUZZ_TIMEOUT:-10}
if [ "$mode" = ci ]; then
    per=${FUZZ_CI_SECONDS:-15}
else
    per=$(( ${FUZZ_SECONDS:-600} / ${#targets[@]} ))
fi
((per > 0)) || per=1

# libFuzzer supplies main, so SwiftPM must know about the fuzzer sanitizer (--sanitize=fuzzer), but
# swiftc honours only the last -sanitize= it is given, so AddressSanitizer is added in the same flag.
build=(swift build -c release --package-path Fuzz --scratch-path Fuzz/.build-fuzz
       --sanitize=fuzzer -Xswiftc -sanitize=fuzzer,address)
mkdir -p Fuzz/.logs
for t in "${targets[@]}"; do
    echo "fuzz: building fuzz-$t"
    rc=0
    "${build[@]}" --product "fuzz-$t" >"Fuzz/.logs/build-$t.log" 2>&1 || rc=$?
    grep -v "ld.gold: warning: Cannot export local symbol" "Fuzz/.logs/build-$t.log" | grep -E "error|warning:|Build" || true
    # Never fuzz a stale binary: a failed build stops here.
    if ((rc != 0)); then echo "fuzz: building fuzz-$t failed (exit $rc); see Fuzz/.logs/build-$t.log"; exit 1; fi
done
((build_only)) && exit 0
bin="$("${build[@]}" --show-bin-path)"

export SWIFT_BACKTRACE=enable=no   # let libFuzzer/ASan handle the crash (the Swift backtracer would hold it)
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
mkdir -p Fuzz/.logs
status=0
for t in "${targets[@]}"; do
    corpus=Fuzz/.corpus/$t
    artifacts=Fuzz/.artifacts/$t
    log=Fuzz/.logs/$t.log
    mkdir -p "$corpus" "$artifacts"
    dict=()
    case "$t" in
        http-parser) dict=(-dict=Fuzz/Dictionaries/http.dict) ;;
        framing) dict=(-dict=Fuzz/Dictionaries/framing.dict) ;;
        proxy-protocol) dict=(-dict=Fuzz/Dictionaries/proxy-protocol.dict) ;;
    esac
    echo "fuzz: fuzz-$t for ${per}s (corpus $corpus + Fuzz/Corpus/$t, log $log)"
    rc=0
    touch "$log.start"
    "$bin/fuzz-$t" -max_total_time="$per" -timeout="$timeout_s" -rss_limit_mb=2048 -max_len=8192 \
        -print_final_stats=1 -artifact_prefix="$artifacts/" "${dict[@]}" \
        "$corpus" "Fuzz/Corpus/$t" >"$log" 2>&1 || rc=$?
    grep -E "^#[0-9]+[[:space:]]+DONE|^stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb)" "$log" \
        | sed "s/^/fuzz: $t: /" || true
    found=$(find "$artifacts" -maxdepth 1 -type f \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' -o -name 'leak-*' \) -newer "$log.start" 2>/dev/null || true)
    if ((rc != 0)) || [ -n "$found" ]; then
        status=1
        echo "fuzz: $t FAILED (exit $rc); see $log"
        grep -E "PROPERTY VIOLATED|ERROR: AddressSanitizer|Fatal error|SUMMARY" "$log" | head -5 | sed "s/^/fuzz: $t: /" || true
        for f in $found; do
            echo "fuzz: replay: SWIFT_BACKTRACE=enable=no $bin/fuzz-$t $root/$f"
        done
    fi
    if ((merge)); then
        echo "fuzz: merging new coverage from $corpus into Fuzz/Corpus/$t"
        "$bin/fuzz-$t" -merge=1 -max_len=8192 "Fuzz/Corpus/$t" "$corpus" >>"$log" 2>&1
    fi
done
exit $status
