#!/usr/bin/env bash
# nginx as a benchmark peer: Debian's nginx-light (installed where missing), one worker process in the
# foreground (master_process off, so this pid is the one serving and its /proc CPU times are the
# server's), access log off, sendfile on, keep-alive without a request cap; `GET /plaintext` answers
# "Hello, World!" like Ringside's route. Prints `listening on 127.0.0.1:PORT` (a free port), then
# execs nginx; SIGINT stops it. Usage: bench/nginx-peer.sh [--static DIR] [--tls CERT KEY]
# (DIR served under /static/; --tls: HTTPS with that certificate, TLS 1.2/1.3, a shared session cache)
set -euo pipefail
static=""; tls_cert=""; tls_key=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --static) static=$(realpath "$2"); shift 2;;
        --tls) tls_cert=$(realpath "$2"); tls_key=$(realpath "$3"); shift 3;;
        *) echo "unknown option $1" >&2; exit 2;;
    esac
done
if ! command -v nginx >/dev/null && [[ ! -x /usr/sbin/nginx ]]; then
    apt-get install -y -qq nginx-light >/dev/null 2>&1 || { apt-get update -qq >/dev/null && apt-get install -y -qq nginx-light >/dev/null; }
    # The package starts a system nginx on port 80: stop it, the peer runs its own.
    (systemctl stop nginx || service nginx stop || pkill -x nginx) >/dev/null 2>&1 || true
fi
dir=$(mktemp -d /tmp/nginx-peer.XXXXXX)
static_block=""
[[ -n $static ]] && static_block="location /static/ { alias $static/; etag on; }"
tls_block=""
[[ -n $tls_cert ]] && tls_block="ssl_certificate $tls_cert; ssl_certificate_key $tls_key; ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:SSL:10m; ssl_session_tickets on;"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$dir/nginx.conf" <<CONF
worker_processes 1;
master_process off;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 20000; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000000;
    keepalive_timeout 60s;
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    server {
        listen 127.0.0.1:$port${tls_cert:+ ssl};
        $tls_block
        location = /plaintext { default_type text/plain; return 200 "Hello, World!"; }
        $static_block
    }
}
CONF
echo "listening on 127.0.0.1:$port"
exec "$(command -v nginx || echo /usr/sbin/nginx)" -c "$dir/nginx.conf" -e "$dir/error.log"
