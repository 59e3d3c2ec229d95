/// The HTTP version of a request line. Only HTTP/1.0 and HTTP/1.1 are accepted by the parser.
public enum HTTPVersion: Sendable, Equatable {
    case http10, http11
}

/// A view of a parsed request head (or of a trailer section); valid only during
/// ``HTTPParserSink/requestHead(_:)`` (or ``HTTPParserSink/requestEnd(trailers:)`` for trailers).
///
/// Nothing is copied: every ``HTTPBytes`` returned points into the parser's head buffer, which is
/// reused for the next request. Copy (for example with ``HTTPBytes/string``) what must outlive the call.
///
/// For a trailer view, `method` and `target` are empty, the header fields are the trailer fields,
/// `version` and `keepAlive` are those of the request, `contentLength` is nil and `isChunked` and
/// `expectsContinue` are false.
public struct HTTPRequestHead {
    // Invariants (established by HTTPRequestParser, which is the only creator):
    //  * `base` points at the parser's head buffer, holding at least every offset below initialized;
    //  * `fields` points at `4 * headerCount` initialized Ints: for field i,
    //    fields[4i] = name start, fields[4i+1] = name end, fields[4i+2] = value start,
    //    fields[4i+3] = value end (end exclusive; all offsets into `base`, start <= end);
    //  * methodEnd (method is 0..<methodEnd), targetStart <= targetEnd lie inside the buffer;
    //  * the view is used only while the parser is inside the sink call (nothing is freed or
    //    overwritten before that call returns).
    @usableFromInline let base: UnsafeRawPointer
    @usableFromInline let fields: UnsafePointer<Int>
    @usableFromInline let methodEnd: Int
    @usableFromInline let targetStart: Int
    @usableFromInline let targetEnd: Int

    /// Number of header (or trailer) fields, in the order received.
    public let headerCount: Int
    public let version: HTTPVersion
    /// HTTP/1.1: true unless a Connection header has the token "close".
    /// HTTP/1.0: false unless a Connection header has the token "keep-alive" (and none "close").
    public let keepAlive: Bool
    /// The validated Content-Length (nil when absent, or when the body is chunked).
    public let contentLength: Int?
    /// Transfer-Encoding: chunked (the only transfer coding accepted).
    public let isChunked: Bool
    /// `Expect: 100-continue` on an HTTP/1.1 request (ignored on HTTP/1.0, RFC 9110 §10.1.1).
    public let expectsContinue: Bool

    @usableFromInline init(base: UnsafeRawPointer, fields: UnsafePointer<Int>, headerCount: Int,
                           methodEnd: Int, targetStart: Int, targetEnd: Int, version: HTTPVersion,
                           keepAlive: Bool, contentLength: Int?, isChunked: Bool, expectsContinue: Bool) {
        self.base = base
        self.fields = fields
        self.headerCount = headerCount
        self.methodEnd = methodEnd
        self.targetStart = targetStart
        self.targetEnd = targetEnd
        self.version = version
        self.keepAlive = keepAlive
        self.contentLength = contentLength
        self.isChunked = isChunked
        self.expectsContinue = expectsContinue
    }

    @inlinable func bytes(_ start: Int, _ end: Int) -> HTTPBytes {
        // Safe: start...end are offsets of initialized bytes of the head buffer (see invariants).
        HTTPBytes(UnsafeRawBufferPointer(start: base + start, count: end - start))
    }

    /// The request method (a token, case-sensitive: compare with ``HTTPBytes/equals(_:)``).
    @inlinable public var method: HTTPBytes { bytes(0, methodEnd) }

    /// The request-target exactly as received.
    @inlinable public var target: HTTPBytes { bytes(targetStart, targetEnd) }

    /// The name of field `i` (0 ..< headerCount), as received.
    @inlinable public func name(at i: Int) -> HTTPBytes {
        precondition(i >= 0 && i < headerCount, "header index out of range")
        return bytes(fields[4 * i], fields[4 * i + 1])
    }

    /// The value of field `i` (0 ..< headerCount), leading and trailing OWS removed.
    @inlinable public func value(at i: Int) -> HTTPBytes {
        precondition(i >= 0 && i < headerCount, "header index out of range")
        return bytes(fields[4 * i + 2], fields[4 * i + 3])
    }

    /// The value of the first field named `name` (ASCII case-insensitive), or nil.
    @inlinable public func value(forName name: StaticString) -> HTTPBytes? {
        for i in 0..<headerCount where self.name(at: i).equalsIgnoringCase(name) {
            return value(at: i)
        }
        return nil
    }

    /// Number of fields named `name` (ASCII case-insensitive). Addition to the base API.
    @inlinable public func count(forName name: StaticString) -> Int {
        var n = 0
        for i in 0..<headerCount where self.name(at: i).equalsIgnoringCase(name) { n += 1 }
        return n
    }
}
