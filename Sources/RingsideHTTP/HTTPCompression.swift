import Ringside
import RingsideCompression

/// A value handed from one loop thread to another through the pool's lock.
///
/// `@unchecked Sendable`: a codec is used by one owner at a time; it is in the pool (behind the lock)
/// or taken by exactly one connection, never both.
struct Owned<T>: @unchecked Sendable { let value: T }

/// A response compressor and the buffer it writes into, reused across responses.
final class PooledCompressor {
    let compressor: Compressor
    let output = ByteBuffer(capacity: 16 * 1024)
    init(_ c: Compressor) { compressor = c }
}

/// Idle codec states, shared by the connections of every loop: a codec is needed only while one
/// response is compressed (synchronously, whole) or one request body decoded, so a few serve many
/// connections (a deflate state is ~256 KiB: one per connection would not scale). Bounded.
final class HTTPCodecPool: Sendable {
    private struct Idle {
        var compressors: [Owned<PooledCompressor>] = []
        var decompressors: [Owned<Decompressor>] = []
    }
    private let idle = PthreadMutex(Idle())  // not Synchronization.Mutex: TSan must see it (PthreadMutex.swift)
    /// Idle states kept per kind; more are freed when returned. zstd states keep their buffers (a
    /// decoder's window is up to 8 MiB), so fewer of them are kept.
    static let maxIdle = 32
    static let maxIdleZstd = 4

    func takeCompressor(_ format: CompressionFormat, level: Int) -> PooledCompressor? {
        let found: Owned<PooledCompressor>? = idle.withLock { i in
            guard let k = i.compressors.lastIndex(where: { $0.value.compressor.format == format && $0.value.compressor.level == level })
            else { return nil }
            return i.compressors.remove(at: k)
        }
        if let found { return found.value }
        do throws(CompressionError) {
            return PooledCompressor(try Compressor(format: format, level: level))
        } catch {
            return nil  // an invalid level or no memory: the response goes out unencoded
        }
    }

    func put(_ c: PooledCompressor) {
        let o = Owned(value: c)
        let cap = c.compressor.format == .zstd ? Self.maxIdleZstd : Self.maxIdle
        idle.withLock { i in
            if i.compressors.count(where: { $0.value.compressor.format == o.value.compressor.format }) < cap { i.compressors.append(o) }
        }
    }

    func takeDecompressor(_ format: CompressionFormat, limit: Int) throws(CompressionError) -> Decompressor {
        let found: Owned<Decompressor>? = idle.withLock { i in
            guard let k = i.decompressors.lastIndex(where: { $0.value.format == format }) else { return nil }
            return i.decompressors.remove(at: k)
        }
        if let d = found?.value { d.limit = limit; return d }
        return try Decompressor(format: format, limit: limit)
    }

    /// Returns a decompressor (reset for its next stream; dropped if the reset fails).
    func put(_ d: Decompressor) {
        do throws(CompressionError) { try d.reset() } catch { return }
        let o = Owned(value: d)
        let cap = d.format == .zstd ? Self.maxIdleZstd : Self.maxIdle
        idle.withLock { i in
            if i.decompressors.count(where: { $0.value.format == o.value.format }) < cap { i.decompressors.append(o) }
        }
    }
}

/// Per-connection coding state: the coding negotiated for the current request's response, and the
/// decoder of its body.
struct ConnectionCoding {
    var accepted = HTTPContentCoding.identity
    var decoder: Decompressor? = nil
    /// Inside `decoder.decompress` (a failure answered from the body sink must not pool the decoder
    /// while its call is still on the stack).
    var decoding = false
}

extension HTTPConnection {
    // MARK: negotiation (at the request head)

    /// Notes the response coding the request accepts (compression on only).
    func negotiateCoding(_ h: HTTPRequestHead) {
        guard let v = h.value(forName: "accept-encoding") else { coding.accepted = .identity; return }
        coding.accepted = HTTPContentCoding.negotiate(acceptEncoding: v.buffer, preference: config.compression.codings)
    }

    /// Sets up the decoding of a request body sent with `Content-Encoding`; false when the coding is
    /// not supported (answered 415).
    func startRequestDecoding(_ h: HTTPRequestHead, _ connection: Connection) -> Bool {
        guard let v = h.value(forName: "content-encoding") else { return true }
        let token = HTTPContentCoding.trim(v.buffer)
        guard let c = HTTPContentCoding.named(HTTPBytes(token)) else {
            config.stats.count(.decodeFailure)
            fail(status: 415, reason: "unsupported Content-Encoding \"\(HTTPBytes(token).string)\" (gzip, deflate, zstd)", connection)
            return false
        }
        guard let format = c.format else { return true }  // identity
        let limit = config.compression.maxDecodedRequestBytes ?? config.limits.maxBodyBytes
        do throws(CompressionError) {
            coding.decoder = try config.compression.pool.takeDecompressor(format, limit: limit)
        } catch {
            fail(status: 500, reason: "request body decoder: \(error)", connection)
            return false
        }
        // The route sees the decoded body: the coding and the coded length no longer describe it.
        head.removeFields(named: "content-encoding")
        head.removeFields(named: "content-length")
        return true
    }

    /// Decodes body bytes and delivers the plaintext as if it had been sent so.
    func decodeBody(_ d: Decompressor, _ bytes: UnsafeRawBufferPointer, _ connection: Connection) {
        coding.decoding = true
        defer { coding.decoding = false }
        do throws(CompressionError) {
            try d.decompress(bytes) { piece in
                deliverBody(piece, connection)
                return !halted
            }
        } catch {
            requestDecodingFailed(error, connection)
        }
    }

