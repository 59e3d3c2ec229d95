import Ringside
import RingsideCompression

/// Settings of a compressed framed stream (``DeflatedFramedHandler``).
public struct DeflatedFraming: Sendable {
    /// The stream format: raw deflate by default (no per-stream header; both peers know the format).
    public var format: CompressionFormat = .rawDeflate
    /// The compression level of outbound frames (nil: the library's default).
    public var level: Int? = 1
    /// The most bytes the inbound stream may inflate to over the connection's life (beyond: the
    /// connection is closed). The frame decoder's own limit bounds each frame.
    public var maxInflatedBytes: Int = .max
    /// The largest piece the codecs produce at once (size it as a pool chunk).
    public var chunkSize = 16 * 1024
    /// Compressed output that did not fit the send pool waits in the writer up to this many bytes; a
    /// write beyond it throws ``WriteError/bufferPoolExhausted`` (and takes nothing).
    public var maxBacklog = 1 << 20

    public init() {}
}

/// Writes frames into one compressed outbound stream, each ended by a sync flush (so the peer can
/// decode every frame as soon as it arrives, while later frames still compress against earlier ones).
///
/// The frame's bytes (prefix, payload, suffix) go through the compressor in place (no assembly copy);
/// the compressed bytes are queued with one all-or-nothing write. When the send pool is short they
/// wait in a backlog (sent first at the next write, or at ``flush(to:)``, which the handler wrapper
/// calls on `writable` and on its 1 ms retry timer): the compressed stream cannot drop or reorder bytes.
public final class DeflatedFrameWriter {
    let transform: CompressionTransform
    let maxBacklog: Int
    /// Compressed bytes not queued yet. Invariant: `base` holds `capacity` bytes (allocated on first
    /// use, grown by doubling, freed in deinit); bytes 0..<count are initialized.
    private var base: UnsafeMutableRawPointer? = nil
    private var capacity = 0
    private var count = 0

    init(_ transform: CompressionTransform, maxBacklog: Int) {
        self.transform = transform
        self.maxBacklog = maxBacklog
    }
    deinit { base?.deallocate() }

    /// Compressed bytes waiting for room in the send pool.
    public var backlogBytes: Int { count }

    /// Writes `line` and `delimiter` as one frame of the compressed stream.
    /// - Throws: ``WriteError/closed``; ``WriteError/bufferPoolExhausted`` when the backlog is full
    ///   (nothing of this frame was taken).
    public func writeLine(_ line: UnsafeRawBufferPointer, delimiter: UInt8 = UInt8(ascii: "\n"),
                          to connection: Connection) throws(WriteError) {
        var d = delimiter
        try withUnsafeBytes(of: &d) { (suffix) throws(WriteError) in
            try writeFrame(prefix: UnsafeRawBufferPointer(start: nil, count: 0), line, suffix, to: connection)
        }
    }

    /// Writes the length prefix and `payload` as one frame of the compressed stream.
    public func writeLengthPrefixed(_ payload: UnsafeRawBufferPointer, prefixSize: Int = 4,
                                    endianness: LengthPrefixedDecoder.Endianness = .big,
                                    to connection: Connection) throws(WriteError) {
        precondition([1, 2, 4, 8].contains(prefixSize))
        precondition(prefixSize == 8 || payload.count < 1 << (8 * prefixSize), "payload too large for the prefix")
        var header: UInt64 = 0
        let n = UInt64(payload.count)
        try withUnsafeMutableBytes(of: &header) { (h) throws(WriteError) in
            for k in 0..<prefixSize {
                let shift = endianness == .big ? 8 * (prefixSize - 1 - k) : 8 * k
                h[k] = UInt8(truncatingIfNeeded: n >> UInt64(shift))
            }
            try writeFrame(prefix: UnsafeRawBufferPointer(rebasing: h[0..<prefixSize]), payload,
                           UnsafeRawBufferPointer(start: nil, count: 0), to: connection)
        }
    }

    /// Writes already framed bytes (any protocol's) into the compressed stream, with a sync flush.
    public func write(_ bytes: UnsafeRawBufferPointer, to connection: Connection) throws(WriteError) {
        try writeFrame(prefix: UnsafeRawBufferPointer(start: nil, count: 0), bytes,
                       UnsafeRawBufferPointer(start: nil, count: 0), to: connection)
    }

    /// Queues the backlog, if any.
    /// - Throws: ``WriteError/bufferPoolExhausted`` when it still does not fit (it stays), `.closed`.
    public func flush(to connection: Connection) throws(WriteError) {
        guard count > 0 else { return }
        try connection.write(UnsafeRawBufferPointer(start: base, count: count))
        count = 0
    }

    private func writeFrame(prefix: UnsafeRawBufferPointer, _ payload: UnsafeRawBufferPointer,
                            _ suffix: UnsafeRawBufferPointer, to connection: Connection) throws(WriteError) {
        if count > 0 {
            do throws(WriteError) { try flush(to: connection) } catch {
                if error == .closed || count >= maxBacklog { throw error }
            }
        }
        do throws(CompressionError) {
            try transform.compressor.compress(prefix, flush: .none) { append($0) }
            try transform.compressor.compress(payload, flush: .none) { append($0) }
            try transform.compressor.compress(suffix, flush: .sync) { append($0) }
        } catch {
            // A deflate/zstd failure on valid input means the codec's state is broken: the stream
            // cannot go on.
            connection.abort()
            throw .closed
        }
        do throws(WriteError) { try flush(to: connection) } catch {
            if error == .closed { throw error }
            // The pool is short: the frame waits in the backlog (taken); a 1 ms timer retries.
            connection.setTimer(after: .milliseconds(1))
        }
    }

