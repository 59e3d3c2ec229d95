/// An output buffer allocated once per codec and reused for every call.
///
/// Invariant: `base` holds `count` bytes, allocated in `init`, freed in `deinit`, never reallocated;
/// slices handed to a sink are valid during the sink call only (the next step overwrites them).
final class OutputChunk {
    let base: UnsafeMutableRawPointer
    let count: Int
    init(_ count: Int) {
        self.count = max(64, count)
        base = .allocate(byteCount: self.count, alignment: 16)
    }
    deinit { base.deallocate() }
    @inline(__always) func prefix(_ n: Int) -> UnsafeMutableRawBufferPointer { UnsafeMutableRawBufferPointer(start: base, count: min(n, count)) }
    @inline(__always) func bytes(_ n: Int) -> UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: base, count: n) }
}

/// A streaming compressor: gzip, zlib-wrapped or raw deflate (zlib) or zstd (libzstd).
///
/// Push API: feed input as it comes, with the flush each call needs; output goes to a sink in pieces
/// of at most `outputChunkSize` bytes (from one buffer allocated with the codec and reused), or into a
/// caller's buffer with ``step(input:output:flush:)``. After a `.finish` the next call starts a new
/// stream (the codec's state is reset, not reallocated). One owner at a time (not thread-safe).
///
/// ```swift
/// let gz = try Compressor(format: .gzip, level: 1)
/// try gz.compress(body, flush: .finish) { piece in out.append(contentsOf: piece) }
/// ```
public final class Compressor {
    public let format: CompressionFormat
    public let level: Int
    private let codec: any StreamCodec
    private let out: OutputChunk
    private var ended = false

    /// The default level of `format`: zlib 6, zstd 3 (the libraries' own defaults).
    public static func defaultLevel(_ format: CompressionFormat) -> Int { format == .zstd ? 3 : 6 }

    /// - Parameters:
    ///   - level: zlib 0...9; zstd 1...19 (negative: zstd's fast levels). Nil: the library's default.
    ///   - outputChunkSize: the size of the pieces handed to a sink (for example a pool chunk's).
    /// - Throws: ``CompressionError/library(_:)`` for a level out of range, `.outOfMemory`.
    public init(format: CompressionFormat, level: Int? = nil, outputChunkSize: Int = 16 * 1024) throws(CompressionError) {
        self.format = format
        self.level = level ?? Self.defaultLevel(format)
        codec = format == .zstd ? try ZstdCompressor(level: self.level) : try ZlibDeflater(format, level: self.level)
        out = OutputChunk(outputChunkSize)
    }

    /// One call of the library on the caller's buffers: consumes a prefix of `input`, writes a prefix
    /// of `output`. Call again (with the rest of the input) until `finished`.
    public func step(input: UnsafeRawBufferPointer, output: UnsafeMutableRawBufferPointer,
                     flush: CompressionFlush) throws(CompressionError) -> CodecProgress {
        try restartIfEnded()
        let p = try codec.step(input, output, flush)
        if flush == .finish && p.finished { ended = true }
        return p
    }

    /// Compresses all of `input`, then performs `flush`; hands every output piece to `sink` (valid
    /// during the call only).
    public func compress(_ input: UnsafeRawBufferPointer, flush: CompressionFlush,
                         _ sink: (UnsafeRawBufferPointer) -> Void) throws(CompressionError) {
        try restartIfEnded()
        var rest = input
        while true {
            let p = try codec.step(rest, out.prefix(out.count), flush)
            rest = UnsafeRawBufferPointer(rebasing: rest[p.consumed...])
            if p.produced > 0 { sink(out.bytes(p.produced)) }
            if p.finished && rest.isEmpty { break }
            if p.consumed == 0 && p.produced == 0 { throw .library("\(format) compressor made no progress") }
        }
        if flush == .finish { ended = true }
    }

    /// Appends the compressed form of `input` (then `flush`) to `output`.
    public func compress(_ input: UnsafeRawBufferPointer, flush: CompressionFlush, appendingTo output: inout [UInt8]) throws(CompressionError) {
        try compress(input, flush: flush) { output.append(contentsOf: $0) }
    }

    /// Abandons the current stream: the next call starts a new one.
    public func reset() throws(CompressionError) {
        try codec.reset()
        ended = false
    }

    private func restartIfEnded() throws(CompressionError) {
        if ended { try reset() }
    }
}

