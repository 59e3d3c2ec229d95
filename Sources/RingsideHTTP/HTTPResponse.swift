import Glibc
import Ringside

/// The response a route handler fills in. Headers and body are appended into per-connection buffers
/// that keep their capacity between requests, so a response allocates nothing in steady state.
/// The engine adds `Date`, `Server`, `Content-Length` and, when the connection will close,
/// `Connection: close`.
///
/// Like ``HTTPRequest``, a response is lent to the call it is passed to (`inout`): its buffers belong to
/// the connection. It is noncopyable, so the compiler refuses a copy that could outlive that call.
public struct HTTPResponse: ~Copyable {
    /// The status code (200 by default).
    public var status: Int = 200
    // The connection's header and body buffers, unretained. Invariant: every response is made by its
    // HTTPConnection from that connection's own buffers (`let` properties, freed only with it) and is
    // used only while the connection handles the request (lent `inout` to the route, never stored), so
    // the buffers outlive it and are borrowed at +0 (`_withUnsafeGuaranteedRef`): making a response and
    // filling it costs no retain/release.
    @usableFromInline let headersRef: Unmanaged<ByteBuffer>
    @usableFromInline let bodyRef: Unmanaged<ByteBuffer>
    /// A file to send as the body after `body`'s bytes (for example a spooled upload); the engine closes it.
    public var bodyFile: (fd: Int32, size: Int)? = nil
    /// Where in `bodyFile` the body starts (a range request); `size` bytes from here are sent.
    var bodyFileOffset = 0
    /// Send the body with `Transfer-Encoding: chunked` instead of `Content-Length` (HTTP/1.1 only;
    /// ignored with `bodyFile`).
    public var chunked = false
    /// Whether response compression may encode this body (off for bodies that are a file's bytes:
    /// their ETag names the file, not an encoding of it).
    var compressible = true

    @inline(__always) init(headers: ByteBuffer, body: ByteBuffer) {
        self.headersRef = Unmanaged.passUnretained(headers)
        self.bodyRef = Unmanaged.passUnretained(body)
        headers.clear()
        body.clear()
    }

    /// Runs `f` with the header buffer borrowed at +0 (see `headersRef`).
    @inline(__always) func withHeaders<R>(_ f: (ByteBuffer) -> R) -> R { headersRef._withUnsafeGuaranteedRef(f) }
    /// Runs `f` with the body buffer borrowed at +0 (see `bodyRef`).
    @inline(__always) func withBody<R>(_ f: (ByteBuffer) -> R) -> R { bodyRef._withUnsafeGuaranteedRef(f) }

    /// Appends a header line from raw bytes (dropped if either contains CR or LF).
    func appendHeader(_ name: UnsafeRawBufferPointer, _ value: UnsafeRawBufferPointer) {
        withHeaders { $0.appendHeader(name, value) }
    }

    /// Adds a header line. Names and values must not contain CR or LF (they are dropped if they do).
    public mutating func setHeader(_ name: StaticString, _ value: StaticString) {
        appendHeader(UnsafeRawBufferPointer(start: name.utf8Start, count: name.utf8CodeUnitCount),
                     UnsafeRawBufferPointer(start: value.utf8Start, count: value.utf8CodeUnitCount))
    }

    /// Adds a header line with a run-time value.
    public mutating func setHeader(_ name: StaticString, _ value: String) {
        let n = UnsafeRawBufferPointer(start: name.utf8Start, count: name.utf8CodeUnitCount)
        withUTF8Bytes(value) { appendHeader(n, $0) }
    }

    /// Appends body bytes.
    public mutating func write(_ bytes: UnsafeRawBufferPointer) { withBody { $0.append(bytes) } }
    public mutating func write(_ s: StaticString) {
        withBody { $0.append(UnsafeRawBufferPointer(start: s.utf8Start, count: s.utf8CodeUnitCount)) }
    }
    public mutating func write(_ bytes: [UInt8]) { bytes.withUnsafeBytes { b in withBody { $0.append(b) } } }
    public mutating func write(_ s: String) { withUTF8Bytes(s) { b in withBody { $0.append(b) } } }
}

/// Runs `body` with the UTF-8 bytes of `s`. A native or small string (a literal: the `String` overloads
/// of `setHeader` and `write` are the ones a literal picks) is read in place, borrowed (no copy: no
/// retain/release); only another one is copied to contiguous UTF-8 first.
@inline(__always) private func withUTF8Bytes(_ s: String, _ body: (UnsafeRawBufferPointer) -> Void) {
    if s.utf8.withContiguousStorageIfAvailable({ body(UnsafeRawBufferPointer($0)) }) != nil { return }
    var s = s
    s.withUTF8 { body(UnsafeRawBufferPointer($0)) }
}

