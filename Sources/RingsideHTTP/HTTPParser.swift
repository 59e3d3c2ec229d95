/// Incremental (push) HTTP/1.1 request parser, RFC 9112, strict.
///
/// Bytes arrive in arbitrary pieces; every `feed` consumes all of its bytes and keeps partial state.
/// Steady state allocates nothing: the head (request line and header fields) is copied into one
/// buffer of `limits.maxHeaderBytes` bytes allocated in `init`, field positions are offsets in a
/// fixed array of `limits.maxHeaderCount` entries, and body bytes are handed to the sink straight
/// from the caller's buffer.

/// Size limits; exceeding one fails the request with the status given beside it.
public struct HTTPLimits: Sendable {
    /// Request line (method SP target SP version, without its CRLF) longer -> 414.
    public var maxRequestLine = 8 * 1024
    /// Whole head including the request line and every CRLF (the final empty line too) -> 431.
    /// Also bounds a trailer section.
    public var maxHeaderBytes = 16 * 1024
    /// Header fields (or trailer fields) -> 431.
    public var maxHeaderCount = 100
    /// Content-Length above it -> 413 before reading; chunked total above it -> 413 (checked on each
    /// chunk-size line, before that chunk's data is read).
    public var maxBodyBytes = 1 << 30
    /// A chunk-size line including extensions (without its CRLF) longer -> 400.
    public var maxChunkLine = 1024
    public init() {}
}

/// Why a request was rejected: answer with `status` and close the connection.
public struct HTTPParseError: Error, Equatable, Sendable, CustomStringConvertible {
    /// 400, 413, 414, 431, 501 or 505.
    public let status: Int
    /// Short, human readable.
    public let reason: String

    public init(status: Int, reason: String) {
        self.status = status
        self.reason = reason
    }

    public var description: String { "\(status) \(reason)" }
}

/// Receives the events of a parsed request stream, in order: for each request one `requestHead`,
/// zero or more `requestBody`, one `requestEnd`.
public protocol HTTPParserSink: ~Copyable {
    /// The head is complete and valid. `head` is valid only during this call.
    mutating func requestHead(_ head: HTTPRequestHead)
    /// Body bytes (chunk framing removed), zero or more times, in order. Valid only during this call.
    mutating func requestBody(_ bytes: UnsafeRawBufferPointer)
    /// The request is complete. `trailers`: nil when none; otherwise a view (method/target empty)
    /// whose header fields are the trailer fields, valid only during this call.
    mutating func requestEnd(trailers: HTTPRequestHead?)
}

public struct HTTPRequestParser: ~Copyable {
    /// Empty lines (CRLF) ignored before a request line (RFC 9112 §2.2); one more is a 400.
    public static let maxLeadingEmptyLines = 4

    @usableFromInline enum Step {
        case needMore
        case head
        case body(start: Int, count: Int)
        case end(trailers: Bool)
    }

    @usableFromInline enum State: UInt8 {
        // request line
        case start, leadingLF, method, targetStart, target, version, requestLineLF
        // header fields (of the head, or of the trailer section when `inTrailers`)
        case lineStart, name, valueOWS, value, lineLF, headEndLF
        // Content-Length body
        case fixedBody
        // chunked framing
        case chunkSizeStart, chunkSize, chunkBWS, extNameStart, extName, extAfterName, extValueStart,
             extToken, extQuoted, extQuotedPair, extAfterQuoted, chunkSizeLF, chunkData, chunkDataCR,
             chunkDataLF
        // the request is complete, `requestEnd` not emitted yet
        case endPending
        // a parse error was thrown; `failure` holds it
        case dead
    }

    public let limits: HTTPLimits

    // Owned memory. Invariants:
    //  * `head` holds `headCapacity` bytes, allocated in init, freed in deinit, never reallocated;
    //    bytes 0..<headLen are initialized (headLen <= headCapacity, enforced by `store`);
    //  * `fields` holds `4 * fieldCapacity` Ints, allocated in init, freed in deinit; entries
    //    0..<4*headerCount are initialized (headerCount <= limits.maxHeaderCount <= fieldCapacity,
    //    enforced in `.lineStart`), each an offset <= headLen into `head`;
    //  * the struct is ~Copyable, so exactly one owner frees them; views handed to the sink
    //    (HTTPRequestHead) never outlive the sink call, and nothing is written to `head`/`fields`
    //    during a sink call (the sink has no access to the parser).
    @usableFromInline let head: UnsafeMutablePointer<UInt8>
    @usableFromInline let headCapacity: Int
    @usableFromInline let fields: UnsafeMutablePointer<Int>
    let fieldCapacity: Int

