#!/usr/bin/env bash
# echo-bench.sh - compare TCP echo servers on 127.0.0.1 with bench/c/build/echoload.
#
# Usage:
#   bench/echo-bench.sh [--duration S] [--warmup S] [--size B] [--connections N]
#                       [--pipeline D] [--reps R] [--out FILE]
#                       [--server-cpu C] [--client-cpu C] [--start-timeout S]
#                       [--wait-idle S] NAME=COMMAND [NAME=COMMAND ...]
#   defaults: --duration 10 --warmup 1 --size 64 --connections 50 --pipeline 1
#             --reps 3 --server-cpu 0 --client-cpu 1 --start-timeout 60
#
# COMMAND is run as given (through `bash -c "exec COMMAND"`) and must print a
# line containing "listening on HOST:PORT" on stdout; the port is taken from
# that line and the load always targets 127.0.0.1:PORT.  COMMAND should exec
# the server binary itself (not e.g. `swift run`), because the server's CPU
# time is read from /proc/PID/stat of the process we started, and a child's
# time would not show up there.  The server must exit with status 0 on SIGINT.
#
# Per repetition, servers run interleaved (A B C A B C ...).  For each run:
#   1. start the server pinned with `taskset -c SERVER_CPU` (default 0),
#   2. wait for the "listening on" line (bounded by --start-timeout),
#   3. run echoload pinned with `taskset -c CLIENT_CPU` (default 1),
#   4. SIGINT the server, wait (bounded), check its exit status is 0.
#
# Server CPU accounting: utime+stime of the server are read from
# /proc/PID/stat (clock ticks, CLK_TCK) by echoload itself (--server-pid),
# right when its warm-up ends and right when its measured window ends.  That
# makes the CPU window identical to the window in which msgs are counted, with
# no connect/warm-up/teardown work included and no timing skew from a
# `sleep WARMUP` in this script (connecting 500 sockets takes a variable
# amount of time before the warm-up even starts).
#   server_cpu_us_per_msg = (delta_ticks / CLK_TCK * 1e6) / msgs
# Resolution is one tick (10 ms at CLK_TCK=100), i.e. <1% for runs >= 3 s of
# a busy server.  The script additionally samples /proc/PID/stat itself just
# before echoload starts and just after it exits; that figure (including
# connection setup, warm-up and teardown) is recorded as server_ticks_total in
# the JSON for cross-checking only.
#
# --wait-idle S (default 0 = off): before each run wait up to S seconds for
# the machine to be >= 95% idle for 2 consecutive seconds (useful on a shared
# box; other_cpu_pct in the results shows how much interference remained).
#
# Output: a table on stdout (medians over reps, ratios vs the first server)
# and JSON lines (one "meta", one "run" per run, one "summary" per server) in
# --out FILE (default bench/results/echo-YYYYmmdd-HHMMSS.jsonl).
# Exit status: 0 if every run was clean, 1 if any run had errors (echoload
# errors, server failed to start, non-zero server exit), 2 on usage errors.
set -uo pipefail

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ECHOLOAD="$SCRIPT_DIR/c/build/echoload"

duration=10
warmup=1
size=64
connections=50
pipeline=1
reps=3
out=""
server_cpu=0
client_cpu=1
start_timeout=60
stop_timeout=10
connect_timeout=20
wait_idle=0

usage() {
    sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

is_num() { [[ $1 =~ ^[0-9]+([.][0-9]+)?$ ]]; }
is_int() { [[ $1 =~ ^[0-9]+$ ]]; }

names=()
cmds=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --duration)      duration=${2:?}; shift 2 ;;
        --warmup)        warmup=${2:?}; shift 2 ;;
        --size)          size=${2:?}; shift 2 ;;
        --connections)   connections=${2:?}; shift 2 ;;
        --pipeline)      pipeline=${2:?}; shift 2 ;;
        --reps)          reps=${2:?}; shift 2 ;;
        --out)           out=${2:?}; shift 2 ;;
        --server-cpu)    server_cpu=${2:?}; shift 2 ;;
        --client-cpu)    client_cpu=${2:?}; shift 2 ;;
        --start-timeout) start_timeout=${2:?}; shift 2 ;;
        --wait-idle)     wait_idle=${2:?}; shift 2 ;;
        -h|--help)       usage ;;
        --*)             echo "echo-bench: unknown option $1" >&2; usage ;;
        *=*)             names+=("${1%%=*}"); cmds+=("${1#*=}"); shift ;;
        *)               echo "echo-bench: expected NAME=COMMAND, got '$1'" >&2; usage ;;
    esac