/// A growable byte buffer that keeps its capacity (one per connection and purpose).
///
/// Loop-thread confined (owned by one HTTPConnection, or a pooled codec in use by one): only that thread
/// touches its state, so it is `@exclusivity(unchecked)` (no dynamic check per append).
@usableFromInline final class ByteBuffer {
    @exclusivity(unchecked) private(set) var base: UnsafeMutableRawPointer
    @exclusivity(unchecked) private(set) var capacity: Int
    @exclusivity(unchecked) private(set) var count = 0

    init(capacity: Int) {
        self.capacity = max(capacity, 64)
        base = .allocate(byteCount: self.capacity, alignment: 16)
    }
    deinit { base.deallocate() }

    var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: base, count: count) }
    func clear() { count = 0 }

    @usableFromInline func append(_ b: UnsafeRawBufferPointer) {
        guard b.count > 0 else { return }
        reserve(count + b.count)
        (base + count).copyMemory(from: b.baseAddress!, byteCount: b.count)
        count += b.count
    }
    func append(_ s: StaticString) { append(UnsafeRawBufferPointer(start: s.utf8Start, count: s.utf8CodeUnitCount)) }
    func append(decimal v: Int) {
        var digits: (UInt64, UInt64, UInt64) = (0, 0, 0)
        withUnsafeMutableBytes(of: &digits) { d in
            var n = v, i = 24
            repeat { i -= 1; d[i] = UInt8(48 + n % 10); n /= 10 } while n > 0 && i > 0
            append(UnsafeRawBufferPointer(rebasing: d[i..<24]))
        }
    }
    @usableFromInline func appendHeader(_ name: UnsafeRawBufferPointer, _ value: UnsafeRawBufferPointer) {
        if containsLineBreak(name) || containsLineBreak(value) { return }
        append(name); append(": "); append(value); append("\r\n")
    }
    /// Makes room for `n` bytes in all. The check is inlined into every append; growing is not (a
    /// connection's buffers reach their working size on its first responses and stay there).
    @inline(__always) private func reserve(_ n: Int) {
        if _slowPath(n > capacity) { grow(n) }
    }
    @inline(never) private func grow(_ n: Int) {
        var c = capacity
        while c < n { c *= 2 }
        let nb = UnsafeMutableRawPointer.allocate(byteCount: c, alignment: 16)
        nb.copyMemory(from: base, byteCount: count)
        base.deallocate()
        base = nb
        capacity = c
    }
}

/// Whether `b` holds a CR or LF byte (a header line must not; names and values are mostly 8-30 bytes).
/// Eight bytes at a time: a word has a byte equal to c exactly when `w ^ c·0x01…01` has a zero byte,
/// and `(v - 0x01…01) & ~v & 0x80…80` is non-zero exactly when `v` has a zero byte (the classic exact
/// test for existence). From 8 bytes on, the last word is read at `n - 8`, overlapping the previous
/// one, instead of a byte loop for the tail.
@inline(__always) func containsLineBreak(_ b: UnsafeRawBufferPointer) -> Bool {
    guard let p = b.baseAddress else { return false }
    let n = b.count
    guard n >= 8 else {
        for i in 0..<n {
            let c = p.load(fromByteOffset: i, as: UInt8.self)
            if c == 13 || c == 10 { return true }
        }
        return false
    }
    @inline(__always) func hasLineBreak(_ w: UInt64) -> Bool {
        let ones: UInt64 = 0x0101_0101_0101_0101
        let cr = w ^ (ones &* 13), lf = w ^ (ones &* 10)
        return ((cr &- ones) & ~cr | (lf &- ones) & ~lf) & 0x8080_8080_8080_8080 != 0
    }
    var i = 0
    while i + 8 < n {
        if hasLineBreak(p.loadUnaligned(fromByteOffset: i, as: UInt64.self)) { return true }
        i += 8
    }
    return hasLineBreak(p.loadUnaligned(fromByteOffset: n - 8, as: UInt64.self))
}

/// Whether the UTF-8 bytes of `s` hold a CR or LF (read in place when `s` is native or small).
func containsLineBreak(_ s: String) -> Bool {
    var found = false
    withUTF8Bytes(s) { found = containsLineBreak($0) }
    return found
}

/// Reason phrases for the statuses the engine and typical handlers send.
func reasonPhrase(_ status: Int) -> StaticString {
    switch status {
    case 100: "Continue"
    case 200: "OK"
    case 201: "Created"
    case 204: "No Content"
    case 301: "Moved Permanently"
    case 302: "Found"
    case 304: "Not Modified"
    case 400: "Bad Request"
    case 401: "Unauthorized"
    case 403: "Forbidden"
    case 404: "Not Found"
    case 405: "Method Not Allowed"
    case 408: "Request Timeout"
    case 413: "Content Too Large"
    case 414: "URI Too Long"
    case 431: "Request Header Fields Too Large"
    case 500: "Internal Server Error"
    case 501: "Not Implemented"
    case 503: "Service Unavailable"
    case 505: "HTTP Version Not Supported"
    case 507: "Insufficient Storage"
    default: "Status"
    }
}
