#!/usr/bin/env bash
# Behind a real load balancer: HAProxy (Debian's haproxy, its own config on free ports) in front of two
# `ringside serve --protocol http --proxy-protocol` instances, sending PROXY v2 headers (send-proxy-v2)
# from its own source address (127.0.0.3) and health-checking GET /ready. Under wrk load, each instance
# in turn is stopped gracefully (SIGTERM: /ready answers 503 at once, the instance keeps serving for
# --shutdown-delay while HAProxy takes it out of rotation, then drains and exits) and restarted: a
# rolling restart, which must fail 0 requests. Then the per-address cap (--max-per-address) is shown to
# count the client's address from the PROXY header, not the proxy's: one client through HAProxy gets
# exactly CAP connections, another client through the same proxy address is still served.
#
#   scripts/haproxy-rolling.sh          (bounded: about 15 s; HAPROXY_DURATION=seconds of wrk load)
# The load runs from 1 s before the first restart until the second instance has been back in rotation
# for 1 s (wrk is then interrupted, printing its counts); HAPROXY_DURATION instead runs wrk for a fixed
# time (at least long enough for both restarts, about 10 s).
# Needs haproxy, wrk and curl (scripts/setup.sh installs them). Exits 0 on success, 1 on a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in haproxy wrk curl; do
    command -v $tool >/dev/null || { echo "haproxy-rolling: $tool is missing (run scripts/setup.sh)" >&2; exit 1; }
done
bin=$(bash scripts/release-bin.sh)/ringside
work=$(mktemp -d)
duration=${HAPROXY_DURATION:-}
cap=20                       # --max-per-address on each instance (wrk uses 16 connections)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# Free ports: below the ephemeral range and unused by any socket now (bound moments later).
used=$(ss -Htan | awk '{print $4}' | sed 's/.*://' | sort -u)
free_port() {
    local p
    while :; do
        p=$((20000 + RANDOM % 12000))
        grep -qx "$p" <<<"$used" || { used+=$'\n'"$p"; echo "$p"; return; }
    done
}
fe=$(free_port); fe_cap=$(free_port); port_a=$(free_port); port_b=$(free_port)

start_instance() {  # name port
    "$bin" serve --protocol http --host 127.0.0.1 --port "$2" --proxy-protocol --trusted-proxies 127.0.0.3 \
        --max-per-address $cap --shutdown-delay 1500ms --log-level info >>"$work/$1.log" 2>&1 &
    local pid=$!
    pids+=("$pid")
    eval "pid_$1=$pid"
    for _ in $(seq 100); do grep -q "listening on 127.0.0.1:$2" "$work/$1.log" && return 0; sleep 0.05; done
    echo "haproxy-rolling: instance $1 did not start"; cat "$work/$1.log"; exit 1
}

cat >"$work/haproxy.cfg" <<EOF
global
    maxconn 1024
    log stderr format iso local0 info
defaults
    mode http
    log global
    option httplog
    option dontlog-normal
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    retries 3
    option redispatch
frontend fe
    bind 127.0.0.1:$fe
    default_backend rolling
frontend fe_cap
    mode tcp
    option tcplog
    bind 127.0.0.1:$fe_cap
    default_backend only_a
backend rolling
    balance roundrobin
    # No pooled idle connections shared between sessions: none can be picked at the moment a stopping
    # instance closes it.
    http-reuse never
    option httpchk GET /ready
    http-check expect status 200
    default-server send-proxy-v2 source 127.0.0.3 check inter 200ms fall 2 rise 2
    server a 127.0.0.1:$port_a
    server b 127.0.0.1:$port_b
backend only_a
    mode tcp
    server a 127.0.0.1:$port_a send-proxy-v2 source 127.0.0.3
EOF
haproxy -c -f "$work/haproxy.cfg" >/dev/null

start_instance a "$port_a"
start_instance b "$port_b"
haproxy -db -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$fe/ready")" = 200 ] && break; sleep 0.05
done
# Both servers up (rise 2 x 200 ms).
sleep 0.6

load=${duration:+${duration} s}
echo "haproxy-rolling: HAProxy :$fe -> ringside :$port_a, :$port_b (PROXY v2 from 127.0.0.3); wrk ${load:-until both are back}, 16 connections"
# Without HAPROXY_DURATION, 120 s is only a bound: wrk is interrupted (SIGINT: it prints its counts) once
# both instances are back in rotation.
wrk -t2 -c16 -d"${duration:-120}s" --timeout 5s "http://127.0.0.1:$fe/plaintext" >"$work/wrk.txt" 2>&1 &
wrk_pid=$!
pids+=($wrk_pid)