done
[[ ${#names[@]} -ge 1 ]] || { echo "echo-bench: no NAME=COMMAND given" >&2; usage; }
is_num "$duration" && is_num "$warmup" && is_num "$start_timeout" && is_int "$wait_idle" || usage
is_int "$size" && is_int "$connections" && is_int "$pipeline" && is_int "$reps" || usage
is_int "$server_cpu" && is_int "$client_cpu" || usage
[[ $reps -ge 1 && $connections -ge 1 && $size -ge 1 && $pipeline -ge 1 ]] || usage
for n in "${names[@]}"; do
    [[ $n =~ ^[A-Za-z0-9._+-]+$ ]] || { echo "echo-bench: bad NAME '$n' (use [A-Za-z0-9._+-])" >&2; exit 2; }
done
if [[ $server_cpu -eq $client_cpu ]]; then
    echo "echo-bench: warning: server and client pinned to the same CPU $server_cpu" >&2
fi
ncpu=$(nproc --all)
if [[ $server_cpu -ge $ncpu || $client_cpu -ge $ncpu ]]; then
    echo "echo-bench: only $ncpu CPUs; choose --server-cpu/--client-cpu below $ncpu" >&2
    exit 2
fi

make -s -C "$SCRIPT_DIR/c" >&2 || { echo "echo-bench: building bench/c failed" >&2; exit 1; }

if [[ -z $out ]]; then
    mkdir -p "$SCRIPT_DIR/results"
    out="$SCRIPT_DIR/results/echo-$(date +%Y%m%d-%H%M%S).jsonl"
else
    mkdir -p "$(dirname "$out")"
fi
: >"$out" || exit 1

clk_tck=$(getconf CLK_TCK)
work=$(mktemp -d /tmp/echo-bench.XXXXXX)
server_pid=""

cleanup() {
    if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
        kill -KILL "$server_pid" 2>/dev/null
        wait "$server_pid" 2>/dev/null
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'echo "echo-bench: interrupted" >&2; exit 130' INT TERM

json_str() { # JSON-quote $1
    local s=${1//\\/\\\\}
    s=${s//\"/\\\"}
    s=${s//$'\t'/\\t}
    s=${s//$'\n'/\\n}
    printf '"%s"' "$s"
}

# utime+stime (ticks) of pid, or empty
proc_ticks() {
    local stat rest
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
    rest=${stat##*) }
    # fields after "comm)": state=3 ... utime=14 stime=15 -> positions 12,13
    awk '{ print $12 + $13 }' <<<"$rest"
}

# wait until pid is gone (or a zombie), at most $2 seconds; return 0 if gone
wait_gone() {
    local pid=$1 limit=$2 i=0 n state
    n=$(awk -v t="$limit" 'BEGIN { printf "%d", t * 20 }')
    while :; do
        state=$(awk '{ s = $0; sub(/.*\) /, "", s); split(s, a, " "); print a[1] }' "/proc/$pid/stat" 2>/dev/null) || return 0
        [[ -z $state || $state == Z ]] && return 0
        (( i >= n )) && return 1
        sleep 0.05
        i=$((i + 1))
    done
}

# wait up to $1 s until all CPUs together are >= 95% idle for 2 consecutive 1 s samples
wait_for_idle() {
    local end=$(( $(date +%s) + $1 )) good=0 a b
    while (( $(date +%s) < end )); do
        a=$(head -n 1 /proc/stat); sleep 1; b=$(head -n 1 /proc/stat)
        if awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " "); t = 0
                for (i = 2; i <= 9; i++) t += y[i] - x[i]
                idle = (y[5] - x[5]) + (y[6] - x[6]); exit !(t > 0 && idle * 100 >= 95 * t) }'; then
            good=$((good + 1))
            (( good >= 2 )) && return 0
        else
            good=0
        fi
    done
    echo "echo-bench: machine not idle after ${1}s, running anyway" >&2
    return 1
}

kv() { # kv KEY LINE -> value of KEY=value in LINE
    awk -v k="$1" '{ for (i = 1; i <= NF; i++) { n = index($i, "="); if (substr($i, 1, n - 1) == k) { print substr($i, n + 1); exit } } }' <<<"$2"
}

{
    printf '{"type":"meta","date":%s,"host":%s,"kernel":%s,"ncpu":%s,"clk_tck":%s,' \
        "$(json_str "$(date -Is)")" "$(json_str "$(hostname)")" "$(json_str "$(uname -r)")" "$ncpu" "$clk_tck"
    printf '"git":%s,"duration":%s,"warmup":%s,"size":%s,"connections":%s,"pipeline":%s,"reps":%s,' \
        "$(json_str "$(git -C "$SCRIPT_DIR" rev-parse --short HEAD 2>/dev/null || echo unknown)")" \
        "$duration" "$warmup" "$size" "$connections" "$pipeline" "$reps"
    printf '"server_cpu":%s,"client_cpu":%s,"wait_idle":%s}\n' "$server_cpu" "$client_cpu" "$wait_idle"
} >>"$out"

results="$work/results.tsv" # name rep msgs_per_sec cpu_us p50 p99 client_cpu server_cpu errors ok other_cpu
: >"$results"
any_fail=0
load_timeout=$(awk -v w="$warmup" -v d="$duration" -v c="$connect_timeout" 'BEGIN { printf "%d", w + d + c + 30 }')

echo "echo-bench: ${#names[@]} server(s) x $reps rep(s): duration=${duration}s warmup=${warmup}s size=$size connections=$connections pipeline=$pipeline server_cpu=$server_cpu client_cpu=$client_cpu" >&2

for ((rep = 1; rep <= reps; rep++)); do
    for idx in "${!names[@]}"; do
        name=${names[$idx]}
        cmd=${cmds[$idx]}
        sout="$work/$name.$rep.out"
        serr="$work/$name.$rep.err"
        note=""
        line=""
        load_rc=""
        server_rc=""
        port=""
        ticks_total=""

        (( wait_idle > 0 )) && wait_for_idle "$wait_idle"
        # SIGINT/SIGTERM are reset to default: bash makes background jobs
        # ignore SIGINT, and SIG_IGN would survive the exec.
        env --default-signal=INT,TERM taskset -c "$server_cpu" bash -c "exec $cmd" \
            >"$sout" 2>"$serr" </dev/null &
        server_pid=$!

        # wait for "listening on HOST:PORT"
        deadline=$(( $(date +%s%N) + $(awk -v t="$start_timeout" 'BEGIN { printf "%d", t * 1e9 }') ))
        while :; do
            l=$(grep -m1 -o 'listening on [^ ]*:[0-9][0-9]*' "$sout" 2>/dev/null)
            if [[ -n $l ]]; then
                hostport=${l#listening on }
                port=${hostport##*:}
                host=${hostport%:*}
                case "$host" in
                    127.0.0.1|localhost|0.0.0.0|'[::]'|'::'|'*') ;;
                    *) echo "echo-bench: $name listens on $host; connecting to 127.0.0.1:$port anyway" >&2 ;;
                esac
                break
            fi
            if ! kill -0 "$server_pid" 2>/dev/null || wait_gone "$server_pid" 0; then
                note="server exited before listening"
                break
            fi
            if (( $(date +%s%N) > deadline )); then
                note="no 'listening on' line within ${start_timeout}s"
                break
            fi
            sleep 0.05
        done

        if [[ -n $port ]]; then
            t0=$(proc_ticks "$server_pid")
            line=$(timeout -k 2 "$load_timeout" taskset -c "$client_cpu" "$ECHOLOAD" \
                --target "127.0.0.1:$port" --connections "$connections" --size "$size" \
                --duration "$duration" --warmup "$warmup" --pipeline "$pipeline" \
                --connect-timeout "$connect_timeout" --server-pid "$server_pid" \
                2>"$work/$name.$rep.load.err")
            load_rc=$?
            t1=$(proc_ticks "$server_pid")
            [[ -n $t0 && -n $t1 ]] && ticks_total=$((t1 - t0))
            if [[ $load_rc -ne 0 ]]; then
                note="echoload exit $load_rc"
                sed "s/^/    /" "$work/$name.$rep.load.err" | head -n 5 >&2
            fi
        fi

        # stop the server: SIGINT, then SIGKILL if it does not exit in time
        if kill -0 "$server_pid" 2>/dev/null; then
            kill -INT "$server_pid" 2>/dev/null
            if ! wait_gone "$server_pid" "$stop_timeout"; then
                note="${note:+$note; }did not exit within ${stop_timeout}s of SIGINT (killed)"
                kill -KILL "$server_pid" 2>/dev/null
            fi
        fi
        wait "$server_pid" 2>/dev/null
        server_rc=$?
        server_pid=""
        if [[ $server_rc -ne 0 ]]; then
            note="${note:+$note; }server exit status $server_rc"
        fi

        if [[ -n $line ]]; then
            msgs_per_sec=$(kv msgs_per_sec "$line")
            cpu_us=$(kv server_cpu_us_per_msg "$line")
            p50=$(kv p50_us "$line")
            p99=$(kv p99_us "$line")
            ccpu=$(kv client_cpu_pct "$line")
            scpu=$(kv server_cpu_pct "$line")
            errs=$(kv errors "$line")
            other=$(kv other_cpu_pct "$line")
        else
            msgs_per_sec=NA; cpu_us=NA; p50=NA; p99=NA; ccpu=NA; scpu=NA; errs=NA; other=NA
        fi
        ok=1
        [[ -n $note ]] && ok=0
        [[ $ok -eq 0 ]] && any_fail=1
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$rep" "$msgs_per_sec" "$cpu_us" \
            "$p50" "$p99" "$ccpu" "$scpu" "$errs" "$ok" "${other:-NA}" >>"$results"

        printf '  rep %d %-16s %s\n' "$rep" "$name" \
            "${line:-(no result)}${note:+  !! $note}" >&2
        if [[ -n $note && -s $serr ]]; then
            tail -n 5 "$serr" | sed 's/^/    server stderr: /' >&2
        fi

        # JSON line: every key=value from echoload, numbers as numbers
        {
            printf '{"type":"run","name":%s,"command":%s,"rep":%d,' "$(json_str "$name")" "$(json_str "$cmd")" "$rep"
            printf '"duration":%s,"warmup":%s,"size":%s,"connections":%s,"pipeline":%s,' \
                "$duration" "$warmup" "$size" "$connections" "$pipeline"
            printf '"port":%s,"server_exit":%s,"echoload_exit":%s,"server_ticks_total":%s,"ok":%s,"note":%s' \
                "${port:-null}" "${server_rc:-null}" "${load_rc:-null}" "${ticks_total:-null}" \
                "$([[ $ok -eq 1 ]] && echo true || echo false)" "$(json_str "$note")"
            awk '{ for (i = 1; i <= NF; i++) { n = index($i, "="); if (!n) continue;
                     k = substr($i, 1, n - 1); v = substr($i, n + 1);
                     if (k == "connections" || k == "size" || k == "pipeline") continue;
                     if (v !~ /^-?[0-9]+([.][0-9]+)?$/) v = "null";
                     printf ",\"%s\":%s", k, v } }' <<<"$line"
            printf '}\n'
        } >>"$out"
    done
done

# Summary: medians over reps per server (runs without a number are skipped),
# ratios vs the first server.  Lower is better for us/msg and latencies.
names_list=$(printf '%s\n' "${names[@]}")
awk -F'\t' -v order="$names_list" -v out="$out" -v reps="$reps" '
function median(list,    a, n, i, j, t) {
    n = split(list, a, " ")
    if (n == 0) return "NA"
    for (i = 2; i <= n; i++) { t = a[i] + 0; j = i - 1
        while (j >= 1 && a[j] + 0 > t) { a[j + 1] = a[j]; j-- } a[j + 1] = t }
    if (n % 2) return a[(n + 1) / 2] + 0
    return (a[n / 2] + a[n / 2 + 1]) / 2
}
function add(k, v) { if (clean && v != "NA" && v != "") vals[k] = vals[k] " " v }
function ratio(v, base) { return (v == "NA" || base == "NA" || base == 0) ? "NA" : sprintf("%.2f", v / base) }
function jnum(v) { return v == "NA" ? "null" : v }
{
    n = $1; cnt[n]++; ok[n] += $10; clean = ($10 == 1)  # medians over clean runs only
    add(n SUBSEP "rate", $3); add(n SUBSEP "cpu", $4); add(n SUBSEP "p50", $5)
    add(n SUBSEP "p99", $6); add(n SUBSEP "ccpu", $7); add(n SUBSEP "scpu", $8)
    add(n SUBSEP "oth", $11)
    if ($9 != "NA") errs[n] += $9; else errs[n] += 0
}
END {
    nn = split(order, names, "\n")
    printf "\n%-14s %4s %12s %11s %9s %9s %6s %6s %6s %6s | %8s %8s %6s %6s\n",
        "name", "reps", "msgs/s", "srv_us/msg", "p50_us", "p99_us", "cli%", "srv%", "oth%", "errors",
        "x_msgs/s", "x_us/msg", "x_p50", "x_p99"
    for (i = 1; i <= nn; i++) {
        n = names[i]
        r = median(vals[n SUBSEP "rate"]); c = median(vals[n SUBSEP "cpu"])
        p5 = median(vals[n SUBSEP "p50"]); p9 = median(vals[n SUBSEP "p99"])
        cc = median(vals[n SUBSEP "ccpu"]); sc = median(vals[n SUBSEP "scpu"])
        ot = median(vals[n SUBSEP "oth"]); if (ot != "NA" && ot > 10) noisy = 1
        if (i == 1) { br = r; bc = c; b5 = p5; b9 = p9 }
        rr = ratio(r, br); rc = ratio(c, bc); r5 = ratio(p5, b5); r9 = ratio(p9, b9)
        printf "%-14s %2d/%-2d %11s %11s %9s %9s %6s %6s %6s %6d | %8s %8s %6s %6s\n",
            n, ok[n], cnt[n], (r == "NA" ? r : sprintf("%.0f", r)), (c == "NA" ? c : sprintf("%.3f", c)),
            (p5 == "NA" ? p5 : sprintf("%.1f", p5)), (p9 == "NA" ? p9 : sprintf("%.1f", p9)),
            (cc == "NA" ? cc : sprintf("%.1f", cc)), (sc == "NA" ? sc : sprintf("%.1f", sc)),
            (ot == "NA" ? ot : sprintf("%.1f", ot)), errs[n],
            rr, rc, r5, r9
        printf "{\"type\":\"summary\",\"name\":\"%s\",\"reps\":%d,\"reps_ok\":%d,\"msgs_per_sec\":%s,\"server_cpu_us_per_msg\":%s,\"p50_us\":%s,\"p99_us\":%s,\"client_cpu_pct\":%s,\"server_cpu_pct\":%s,\"other_cpu_pct\":%s,\"errors\":%d,\"ratio_msgs_per_sec\":%s,\"ratio_server_cpu_us_per_msg\":%s,\"ratio_p50\":%s,\"ratio_p99\":%s}\n",
            n, cnt[n], ok[n], jnum(r), jnum(c), jnum(p5), jnum(p9), jnum(cc), jnum(sc), jnum(ot), errs[n],
            (rr == "NA" ? "null" : rr), (rc == "NA" ? "null" : rc), (r5 == "NA" ? "null" : r5),
            (r9 == "NA" ? "null" : r9) >> out
    }
    printf "(medians over clean reps; reps = clean/total; x_* = ratio vs %s; cli%% ~100 means client-bound;\n", names[1]
    printf " oth%% = CPU used by other processes/softirq during the window, in %% of one CPU)\n"
    if (noisy) printf "WARNING: other CPU activity > 10%% of a CPU during the runs; throughput numbers are disturbed\n"
}' "$results"
echo "results: $out"
[[ $any_fail -eq 0 ]]
