#!/bin/sh
# PID 1 of the kernel-matrix guest (copied to /init in the initramfs by run.sh).
#
# Runs every check against the ringside/ringload binaries in the image and prints one line per check
# on the serial console:
#   MATRIX <kernel> <backend> <check> PASS|FAIL|SKIP <detail>
# then `MATRIX-END <kernel>` and powers off. Indented "  | " lines after a check are context (server
# notices and warnings, the tail of a failing log); the host ignores them but keeps them in its log.
# Settings come from the kernel command line (run.sh sets them): rsmatrix.kernel=LABEL (the name in
# the table), rsmatrix.conns=N (burst connections), rsmatrix.secs=S (burst seconds),
# rsmatrix.timeout=S (a response later than this is a timeout), rsmatrix.client=BACKEND (ringload's
# own backend; epoll by default so that every reset it counts is the server's doing),
# rsmatrix.checks=a,b (a subset), rsmatrix.verbose=1, rsmatrix.srvargs=--a,b (extra serve arguments).
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mkdir -p /dev/pts /dev/shm
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /dev/shm
exec </dev/null >/dev/console 2>&1
ip link set lo up
ulimit -n 65536

arg() { sed -n "s/.*rsmatrix\.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
K=$(arg kernel); [ -n "$K" ] || K=$(uname -r)
CONNS=$(arg conns); [ -n "$CONNS" ] || CONNS=500
SECS=$(arg secs); [ -n "$SECS" ] || SECS=5         # burst load seconds
TMO=$(arg timeout); [ -n "$TMO" ] || TMO=4          # a response later than this is a timeout (a hung connection)
CLIENT=$(arg client); [ -n "$CLIENT" ] || CLIENT=epoll
CHECKS=$(arg checks)   # comma-separated subset (empty: all)
VERBOSE=$(arg verbose) # 1: every server log in full after its check
SRVARGS=$(arg srvargs | tr ',' ' ')  # extra `ringside serve` arguments, comma-separated on the command line
want() { [ -z "$CHECKS" ] || echo ",$CHECKS," | grep -q ",$1,"; }
echo "MATRIX-BOOT $K $(uname -r) uptime=$(cut -d' ' -f1 /proc/uptime)s conns=$CONNS secs=$SECS timeout=$TMO client=$CLIENT checks=${CHECKS:-all}"

result() { echo "MATRIX $K $1 $2 $3 $4"; }
# Server notices, warnings and errors (the start line's fallbacks, engine complaints), indented;
# with rsmatrix.verbose=1 the whole log.
notices() {
    [ "$VERBOSE" = 1 ] && { cut -c1-600 "$1" | sed 's/^/  | /'; return; }
    grep -E ' (notice|warning|error|critical) ' "$1" 2>/dev/null | head -n 6 | cut -c1-300 | sed 's/^/  | /'; }
tail_of() { [ -s "$1" ] && tail -n "${2:-8}" "$1" | cut -c1-300 | sed "s/^/  | $(basename "$1"): /"; }
# A JSON number from ringload's one-line --json output (keys are unique with the colon).
jnum() { v=$(sed -n "s/.*\"$2\":\([0-9.]*\).*/\1/p" "$1" | head -n 1); echo "${v:--}"; }
# Alive and not a zombie (the shell reaps only at `wait`).
alive() { [ -e "/proc/$1" ] && ! grep -q '^[0-9]* (.*) Z' "/proc/$1/stat" 2>/dev/null; }

# start_server LOG CMD...: starts the server, waits for its listening line; sets SRV, PORT, BACKEND.
start_server() {
    log=$1; shift
    : >/tmp/srv.out
    "$@" >/tmp/srv.out 2>"$log" &
    SRV=$!; PORT=; BACKEND=
    i=0
    while [ $i -lt 300 ]; do
        PORT=$(sed -n 's/^listening on [^ ]*:\([0-9][0-9]*\).*/\1/p' /tmp/srv.out)
        [ -n "$PORT" ] && break
        alive $SRV || break
        sleep 0.1; i=$((i + 1))
    done
    BACKEND=$(sed -n 's/.* backend=\([a-z]*\).*/\1/p' /tmp/srv.out)
    # The io_uring feature probes' verdict, once per boot (the host prints it beside MATRIX-BOOT).
    if [ -z "$PROBES_SHOWN" ] && grep -q "multishot-recv=" "$log"; then
        echo "MATRIX-PROBES $(grep -o 'multishot-recv=.*bundles=[a-z]*' "$log" | head -n 1)"
        PROBES_SHOWN=1
    fi
}

# stop_server: SIGINT, up to 20 s, then SIGKILL; sets SRV_RC (the exit status, or "killed").
stop_server() {
    kill -INT $SRV 2>/dev/null
    i=0
    while alive $SRV && [ $i -lt 200 ]; do sleep 0.1; i=$((i + 1)); done
    if alive $SRV; then kill -KILL $SRV; wait $SRV; SRV_RC=killed; else wait $SRV; SRV_RC=$?; fi
}

# The server's stop line must account for every connection and buffer.
stop_line_ok() {
    line=$(grep ' stopped' "$1" | tail -n 1)
    [ -n "$line" ] || { STOP="no-stop-line"; return 1; }
    open=$(echo "$line" | sed -n 's/.*[ [{]open=\([0-9]*\).*/\1/p')
    bufs=$(echo "$line" | sed -n 's/.*buffersInUse=\([0-9]*\).*/\1/p')
    STOP="open=${open:-?} buffersInUse=${bufs:-?}"
    [ "${open:-0}" = 0 ] && [ "${bufs:-0}" = 0 ]
}

# load_errors FILE: the error counters of a ringload JSON result, and whether they are all zero.
load_errors() {
    msgs=$(jnum "$1" messages); resets=$(jnum "$1" resets); corrupt=$(jnum "$1" corrupt)
    badstatus=$(jnum "$1" badStatus); connfail=$(jnum "$1" connectFailures); timeouts=$(jnum "$1" timeouts)
    ERRS="msgs=$msgs resets=$resets corrupt=$corrupt badStatus=$badstatus connectFailures=$connfail timeouts=$timeouts"
    [ "$resets" = 0 ] && [ "$corrupt" = 0 ] && [ "$badstatus" = 0 ] && [ "$connfail" = 0 ] \
        && [ "$timeouts" = 0 ] && [ "$msgs" != - ] && [ "$msgs" != 0 ]
}

# established SERVER-PORT: server-side TCP connections established on the port (accepted or queued).
established() {
    awk -v p=":$(printf '%04X' "$1")" '$2 ~ p"$" && $4 == "01" { n++ } END { print n + 0 }' /proc/net/tcp
}

# burst BACKEND PROTO [live]: a fresh server; CONNS connections opened at once are its very first
# traffic. "At once" is made exact: the server is stopped (SIGSTOP) while the client connects, so every
# connection sits in the accept queue with its first request before the server accepts any. With
# `live` the server keeps running while they arrive (the check is then PROTO-burst-live), which is
# how the burst of issue 11 was first seen; how many arrive per accept batch then depends on timing.
burst() {
    b=$1; p=$2; mode=${3:-queued}; name=$p-burst; [ $mode = live ] && name=$p-burst-live
    slog=/tmp/srv-$b-$name.log
    start_server $slog ringside serve --protocol $p --backend $b --port 0 $SRVARGS
    if [ -z "$PORT" ]; then
        result $b $name FAIL "server did not listen"; tail_of $slog; stop_server; return
    fi
    [ $mode = live ] || kill -STOP $SRV
    timeout 60 ringload $p --target 127.0.0.1:$PORT --connections $CONNS --duration ${SECS}s --warmup 0 \
        --timeout ${TMO}s --backend $CLIENT --json >/tmp/load.json 2>/tmp/load.err &
    lp=$!
    queued=-
    if [ $mode != live ]; then
        i=0
        while [ "$(established $PORT)" -lt $CONNS ] && [ $i -lt 200 ] && alive $lp; do sleep 0.1; i=$((i + 1)); done
        queued=$(established $PORT)
        kill -CONT $SRV
    fi
    wait $lp; lrc=$?
    stop_server
    ok=1
    load_errors /tmp/load.json || ok=0
    stop_line_ok $slog || ok=0
    [ $lrc = 0 ] && [ "$SRV_RC" = 0 ] && [ "$BACKEND" = $b ] || ok=0
    d="conns=$CONNS queued=$queued $ERRS load_rc=$lrc server_rc=$SRV_RC backend=$BACKEND $STOP"
    if [ $ok = 1 ]; then result $b $name PASS "$d"; else result $b $name FAIL "$d"; tail_of /tmp/load.err 4; fi
    notices $slog
}

# non_reading BACKEND: 5 clients push echo traffic and never read (stopreader); the server must cut
# them off after its write-stall timeout (2 s) while a good client, started alongside, gets every
# byte back with no reset or timeout, and end with every connection and buffer accounted for.
non_reading() {
    b=$1; slog=/tmp/srv-$b-nonreading.log
    start_server $slog ringside serve --protocol echo --backend $b --port 0 --write-stall-timeout 2 $SRVARGS
    if [ -z "$PORT" ]; then
        result $b non-reading FAIL "server did not listen"; tail_of $slog; stop_server; return
    fi
    stopreader $PORT 5 1.5 15 >/tmp/sr.out 2>&1 &
    sp=$!
    sleep 0.5
    timeout 60 ringload echo --target 127.0.0.1:$PORT --connections 50 --duration 3s --warmup 0 \
        --timeout ${TMO}s --backend $CLIENT --json >/tmp/nr.json 2>/tmp/nr.err
    lrc=$?
    wait $sp; src=$?
    stop_server
    stalls=$(grep ' stopped' $slog | tail -n 1 | sed -n 's/.*writeStallTimeouts=\([0-9]*\).*/\1/p')
    ok=1
    load_errors /tmp/nr.json || ok=0
    stop_line_ok $slog || ok=0
    [ $lrc = 0 ] && [ $src = 0 ] && [ "$SRV_RC" = 0 ] || ok=0
    d="$(head -n 1 /tmp/sr.out) writeStallTimeouts=${stalls:-?} good: $ERRS load_rc=$lrc server_rc=$SRV_RC $STOP"
    if [ $ok = 1 ]; then result $b non-reading PASS "$d"; else result $b non-reading FAIL "$d"; tail_of $slog 4; tail_of /tmp/nr.err 4; fi
    notices $slog
}

# stop_under_load BACKEND: SIGINT while 100 connections are echoing: the server exits 0 with every
# connection and buffer accounted for, and the client saw no wrong byte (the cut connections are
# expected, so ringload's non-zero exit and its reset count are not failures here).
stop_under_load() {
    b=$1; slog=/tmp/srv-$b-stop.log
    start_server $slog ringside serve --protocol echo --backend $b --port 0 $SRVARGS
    if [ -z "$PORT" ]; then
        result $b stop-under-load FAIL "server did not listen"; tail_of $slog; stop_server; return
    fi
    timeout 60 ringload echo --target 127.0.0.1:$PORT --connections 100 --pipeline 4 --duration 4s --warmup 0 \
        --backend $CLIENT --json >/tmp/sul.json 2>/tmp/sul.err &
    lp=$!
    sleep 2
    stop_server
    wait $lp; lrc=$?
    msgs=$(jnum /tmp/sul.json messages); corrupt=$(jnum /tmp/sul.json corrupt); bad=$(jnum /tmp/sul.json badStatus)
    ok=1
    stop_line_ok $slog || ok=0
    [ "$SRV_RC" = 0 ] && [ "$corrupt" = 0 ] && [ "$bad" = 0 ] && [ "$msgs" != - ] && [ "$msgs" != 0 ] || ok=0
    d="server_rc=$SRV_RC $STOP msgs=$msgs corrupt=$corrupt resets=$(jnum /tmp/sul.json resets) load_rc=$lrc"
    if [ $ok = 1 ]; then result $b stop-under-load PASS "$d"; else result $b stop-under-load FAIL "$d"; tail_of $slog 4; tail_of /tmp/sul.err 4; fi
}

# fallback CHECK REASON-PATTERN [LAUNCHER]: `--backend auto` with io_uring refused must serve on epoll,
# log a line matching REASON-PATTERN, serve exact bytes and stop cleanly.
fallback() {
    c=$1; pat=$2; shift 2
    slog=/tmp/srv-$c.log
    start_server $slog "$@" ringside serve --protocol echo --backend auto --port 0 $SRVARGS
    if [ -z "$PORT" ]; then
        result auto $c FAIL "server did not listen"; tail_of $slog; stop_server; return
    fi
    timeout 60 ringload echo --target 127.0.0.1:$PORT --connections 50 --duration 1s --warmup 0 \
        --backend $CLIENT --json >/tmp/fb.json 2>/tmp/fb.err
    lrc=$?
    stop_server
    reason=$(grep -E "$pat" $slog | head -n 1 | sed 's/.*ringside *: *//' | cut -c1-160)
    ok=1
    load_errors /tmp/fb.json || ok=0
    [ "$BACKEND" = epoll ] && [ -n "$reason" ] && [ $lrc = 0 ] && [ "$SRV_RC" = 0 ] || ok=0
    d="backend=$BACKEND server_rc=$SRV_RC $ERRS reason=\"${reason:-none matching $pat}\""
    if [ $ok = 1 ]; then result auto $c PASS "$d"; else result auto $c FAIL "$d"; tail_of $slog 4; fi
}

# ktls BACKEND VERSION [masked]: HTTPS with the kernel's tls module loaded. Every handshake must hand
# its transmit keys to the kernel (the stop line's "kernelTransmit" equals its "handshakes") where the
# backend can set socket options in order with its sends (epoll; io_uring with socket commands, 6.7+);
# elsewhere, and with RINGSIDE_DISABLE=ktls (masked), none may, and user-space TLS serves. Either way
# ringload decrypts and checks every response: a wrong key or record sequence number fails the run.
ktls_loaded=
ktls() {
    b=$1; v=$2; mode=${3:-}; name=ktls-$v${mode:+-$mode}
    if [ ! -s /etc/rs-tls/cert.pem ]; then result $b $name SKIP "no certificate in the image (openssl missing on the host)"; return; fi
    if [ -z "$ktls_loaded" ]; then
        ktls_loaded=no
        d=/lib/modules/$(uname -r)
        for m in $(cat $d/load-order 2>/dev/null); do insmod $d/$m.ko 2>/tmp/insmod.err || tail_of /tmp/insmod.err 2; done
        grep -q '^tls ' /proc/modules && ktls_loaded=yes
    fi
    if [ "$ktls_loaded" != yes ]; then result $b $name SKIP "the tls module did not load on $(uname -r)"; return; fi
    slog=/tmp/srv-$b-$name.log
    mkdir -p /tmp/www; [ -s /tmp/www/big.bin ] || head -c 300000 /dev/urandom >/tmp/www/big.bin
    env=; [ "$mode" = masked ] && env=RINGSIDE_DISABLE=ktls
    start_server $slog env $env ringside serve --protocol http --backend $b --port 0 --static /tmp/www \
        --tls-cert /etc/rs-tls/cert.pem --tls-key /etc/rs-tls/key.pem $SRVARGS
    if [ -z "$PORT" ]; then
        result $b $name FAIL "server did not listen"; tail_of $slog; stop_server; return
    fi
    timeout 60 ringload http --target 127.0.0.1:$PORT --tls --tls-ca /etc/rs-tls/cert.pem --tls-version $v \
        --connections 20 --duration 1s --warmup 0 --timeout ${TMO}s --backend $CLIENT --json >/tmp/kt.json 2>/tmp/kt.err
    lrc=$?
    # Then (io_uring, not masked) connections that each resume the previous one's session: the tickets
    # were sent as control records through the kernel (TLS 1.3), and a client that could not read one
    # would not resume. (Each extra run costs seconds under TCG: spread over the checks.)
    hrc=0; resumed=skipped; hfail=0
    if [ "$mode" != masked ] && [ $b = uring ]; then
        timeout 60 ringload handshake --target 127.0.0.1:$PORT --tls-ca /etc/rs-tls/cert.pem --tls-version $v \
            --connections 4 --duration 1s --json >/tmp/kth.json 2>>/tmp/kt.err
        hrc=$?
        resumed=$(jnum /tmp/kth.json resumed); hfail=$(jnum /tmp/kth.json handshakeFailures)
    fi
    # And (TLS 1.3, not masked) 300 KB responses: plaintext writes larger than the socket takes at once.
    brc=0; bigmsgs=skipped; bigbad=0
    if [ "$mode" != masked ] && [ $v = 1.3 ]; then
        timeout 60 ringload http --target 127.0.0.1:$PORT --tls --tls-ca /etc/rs-tls/cert.pem --tls-version $v \
            --path /static/big.bin --connections 4 --duration 1s --warmup 0 --timeout ${TMO}s --backend $CLIENT --json \
            >/tmp/ktb.json 2>>/tmp/kt.err
        brc=$?
        bigmsgs=$(jnum /tmp/ktb.json messages); bigbad=$(( $(jnum /tmp/ktb.json corrupt) + $(jnum /tmp/ktb.json badStatus) + $(jnum /tmp/ktb.json resets) ))
    fi
    stop_server
    line=$(grep ' stopped' $slog | tail -n 1)
    hs=$(echo "$line" | sed -n 's/.*tls=handshakes \([0-9]*\).*/\1/p')
    kt=$(echo "$line" | sed -n 's/.*kernelTransmit \([0-9]*\).*/\1/p')
    want=user-space
    if [ "$mode" != masked ] && { [ $b = epoll ] || grep -q 'socket-commands=on' $slog; }; then want=kernel; fi
    ok=1
    load_errors /tmp/kt.json || ok=0
    stop_line_ok $slog || ok=0
    [ $lrc = 0 ] && [ "$SRV_RC" = 0 ] && [ "$BACKEND" = $b ] && [ "${hs:-0}" -gt 0 ] || ok=0
    [ $hrc = 0 ] && [ "$hfail" = 0 ] && [ "$resumed" != - ] && [ "$resumed" != 0 ] || ok=0
    [ $brc = 0 ] && [ "$bigbad" = 0 ] && [ "$bigmsgs" != - ] && [ "$bigmsgs" != 0 ] || ok=0
    if [ $want = kernel ]; then [ "$kt" = "$hs" ] || ok=0; else [ "$kt" = 0 ] || ok=0; fi
    d="want=$want handshakes=${hs:-?} kernelTransmit=${kt:-?} $ERRS load_rc=$lrc resumed=$resumed handshakeFailures=$hfail 300KB-responses=$bigmsgs(bad $bigbad) server_rc=$SRV_RC backend=$BACKEND $STOP"
    if [ $ok = 1 ]; then result $b $name PASS "$d"; else result $b $name FAIL "$d"; tail_of $slog 4; tail_of /tmp/kt.err 4; fi
    notices $slog
}

for b in uring epoll; do
    want echo-burst && burst $b echo
    want echo-burst-live && burst $b echo live
    want http-burst && burst $b http
    want non-reading && non_reading $b
    want stop-under-load && stop_under_load $b
done

if want ktls; then
    ktls uring 1.3; ktls uring 1.2; ktls epoll 1.3; ktls uring 1.3 masked
fi

if ! want sysctl-disabled; then
    :
elif [ -e /proc/sys/kernel/io_uring_disabled ]; then
    sysctl -w kernel.io_uring_disabled=2 >/dev/null
    fallback sysctl-disabled 'io_uring_disabled'
    sysctl -w kernel.io_uring_disabled=0 >/dev/null
else
    result auto sysctl-disabled SKIP "kernel $(uname -r) has no kernel.io_uring_disabled sysctl (added in 6.6)"
fi
want seccomp-enosys && fallback seccomp-enosys 'ENOSYS' noiouring

n=15; [ "$VERBOSE" = 1 ] && n=100000
dmesg | grep -vE '^\[ *[0-9.]+\] *$' | tail -n $n | cut -c1-200 | sed 's/^/  | dmesg: /'
echo "MATRIX-END $K uptime=$(cut -d' ' -f1 /proc/uptime)s"
sync
poweroff -f