    @usableFromInline var state: State = .start
    @usableFromInline var failure: HTTPParseError?
    @usableFromInline var headLen = 0
    @usableFromInline var headerCount = 0
    @usableFromInline var inTrailers = false

    // request line
    var lineLen = 0            // bytes of the current request line / chunk-size line
    var emptyLines = 0
    @usableFromInline var methodEnd = 0
    @usableFromInline var targetStart = 0
    @usableFromInline var targetEnd = 0
    var versionStart = 0

    // field under construction
    var nameStart = 0, nameEnd = 0, valueStart = 0, valueEnd = 0

    // head semantics
    @usableFromInline var version: HTTPVersion = .http11
    @usableFromInline var keepAlive = true
    @usableFromInline var contentLength: Int?
    @usableFromInline var isChunked = false
    @usableFromInline var expectsContinue = false

    // body
    var remaining = 0          // Content-Length body / chunk data left, or the chunk size being read
    var chunkTotal = 0

    public init(limits: HTTPLimits = HTTPLimits()) {
        self.limits = limits
        headCapacity = max(0, limits.maxHeaderBytes)
        head = .allocate(capacity: max(1, headCapacity))
        fieldCapacity = max(1, limits.maxHeaderCount)
        fields = .allocate(capacity: 4 * fieldCapacity)
    }

    deinit {
        head.deallocate()
        fields.deallocate()
    }

    /// True between requests (nothing partial buffered): safe to close an idle keep-alive connection.
    public var isIdle: Bool { state == .start }

    /// Bytes of the current head (or trailer section) buffered so far; 0 between requests and while
    /// reading a body. Leading empty lines are not counted (they are not buffered).
    public var bufferedHeadBytes: Int {
        switch state {
        case .method, .targetStart, .target, .version, .requestLineLF,
             .lineStart, .name, .valueOWS, .value, .lineLF, .headEndLF:
            headLen
        default:
            0
        }
    }

    /// Consumes all of `bytes`; may emit several complete requests (pipelining). After a throw the
    /// parser is dead (the connection must be answered with error.status and closed); further feeds
    /// throw the same error.
    @inlinable
    public mutating func feed<S: HTTPParserSink & ~Copyable>(
        _ bytes: UnsafeRawBufferPointer, into sink: inout S
    ) throws(HTTPParseError) {
        var index = 0
        while true {
            switch try advance(bytes, &index) {
            case .needMore:
                return
            case .head:
                sink.requestHead(headView)
            case .body(let start, let count):
                // 0 <= start, start + count <= bytes.count, count > 0 (see `advance`).
                sink.requestBody(UnsafeRawBufferPointer(rebasing: bytes[start ..< start + count]))
            case .end(let trailers):
                sink.requestEnd(trailers: trailers ? trailerView : nil)
            }
        }
    }

    /// `feed`, but returns right after a request's `requestEnd` when `stop()` says so (the server stops
    /// there while that request's response is still being sent). Returns the bytes consumed; the rest
    /// is to be fed again later.
    @inline(__always)
    mutating func feed<S: HTTPParserSink & ~Copyable>(
        _ bytes: UnsafeRawBufferPointer, into sink: inout S, stopAfterEnd stop: () -> Bool
    ) throws(HTTPParseError) -> Int {
        var index = 0
        while true {
            switch try advance(bytes, &index) {
            case .needMore:
                return bytes.count
            case .head:
                sink.requestHead(headView)
            case .body(let start, let count):
                // 0 <= start, start + count <= bytes.count, count > 0 (see `advance`).
                sink.requestBody(UnsafeRawBufferPointer(rebasing: bytes[start ..< start + count]))
            case .end(let trailers):
                sink.requestEnd(trailers: trailers ? trailerView : nil)
                if stop() { return index }
            }
        }
    }

    @usableFromInline var headView: HTTPRequestHead {
        HTTPRequestHead(base: UnsafeRawPointer(head), fields: UnsafePointer(fields), headerCount: headerCount,
                        methodEnd: methodEnd, targetStart: targetStart, targetEnd: targetEnd,
                        version: version, keepAlive: keepAlive, contentLength: contentLength,
                        isChunked: isChunked, expectsContinue: expectsContinue)
    }

