// Part of HTTPRequestParser (HTTPParser.swift): the header (and trailer) field states, `field-name ":" OWS field-value OWS CRLF`.

extension HTTPRequestParser {
    /// `.lineStart`: the first byte of a field line (fast path: the whole line is in this input), or the CR of the empty line ending the head.
    @_transparent
    mutating func lineStartByte(_ b: UInt8, _ p: UnsafeRawPointer, _ i: inout Int, _ n: Int) throws(HTTPParseError) {
        if Self.isTChar(b) {
            guard headerCount < limits.maxHeaderCount else {
                throw fail(431, inTrailers ? "too many trailer fields" : "too many header fields")
            }
            if let line = Self.scanFieldLine(p, i - 1, n) {
                // Fast path, the whole field line is in this input: same outcome as the
                // byte-by-byte path (every byte is valid, so only 431 can fail it).
                let start = i - 1
                let base = headLen
                try storeRun(p + start, line.end - start)
                // Safe: headerCount < maxHeaderCount <= fieldCapacity (checked above).
                let f = fields + 4 * headerCount
                f[0] = base
                f[1] = base + (line.nameEnd - start)
                f[2] = base + (line.valueStart - start)
                f[3] = base + (line.valueEnd - start)
                headerCount += 1
                i = line.end
                return
            }
            nameStart = headLen
            try store(b)
            state = .name
        } else if b == Self.CR {
            try store(b)
            state = .headEndLF
        } else if b == Self.SP || b == Self.HTAB {
            throw fail(400, "obsolete line folding")
        } else if b == Self.colon {
            throw fail(400, "empty field name")
        } else if b == Self.LF {
            throw fail(400, "bare LF in header")
        } else {
            throw fail(400, "invalid character in field name")
        }
    }

    /// `.name`: a run of field-name tchars, or the colon after the name.
    @_transparent
    mutating func nameByte(_ b: UInt8, _ p: UnsafeRawPointer, _ i: inout Int, _ n: Int) throws(HTTPParseError) {
        if Self.isTChar(b) {
            var j = i                   // the run of tchars starting at b
            while j < n && Self.isTChar(p.load(fromByteOffset: j, as: UInt8.self)) { j += 1 }
            try storeRun(p + (i - 1), j - i + 1)
            i = j
        } else if b == Self.colon {
            nameEnd = headLen
            try store(b)
            state = .valueOWS
        } else if b == Self.SP || b == Self.HTAB {
            throw fail(400, "whitespace between field name and colon")
        } else {
            throw fail(400, "invalid character in field name")
        }
    }

    /// `.valueOWS`: whitespace before the field value, its first byte, or the CR of an empty value.
    @_transparent
    mutating func valueOWSByte(_ b: UInt8) throws(HTTPParseError) {
        if b == Self.SP || b == Self.HTAB {
            try store(b)
        } else if Self.isFieldVChar(b) {
            valueStart = headLen
            try store(b)
            valueEnd = headLen
            state = .value
        } else if b == Self.CR {
            valueStart = headLen
            valueEnd = headLen
            try store(b)
            state = .lineLF
        } else {
            throw fail(400, b == Self.LF ? "bare LF in header" : "invalid character in field value")
        }
    }

    /// `.value`: a run of field-value bytes (OWS trimmed at the end), or the CR after the value.
    @_transparent
    mutating func valueByte(_ b: UInt8, _ p: UnsafeRawPointer, _ i: inout Int, _ n: Int) throws(HTTPParseError) {
        if Self.isFieldVChar(b) || b == Self.SP || b == Self.HTAB {
            // The run of value bytes starting at b (input offsets runStart..<j); visibleEnd is
            // the input offset just past its last non-OWS byte (0: none in this run).
            let runStart = i - 1
            var visibleEnd = Self.isFieldVChar(b) ? i : 0
            var j = i
            while j < n {
                let c = p.load(fromByteOffset: j, as: UInt8.self)
                if Self.isFieldVChar(c) {
                    visibleEnd = j + 1
                } else if c != Self.SP && c != Self.HTAB {
                    break
                }
                j += 1
            }
            let runHead = headLen
            try storeRun(p + runStart, j - runStart)
            if visibleEnd > 0 { valueEnd = runHead + (visibleEnd - runStart) }
            i = j
        } else if b == Self.CR {
            try store(b)
            state = .lineLF
        } else {
            throw fail(400, b == Self.LF ? "bare LF in header" : "invalid character in field value")
        }
    }

    /// `.lineLF`: the LF ending a field line: the field is recorded.
    @_transparent
    mutating func lineLFByte(_ b: UInt8) throws(HTTPParseError) {
        guard b == Self.LF else { throw fail(400, "bare CR in header") }
        try store(b)
        // Safe: headerCount < maxHeaderCount <= fieldCapacity (checked in .lineStart).
        let f = fields + 4 * headerCount
        f[0] = nameStart
        f[1] = nameEnd
        f[2] = valueStart
        f[3] = valueEnd
        headerCount += 1
        state = .lineStart
    }

    /// `.headEndLF`: the LF ending the head (or the trailer section): always an event.
    @_transparent
    mutating func headEndLFByte(_ b: UInt8) throws(HTTPParseError) -> Step {
        guard b == Self.LF else { throw fail(400, "bare CR in header") }
        try store(b)
        if inTrailers {
            state = .start
            return .end(trailers: headerCount > 0)
        }
        try finishHead()
        return .head
    }

    // MARK: - whole field line in one input (a read-only scan; nil: not a complete valid line)

    /// A complete field line `name ":" OWS value OWS CRLF` at p[start..<n]. Returns input offsets:
    /// the colon, the value (OWS trimmed; both at the CR when empty), and just past the LF.
    @inline(__always)
    static func scanFieldLine(_ p: UnsafeRawPointer, _ start: Int, _ n: Int)
        -> (nameEnd: Int, valueStart: Int, valueEnd: Int, end: Int)? {
        // Every load is at an offset j with start <= j < n (checked before each load).
        var j = start
        while j < n && isTChar(p.load(fromByteOffset: j, as: UInt8.self)) { j += 1 }
        guard j > start, j < n, p.load(fromByteOffset: j, as: UInt8.self) == colon else { return nil }
        let nameEnd = j
        j += 1
        while j < n {
            let c = p.load(fromByteOffset: j, as: UInt8.self)
            guard c == SP || c == HTAB else { break }
            j += 1
        }
        let valueStart = j
        var valueEnd = j
        while j < n {
            let c = p.load(fromByteOffset: j, as: UInt8.self)
            if isFieldVChar(c) {
                j += 1
                valueEnd = j
            } else if c == SP || c == HTAB {
                j += 1
            } else {
                break
            }
        }
        guard j + 1 < n, p.load(fromByteOffset: j, as: UInt8.self) == CR,
              p.load(fromByteOffset: j + 1, as: UInt8.self) == LF else { return nil }
        return (nameEnd, valueStart, valueEnd, j + 2)
    }
}
