#!/usr/bin/env bash
# Checks the release binary for what the hot path claims (README, "Handler calls, specialised"):
# - the handler calls are compiled specialised for the bundled handler types: the closure that passes
#   received bytes to EchoHandler and to HTTPHandler exists as a generic specialisation, and calls the
#   handler directly (no indirect call, so no protocol witness), with no retain/release or dynamic
#   exclusivity check;
# - the loop's per-message functions (receive completion, dirty-slot pass) make no retain/release or
#   dynamic exclusivity check.
# Usage: scripts/check-hot-path.sh [RINGSIDE_BINARY]   (default: scripts/release-bin.sh's ringside)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-$(bash scripts/release-bin.sh)/ringside}
dis=$(mktemp)
trap 'rm -f "$dis"' EXIT
objdump -d --no-show-raw-insn "$bin" | swift demangle >"$dis"
fail=0
# Prints the bodies of the functions whose demangled name matches $1 (an awk regex).
bodies() { awk -v pat="$1" '/^[0-9a-f]+ <.*>:$/ {inside = ($0 ~ pat)} inside' "$dis"; }
arc='call.*<(swift_retain|swift_release|swift_bridgeObjectRetain|swift_bridgeObjectRelease|swift_beginAccess)[@>]|jmp.*<(swift_retain|swift_release|swift_beginAccess)[@>]'
check() {  # name, regex, also-forbid-indirect-calls (1/0)
    local body; body=$(bodies "$2")
    local n; n=$(grep -c '^[0-9a-f]* <' <<<"$body" || true)
    if ((n == 0)); then echo "FAIL $1: no function matches (not specialised?)"; fail=1; return; fi
    if grep -Eq "$arc" <<<"$body"; then echo "FAIL $1: retain/release or beginAccess:"; grep -E "$arc" <<<"$body" | head -5; fail=1; return; fi
    if (($3)) && grep -Eq '(call|jmp) +\*' <<<"$body"; then echo "FAIL $1: indirect call (not a direct handler call):"; grep -E '(call|jmp) +\*' <<<"$body" | head -5; fail=1; return; fi
    echo "ok   $1 ($n functions)"
}
check "EchoHandler.received, specialised and direct" 'generic specialization <RingsideProtocols\.EchoHandler> of closure #2 \(Swift\.Int32, Ringside\.ReceivedBytes, Ringside\.Connection\)' 1
check "HTTPHandler.received, specialised and direct" 'generic specialization <RingsideHTTP\.HTTPHandler> of closure #2 \(Swift\.Int32, Ringside\.ReceivedBytes, Ringside\.Connection\)' 1
check "io_uring receive completion" '<Ringside\.UringBackend\.\(completeRecv in' 0
check "io_uring dirty-slot pass" '<Ringside\.UringBackend\.processDirty\(\)' 0
check "io_uring send completion" '<Ringside\.UringBackend\.completeSend\(' 0
check "epoll readiness to receive" '<Ringside\.EpollBackend\.readReady\(' 0
check "epoll send" '<Ringside\.EpollBackend\.startSend\(' 0
check "epoll dirty-slot pass" '<Ringside\.EpollBackend\.processDirty\(\)' 0
check "Connection.send of received bytes" '<Ringside\.Connection\.send\(Ringside\.ReceivedBytes\)' 0
check "LoopCore.consumeSent" '<Ringside\.LoopCore\.consumeSent\(' 0
# The wait runs once or twice per message at one connection; the compiler may inline it into run()
# (then run()'s loop is what the README's uprobe count covers). Loading the executor through
# LoopControl there once cost a retain/release pair per wait.
if [[ -n $(bodies '<Ringside\.UringBackend\.waitForCompletions\(\)') ]]; then
    check "io_uring wait" '<Ringside\.UringBackend\.waitForCompletions\(\)' 0
fi
((fail == 0)) && echo "hot path: as claimed" || { echo "hot path: NOT as claimed"; exit 1; }
