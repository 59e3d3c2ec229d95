import RingsideCompression

/// The content codings Ringside produces and decodes (RFC 9110 §8.4.1, RFC 8878 for zstd).
public enum HTTPContentCoding: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    /// No coding.
    case identity
    /// gzip (`x-gzip` is read as gzip).
    case gzip
    /// zlib-wrapped deflate (RFC 9110's `deflate`).
    case deflate
    /// Zstandard.
    case zstd

    /// The token as sent in `Content-Encoding`.
    public var token: StaticString {
        switch self {
        case .identity: "identity"
        case .gzip: "gzip"
        case .deflate: "deflate"
        case .zstd: "zstd"
        }
    }

    public var description: String { token.description }

    /// The codec format (nil for identity).
    var format: CompressionFormat? {
        switch self {
        case .identity: nil
        case .gzip: .gzip
        case .deflate: .zlib
        case .zstd: .zstd
        }
    }

    /// The coding a token names (ASCII case-insensitive), nil when it names none of these.
    static func named(_ t: HTTPBytes) -> HTTPContentCoding? {
        if t.equalsIgnoringCase("gzip") || t.equalsIgnoringCase("x-gzip") { return .gzip }
        if t.equalsIgnoringCase("deflate") { return .deflate }
        if t.equalsIgnoringCase("zstd") { return .zstd }
        if t.equalsIgnoringCase("identity") { return .identity }
        return nil
    }

    /// Chooses the response coding for an `Accept-Encoding` value (RFC 9110 §12.5.3): the coding of
    /// `preference` with the highest q-value above 0, ties going to the earlier in `preference`; a coding
    /// not listed takes the q-value of `*` if present, else is not acceptable. Identity when nothing
    /// else is acceptable (also when the value is empty, or identity itself is refused: the server
    /// then sends the representation unencoded rather than 406). Invalid elements (a malformed q) are
    /// ignored. Allocation-free.
    public static func negotiate(acceptEncoding value: UnsafeRawBufferPointer,
                                 preference: [HTTPContentCoding]) -> HTTPContentCoding {
        // q-values in thousandths; -1: not mentioned.
        var q: (identity: Int, gzip: Int, deflate: Int, zstd: Int, star: Int) = (-1, -1, -1, -1, -1)
        forEachElement(value) { token, weight in
            if token.count == 1, token.buffer[0] == UInt8(ascii: "*") {
                if q.star < 0 { q.star = weight }
                return
            }
            switch named(token) {
            case .identity: if q.identity < 0 { q.identity = weight }
            case .gzip: if q.gzip < 0 { q.gzip = weight }
            case .deflate: if q.deflate < 0 { q.deflate = weight }
            case .zstd: if q.zstd < 0 { q.zstd = weight }
            case nil: break
            }
        }
        var best = HTTPContentCoding.identity, bestQ = 0
        for c in preference where c != .identity {
            let mentioned = switch c {
            case .gzip: q.gzip
            case .deflate: q.deflate
            case .zstd: q.zstd
            case .identity: -1
            }
            let weight = mentioned >= 0 ? mentioned : max(q.star, 0)
            if weight > bestQ { best = c; bestQ = weight }
        }
        return best
    }

    /// `negotiate` over a String (tests, tools).
    public static func negotiate(acceptEncoding value: String, preference: [HTTPContentCoding] = [.gzip, .zstd, .deflate]) -> HTTPContentCoding {
        var v = value
        return v.withUTF8 { negotiate(acceptEncoding: UnsafeRawBufferPointer($0), preference: preference) }
    }

    /// Calls `body(token, q in thousandths)` for each valid element of a `#( token [ ; params ] )` list.
    private static func forEachElement(_ value: UnsafeRawBufferPointer, _ body: (HTTPBytes, Int) -> Void) {
        var i = 0
        let n = value.count
        while i < n {
            var end = i
            while end < n && value[end] != UInt8(ascii: ",") { end += 1 }
            if let (token, weight) = element(UnsafeRawBufferPointer(rebasing: value[i..<end])) { body(token, weight) }
            i = end + 1
        }
    }

    /// One list element: the trimmed token and its q (1000 when absent); nil when empty or malformed.
    private static func element(_ e: UnsafeRawBufferPointer) -> (HTTPBytes, Int)? {
        var end = 0
        while end < e.count && e[end] != UInt8(ascii: ";") { end += 1 }
        let token = trim(UnsafeRawBufferPointer(rebasing: e[0..<end]))
        guard token.count > 0 else { return nil }
        var weight = 1000
        var i = end + 1
        while i < e.count {
            var j = i
            while j < e.count && e[j] != UInt8(ascii: ";") { j += 1 }
            let param = trim(UnsafeRawBufferPointer(rebasing: e[i..<j]))
            i = j + 1
            guard param.count >= 2, param[0] | 0x20 == UInt8(ascii: "q"), param[1] == UInt8(ascii: "=") else { continue }
            guard let w = qvalue(UnsafeRawBufferPointer(rebasing: param[2...])) else { return nil }
            weight = w
        }
        return (HTTPBytes(token), weight)
    }

    /// qvalue = ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] ), in thousandths.
    static func qvalue(_ s: UnsafeRawBufferPointer) -> Int? {
        guard s.count >= 1, s.count <= 5, s[0] == UInt8(ascii: "0") || s[0] == UInt8(ascii: "1") else { return nil }
        var v = Int(s[0] - 48) * 1000
        if s.count == 1 { return v }
        guard s[1] == UInt8(ascii: "."), s.count <= 5 else { return nil }
        var scale = 100
        for k in 2..<s.count {
            let d = s[k]
            guard d >= 48 && d <= 57 else { return nil }
            v += Int(d - 48) * scale
            scale /= 10
        }
        return v <= 1000 ? v : nil
    }

    static func trim(_ b: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer {
        var lo = 0, hi = b.count
        while lo < hi && (b[lo] == 0x20 || b[lo] == 0x09) { lo += 1 }
        while hi > lo && (b[hi - 1] == 0x20 || b[hi - 1] == 0x09) { hi -= 1 }
        return UnsafeRawBufferPointer(rebasing: b[lo..<hi])
    }
}

