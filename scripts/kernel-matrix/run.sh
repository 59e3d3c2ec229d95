#!/usr/bin/env bash
# Kernel matrix: boots Debian's own kernels (6.1 and the 6.12 LTS, cloud flavour) under
# `qemu-system-x86_64 -accel tcg` with an initramfs holding busybox, the release `ringside` and
# `ringload`, and runs scripts/kernel-matrix/guest-init.sh as PID 1: on io_uring and on epoll, echo and
# HTTP bursts of 500 connections as the very first traffic, a non-reading client, a stop under load;
# then `--backend auto` with kernel.io_uring_disabled=2 and under a seccomp filter refusing io_uring.
# Prints a table kernel x backend x check; exits non-zero on any FAIL or missing line.
#
#   bash scripts/kernel-matrix/run.sh                          # builds the release binaries here
#   bash scripts/kernel-matrix/run.sh --bin-dir /path/.build/release
#   bash scripts/kernel-matrix/run.sh --kernels 6.1 --only echo-burst --verbose
#
# Kernels are fetched once with `apt-get download` and unpacked with `dpkg-deb -x` into .build-kernels/
# (git-ignored), then reused; KERNEL_PACKAGES="pkg1 pkg2" picks exact packages instead of the newest.
set -euo pipefail
shopt -s inherit_errexit
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cache=${KERNEL_CACHE:-$repo/.build-kernels}

bin_dir=""; ringside=""; ringload=""; series="6.1 6.12"; conns=500; secs=5; client=epoll
guest_timeout=240; jobs=1; only=""; verbose=0; srvargs=""; niceness=0; qemu_extra=${MATRIX_QEMU_EXTRA:-}
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; cat <<'EOF'
Options:
  --bin-dir DIR       take ringside and ringload from DIR (default: swift build -c release here)
  --ringside PATH     the ringside binary      --ringload PATH   the ringload binary
  --kernels "6.1 6.12"  kernel series          --conns N         burst connections (500)
  --secs S            burst load seconds, a whole number (5); a response is due within S-1 s,
                      so a connection left unanswered counts as a timeout
  --client uring|epoll|auto   ringload's own backend (epoll: every reset it counts is the server's)
  --timeout S         per-guest timeout (240)  --jobs N          guests booted at once (1)
  --only a,b          run only these checks (echo-burst,echo-burst-live,http-burst,non-reading,stop-under-load,
                      ktls,sysctl-disabled,seccomp-enosys)
  --verbose           the guest prints each server's whole log into the serial log
  --server-args "A B" extra `ringside serve` arguments in the guest (e.g. "--log-level debug")
  --nice N            run qemu at this niceness (e.g. -5 on a host shared with builds: TCG guests
                      starved of CPU miss their deadlines; negative values need root)
EOF
}
while (($#)); do
    case $1 in
        --bin-dir) bin_dir=$2; shift 2 ;;
        --ringside) ringside=$2; shift 2 ;;
        --ringload) ringload=$2; shift 2 ;;
        --kernels) series=$2; shift 2 ;;
        --conns) conns=$2; shift 2 ;;
        --secs) secs=$2; shift 2 ;;
        --client) client=$2; shift 2 ;;
        --timeout) guest_timeout=$2; shift 2 ;;
        --jobs) jobs=$2; shift 2 ;;
        --only) only=$2; shift 2 ;;
        --verbose) verbose=1; shift ;;
        --server-args) srvargs=$2; shift 2 ;;
        --nice) niceness=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "kernel-matrix: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done
[[ $secs =~ ^[0-9]+$ ]] && ((secs >= 2)) || { echo "kernel-matrix: --secs takes a whole number >= 2" >&2; exit 2; }
t_start=$(date +%s)
say() { echo "kernel-matrix: $*" >&2; }