    /// The body ended: false (answered 400) when the coded stream did not.
    func finishRequestDecoding(_ connection: Connection) -> Bool {
        guard let d = coding.decoder else { return true }
        do throws(CompressionError) {
            try d.finish()
        } catch {
            requestDecodingFailed(error, connection)
            return false
        }
        releaseRequestDecoder()
        return true
    }

    private func requestDecodingFailed(_ error: CompressionError, _ connection: Connection) {
        releaseRequestDecoder()
        if case .limitExceeded(let limit) = error {
            config.stats.count(.decodeLimit)
            fail(status: 413, reason: "request body decodes to more than \(limit) bytes", connection)
        } else {
            config.stats.count(.decodeFailure)
            fail(status: 400, reason: "request body: \(error)", connection)
        }
    }

    func releaseRequestDecoder() {
        guard let d = coding.decoder else { return }
        coding.decoder = nil
        if !coding.decoding { config.compression.pool.put(d) }  // else dropped (freed after the call)
    }

    // MARK: responses

    /// Compresses `res`'s in-memory body in place when the response qualifies (see
    /// ``HTTPCompressionConfiguration``), adding `Content-Encoding` and `Vary`.
    func encodeResponse(_ res: inout HTTPResponse, _ meta: RequestMeta) {
        let cfg = config.compression
        let s = res.status
        guard !meta.isHead, s >= 200, s != 204, s != 206, s != 304, res.bodyFile == nil, res.compressible,
              responseBody.count >= cfg.minimumSize else { return }
        guard qualifies(userHeaders.bytes) else { return }
        userHeaders.append("Vary: Accept-Encoding\r\n")
        guard let format = meta.coding.format,
              let c = cfg.pool.takeCompressor(format, level: format == .zstd ? cfg.zstdLevel : cfg.level) else { return }
        c.output.clear()
        do throws(CompressionError) {
            try c.compressor.compress(responseBody.bytes, flush: .finish) { c.output.append($0) }
        } catch {
            return  // the codec failed (not seen in practice): sent unencoded, the codec dropped
        }
        responseBody.clear()
        responseBody.append(c.output.bytes)
        if c.output.capacity <= 1 << 20 { cfg.pool.put(c) }  // no huge buffer kept idle
        userHeaders.append("Content-Encoding: ")
        userHeaders.append(meta.coding.token)
        userHeaders.append("\r\n")
        config.stats.count(.compressed)
    }
}

extension HTTPConnection {
    // MARK: streamed responses (HTTPResponseWriter)

    /// A streamed response's head is being composed (its header lines in `userHeaders`): when it
    /// qualifies (as in `encodeResponse`, without the minimum size: the length is not known), adds
    /// `Vary` and, if the request accepts a coding, `Content-Encoding`, and returns the compressor its
    /// pieces go through.
    func streamCoding(status s: Int, meta: RequestMeta) -> PooledCompressor? {
        let cfg = config.compression
        guard !meta.isHead, s >= 200, s != 204, s != 206, s != 304, qualifies(userHeaders.bytes) else { return nil }
        userHeaders.append("Vary: Accept-Encoding\r\n")
        guard let format = meta.coding.format,
              let c = cfg.pool.takeCompressor(format, level: format == .zstd ? cfg.zstdLevel : cfg.level) else { return nil }
        userHeaders.append("Content-Encoding: ")
        userHeaders.append(meta.coding.token)
        userHeaders.append("\r\n")
        config.stats.count(.compressed)
        return c
    }

    /// Compresses one piece of a streamed body with a sync flush (the client can decode everything
    /// written so far), or ends the stream (`finish`).
    func encodeStreamPiece(_ c: PooledCompressor, _ bytes: [UInt8], finish: Bool) -> [UInt8] {
        var out: [UInt8] = []
        let r = bytes.withUnsafeBytes { b in
            Result { () throws(CompressionError) in
                try c.compressor.compress(b, flush: finish ? .finish : .sync) { out.append(contentsOf: $0) }
            }
        }
        if case .failure = r {
            // A codec failure on valid input: the coded stream cannot go on, and the head already
            // promised the coding. Cut the connection (the client sees an incomplete body, not a wrong one).
            connection?.abort()
            return []
        }
        return out
    }

    /// Whether composed header lines describe a compressible response (a compressible type, no
    /// Content-Encoding or Content-Range of their own).
    func qualifies(_ lines: UnsafeRawBufferPointer) -> Bool {
        var contentType: UnsafeRawBufferPointer? = nil
        var encodedAlready = false
        forEachHeaderLine(lines) { name, value in
            if name.equalsIgnoringCase("content-type") { contentType = value.buffer }
            else if name.equalsIgnoringCase("content-encoding") || name.equalsIgnoringCase("content-range") { encodedAlready = true }
        }
        guard !encodedAlready, let contentType else { return false }
        return config.compression.isCompressible(contentType)
    }
}

/// Calls `body(name, value)` for each `Name: value\r\n` line of composed header lines.
private func forEachHeaderLine(_ lines: UnsafeRawBufferPointer, _ body: (HTTPBytes, HTTPBytes) -> Void) {
    var i = 0
    let n = lines.count
    while i < n {
        var colon = i
        while colon < n && lines[colon] != UInt8(ascii: ":") { colon += 1 }
        var end = colon
        while end < n && lines[end] != 13 { end += 1 }
        guard colon < n, end < n else { return }
        let name = UnsafeRawBufferPointer(rebasing: lines[i..<colon])
        let value = HTTPContentCoding.trim(UnsafeRawBufferPointer(rebasing: lines[(colon + 1)..<end]))
        body(HTTPBytes(name), HTTPBytes(value))
        i = end + 2
    }
}
