/// The stream formats the codecs speak.
public enum CompressionFormat: Sendable, Equatable, CustomStringConvertible {
    /// RFC 1952 gzip (zlib, windowBits 15 + 16). A decompressor reads concatenated members.
    case gzip
    /// RFC 1950 zlib-wrapped deflate (HTTP's `deflate` content coding).
    case zlib
    /// RFC 1951 raw deflate, no header or checksum (framed streams).
    case rawDeflate
    /// RFC 8878 Zstandard frames (libzstd). A decompressor reads concatenated frames.
    case zstd

    public var description: String {
        switch self {
        case .gzip: "gzip"
        case .zlib: "deflate"
        case .rawDeflate: "raw deflate"
        case .zstd: "zstd"
        }
    }
}

/// How much a compressor must emit after the input of one call.
public enum CompressionFlush: Sendable, Equatable {
    /// Nothing forced: the codec may keep input to compress it better with what follows.
    case none
    /// Everything given so far is emitted, decodable by the peer, and the stream goes on (zlib
    /// `Z_SYNC_FLUSH`, zstd `ZSTD_e_flush`).
    case sync
    /// The stream ends (trailer and checksum written). The next call starts a new stream.
    case finish
}

/// Why a codec failed. After a throw the stream is unusable until `reset()`.
public enum CompressionError: Error, Equatable, Sendable, CustomStringConvertible {
    /// Decompression would produce more than `limit` bytes in total (over the whole stream).
    case limitExceeded(limit: Int)
    /// The input is not a valid stream of the format (the codec's message).
    case corrupt(String)
    /// The input ended before the stream did.
    case truncated
    /// The codec could not allocate its state.
    case outOfMemory
    /// A parameter was refused (for example a level out of range), or the codec library failed.
    case library(String)

    public var description: String {
        switch self {
        case .limitExceeded(let limit): "decompressed data larger than the \(limit)-byte limit"
        case .corrupt(let why): "corrupt compressed data: \(why)"
        case .truncated: "compressed data ended before the end of the stream"
        case .outOfMemory: "the codec could not allocate its state"
        case .library(let why): "codec failure: \(why)"
        }
    }
}

/// What one codec step did: input bytes consumed, output bytes written, and whether it reached the
/// point asked for (compressors: the flush is complete; decompressors: a stream, member or frame ended).
public struct CodecProgress: Sendable, Equatable {
    public var consumed: Int
    public var produced: Int
    public var finished: Bool

    public init(consumed: Int, produced: Int, finished: Bool) {
        self.consumed = consumed
        self.produced = produced
        self.finished = finished
    }
}

/// One direction of one codec library: a step is one call of the library's streaming function on the
/// caller's input and output buffers. Loop-thread (single owner) use only.
protocol StreamCodec: AnyObject {
    func step(_ input: UnsafeRawBufferPointer, _ output: UnsafeMutableRawBufferPointer,
              _ flush: CompressionFlush) throws(CompressionError) -> CodecProgress
    /// Back to the start of a new stream, keeping the allocated state (and the parameters).
    func reset() throws(CompressionError)
}
