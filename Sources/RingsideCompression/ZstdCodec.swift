import CZstd

// Invariants (the only unsafe code of the zstd codecs): each class owns one context, created in
// `init` and freed in `deinit` (never shared, never freed twice); `ZSTD_inBuffer` / `ZSTD_outBuffer`
// are built on the stack over the caller's buffers for one call and not kept.

@inline(__always) private func zstdError(_ rc: Int) -> String { String(cString: ZSTD_getErrorName(rc)) }

private func notZstdFrame(_ magic: UInt32) -> String {
    let hex = String(magic, radix: 16)
    return "not a zstd frame (magic number 0x" + String(repeating: "0", count: max(0, 8 - hex.count)) + hex + ")"
}

/// A zstd compression stream (`ZSTD_CStream`).
final class ZstdCompressor: StreamCodec {
    private let ctx: OpaquePointer

    init(level: Int) throws(CompressionError) {
        guard level >= Int(ZSTD_minCLevel()), level <= Int(ZSTD_maxCLevel()) else {
            throw .library("zstd level \(level) is not in \(ZSTD_minCLevel())...\(ZSTD_maxCLevel())")
        }
        guard let c = ZSTD_createCCtx() else { throw .outOfMemory }
        ctx = c
        let rc = ZSTD_CCtx_setParameter(ctx, ZSTD_c_compressionLevel, Int32(clamping: level))
        if ZSTD_isError(rc) != 0 { throw .library("zstd level \(level): \(zstdError(rc))") }
    }
    deinit { ZSTD_freeCCtx(ctx) }

    func step(_ input: UnsafeRawBufferPointer, _ output: UnsafeMutableRawBufferPointer,
              _ flush: CompressionFlush) throws(CompressionError) -> CodecProgress {
        var inb = ZSTD_inBuffer(src: input.baseAddress, size: input.count, pos: 0)
        var outb = ZSTD_outBuffer(dst: output.baseAddress, size: output.count, pos: 0)
        let directive: ZSTD_EndDirective = switch flush {
        case .none: ZSTD_e_continue
        case .sync: ZSTD_e_flush
        case .finish: ZSTD_e_end
        }
        let rc = ZSTD_compressStream2(ctx, &outb, &inb, directive)
        if ZSTD_isError(rc) != 0 { throw .library("ZSTD_compressStream2: \(zstdError(rc))") }
        let allIn = inb.pos == inb.size
        // rc: bytes still to flush (0: the flush or the frame is complete).
        let finished = flush == .none ? allIn : allIn && rc == 0
        return CodecProgress(consumed: inb.pos, produced: outb.pos, finished: finished)
    }

    func reset() throws(CompressionError) {
        let rc = ZSTD_CCtx_reset(ctx, ZSTD_reset_session_only)
        if ZSTD_isError(rc) != 0 { throw .library("ZSTD_CCtx_reset: \(zstdError(rc))") }
    }
}

/// A zstd decompression stream (`ZSTD_DStream`) that refuses frames whose window exceeds
/// 2^`windowLogMax` bytes (the window is memory the decoder must allocate), and frames of the legacy
/// pre-1.0 formats (libzstd may be built with them; their decoders behave differently with split
/// input, as fuzz-inflate found, and RFC 8878 has no place for them): each frame must start with the
/// zstd magic number or a skippable frame's.
final class ZstdDecompressor: StreamCodec {
    private let ctx: OpaquePointer
    /// Whether the next input byte starts a frame (its magic number is checked first).
    private var atFrameStart = true
    /// The magic number bytes collected so far (little-endian), `magicCount` of them.
    private var magic: UInt32 = 0
    private var magicCount = 0

    init(windowLogMax: Int) throws(CompressionError) {
        guard let c = ZSTD_createDCtx() else { throw .outOfMemory }
        ctx = c
        let rc = ZSTD_DCtx_setParameter(ctx, ZSTD_d_windowLogMax, Int32(clamping: windowLogMax))
        if ZSTD_isError(rc) != 0 { throw .library("zstd windowLogMax \(windowLogMax): \(zstdError(rc))") }
    }
    deinit { ZSTD_freeDCtx(ctx) }

    func step(_ input: UnsafeRawBufferPointer, _ output: UnsafeMutableRawBufferPointer,
              _ flush: CompressionFlush) throws(CompressionError) -> CodecProgress {
        if atFrameStart { return try readMagic(input, output) }
        var inb = ZSTD_inBuffer(src: input.baseAddress, size: input.count, pos: 0)
        var outb = ZSTD_outBuffer(dst: output.baseAddress, size: output.count, pos: 0)
        let rc = try decompress(&inb, &outb)
        // rc == 0: a frame is complete and fully flushed; the next byte starts another.
        if rc == 0 { atFrameStart = true }
        return CodecProgress(consumed: inb.pos, produced: outb.pos, finished: rc == 0)
    }

    private func decompress(_ inb: inout ZSTD_inBuffer, _ outb: inout ZSTD_outBuffer) throws(CompressionError) -> Int {
        let rc = ZSTD_decompressStream(ctx, &outb, &inb)
        if ZSTD_isError(rc) != 0 {
            if ZSTD_getErrorCode(rc) == ZSTD_error_memory_allocation { throw .outOfMemory }
            throw .corrupt(zstdError(rc))
        }
        return rc
    }

    /// Collects a frame's 4-byte magic number (across pieces), checks it, then hands it to libzstd.
    private func readMagic(_ input: UnsafeRawBufferPointer, _ output: UnsafeMutableRawBufferPointer) throws(CompressionError) -> CodecProgress {
        var n = 0
        while magicCount < 4 && n < input.count {
            magic |= UInt32(input[n]) << (8 * UInt32(magicCount))
            magicCount += 1
            n += 1
        }
        guard magicCount == 4 else { return CodecProgress(consumed: n, produced: 0, finished: false) }
        guard magic == 0xFD2F_B528 || magic & 0xFFFF_FFF0 == 0x184D_2A50 else {
            throw .corrupt(notZstdFrame(magic))
        }
        var bytes = magic.littleEndian
        let produced: Int = try withUnsafeBytes(of: &bytes) { (m) throws(CompressionError) -> Int in
            var inb = ZSTD_inBuffer(src: m.baseAddress, size: 4, pos: 0)
            var outb = ZSTD_outBuffer(dst: output.baseAddress, size: output.count, pos: 0)
            // Four bytes are less than any frame header: libzstd keeps them all (checked).
            _ = try decompress(&inb, &outb)
            guard inb.pos == 4 else { throw .library("libzstd did not take a frame's magic number") }
            return outb.pos
        }
        atFrameStart = false
        magic = 0
        magicCount = 0
        return CodecProgress(consumed: n, produced: produced, finished: false)
    }

    func reset() throws(CompressionError) {
        let rc = ZSTD_DCtx_reset(ctx, ZSTD_reset_session_only)
        if ZSTD_isError(rc) != 0 { throw .library("ZSTD_DCtx_reset: \(zstdError(rc))") }
        atFrameStart = true
        magic = 0
        magicCount = 0
    }
}
