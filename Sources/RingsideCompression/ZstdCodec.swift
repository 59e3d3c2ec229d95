import CZstd

// Invariants (the only unsafe code of the zstd codecs): each class owns one context, created in
// `init` and freed in `deinit` (never shared, never freed twice); `ZSTD_inBuffer` / `ZSTD_outBuffer`
// are built on the stack over the caller's buffers for one call and not kept.

@inline(__always) private func zstdError(_ rc: Int) -> String { String(cString: ZSTD_getErrorName(rc)) }

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
/// 2^`windowLogMax` bytes (the window is memory the decoder must allocate).
final class ZstdDecompressor: StreamCodec {
    private let ctx: OpaquePointer

    init(windowLogMax: Int) throws(CompressionError) {
        guard let c = ZSTD_createDCtx() else { throw .outOfMemory }
        ctx = c
        let rc = ZSTD_DCtx_setParameter(ctx, ZSTD_d_windowLogMax, Int32(clamping: windowLogMax))
        if ZSTD_isError(rc) != 0 { throw .library("zstd windowLogMax \(windowLogMax): \(zstdError(rc))") }
    }
    deinit { ZSTD_freeDCtx(ctx) }

    func step(_ input: UnsafeRawBufferPointer, _ output: UnsafeMutableRawBufferPointer,
              _ flush: CompressionFlush) throws(CompressionError) -> CodecProgress {
        var inb = ZSTD_inBuffer(src: input.baseAddress, size: input.count, pos: 0)
        var outb = ZSTD_outBuffer(dst: output.baseAddress, size: output.count, pos: 0)
        let rc = ZSTD_decompressStream(ctx, &outb, &inb)
        if ZSTD_isError(rc) != 0 {
            if ZSTD_getErrorCode(rc) == ZSTD_error_memory_allocation { throw .outOfMemory }
            throw .corrupt(zstdError(rc))
        }
        // rc == 0: a frame is complete and fully flushed.
        return CodecProgress(consumed: inb.pos, produced: outb.pos, finished: rc == 0)
    }

    func reset() throws(CompressionError) {
        let rc = ZSTD_DCtx_reset(ctx, ZSTD_reset_session_only)
        if ZSTD_isError(rc) != 0 { throw .library("ZSTD_DCtx_reset: \(zstdError(rc))") }
    }
}