# --- tools ------------------------------------------------------------------------------------------
apt_install() {
    local SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    say "installing $*"
    if ! DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null; then
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
    fi
}
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
dpkg -s busybox-static >/dev/null 2>&1 || need+=(busybox-static)
command -v cpio >/dev/null || need+=(cpio)
command -v gcc >/dev/null || need+=(gcc)
[ -e /usr/include/linux/seccomp.h ] || need+=(linux-libc-dev)
[ -e /usr/lib/x86_64-linux-gnu/libc.a ] || need+=(libc6-dev)
((${#need[@]} == 0)) || apt_install "${need[@]}"
busybox=$(command -v busybox)
if ldd "$busybox" >/dev/null 2>&1; then say "$busybox is not static (install busybox-static)"; exit 1; fi

# --- binaries ---------------------------------------------------------------------------------------
if [[ -n $bin_dir ]]; then
    ringside=${ringside:-$bin_dir/ringside}; ringload=${ringload:-$bin_dir/ringload}
elif [[ -z $ringside || -z $ringload ]]; then
    say "release binaries: scripts/release-bin.sh (RINGSIDE_RELEASE_BIN, or swift build -c release)"
    bin=$(bash "$repo/scripts/release-bin.sh")
    ringside=${ringside:-$bin/ringside}; ringload=${ringload:-$bin/ringload}
fi
for b in "$ringside" "$ringload"; do [[ -x $b ]] || { say "no executable $b"; exit 1; }; done
say "binaries: $ringside $ringload"

# --- kernels ----------------------------------------------------------------------------------------
mkdir -p "$cache/debs" "$cache/logs"
# pattern_for SERIES: the package-name pattern of that series' cloud kernel.
pattern_for() {
    case $1 in
        6.1) echo '^linux-image-6\.1\.0-[0-9]+-cloud-amd64-unsigned$' ;;
        *) echo "^linux-image-${1//./\\.}\\.[0-9]+\\+deb[0-9]+-cloud-amd64-unsigned\$" ;;
    esac
}
# kernel_for SERIES: prints "PACKAGE" of an unpacked kernel in the cache (newest), or fetches the newest
# the apt sources offer. Prints nothing (and says why) when there is none.
kernel_for() {
    local s=$1 pat pkg
    pat=$(pattern_for "$s")
    if [[ -n ${KERNEL_PACKAGES:-} ]]; then
        pkg=$(tr ' ' '\n' <<<"$KERNEL_PACKAGES" | grep -E "$pat" | head -n 1 || true)
    else
        pkg=$(find "$cache" -maxdepth 1 -mindepth 1 -type d -printf '%f\n' | grep -E "$pat" | sort -V | tail -n 1 || true)
        if [[ -z $pkg ]]; then
            pkg=$(apt-cache search --names-only "$pat" | cut -d' ' -f1 | grep -E "$pat" | sort -V | tail -n 1 || true)
            if [[ -z $pkg ]]; then
                apt-get update -qq >&2 || true
                pkg=$(apt-cache search --names-only "$pat" | cut -d' ' -f1 | grep -E "$pat" | sort -V | tail -n 1 || true)
            fi
        fi
    fi
    if [[ -z $pkg ]]; then
        say "NO KERNEL for $s: no package matching $pat in the cache or the apt sources" \
            "(6.12 on bookworm comes from bookworm-security/bookworm-backports; check apt-cache policy)"
        return
    fi
    if [[ ! -d $cache/$pkg/boot ]]; then
        say "fetching $pkg"
        if ! (cd "$cache/debs" && apt-get download "$pkg" >/dev/null 2>&1); then
            say "NO KERNEL for $s: apt-get download $pkg failed"; return
        fi
        local deb
        deb=$(ls -t "$cache/debs/${pkg}_"*.deb | head -n 1)
        rm -rf "$cache/$pkg.tmp" && mkdir -p "$cache/$pkg.tmp"
        dpkg-deb -x "$deb" "$cache/$pkg.tmp"
        dpkg-deb -f "$deb" Version >"$cache/$pkg.tmp/version"
        mv "$cache/$pkg.tmp" "$cache/$pkg"
        rm -f "$deb"
    fi
    echo "$pkg"
}

# --- initramfs --------------------------------------------------------------------------------------
build_initramfs() {
    local root out
    root=$(mktemp -d "$cache/initramfs-root.XXXXXX"); out=$(mktemp "$cache/initramfs.XXXXXX.cpio.gz")
    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,etc,root,lib64}
    cp "$busybox" "$root/bin/busybox"
    local app
    for app in $("$busybox" --list-full); do
        [[ -e $root/$app || -L $root/$app ]] || ln -s /bin/busybox "$root/$app"
    done
    cp "$ringside" "$root/bin/ringside"; cp "$ringload" "$root/bin/ringload"
    gcc -static -O2 -Wall -Wextra -o "$root/bin/noiouring" "$here/noiouring.c"
    gcc -static -O2 -Wall -Wextra -o "$root/bin/stopreader" "$here/stopreader.c"
    # Every shared library ldd names, at the path it names, and the dynamic loader; plus liburing.so.2,
    # which the engine opens with dlopen (ldd does not name it).
    local lib uring_lib
    uring_lib=$(ldconfig -p | awk '/liburing\.so\.2 .*x86-64/ && !found {print $NF; found = 1}')
    [[ -n $uring_lib ]] || { say "liburing.so.2 not found (install liburing2)"; exit 1; }
    for lib in $( (ldd "$ringside"; ldd "$ringload") | grep -oE '^[[:space:]]+(/[^ ]+|[^ ]+ => /[^ ]+)' \
                  | sed 's/.*=> //; s/^[[:space:]]*//' | sort -u) $uring_lib; do
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
    printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
    printf 'root:x:0:\n' >"$root/etc/group"
    printf '127.0.0.1 localhost\n' >"$root/etc/hosts"
    cp "$here/guest-init.sh" "$root/init"; chmod 755 "$root/init"
    # kTLS (check ktls): each kernel's tls module and the crypto modules AES-GCM needs, uncompressed
    # (busybox insmod), in load order, and a certificate for the TLS server.
    local p kdir kver m f
    for p in "${pkgs[@]}"; do
        [[ -n $p ]] || continue
        for kdir in "$cache/$p"/lib/modules/*; do
            kver=$(basename "$kdir"); mkdir -p "$root/lib/modules/$kver"
            for m in gf128mul ghash-generic crypto_null ctr gcm tls; do
                f=$(find "$kdir/kernel" -name "$m.ko" -o -name "$m.ko.xz" | head -n 1)
                [[ -n $f ]] || continue  # built in
                if [[ $f == *.xz ]]; then xz -dc "$f" >"$root/lib/modules/$kver/$m.ko"; else cp "$f" "$root/lib/modules/$kver/$m.ko"; fi
                echo "$m" >>"$root/lib/modules/$kver/load-order"
            done
        done
    done
    if command -v openssl >/dev/null; then
        mkdir -p "$root/etc/rs-tls"
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
            -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" -keyout "$root/etc/rs-tls/key.pem" \
            -out "$root/etc/rs-tls/cert.pem" 2>/dev/null || say "openssl could not make a certificate: check ktls will SKIP"
    fi
    mknod -m 600 "$root/dev/console" c 5 1 2>/dev/null || true
    mknod -m 666 "$root/dev/null" c 1 3 2>/dev/null || true
    (cd "$root" && find . -print0 | cpio --null -o -H newc -R 0:0 --quiet) | gzip -1 >"$out"
    rm -rf "$root"
    echo "$out"
}

# --- run --------------------------------------------------------------------------------------------
pkgs=(); labels=()
for s in $series; do
    pkg=$(kernel_for "$s")
    if [[ -n $pkg ]]; then
        pkgs+=("$pkg")
        v=$(cat "$cache/$pkg/version"); labels+=("${v%%-*}")
    else
        pkgs+=(""); labels+=("$s-missing")
    fi
done
initrd=$(build_initramfs)
trap 'rm -f "$initrd"' EXIT
say "initramfs $(du -h "$initrd" | cut -f1) ($initrd)"

boot() { # PACKAGE LABEL LOG
    local kernel
    kernel=$(ls "$cache/$1"/boot/vmlinuz-* | head -n 1)
    local t0; t0=$(date +%s)
    # shellcheck disable=SC2086 # qemu_extra is a list of words
    timeout --kill-after=5 "$guest_timeout" nice -n "$niceness" qemu-system-x86_64 -accel tcg -m 1G -smp 2 -nographic -no-reboot $qemu_extra \
        -kernel "$kernel" -initrd "$initrd" \
        -append "console=ttyS0 quiet panic=-1 rsmatrix.kernel=$2 rsmatrix.conns=$conns rsmatrix.secs=$secs rsmatrix.timeout=$((secs - 1)) rsmatrix.client=$client${only:+ rsmatrix.checks=$only} rsmatrix.verbose=$verbose${srvargs:+ rsmatrix.srvargs=${srvargs// /,}}" \
        </dev/null >"$3" 2>&1 || echo "QEMU-EXIT $? (timeout ${guest_timeout}s is 124)" >>"$3"
    echo "HOST-SECONDS $(( $(date +%s) - t0 ))" >>"$3"
}
running=0
for i in "${!pkgs[@]}"; do
    [[ -n ${pkgs[$i]} ]] || continue
    say "booting ${pkgs[$i]} (${labels[$i]}) -> $cache/logs/${labels[$i]}.log"
    boot "${pkgs[$i]}" "${labels[$i]}" "$cache/logs/${labels[$i]}.log" &
    running=$((running + 1))
    if ((running >= jobs)); then wait -n || true; running=$((running - 1)); fi
done
wait

# --- table ------------------------------------------------------------------------------------------
checks=(echo-burst echo-burst-live http-burst non-reading stop-under-load)
fail=0
rows=()
for i in "${!labels[@]}"; do
    k=${labels[$i]}; log=$cache/logs/$k.log
    if [[ -z ${pkgs[$i]} ]]; then
        rows+=("$k|-|kernel|FAIL|no Debian package for this kernel series (see above)"); fail=1; continue
    fi
    # Serial output may put terminal escapes before a line: keep each line from its MATRIX marker on.
    norm=$(tr -d '\r' <"$log" | sed -n 's/.*\(MATRIX[ -]\)/\1/p')
    lines=$(grep -a '^MATRIX ' <<<"$norm" || true)
    expect=()
    for b in uring epoll; do for c in "${checks[@]}"; do expect+=("$b $c"); done; done
    expect+=("uring ktls-1.3" "uring ktls-1.2" "epoll ktls-1.3" "uring ktls-1.3-masked")
    expect+=("auto sysctl-disabled" "auto seccomp-enosys")
    for e in "${expect[@]}"; do
        c=${e#* }
        [[ -z $only || ,$only, == *,$c,* || ( $c == ktls* && ,$only, == *,ktls,* ) ]] || continue
        line=$(grep -a "^MATRIX $k $e " <<<"$lines" | tail -n 1 || true)
        if [[ -z $line ]]; then
            rows+=("$k|${e% *}|${e#* }|FAIL|missing (guest died or timed out; see $log)"); fail=1; continue
        fi
        read -r _ _ b c st detail <<<"$line"
        [[ $st == PASS || $st == SKIP ]] || fail=1
        rows+=("$k|$b|$c|$st|$detail")
    done
    end=$(grep -a '^MATRIX-END ' <<<"$norm" || true)
    [[ -n $end ]] || { rows+=("$k|-|guest-end|FAIL|no MATRIX-END line (see $log)"); fail=1; }
    boot_line=$(grep -a '^MATRIX-BOOT' <<<"$norm" || true)
    say "$k: ${boot_line:-no MATRIX-BOOT line}; ${end:-no MATRIX-END line}; $(grep -a '^HOST-SECONDS' "$log")"
    say "$k: probes: $(grep -a '^MATRIX-PROBES' <<<"$norm" | head -n 1 | cut -d' ' -f2- || true)"
    # The guest's uptime when /init starts is the boot time; ~5-15 s under TCG on an idle 2-core host.
    up=$(sed -n 's/.* uptime=\([0-9]*\).*/\1/p' <<<"$boot_line")
    if [[ -n $up ]] && ((up > 40)); then
        say "WARNING: $k took ${up} s to boot (normally 5-15 s): the host is overloaded; TCG timings are unreliable"
    fi
done
printf '%s\n' "${rows[@]}" | awk -F'|' '
    { k[NR]=$1; b[NR]=$2; c[NR]=$3; s[NR]=$4; d[NR]=$5 }
    END {
        printf "%-10s %-6s %-16s %-5s %s\n", "kernel", "backend", "check", "result", "detail"
        for (i = 1; i <= NR; i++) printf "%-10s %-6s %-16s %-5s %s\n", k[i], b[i], c[i], s[i], d[i]
    }'
say "total $(( $(date +%s) - t_start )) s; serial logs in $cache/logs/"
if ((fail)); then say "FAILED"; exit 1; fi
say "all checks passed"