    private func append(_ b: UnsafeRawBufferPointer) {
        guard b.count > 0 else { return }
        if count + b.count > capacity {
            var c = max(capacity, 4096)
            while c < count + b.count { c *= 2 }
            let nb = UnsafeMutableRawPointer.allocate(byteCount: c, alignment: 16)
            if let base { nb.copyMemory(from: base, byteCount: count); base.deallocate() }
            base = nb
            capacity = c
        }
        // Safe: count + b.count <= capacity (grown above).
        (base! + count).copyMemory(from: b.baseAddress!, byteCount: b.count)
        count += b.count
    }
}

/// A framed protocol over a compressed stream: whole inflated frames in, frames out through a
/// ``DeflatedFrameWriter``.
public protocol DeflatedFrameHandler {
    /// Whether the protocol authenticates (see ``FrameHandler/requiresAuthentication``). Default: true.
    static var requiresAuthentication: Bool { get }
    /// A whole frame (inflated), valid during the call only. Answer through `writer`.
    mutating func frame(_ frame: UnsafeRawBufferPointer, writer: DeflatedFrameWriter, on connection: Connection)
    /// The peer broke the framing (an oversized frame); the connection is closed right after. Default: nothing.
    mutating func frameError(_ error: FrameError, on connection: Connection)
    /// The inbound stream is corrupt or inflated beyond ``DeflatedFraming/maxInflatedBytes``; the
    /// connection is closed right after. Default: nothing.
    mutating func streamError(_ error: CompressionError, on connection: Connection)
}

extension DeflatedFrameHandler {
    public static var requiresAuthentication: Bool { true }
    public mutating func frameError(_ error: FrameError, on connection: Connection) {}
    public mutating func streamError(_ error: CompressionError, on connection: Connection) {}
}

/// Adapts a ``DeflatedFrameHandler`` to the engine: received bytes are inflated (one stream per
/// direction for the connection's life), the plaintext decoded into frames by `D`; outbound frames are
/// deflated with a sync flush each. The codec core is a ``CompressionTransform`` (bytes in, bytes out
/// in pool-sized pieces), the piece a generic stream layer would hold.
///
/// The connection's timer is the wrapper's (it retries a backlog the send pool had no room for).
/// One box per connection holds the decoder, the transform and the writer (the codec states are
/// allocated with the connection: about 300 KiB for deflate, more for zstd's window).
public struct DeflatedFramedHandler<D: FrameDecoder & ~Copyable, H: DeflatedFrameHandler>: ConnectionHandler {
    final class Box {
        var decoder: D
        let transform: CompressionTransform
        let writer: DeflatedFrameWriter
        init(_ d: consuming D, _ t: CompressionTransform, _ w: DeflatedFrameWriter) { decoder = d; transform = t; writer = w }
    }
    let box: Box?
    let setupError: CompressionError?
    public var handler: H
    private var failed = false

    public static var requiresAuthentication: Bool { H.requiresAuthentication }

    public init(decoder: consuming D, handler: H, configuration: DeflatedFraming = DeflatedFraming()) {
        self.handler = handler
        do throws(CompressionError) {
            let t = try CompressionTransform(format: configuration.format, level: configuration.level,
                                             inboundLimit: configuration.maxInflatedBytes, chunkSize: configuration.chunkSize)
            box = Box(decoder, t, DeflatedFrameWriter(t, maxBacklog: configuration.maxBacklog))
            setupError = nil
        } catch {
            box = nil  // no codec state (no memory, a bad level): the connection is refused at its first byte
            setupError = error
        }
    }

    public mutating func received(_ bytes: ReceivedBytes, on connection: Connection) {
        guard !failed else { return }
        guard let box else {
            failed = true
            handler.streamError(setupError ?? .outOfMemory, on: connection)
            return connection.close()
        }
        var frameError: FrameError? = nil
        do throws(CompressionError) {
            try box.transform.decode(bytes.bytes) { plain in
                do throws(FrameError) {
                    try box.decoder.decode(plain) { handler.frame($0, writer: box.writer, on: connection) }
                } catch {
                    frameError = error
                    return false
                }
                return true
            }
        } catch {
            failed = true
            handler.streamError(error, on: connection)
            return connection.close()
        }
        if let frameError {
            failed = true
            handler.frameError(frameError, on: connection)
            connection.close()
        }
    }

    public mutating func writable(on connection: Connection) { flushBacklog(connection) }

    /// The pool-retry timer (the connection's timer belongs to this wrapper).
    public mutating func timerFired(on connection: Connection) { flushBacklog(connection) }

    private func flushBacklog(_ connection: Connection) {
        guard let box, box.writer.backlogBytes > 0 else { return }
        do throws(WriteError) { try box.writer.flush(to: connection) } catch {
            // Closed: nothing more to send. Still no room: retry in 1 ms.
            if error == .bufferPoolExhausted { connection.setTimer(after: .milliseconds(1)) }
        }
    }
}