    @usableFromInline var trailerView: HTTPRequestHead {
        HTTPRequestHead(base: UnsafeRawPointer(head), fields: UnsafePointer(fields), headerCount: headerCount,
                        methodEnd: 0, targetStart: 0, targetEnd: 0,
                        version: version, keepAlive: keepAlive, contentLength: nil,
                        isChunked: false, expectsContinue: false)
    }

    // MARK: - errors

    mutating func fail(_ status: Int, _ reason: String) -> HTTPParseError {
        let error = HTTPParseError(status: status, reason: reason)
        failure = error
        state = .dead
        return error
    }

    // MARK: - byte classes

    static let CR: UInt8 = 0x0D, LF: UInt8 = 0x0A, SP: UInt8 = 0x20, HTAB: UInt8 = 0x09
    static let colon: UInt8 = 0x3A, semicolon: UInt8 = 0x3B, equals: UInt8 = 0x3D
    static let quote: UInt8 = 0x22, backslash: UInt8 = 0x5C, comma: UInt8 = 0x2C

    /// tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." / "^" / "_" / "`" / "|" / "~"
    ///         / DIGIT / ALPHA
    /// As a 128-bit set: bit b of the first constant (b < 64) or bit b - 64 of the second
    /// (64 <= b < 128); nothing above 127. The test `tcharBitmapMatchesDefinition` checks every byte.
    @inline(__always) static func isTChar(_ b: UInt8) -> Bool {
        let word: UInt64 = b < 64 ? 0x03FF_6CFA_0000_0000 : (b < 128 ? 0x57FF_FFFF_C7FF_FFFE : 0)
        return (word >> UInt64(b & 63)) & 1 != 0
    }

    /// Request-target byte: anything but CTL, SP and DEL.
    @inline(__always) static func isTargetChar(_ b: UInt8) -> Bool { b > 0x20 && b != 0x7F }

    /// field-vchar = VCHAR / obs-text
    @inline(__always) static func isFieldVChar(_ b: UInt8) -> Bool { (b > 0x20 && b < 0x7F) || b >= 0x80 }

    @inline(__always) static func hexValue(_ b: UInt8) -> Int {
        switch b {
        case 0x30...0x39: Int(b &- 0x30)
        case 0x41...0x46: Int(b &- 0x41 &+ 10)
        case 0x61...0x66: Int(b &- 0x61 &+ 10)
        default: -1
        }
    }

    // MARK: - buffering

    /// Appends `b` to the head buffer, or fails with 431 when it is full.
    @inline(__always) mutating func store(_ b: UInt8) throws(HTTPParseError) {
        guard headLen < headCapacity else {
            throw fail(431, inTrailers ? "trailer section too large" : "request header too large")
        }
        // Safe: headLen < headCapacity, the allocated size of `head`.
        head[headLen] = b
        headLen += 1
    }

    /// A byte of the request line (not its CRLF): 414 past maxRequestLine, then stored.
    @inline(__always) mutating func lineByte(_ b: UInt8) throws(HTTPParseError) {
        lineLen += 1
        guard lineLen <= limits.maxRequestLine else { throw fail(414, "request line too long") }
        try store(b)
    }

    /// Appends the `count` input bytes at `run` to the head buffer: the same outcome as `store` on each
    /// in turn (431 when they do not all fit).
    @inline(__always) mutating func storeRun(_ run: UnsafeRawPointer, _ count: Int) throws(HTTPParseError) {
        guard count <= headCapacity - headLen else {
            throw fail(431, inTrailers ? "trailer section too large" : "request header too large")
        }
        // Safe: headLen + count <= headCapacity; `run` points at `count` readable input bytes, which
        // cannot overlap `head` (the parser's own allocation, never handed out for writing).
        (head + headLen).initialize(from: run.assumingMemoryBound(to: UInt8.self), count: count)
        headLen += count
    }

    /// `lineByte` on each of `count` input bytes: 414 first if the request line limit is crossed no
    /// later than the head limit, else 431.
    @inline(__always) mutating func lineRun(_ run: UnsafeRawPointer, _ count: Int) throws(HTTPParseError) {
        let lineRoom = limits.maxRequestLine - lineLen
        if count > lineRoom && lineRoom <= headCapacity - headLen { throw fail(414, "request line too long") }
        try storeRun(run, count)
        lineLen += count
    }

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

    // MARK: - the state machine

