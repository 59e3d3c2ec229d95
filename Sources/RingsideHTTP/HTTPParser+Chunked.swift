// Part of HTTPRequestParser (HTTPParser.swift): the chunked transfer coding states (RFC 9112 §7.1): chunk sizes, extensions, data CRLFs.

extension HTTPRequestParser {
    /// A byte of a chunk-size line (not its CRLF): 400 past maxChunkLine.
    @inline(__always) mutating func chunkLineByte() throws(HTTPParseError) {
        lineLen += 1
        guard lineLen <= limits.maxChunkLine else { throw fail(400, "chunk-size line too long") }
    }

    /// The chunk size is complete: account it against maxBodyBytes.
    mutating func endChunkSize() throws(HTTPParseError) {
        guard remaining <= limits.maxBodyBytes - chunkTotal else { throw fail(413, "chunked body too large") }
        chunkTotal += remaining
    }

    /// `.chunkSizeStart`: the first hex digit of a chunk size.
    @_transparent
    mutating func chunkSizeStartByte(_ b: UInt8) throws(HTTPParseError) {
        let v = Self.hexValue(b)
        guard v >= 0 else { throw fail(400, b == Self.LF ? "bare LF in chunk framing" : "invalid chunk size") }
        lineLen = 0
        try chunkLineByte()
        remaining = v
        state = .chunkSize
    }

    /// `.chunkSize`: more hex digits, or what ends the size (CR, ";" or BWS).
    @_transparent
    mutating func chunkSizeByte(_ b: UInt8) throws(HTTPParseError) {
        let v = Self.hexValue(b)
        if v >= 0 {
            try chunkLineByte()
            guard remaining <= Int.max >> 4 else { throw fail(400, "chunk size overflow") }
            remaining = remaining << 4 | v
        } else if b == Self.CR {
            try endChunkSize()
            state = .chunkSizeLF
        } else if b == Self.semicolon {
            try chunkLineByte()
            try endChunkSize()
            state = .extNameStart
        } else if b == Self.SP || b == Self.HTAB {
            try chunkLineByte()
            try endChunkSize()
            state = .chunkBWS
        } else {
            throw fail(400, b == Self.LF ? "bare LF in chunk framing" : "invalid chunk size")
        }
    }

    /// `.chunkBWS`: whitespace after the chunk size; only ";" may follow.
    @_transparent
    mutating func chunkBWSByte(_ b: UInt8) throws(HTTPParseError) {
        try chunkLineByte()
        if b == Self.semicolon {
            state = .extNameStart
        } else if b != Self.SP && b != Self.HTAB {
            throw fail(400, "invalid chunk extension")
        }
    }

    /// `.chunkSizeLF`: the LF ending a chunk-size line; a zero size starts the trailer section.
    @_transparent
    mutating func chunkSizeLFByte(_ b: UInt8) throws(HTTPParseError) {
        guard b == Self.LF else { throw fail(400, "bare CR in chunk framing") }
        if remaining == 0 {             // last-chunk: the trailer section follows
            inTrailers = true
            headLen = 0
            headerCount = 0
            state = .lineStart
        } else {
            state = .chunkData
        }
    }

    /// `.chunkDataCR`: the CR after chunk data.
    @_transparent
    mutating func chunkDataCRByte(_ b: UInt8) throws(HTTPParseError) {
        guard b == Self.CR else { throw fail(400, "chunk data not followed by CRLF") }
        state = .chunkDataLF
    }

    /// `.chunkDataLF`: the LF after chunk data.
    @_transparent
    mutating func chunkDataLFByte(_ b: UInt8) throws(HTTPParseError) {
        guard b == Self.LF else { throw fail(400, "chunk data not followed by CRLF") }
        state = .chunkSizeStart
    }

    /// Chunk-extension names (RFC 9112 §7.1.1), up to the value: validated, counted against maxChunkLine, dropped.
    @_transparent
    mutating func chunkExtensionNameByte(_ b: UInt8) throws(HTTPParseError) {
        switch state {
        case .extNameStart:                 // after ";": BWS chunk-ext-name
            try chunkLineByte()
            if Self.isTChar(b) {
                state = .extName
            } else if b != Self.SP && b != Self.HTAB {
                throw fail(400, "invalid chunk extension")
            }
        case .extName:
            if b == Self.CR {
                state = .chunkSizeLF
                return
            }
            try chunkLineByte()
            if Self.isTChar(b) {
            } else if b == Self.semicolon {
                state = .extNameStart
            } else if b == Self.equals {
                state = .extValueStart
            } else if b == Self.SP || b == Self.HTAB {
                state = .extAfterName
            } else {
                throw fail(400, "invalid chunk extension")
            }
        case .extAfterName:                 // BWS, then ";" or "="
            try chunkLineByte()
            if b == Self.semicolon {
                state = .extNameStart
            } else if b == Self.equals {
                state = .extValueStart
            } else if b != Self.SP && b != Self.HTAB {
                throw fail(400, "invalid chunk extension")
            }
        case .extValueStart:                // after "=": BWS, then token or quoted-string
            try chunkLineByte()
            if Self.isTChar(b) {
                state = .extToken
            } else if b == Self.quote {
                state = .extQuoted
            } else if b != Self.SP && b != Self.HTAB {
                throw fail(400, "invalid chunk extension")
            }
        default:
            preconditionFailure("not a chunk-extension state of this group")
        }
    }

    /// Chunk-extension values (token or quoted-string): validated, counted against maxChunkLine, dropped.
    @_transparent
    mutating func chunkExtensionValueByte(_ b: UInt8) throws(HTTPParseError) {
        switch state {
        case .extToken:
            if b == Self.CR {
                state = .chunkSizeLF
                return
            }
            try chunkLineByte()
            if Self.isTChar(b) {
            } else if b == Self.semicolon {
                state = .extNameStart
            } else if b == Self.SP || b == Self.HTAB {
                state = .chunkBWS
            } else {
                throw fail(400, "invalid chunk extension")
            }
        case .extQuoted:                    // qdtext = HTAB / SP / %x21 / %x23-5B / %x5D-7E / obs-text
            try chunkLineByte()
            if b == Self.quote {
                state = .extAfterQuoted
            } else if b == Self.backslash {
                state = .extQuotedPair
            } else if !(b == Self.HTAB || b == Self.SP || Self.isFieldVChar(b)) {
                throw fail(400, "invalid chunk extension")
            }
        case .extQuotedPair:                // quoted-pair = "\" ( HTAB / SP / VCHAR / obs-text )
            try chunkLineByte()
            guard b == Self.HTAB || b == Self.SP || Self.isFieldVChar(b) else {
                throw fail(400, "invalid chunk extension")
            }
            state = .extQuoted
        case .extAfterQuoted:
            if b == Self.CR {
                state = .chunkSizeLF
                return
            }
            try chunkLineByte()
            if b == Self.semicolon {
                state = .extNameStart
            } else if b == Self.SP || b == Self.HTAB {
                state = .chunkBWS
            } else {
                throw fail(400, "invalid chunk extension")
            }
        default:
            preconditionFailure("not a chunk-extension state of this group")
        }
    }
}