restart() {  # name port
    local pid_var="pid_$1"
    local pid=${!pid_var}
    local t0=$SECONDS
    kill -TERM "$pid"
    for _ in $(seq 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
    if kill -0 "$pid" 2>/dev/null; then echo "haproxy-rolling: instance $1 did not stop"; exit 1; fi
    wait "$pid" || { echo "haproxy-rolling: instance $1 exited with an error"; tail "$work/$1.log"; exit 1; }
    start_instance "$1" "$2"
    echo "haproxy-rolling: instance $1 stopped gracefully and restarted ($((SECONDS - t0)) s)"
}
ups_of() { grep -c "rolling/$1 is UP" "$work/haproxy.log" || true; }
back_in_rotation() {  # name ups-before-its-restart: waits for HAProxy's UP (rise 2 x 200 ms), then 1 s of its share
    for _ in $(seq 200); do [ "$(ups_of "$1")" -gt "$2" ] && break; sleep 0.05; done
    [ "$(ups_of "$1")" -gt "$2" ] || { echo "haproxy-rolling: HAProxy did not put instance $1 back in rotation"; exit 1; }
    sleep 1
}
sleep 1   # under load before the first restart
ups_a=$(ups_of a); restart a "$port_a"; back_in_rotation a "$ups_a"
ups_b=$(ups_of b); restart b "$port_b"; back_in_rotation b "$ups_b"
[ -n "$duration" ] || kill -INT $wrk_pid
wait $wrk_pid || true
cat "$work/wrk.txt" | sed 's/^/  wrk: /'

requests=$(awk '/requests in/ {print $1}' "$work/wrk.txt")
non2xx=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$work/wrk.txt")
socket_errors=$(awk -F'[ ,]+' '/Socket errors:/ {print $5 + $7 + $9 + $11}' "$work/wrk.txt")
failed=$(( ${non2xx:-0} + ${socket_errors:-0} ))
downs=$(grep -c "is DOWN" "$work/haproxy.log" || true)
ups=$(grep -c "is UP" "$work/haproxy.log" || true)
status=0
echo "haproxy-rolling: $requests requests, $failed failed (non-2xx ${non2xx:-0}, socket errors ${socket_errors:-0}); HAProxy saw $downs DOWN and $ups UP transitions"
if [ -z "$requests" ] || [ "$requests" -eq 0 ] || [ "$failed" -ne 0 ]; then
    status=1; echo "FAIL: the rolling restart lost requests; HAProxy's log of failed sessions:"
    grep -v "is DOWN\|is UP\|Proxy .* started\|Health check" "$work/haproxy.log" | tail -20
fi
if [ "$downs" -lt 2 ] || [ "$ups" -lt 2 ]; then status=1; echo "FAIL: HAProxy did not take each instance out of rotation and back"; cat "$work/haproxy.log"; fi

# The per-address cap counts the client (127.0.0.1, from the PROXY header), not the proxy (127.0.0.3,
# the address every connection to the instance comes from): through HAProxy as an L4 balancer (mode tcp:
# one instance connection per client connection, PROXY v2 first) to instance a only, one client keeps
# CAP + 2 connections open, each with one request answered or refused.
# HAProxy closes the wrk sessions' instance connections once they end (http-reuse never): wait for
# them, so the client starts with none counted.
for _ in $(seq 100); do
    [ "$(ss -Htn state established "( sport = :$port_a )" | wc -l)" -eq 0 ] && break; sleep 0.05
done
# A refused connection may be reset before the request is written: EPIPE, not SIGPIPE.
trap '' PIPE
codes=()
fds=()
for i in $(seq $((cap + 2))); do
    exec {fd}<>"/dev/tcp/127.0.0.1/$fe_cap"
    fds+=($fd)
    printf 'GET /plaintext HTTP/1.1\r\nHost: rolling\r\n\r\n' >&$fd 2>/dev/null || true
    line=""
    read -r -t 5 -u $fd line || true
    codes+=("$(awk '{print $2}' <<<"$line")")
done
ok=$(printf '%s\n' "${codes[@]}" | grep -c '^200$' || true)
# Meanwhile another client (source 127.0.0.10) through the same proxy address is served.
other=$(curl -s -o /dev/null -w '%{http_code}' --interface 127.0.0.10 --max-time 5 "http://127.0.0.1:$fe_cap/plaintext" || true)
for fd in "${fds[@]}"; do exec {fd}>&-; done
echo "haproxy-rolling: per-address cap $cap: client 127.0.0.1 got $ok of $((cap + 2)) connections served (codes: ${codes[*]}); client 127.0.0.10 got $other"
if [ "$ok" -ne $cap ] || [ "$other" != 200 ]; then status=1; echo "FAIL: the cap did not apply to the client address"; fi

# Stop both instances; their exit logs count the refusals and the PROXY headers.
for n in a b; do pid_var="pid_$n"; kill -TERM "${!pid_var}"; done
for n in a b; do pid_var="pid_$n"; wait "${!pid_var}" || { status=1; echo "FAIL: instance $n exited with an error"; }; done
refused=$(grep -o 'refusedPerAddress=[0-9]*' "$work/a.log" | tail -1 | cut -d= -f2)
# (At least 2: HAProxy may retry a connection the instance refused, which is refused again.)
echo "haproxy-rolling: instance a refused $refused connections over the per-address cap; its PROXY headers: $(grep -o 'proxyHeaders=accepted [0-9]* rejected [0-9]* untrusted [0-9]* timeouts [0-9]*' "$work/a.log" | tail -1 | cut -d= -f2)"
[ "${refused:-0}" -ge 2 ] || { status=1; echo "FAIL: expected refusals over the cap at instance a"; tail -5 "$work/a.log"; }
if ((status == 0)); then echo "haproxy-rolling: ok"; fi
exit $status
