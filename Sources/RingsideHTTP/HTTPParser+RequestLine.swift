// Part of HTTPRequestParser (HTTPParser.swift): the request-line states, `method SP request-target SP HTTP-version CRLF`, and the version check.

extension HTTPRequestParser {
    /// `.start`: the first byte of a request line (fast path: the whole line is in this input, stored and checked in one go), or an empty line before it.
    @_transparent
    mutating func startByte(_ b: UInt8, _ p: UnsafeRawPointer, _ i: inout Int, _ n: Int) throws(HTTPParseError) {
        if Self.isTChar(b) {
            headLen = 0
            headerCount = 0
            inTrailers = false
            lineLen = 0
            emptyLines = 0
            if let line = Self.scanRequestLine(p, i - 1, n) {
                // Fast path, the whole request line is in this input: the same stores and
                // checks as the byte-by-byte path below, in the same order.
                let start = i - 1
                try lineRun(p + start, line.end - start)
                methodEnd = line.methodEnd - start
                targetStart = line.methodEnd + 1 - start
                targetEnd = line.targetEnd - start
                versionStart = line.targetEnd + 1 - start
                try checkVersion()
                try storeRun(p + line.end, 2)
                i = line.end + 2
                state = .lineStart
                return
            }
            try lineByte(b)
            state = .method
        } else if b == Self.CR {
            state = .leadingLF
        } else if b == Self.LF {
            throw fail(400, "bare LF before request line")
        } else {
            throw fail(400, "invalid request line")
        }
    }

    /// `.leadingLF`: the LF of an empty line before the request line.
    @_transparent
    mutating func leadingLFByte(_ b: UInt8) throws(HTTPParseError) {
        guard b == Self.LF else { throw fail(400, "bare CR before request line") }
        emptyLines += 1
        guard emptyLines <= Self.maxLeadingEmptyLines else {
            throw fail(400, "too many empty lines before request line")
        }
        state = .start
    }

    /// `.method`: a run of method tchars, or the SP after the method.
    @_transparent
    mutating func methodByte(_ b: UInt8, _ p: UnsafeRawPointer, _ i: inout Int, _ n: Int) throws(HTTPParseError) {
        if Self.isTChar(b) {
            var j = i                   // the run of tchars starting at b
            while j < n && Self.isTChar(p.load(fromByteOffset: j, as: UInt8.self)) { j += 1 }
            try lineRun(p + (i - 1), j - i + 1)
            i = j
        } else if b == Self.SP {
            methodEnd = headLen
            try lineByte(b)
            state = .targetStart
        } else {
            throw fail(400, "invalid character in method")
        }
    }

    /// `.targetStart`: the first byte of the request-target.
    @_transparent
    mutating func targetStartByte(_ b: UInt8) throws(HTTPParseError) {
        if Self.isTargetChar(b) {
            targetStart = headLen
            try lineByte(b)
            state = .target
        } else if b == Self.SP {
            throw fail(400, "empty request-target or extra space")
        } else {
            throw fail(400, "invalid request-target")
        }
    }

    /// `.target`: a run of request-target bytes, or the SP after it.
    @_transparent
    mutating func targetByte(_ b: UInt8, _ p: UnsafeRawPointer, _ i: inout Int, _ n: Int) throws(HTTPParseError) {
        if Self.isTargetChar(b) {
            var j = i                   // the run of target chars starting at b
            while j < n && Self.isTargetChar(p.load(fromByteOffset: j, as: UInt8.self)) { j += 1 }
            try lineRun(p + (i - 1), j - i + 1)
            i = j
        } else if b == Self.SP {
            targetEnd = headLen
            try lineByte(b)
            versionStart = headLen
            state = .version
        } else {
            throw fail(400, "invalid character in request-target")
        }
    }

    /// `.version`: a byte of the HTTP version, or the CR after it.
    @_transparent
    mutating func versionByte(_ b: UInt8) throws(HTTPParseError) {
        if b == Self.CR {
            try checkVersion()
            try store(b)
            state = .requestLineLF
        } else if b > 0x20 && b < 0x7F {
            try lineByte(b)
        } else {
            throw fail(400, b == Self.LF ? "bare LF in request line" : "invalid HTTP version")
        }
    }

    /// `.requestLineLF`: the LF ending the request line.
    @_transparent
    mutating func requestLineLFByte(_ b: UInt8) throws(HTTPParseError) {
        guard b == Self.LF else { throw fail(400, "bare CR in request line") }
        try store(b)
        state = .lineStart
    }

    // MARK: - whole request line in one input (a read-only scan; nil: not a complete valid line)

    /// A complete request line `method SP target SP version CRLF` at p[start..<n] (version: visible
    /// ASCII, checked later by `checkVersion`). Returns the input offsets of the first SP, the second
    /// SP and the CR.
    @inline(__always)
    static func scanRequestLine(_ p: UnsafeRawPointer, _ start: Int, _ n: Int)
        -> (methodEnd: Int, targetEnd: Int, end: Int)? {
        // Every load is at an offset j with start <= j < n (checked before each load).
        var j = start
        while j < n && isTChar(p.load(fromByteOffset: j, as: UInt8.self)) { j += 1 }
        guard j < n, p.load(fromByteOffset: j, as: UInt8.self) == SP else { return nil }
        let methodEnd = j
        j += 1
        let targetStart = j
        while j < n && isTargetChar(p.load(fromByteOffset: j, as: UInt8.self)) { j += 1 }
        guard j > targetStart, j < n, p.load(fromByteOffset: j, as: UInt8.self) == SP else { return nil }
        let targetEnd = j
        j += 1
        while j < n {
            let c = p.load(fromByteOffset: j, as: UInt8.self)
            guard c > 0x20 && c < 0x7F else { break }
            j += 1
        }
        guard j + 1 < n, p.load(fromByteOffset: j, as: UInt8.self) == CR,
              p.load(fromByteOffset: j + 1, as: UInt8.self) == LF else { return nil }
        return (methodEnd, targetEnd, j)
    }

    /// HTTP-version = "HTTP/" DIGIT "." DIGIT, in head[versionStart..<headLen].
    mutating func checkVersion() throws(HTTPParseError) {
        let len = headLen - versionStart
        // Safe: versionStart...headLen are initialized offsets of `head`.
        let v = head + versionStart
        func digit(_ b: UInt8) -> Bool { b >= 0x30 && b <= 0x39 }
        guard len == 8, v[0] == 0x48, v[1] == 0x54, v[2] == 0x54, v[3] == 0x50, v[4] == 0x2F,   // "HTTP/"
              digit(v[5]), v[6] == 0x2E, digit(v[7]) else {
            throw fail(400, "malformed HTTP version")
        }
        switch (v[5], v[7]) {
        case (0x31, 0x31): version = .http11
        case (0x31, 0x30): version = .http10
        default: throw fail(505, "HTTP version not supported")
        }
    }
}
