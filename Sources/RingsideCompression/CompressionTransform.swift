/// Both directions of one compressed byte stream as a push transform: plaintext in, compressed bytes
/// out (`encode`), and compressed bytes in, plaintext out (`decode`), each output handed over in pieces
/// of at most `chunkSize` bytes (size it as the engine's pool chunks).
///
/// Outbound, every `encode` ends with a sync flush by default: what was encoded so far is decodable by
/// the peer at once, on one stream, so later messages still compress against earlier ones (the
/// classic framed-deflate design, as in WebSocket permessage-deflate with context takeover). Inbound,
/// the total plaintext over the life of the stream is capped (`inboundLimit`).
///
/// This is the core a stream layer (between the engine and a handler, under or over TLS) wraps: it
/// owns no socket and allocates nothing per call once built.
public final class CompressionTransform {
    public let compressor: Compressor
    public let decompressor: Decompressor

    /// - Parameters:
    ///   - format: `.rawDeflate` (the default: no per-stream header), `.zlib`, `.gzip` or `.zstd`.
    ///   - level: the compression level (nil: the library's default).
    ///   - inboundLimit: the most plaintext the inbound stream may decode to, in total.
    ///   - chunkSize: the largest output piece handed to a sink.
    public init(format: CompressionFormat = .rawDeflate, level: Int? = nil, inboundLimit: Int = .max,
                chunkSize: Int = 16 * 1024) throws(CompressionError) {
        compressor = try Compressor(format: format, level: level, outputChunkSize: chunkSize)
        decompressor = try Decompressor(format: format, limit: inboundLimit, outputChunkSize: chunkSize)
    }

    /// Compresses `plain` and flushes (`.sync` by default), handing the compressed pieces to `emit`.
    public func encode(_ plain: UnsafeRawBufferPointer, flush: CompressionFlush = .sync,
                       _ emit: (UnsafeRawBufferPointer) -> Void) throws(CompressionError) {
        try compressor.compress(plain, flush: flush, emit)
    }

    /// Decompresses `wire` (any split), handing the plaintext pieces to `emit` (false stops).
    @discardableResult
    public func decode(_ wire: UnsafeRawBufferPointer, _ emit: (UnsafeRawBufferPointer) -> Bool) throws(CompressionError) -> Bool {
        try decompressor.decompress(wire, emit)
    }
}