    /// Consumes bytes from `index` until an event is due (returned, `index` past the bytes consumed)
    /// or the input is exhausted (`.needMore`).
    @usableFromInline
    mutating func advance(_ bytes: UnsafeRawBufferPointer, _ index: inout Int) throws(HTTPParseError) -> Step {
        if let failure { throw failure }
        if state == .endPending {
            state = .start
            return .end(trailers: false)
        }
        let n = bytes.count
        guard n > index, let p = bytes.baseAddress else { return .needMore }
        var i = index
        defer { index = i }
        // Invariant of the loop: 0 <= i <= n; p[0..<n] is readable (it is `bytes`).
        while i < n {
            if state == .fixedBody || state == .chunkData {
                let take = min(remaining, n - i)      // remaining > 0 in these states
                let start = i
                remaining -= take
                i += take
                if remaining == 0 { state = state == .fixedBody ? .endPending : .chunkDataCR }
                return .body(start: start, count: take)
            }

            let b = p.load(fromByteOffset: i, as: UInt8.self)
            i += 1
            switch state {
            // MARK: request line
            case .start:
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
                        continue
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
            case .leadingLF:
                guard b == Self.LF else { throw fail(400, "bare CR before request line") }
                emptyLines += 1
                guard emptyLines <= Self.maxLeadingEmptyLines else {
                    throw fail(400, "too many empty lines before request line")
                }
                state = .start
            case .method:
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
            case .targetStart:
                if Self.isTargetChar(b) {
                    targetStart = headLen
                    try lineByte(b)
                    state = .target
                } else if b == Self.SP {
                    throw fail(400, "empty request-target or extra space")
                } else {
                    throw fail(400, "invalid request-target")
                }
            case .target:
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
            case .version:
                if b == Self.CR {
                    try checkVersion()
                    try store(b)
                    state = .requestLineLF
                } else if b > 0x20 && b < 0x7F {
                    try lineByte(b)
                } else {
                    throw fail(400, b == Self.LF ? "bare LF in request line" : "invalid HTTP version")
                }
            case .requestLineLF:
                guard b == Self.LF else { throw fail(400, "bare CR in request line") }
                try store(b)
                state = .lineStart

            // MARK: header fields
            case .lineStart:
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
                        continue
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
            case .name:
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
            case .valueOWS:
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
            case .value:
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
            case .lineLF:
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
            case .headEndLF:
                guard b == Self.LF else { throw fail(400, "bare CR in header") }
                try store(b)
                if inTrailers {
                    state = .start
                    return .end(trailers: headerCount > 0)
                }
                try finishHead()
                return .head

            // MARK: chunked framing
            case .chunkSizeStart:
                let v = Self.hexValue(b)
                guard v >= 0 else { throw fail(400, b == Self.LF ? "bare LF in chunk framing" : "invalid chunk size") }
                lineLen = 0
                try chunkLineByte()
                remaining = v
                state = .chunkSize
            case .chunkSize:
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
            case .chunkBWS:                     // BWS, then only ";" may follow
                try chunkLineByte()
                if b == Self.semicolon {
                    state = .extNameStart
                } else if b != Self.SP && b != Self.HTAB {
                    throw fail(400, "invalid chunk extension")
                }
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
                    continue
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
            case .extToken:
                if b == Self.CR {
                    state = .chunkSizeLF
                    continue
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
                    continue
                }
                try chunkLineByte()
                if b == Self.semicolon {
                    state = .extNameStart
                } else if b == Self.SP || b == Self.HTAB {
                    state = .chunkBWS
                } else {
                    throw fail(400, "invalid chunk extension")
                }
            case .chunkSizeLF:
                guard b == Self.LF else { throw fail(400, "bare CR in chunk framing") }
                if remaining == 0 {             // last-chunk: the trailer section follows
                    inTrailers = true
                    headLen = 0
                    headerCount = 0
                    state = .lineStart
                } else {
                    state = .chunkData
                }
            case .chunkDataCR:
                guard b == Self.CR else { throw fail(400, "chunk data not followed by CRLF") }
                state = .chunkDataLF
            case .chunkDataLF:
                guard b == Self.LF else { throw fail(400, "chunk data not followed by CRLF") }
                state = .chunkSizeStart

            case .fixedBody, .chunkData, .endPending, .dead:
                // .fixedBody/.chunkData are handled above; .endPending/.dead throw or return before the loop
                // and are only entered right before a return.
                preconditionFailure("unreachable parser state")
            }
        }
        return .needMore
    }

    // MARK: - whole-line fast paths (read-only scans of the input; nil: not a complete valid line)

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

    // MARK: - request line and head semantics

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

// A parser exclusively owns its buffers (it is noncopyable and shares them with no one but the
// views lent to a sink during a call), so moving it to another thread is safe.
extension HTTPRequestParser: @unchecked Sendable {}
