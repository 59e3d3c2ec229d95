// Part of HTTPRequestParser (HTTPParser.swift): the semantics of a complete head: framing (Content-Length, Transfer-Encoding), Host, Connection, Expect.

extension HTTPRequestParser {
    /// Calls `body(start, end)` for each non-empty element of the comma-separated list in
    /// head[start..<end], OWS trimmed.
    @inline(__always) func forEachListElement(_ start: Int, _ end: Int, _ body: (Int, Int) -> Void) {
        var s = start
        while s < end {
            var e = s
            while e < end && head[e] != Self.comma { e += 1 }
            var a = s, z = e
            while a < z && (head[a] == Self.SP || head[a] == Self.HTAB) { a += 1 }
            while z > a && (head[z - 1] == Self.SP || head[z - 1] == Self.HTAB) { z -= 1 }
            if a < z { body(a, z) }
            s = e + 1
        }
    }

    /// head[start..<end] equals `lower` ignoring ASCII case, where `lower` holds only lowercase
    /// letters, digits and "-", and the bytes are field-name or field-value bytes (no CTLs).
    /// `b | 0x20` maps A-Z to a-z; among non-CTL bytes only a letter's own upper case maps onto a
    /// lowercase letter, and only "-" and the digits map onto themselves, so the test is exact.
    @inline(__always) func matches(_ start: Int, _ end: Int, _ lower: StaticString) -> Bool {
        guard end - start == lower.utf8CodeUnitCount else { return false }
        let l = lower.utf8Start
        // Safe: start..<end are initialized offsets of `head`; l has end - start bytes.
        for k in 0..<(end - start) where head[start + k] | 0x20 != l[k] { return false }
        return true
    }

    /// The head is complete: validate framing and Host, compute the semantic flags, pick the body state.
    mutating func finishHead() throws(HTTPParseError) {
        var clCount = 0, teCount = 0, hostCount = 0, codings = 0
        var cl = 0
        var clBad = false, teBad = false
        var close = false, keepAliveToken = false, expect = false
        for k in 0..<headerCount {
            // Safe: k < headerCount, entries initialized (see invariants).
            let f = fields + 4 * k
            let ns = f[0], ne = f[1], vs = f[2], ve = f[3]
            // Cheap filter before the full comparisons: first letter (lowercased) and length.
            switch (head[ns] | 0x20, ne - ns) {
            case (0x63, 14) where matches(ns, ne, "content-length"):
                clCount += 1
                if vs == ve { clBad = true }
                for j in vs..<ve {
                    let b = head[j]
                    guard b >= 0x30 && b <= 0x39 else { clBad = true; break }
                    let (m, o1) = cl.multipliedReportingOverflow(by: 10)
                    let (s, o2) = m.addingReportingOverflow(Int(b - 0x30))
                    guard !o1 && !o2 else { clBad = true; break }
                    cl = s
                }
            case (0x74, 17) where matches(ns, ne, "transfer-encoding"):
                teCount += 1
                forEachListElement(vs, ve) { a, z in
                    codings += 1
                    if codings > 1 || !matches(a, z, "chunked") { teBad = true }
                }
            case (0x68, 4) where matches(ns, ne, "host"):
                hostCount += 1
            case (0x63, 10) where matches(ns, ne, "connection"):
                forEachListElement(vs, ve) { a, z in
                    if matches(a, z, "close") {
                        close = true
                    } else if matches(a, z, "keep-alive") {
                        keepAliveToken = true
                    }
                }
            case (0x65, 6) where matches(ns, ne, "expect"):
                if matches(vs, ve, "100-continue") { expect = true }
            default:
                break
            }
        }
        if clCount > 1 { throw fail(400, "multiple Content-Length fields") }
        if clBad { throw fail(400, "invalid Content-Length") }
        if clCount > 0 && teCount > 0 { throw fail(400, "both Content-Length and Transfer-Encoding") }
        if teCount > 0 && version == .http10 { throw fail(400, "Transfer-Encoding in an HTTP/1.0 request") }
        if hostCount > 1 { throw fail(400, "multiple Host fields") }
        if hostCount == 0 && version == .http11 { throw fail(400, "missing Host") }
        if teCount > 0 && codings == 0 { throw fail(400, "empty Transfer-Encoding") }
        if teBad { throw fail(501, "unsupported transfer coding") }
        if clCount > 0 && cl > limits.maxBodyBytes { throw fail(413, "content too large") }

        keepAlive = version == .http11 ? !close : (keepAliveToken && !close)
        expectsContinue = expect && version == .http11
        isChunked = teCount > 0
        contentLength = clCount > 0 ? cl : nil
        chunkTotal = 0
        if isChunked {
            state = .chunkSizeStart
        } else if cl > 0 {
            remaining = cl
            state = .fixedBody
        } else {
            state = .endPending
        }
    }
}
