#!/usr/bin/env python3
"""Writes the committed seed corpora (Fuzz/Corpus/*/seed-*). Run from anywhere; idempotent.

HTTP seeds: 2 config bytes (0,0: default limits), 3 split-seed bytes, then a request stream.
Framing seeds: 1 config byte (decoder and parameters, see Model.swift), 3 split-seed bytes, the stream.
Connection-state seeds: 2 config bytes, then (event, parameter) pairs and the handler reaction or socket
bytes they consume inline (see Sources/fuzz-connection-state/FuzzTarget.swift).
"""
import os, struct
here = os.path.dirname(os.path.abspath(__file__))

http = {
    "get": b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    "get10": b"GET /x?y=1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    "post-cl": b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
    "chunked": b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5;ext=\"q\\\"v\";e2\r\nhello\r\n0\r\nTrailer-A: 1\r\n\r\n",
    "pipelined": b"\r\nGET /1 HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx"
                 b"GET /2 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    "headers": b"OPTIONS * HTTP/1.1\r\nHost: a\r\nX-A:  v  w \t\r\nX-Empty:\r\nX-B: \xc3\xa9\r\n\r\n",
}
for name, body in http.items():
    for cfg, tag in ((b"\x00\x00", ""), (b"\xaa\x02", "-small")):
        with open(os.path.join(here, "Corpus/http-parser", f"seed-{name}{tag}"), "wb") as f:
            f.write(cfg + b"\x05\x11\x07" + body)

def lp(payloads, size, big=True):
    fmt = {1: "B", 2: "H", 4: "I", 8: "Q"}[size]
    return b"".join(struct.pack((">" if big else "<") + fmt, len(p)) + p for p in payloads)

framing = {
    # config: bit0 0 = line (bits 1-2 max index, bit 3 NUL delimiter)
    "lines": (0x00, b"one\ntwo\r\n\nthree"),
    "lines-small": (0x06, b"12345678\n123456789\n"),
    "lines-nul": (0x08, b"a\x00bb\x00"),
    # bit0 1 = length-prefixed (bits 1-2 prefix 1/2/4/8, bit 3 little-endian, bits 4-5 max index)
    "len1": (0x01, lp([b"abc", b"", b"de"], 1)),
    "len2-le": (0x0B, lp([b"hello", b"x" * 20], 2, big=False)),
    "len4": (0x05, lp([b"payload", b"z" * 40], 4)),
    "len8-small": (0x37, lp([b"12", b"123"], 8)),
}
for name, (cfg, body) in framing.items():
    with open(os.path.join(here, "Corpus/framing", f"seed-{name}"), "wb") as f:
        f.write(bytes([cfg]) + b"\x03\x21\x09" + body)

# Connection state machine. config[0]: bit 0 epoll, bits 1-2 high watermark (16, 40, 100, 1000),
# bits 3-4 low watermark (0, 1/4, 1/2, all of high), bit 5 linger; config[1]: bits 0-1 chunk size (8, 16,
# 32, 64), bits 2-5 pool size - 4. Events: 0 data (+ handler byte when delivered), 1 EOF, 2 ENOBUFS,
# 3 ECANCELED/ECONNRESET, 4 cancel done, 5 send done, 6 write, 7 close, 8 abort, 9 shutdownWrite,
# 10 pause, 11 linger up, 12 deadline, 13 shutdown/cancel/close done, 14 buffers back, 15 stop, 16 pool.
URING, EPOLL = 0x2A, 0x2B
state = {
    # recv, echo without a copy, send, EOF (graceful close, linger), every op completes
    "echo": (URING, 0x11, [0, 0x8A, 0x00, 5, 0x80, 1, 0, 4, 0, 13, 0, 11, 0, 13, 1, 13, 2]),
    "echo-epoll": (EPOLL, 0x11, [0, 0x0A, 0x00, 0x00, 1, 0]),
    # replies 4x the input: backpressure pauses reading (cancel), chunks held, resume delivers them
    "backpressure": (URING, 0x05, [0, 0x8F, 0x3A, 0, 0x8F, 0, 0x8F, 4, 0, 3, 0, 5, 0x10, 5, 0x80, 5, 0x80]),
    "backpressure-epoll": (EPOLL, 0x05, [0, 0x0F, 0x3A, 0x04, 5, 0, 0x00, 0, 0x0F, 0x02]),
    # a multi-chunk send in flight when the handler aborts; the send completes after the teardown
    "abort-inflight": (URING, 0x11, [0, 0x8F, 0x00, 6, 0x40, 8, 0, 13, 1, 3, 0, 5, 0x80, 13, 2]),
    # the pool runs dry (ENOBUFS, starved), then buffers return and the receive is re-armed
    "starve": (URING, 0x00, [16, 0x0E, 0, 0x80, 0, 0x80, 16, 0x01, 0, 0x80, 0x03]),
    # half-close: shutdownWrite with data queued, then a deadline, then the server stops
    "shutdown-deadline": (URING, 0x11, [6, 0x20, 9, 0, 5, 0x80, 13, 0, 12, 0, 15, 0]),
    "pause-stop-epoll": (EPOLL, 0x11, [10, 1, 0, 0x05, 10, 0, 0, 0x05, 0x03, 15, 1]),
}
os.makedirs(os.path.join(here, "Corpus/connection-state"), exist_ok=True)
for name, (c0, c1, events) in state.items():
    with open(os.path.join(here, "Corpus/connection-state", f"seed-{name}"), "wb") as f:
        f.write(bytes([c0, c1] + events))
