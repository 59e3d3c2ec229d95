import CZlib

/// zlib's `z_stream` at a fixed address, for one deflate or inflate stream.
///
/// Invariants (the only unsafe code of the zlib codecs):
///  * `stream` is allocated and zero-initialized once in `init`, initialized by `deflateInit2` /
///    `inflateInit2`, ended by `deflateEnd` / `inflateEnd` and freed in `deinit`. Its address never
///    changes: zlib keeps a back pointer (`state->strm`) and refuses a moved stream.
///  * `next_in` / `next_out` point into the caller's buffers only during `run`; they are cleared
///    before it returns, so no pointer to a caller's buffer outlives the call.
///  * `avail_in` / `avail_out` are at most `UInt32.max` (a larger buffer is handed over in part: the
///    progress reported says how much was used).
final class ZlibStream {
    let stream: UnsafeMutablePointer<z_stream>
    let inflating: Bool

    private init(inflating: Bool) {
        self.inflating = inflating
        stream = .allocate(capacity: 1)
        stream.initialize(to: z_stream())
    }

    /// windowBits for `format`: 15 + 16 gzip, 15 zlib, -15 raw (zstd is not a zlib format).
    static func windowBits(_ format: CompressionFormat) -> Int32 {
        switch format {
        case .gzip: 31
        case .zlib: 15
        case .rawDeflate, .zstd: -15
        }
    }

    static func deflater(_ format: CompressionFormat, level: Int) throws(CompressionError) -> ZlibStream {
        let s = ZlibStream(inflating: false)
        let rc = rs_deflateInit2(s.stream, Int32(level), windowBits(format), 8, Z_DEFAULT_STRATEGY)
        guard rc == Z_OK else { s.abandon(); throw rc == Z_MEM_ERROR ? .outOfMemory : .library("deflateInit2: \(rc)") }
        return s
    }

    static func inflater(_ format: CompressionFormat) throws(CompressionError) -> ZlibStream {
        let s = ZlibStream(inflating: true)
        let rc = rs_inflateInit2(s.stream, windowBits(format))
        guard rc == Z_OK else { s.abandon(); throw rc == Z_MEM_ERROR ? .outOfMemory : .library("inflateInit2: \(rc)") }
        return s
    }

    private var initialized = true
    /// Init failed: nothing to end in deinit.
    private func abandon() { initialized = false }

    deinit {
        if initialized { _ = inflating ? inflateEnd(stream) : deflateEnd(stream) }
        stream.deinitialize(count: 1)
        stream.deallocate()
    }

    /// One call of `deflate` / `inflate` with `flush` over the caller's buffers; returns zlib's code
    /// and the bytes consumed and produced.
    @inline(__always)
    func run(_ input: UnsafeRawBufferPointer, _ output: UnsafeMutableRawBufferPointer, flush: Int32)
        -> (rc: Int32, consumed: Int, produced: Int)
    {
        let inCount = UInt32(clamping: input.count), outCount = UInt32(clamping: output.count)
        let s = stream
        // zlib reads next_in (declared non-const) and never writes through it.
        s.pointee.next_in = UnsafeMutablePointer(mutating: input.baseAddress?.assumingMemoryBound(to: Bytef.self))
        s.pointee.avail_in = inCount
        s.pointee.next_out = output.baseAddress?.assumingMemoryBound(to: Bytef.self)
        s.pointee.avail_out = outCount
        let rc = inflating ? inflate(s, flush) : deflate(s, flush)
        let consumed = Int(inCount - s.pointee.avail_in), produced = Int(outCount - s.pointee.avail_out)
        s.pointee.next_in = nil; s.pointee.avail_in = 0
        s.pointee.next_out = nil; s.pointee.avail_out = 0
        return (rc, consumed, produced)
    }

    var message: String {
        guard let m = stream.pointee.msg else { return "invalid data" }
        return String(cString: m)
    }
}

/// A zlib deflate stream (gzip, zlib or raw).
final class ZlibDeflater: StreamCodec {
    let z: ZlibStream
    init(_ format: CompressionFormat, level: Int) throws(CompressionError) {
        guard (0...9).contains(level) || level == -1 else { throw .library("zlib level \(level) is not in 0...9") }
        z = try .deflater(format, level: level)
    }

    func step(_ input: UnsafeRawBufferPointer, _ output: UnsafeMutableRawBufferPointer,
              _ flush: CompressionFlush) throws(CompressionError) -> CodecProgress {
        let mode: Int32 = switch flush {
        case .none: Z_NO_FLUSH
        case .sync: Z_SYNC_FLUSH
        case .finish: Z_FINISH
        }
        let r = z.run(input, output, flush: mode)
        switch r.rc {
        case Z_OK, Z_BUF_ERROR, Z_STREAM_END: break  // Z_BUF_ERROR: no progress possible (nothing left to do)
        default: throw .library("deflate: \(r.rc) \(z.message)")
        }
        let allIn = r.consumed == input.count
        let finished: Bool = switch flush {
        case .none: allIn
        // zlib: a flush is complete when deflate returns with output space left.
        case .sync: allIn && r.produced < output.count
        case .finish: r.rc == Z_STREAM_END
        }
        return CodecProgress(consumed: r.consumed, produced: r.produced, finished: finished)
    }

    func reset() throws(CompressionError) {
        let rc = deflateReset(z.stream)
        guard rc == Z_OK else { throw .library("deflateReset: \(rc)") }
    }
}

/// A zlib inflate stream (gzip, zlib or raw).
final class ZlibInflater: StreamCodec {
    let z: ZlibStream
    init(_ format: CompressionFormat) throws(CompressionError) { z = try .inflater(format) }

    func step(_ input: UnsafeRawBufferPointer, _ output: UnsafeMutableRawBufferPointer,
              _ flush: CompressionFlush) throws(CompressionError) -> CodecProgress {
        let r = z.run(input, output, flush: Z_NO_FLUSH)
        switch r.rc {
        case Z_OK, Z_BUF_ERROR: break  // Z_BUF_ERROR: needs more input (or output room)
        case Z_STREAM_END: break
        case Z_NEED_DICT: throw .corrupt("the stream needs a preset dictionary")
        case Z_DATA_ERROR: throw .corrupt(z.message)
        case Z_MEM_ERROR: throw .outOfMemory
        default: throw .library("inflate: \(r.rc)")
        }
        return CodecProgress(consumed: r.consumed, produced: r.produced, finished: r.rc == Z_STREAM_END)
    }

    func reset() throws(CompressionError) {
        let rc = inflateReset(z.stream)
        guard rc == Z_OK else { throw .library("inflateReset: \(rc)") }
    }
}