/// HTTP compression settings (``HTTPServerConfiguration/compression``).
///
/// Responses are compressed only when ``enabled``: a response whose `Content-Type` is in
/// ``compressibleTypes``, with at least ``minimumSize`` body bytes in memory, no `Content-Encoding`
/// or `Content-Range` of its own, not to a HEAD request and not 1xx/204/206/304, gets the coding the
/// request's `Accept-Encoding` prefers (see `HTTPContentCoding.negotiate(acceptEncoding:preference:)`),
/// with `Content-Encoding` and `Vary: Accept-Encoding` (the `Vary` also when the client accepted no
/// coding, so caches keep the variants apart). File bodies are sent as they are.
///
/// Request bodies with `Content-Encoding: gzip`, `deflate` or `zstd` are decoded before the route sees
/// them when ``decodeRequests`` is on (the default), whatever ``enabled`` says; the route then sees
/// neither `Content-Encoding` nor `Content-Length`. The decoded size is capped (413 at the cap, memory
/// flat); another coding is answered 415, corrupt or truncated data 400.
public struct HTTPCompressionConfiguration: Sendable {
    /// Compress responses (off by default).
    public var enabled = false
    /// The codings offered, in the server's order of preference (ties of q-value go to the first).
    public var codings: [HTTPContentCoding] = [.gzip, .zstd, .deflate]
    /// The zlib level for gzip and deflate (1 fastest ... 9 smallest; nginx's `gzip_comp_level`
    /// default is 1).
    public var level = 1
    /// The zstd level (1 ... 19; zstd's own default is 3).
    public var zstdLevel = 1
    /// Smaller bodies are sent as they are.
    public var minimumSize = 1024
    /// Compressible media types (parameters ignored, ASCII case-insensitive); `type/*` matches a whole
    /// top-level type.
    public var compressibleTypes: [String] = [
        "text/*", "application/json", "application/javascript", "application/xml", "application/xhtml+xml",
        "application/ld+json", "application/problem+json", "application/manifest+json", "application/rss+xml",
        "application/atom+xml", "application/x-javascript", "application/wasm", "image/svg+xml",
    ]
    /// Decode request bodies sent with a `Content-Encoding` (on by default).
    public var decodeRequests = true
    /// The most bytes a request body may decode to; nil: `limits.maxBodyBytes` (and async routes'
    /// `asyncBodyLimit` still applies to what they buffer).
    public var maxDecodedRequestBytes: Int? = nil
    /// Codec states reused across responses and requests (shared by every copy of the configuration).
    let pool = HTTPCodecPool()

    public init() {}

    /// Whether `contentType` (a header value) is in ``compressibleTypes``.
    func isCompressible(_ contentType: UnsafeRawBufferPointer) -> Bool {
        var end = 0
        while end < contentType.count && contentType[end] != UInt8(ascii: ";") { end += 1 }
        let type = HTTPContentCoding.trim(UnsafeRawBufferPointer(rebasing: contentType[0..<end]))
        for t in compressibleTypes {
            let u = t.utf8
            if u.count >= 2 && u.last == UInt8(ascii: "*") {
                // "text/*": the prefix up to and including "/".
                let prefix = u.count - 1
                guard type.count > prefix else { continue }
                var same = true
                for (k, c) in u.prefix(prefix).enumerated() where asciiLower(type[k]) != asciiLower(c) { same = false; break }
                if same { return true }
            } else if u.count == type.count {
                var same = true
                for (k, c) in u.enumerated() where asciiLower(type[k]) != asciiLower(c) { same = false; break }
                if same { return true }
            }
        }
        return false
    }
}