/// A streaming decompressor with a hard cap on the total bytes it produces over the whole stream.
///
/// Feed compressed input in any split; decompressed pieces of at most `outputChunkSize` bytes go to a
/// sink (from one reused buffer). Output beyond `limit` bytes in total throws
/// ``CompressionError/limitExceeded(limit:)`` as soon as the first byte over the limit is produced, so
/// memory stays flat whatever the ratio (a decompression bomb costs at most `limit` + one chunk of
/// work). gzip reads concatenated members and zstd concatenated frames; after the end of a zlib or raw
/// deflate stream more input is corrupt. Call ``finish()`` when the input has ended.
public final class Decompressor {
    public let format: CompressionFormat
    /// The most bytes the stream may decompress to.
    public var limit: Int
    /// Bytes produced since the start (or the last reset).
    public private(set) var totalOut = 0
    /// Whether the input so far ends exactly at the end of a stream (member, frame).
    public private(set) var isAtEnd = false
    private let codec: any StreamCodec
    private let out: OutputChunk
    private var failed: CompressionError? = nil

    /// - Parameters:
    ///   - limit: the cap on the total decompressed bytes.
    ///   - windowLogMax: zstd only: frames needing a window above 2^windowLogMax bytes are refused
    ///     (the window is memory the decoder allocates). 23: 8 MiB (zstd's own default allows 128 MiB).
    public init(format: CompressionFormat, limit: Int = .max, outputChunkSize: Int = 16 * 1024,
                windowLogMax: Int = 23) throws(CompressionError) {
        self.format = format
        self.limit = max(0, limit)
        codec = format == .zstd ? try ZstdDecompressor(windowLogMax: windowLogMax) : try ZlibInflater(format)
        out = OutputChunk(outputChunkSize)
    }

    /// Input bytes the last ``decompress(_:_:)`` call took: all of its input, unless the sink stopped
    /// it. To go on after a stop (backpressure), call again with the rest of that input (possibly
    /// empty: output the codec still holds comes first).
    public private(set) var lastConsumed = 0

    /// Decompresses all of `input` (keeping what a later call completes), handing each piece to
    /// `sink`; a sink that returns false stops the call after that piece (see ``lastConsumed`` to go
    /// on later). Returns false when the sink stopped it.
    /// - Throws: ``CompressionError/limitExceeded(limit:)``, `.corrupt`, `.outOfMemory`; after a throw
    ///   every call throws the same error until ``reset()``.
    @discardableResult
    public func decompress(_ input: UnsafeRawBufferPointer,
                           _ sink: (UnsafeRawBufferPointer) -> Bool) throws(CompressionError) -> Bool {
        if let failed { throw failed }
        do throws(CompressionError) {
            return try run(input, sink)
        } catch {
            failed = error
            throw error
        }
    }

    private func run(_ input: UnsafeRawBufferPointer, _ sink: (UnsafeRawBufferPointer) -> Bool) throws(CompressionError) -> Bool {
        var rest = input
        lastConsumed = 0
        defer { lastConsumed = input.count - rest.count }
        while true {
            // One byte of room beyond the limit, so a stream that goes past it is seen at once.
            let allowance = limit - totalOut
            let room = allowance >= out.count ? out.count : allowance + 1
            let p = try codec.step(rest, out.prefix(room), .none)
            rest = UnsafeRawBufferPointer(rebasing: rest[p.consumed...])
            // No progress (an empty piece after a zstd frame): where the stream stands has not changed.
            if p.consumed > 0 || p.produced > 0 || p.finished { isAtEnd = p.finished }
            if p.produced > 0 {
                totalOut += p.produced
                if totalOut > limit { throw .limitExceeded(limit: limit) }
                if !sink(out.bytes(p.produced)) { return false }
            }
            if p.finished {
                if rest.isEmpty { return true }
                switch format {
                case .gzip: try codec.reset(); isAtEnd = false   // the next member
                case .zstd: isAtEnd = false                      // the next frame (zstd starts it itself)
                case .zlib, .rawDeflate: throw .corrupt("data after the end of the \(format) stream")
                }
                continue
            }
            if rest.isEmpty && p.produced < room { return true }  // everything decodable is out
            if p.consumed == 0 && p.produced == 0 { throw .corrupt("\(format) decoder made no progress") }
        }
    }

    /// The input has ended: throws ``CompressionError/truncated`` unless it ended at the end of a stream.
    public func finish() throws(CompressionError) {
        if let failed { throw failed }
        guard isAtEnd else { throw .truncated }
    }

    /// Back to the start of a new stream (the total and any failure forgotten; state reused).
    public func reset() throws(CompressionError) {
        try codec.reset()
        totalOut = 0
        isAtEnd = false
        failed = nil
    }
}
