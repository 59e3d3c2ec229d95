#!/usr/bin/env python3
# Checks ref_echo_server --http: answers byte-exact (Date shaped), sequential, pipelined beyond one
# send, split byte by byte, near-miss CRs, 5,000 pipelined to a slow reader (short sends), EOF after
# the answers, 50 connections, exit 0 on SIGINT. Usage: bench/c/check_http_floor.py bench/c/build/ref_echo_server
import socket, subprocess, sys, time, re
srv = subprocess.Popen(sys.argv[1:] + ["--http"], stdout=subprocess.PIPE, text=True)
line = srv.stdout.readline(); port = int(re.search(r":(\d+)", line).group(1))
req = b"GET /plaintext HTTP/1.1\r\nHost: x\r\n\r\n"
def recv_n(s, n):
    d = b""
    while len(d) < n:
        c = s.recv(65536)
        assert c, "eof"
        d += c
    return d
def check(d, k):
    assert len(d) == 133 * k, len(d)
    for i in range(k):
        r = d[i*133:(i+1)*133]
        assert r.startswith(b"HTTP/1.1 200 OK\r\nServer: ref-http\r\nDate: ") and r.endswith(b"\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nHello, World!"), r
        assert re.match(rb"[A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT", r[41:70]), r[41:70]
s = socket.create_connection(("127.0.0.1", port))
for _ in range(100):
    s.sendall(req); check(recv_n(s, 133), 1)
s.sendall(req * 100); check(recv_n(s, 133 * 100), 100)          # pipelined, > 32 per send
for b in req * 3: s.send(bytes([b])); time.sleep(0.0005)          # split byte by byte, across receives
check(recv_n(s, 133 * 3), 3)
s.sendall(b"GET / HTTP/1.1\r\r\n\r\n"); check(recv_n(s, 133), 1)  # near-miss bytes before the terminator
# a big pipelined burst with a slow reader: short sends must continue
s.sendall(req * 5000); time.sleep(0.5); check(recv_n(s, 133 * 5000), 5000)
s.shutdown(socket.SHUT_WR); assert s.recv(10) == b""               # EOF: answers done, then close
conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(50)]
for c in conns: c.sendall(req * 2)
for c in conns: check(recv_n(c, 266), 2)
for c in conns: c.close()
srv.send_signal(2); srv.wait(timeout=5); assert srv.returncode == 0, srv.returncode
print("ref-http ok")
