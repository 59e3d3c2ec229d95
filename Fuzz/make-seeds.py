#!/usr/bin/env python3
"""Writes the committed seed corpora (Fuzz/Corpus/*/seed-*). Run from anywhere; idempotent.

HTTP seeds: 2 config bytes (0,0: default limits), 3 split-seed bytes, then a request stream.
Framing seeds: 1 config byte (decoder and parameters, see Model.swift), 3 split-seed bytes, the stream.
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
