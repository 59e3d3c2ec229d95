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
            // One dispatch per byte. The per-state functions are @_transparent: @inline(__always) left
            // several of them out of line (callgrind: +4% instructions per whole-input request, +8% on a
            // chunked one); transparent, the compiled loop is the one the single 373-line switch gave.
            switch state {
            // request line: HTTPParser+RequestLine.swift
            case .start: try startByte(b, p, &i, n)
            case .leadingLF: try leadingLFByte(b)
            case .method: try methodByte(b, p, &i, n)
            case .targetStart: try targetStartByte(b)
            case .target: try targetByte(b, p, &i, n)
            case .version: try versionByte(b)
            case .requestLineLF: try requestLineLFByte(b)
            // header and trailer fields: HTTPParser+Fields.swift
            case .lineStart: try lineStartByte(b, p, &i, n)
            case .name: try nameByte(b, p, &i, n)
            case .valueOWS: try valueOWSByte(b)
            case .value: try valueByte(b, p, &i, n)
            case .lineLF: try lineLFByte(b)
            case .headEndLF: return try headEndLFByte(b)
            // chunked framing: HTTPParser+Chunked.swift
            case .chunkSizeStart: try chunkSizeStartByte(b)
            case .chunkSize: try chunkSizeByte(b)
            case .chunkBWS: try chunkBWSByte(b)
            case .extNameStart, .extName, .extAfterName, .extValueStart: try chunkExtensionNameByte(b)
            case .extToken, .extQuoted, .extQuotedPair, .extAfterQuoted: try chunkExtensionValueByte(b)
            case .chunkSizeLF: try chunkSizeLFByte(b)
            case .chunkDataCR: try chunkDataCRByte(b)
            case .chunkDataLF: try chunkDataLFByte(b)
            case .fixedBody, .chunkData, .endPending, .dead:
                // .fixedBody/.chunkData are handled above; .endPending/.dead throw or return before the loop
                // and are only entered right before a return.
                preconditionFailure("unreachable parser state")
            }
        }
        return .needMore
    }
}

// A parser exclusively owns its buffers (it is noncopyable and shares them with no one but the
// views lent to a sink during a call), so moving it to another thread is safe.
extension HTTPRequestParser: @unchecked Sendable {}
