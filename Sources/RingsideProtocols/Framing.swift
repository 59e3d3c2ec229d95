import Ringside

/// Why a frame was rejected.
public enum FrameError: Error, Equatable, Sendable, CustomStringConvertible {
    /// A frame (line or length-prefixed payload) longer than the configured maximum.
    case frameTooLarge(limit: Int)

    public var description: String {
        switch self {
        case .frameTooLarge(let limit): "frame larger than the \(limit)-byte limit"
        }
    }
}

/// A push decoder: fed bytes as they arrive, in any split, it hands out complete frames.
///
/// A frame that lies whole inside the bytes passed to `decode` is handed out as a slice of them (no
/// copy). Only a frame split across receives is assembled, in a buffer of at most `maxFrameSize`
/// bytes allocated once. Frames are valid during the `onFrame` call only.
public protocol FrameDecoder: ~Copyable {
    mutating func decode(_ bytes: UnsafeRawBufferPointer,
                         _ onFrame: (UnsafeRawBufferPointer) -> Void) throws(FrameError)
    /// Bytes of an incomplete frame held between calls.
    var bufferedBytes: Int { get }
}

/// The buffer a decoder assembles split frames in (allocated on first use, kept).
struct Assembly: ~Copyable {
    private var base: UnsafeMutableRawPointer? = nil
    let capacity: Int
    private(set) var count = 0

    init(capacity: Int) { self.capacity = capacity }
    deinit { base?.deallocate() }

    var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: base, count: count) }

    /// Appends; the caller has checked `count + b.count <= capacity`.
    mutating func append(_ b: UnsafeRawBufferPointer) {
        guard b.count > 0 else { return }
        if base == nil { base = .allocate(byteCount: max(capacity, 1), alignment: 16) }
        (base! + count).copyMemory(from: b.baseAddress!, byteCount: b.count)
        count += b.count
    }
    mutating func clear() { count = 0 }
}

/// Lines ended by a delimiter byte (default `\n`). The delimiter is not part of the frame; a `\r`
/// before it is (strip it in the handler for CRLF protocols).
public struct LineDecoder: FrameDecoder, ~Copyable {
    public let delimiter: UInt8
    public let maxLineLength: Int
    private var partial: Assembly

    public init(delimiter: UInt8 = UInt8(ascii: "\n"), maxLineLength: Int = 64 * 1024) {
        self.delimiter = delimiter
        self.maxLineLength = maxLineLength
        partial = Assembly(capacity: maxLineLength)
    }

    public var bufferedBytes: Int { partial.count }

    public mutating func decode(_ bytes: UnsafeRawBufferPointer,
                                _ onFrame: (UnsafeRawBufferPointer) -> Void) throws(FrameError) {
        var start = 0
        while start < bytes.count {
            let rest = UnsafeRawBufferPointer(rebasing: bytes[start...])
            guard let i = rest.firstIndex(of: delimiter) else {
                // No delimiter: keep the tail for the next receive, within the limit.
                guard partial.count + rest.count <= maxLineLength else { throw .frameTooLarge(limit: maxLineLength) }
                partial.append(rest)
                return
            }
            let line = UnsafeRawBufferPointer(rebasing: rest[0..<i])  // `rest` is indexed from 0
            if partial.count == 0 {
                guard line.count <= maxLineLength else { throw .frameTooLarge(limit: maxLineLength) }
                onFrame(line)  // whole in this receive: no copy
            } else {
                guard partial.count + line.count <= maxLineLength else { throw .frameTooLarge(limit: maxLineLength) }
                partial.append(line)
                onFrame(partial.bytes)
                partial.clear()
            }
            start += i + 1
        }
    }
}

/// Frames preceded by their length: a 1-, 2-, 4- or 8-byte unsigned integer, big- or little-endian,
/// counting the payload only.
public struct LengthPrefixedDecoder: FrameDecoder, ~Copyable {
    public enum Endianness: Sendable { case big, little }
    public let prefixSize: Int
    public let endianness: Endianness
    public let maxFrameSize: Int
    private var header: UInt64 = 0
    private var headerHave = 0
    private var payloadLength = -1  // -1: reading the header
    private var partial: Assembly

    /// `prefixSize` is 1, 2, 4 or 8.
    public init(prefixSize: Int = 4, endianness: Endianness = .big, maxFrameSize: Int = 1 << 20) {
        precondition([1, 2, 4, 8].contains(prefixSize), "prefix size must be 1, 2, 4 or 8")
        self.prefixSize = prefixSize
        self.endianness = endianness
        self.maxFrameSize = maxFrameSize
        partial = Assembly(capacity: maxFrameSize)
    }

    public var bufferedBytes: Int { headerHave + partial.count }

    public mutating func decode(_ bytes: UnsafeRawBufferPointer,
                                _ onFrame: (UnsafeRawBufferPointer) -> Void) throws(FrameError) {
        var i = 0
        while i < bytes.count {
            if payloadLength < 0 {
                // Header bytes, possibly split across receives.
                let b = UInt64(bytes[i])
                i += 1
                header = endianness == .big ? header << 8 | b : header | b << (8 * UInt64(headerHave))
                headerHave += 1
                guard headerHave == prefixSize else { continue }
                guard header <= UInt64(maxFrameSize) else { throw .frameTooLarge(limit: maxFrameSize) }
                payloadLength = Int(header)
                header = 0
                headerHave = 0
                if payloadLength == 0 { onFrame(UnsafeRawBufferPointer(start: nil, count: 0)); payloadLength = -1 }
                continue
            }
            let available = bytes.count - i
            if partial.count == 0 && available >= payloadLength {
                onFrame(UnsafeRawBufferPointer(rebasing: bytes[i..<(i + payloadLength)]))  // no copy
                i += payloadLength
                payloadLength = -1
                continue
            }
            let take = min(available, payloadLength - partial.count)
            partial.append(UnsafeRawBufferPointer(rebasing: bytes[i..<(i + take)]))
            i += take
            if partial.count == payloadLength {
                onFrame(partial.bytes)
                partial.clear()
                payloadLength = -1
            }
        }
    }
}

/// Encoders: write a whole frame into the connection's pooled send buffers, or nothing.
///
/// A frame is assembled (delimiter or length prefix and payload) in one temporary buffer and queued
/// with one all-or-nothing write, so a pool that runs short never leaves part of a frame on the wire:
/// ``WriteError/bufferPoolExhausted`` means nothing of the frame was queued. The temporary buffer is on
/// the stack for small frames; large frames cost one heap allocation and one copy.
public enum FrameEncoder {
    /// Writes `line` followed by `delimiter`, whole or not at all.
    public static func writeLine(_ line: UnsafeRawBufferPointer, delimiter: UInt8 = UInt8(ascii: "\n"),
                                 to connection: Connection) throws(WriteError) {
        try writeFrame(prefix: 0, payload: line, suffix: 1, to: connection) { _, suffix in suffix[0] = delimiter }
    }

    /// Writes the length prefix then `payload`, whole or not at all.
    public static func writeLengthPrefixed(_ payload: UnsafeRawBufferPointer, prefixSize: Int = 4,
                                           endianness: LengthPrefixedDecoder.Endianness = .big,
                                           to connection: Connection) throws(WriteError) {
        precondition([1, 2, 4, 8].contains(prefixSize))
        precondition(prefixSize == 8 || payload.count < 1 << (8 * prefixSize), "payload too large for the prefix")
        let n = UInt64(payload.count)
        try writeFrame(prefix: prefixSize, payload: payload, suffix: 0, to: connection) { h, _ in
            for k in 0..<prefixSize {
                let shift = endianness == .big ? 8 * (prefixSize - 1 - k) : 8 * k
                h[k] = UInt8(truncatingIfNeeded: n >> UInt64(shift))
            }
        }
    }

    /// Assembles `prefix` bytes, `payload` and `suffix` bytes (`fill` writes prefix and suffix) in one
    /// buffer and queues it with a single all-or-nothing write.
    private static func writeFrame(prefix: Int, payload: UnsafeRawBufferPointer, suffix: Int, to connection: Connection,
                                   _ fill: (UnsafeMutableRawBufferPointer, UnsafeMutableRawBufferPointer) -> Void)
        throws(WriteError) {
        let total = prefix + payload.count + suffix
        let result: Result<Void, WriteError> = withUnsafeTemporaryAllocation(byteCount: total, alignment: 1) { frame in
            // Safe: `frame` holds exactly `total` bytes: prefix | payload | suffix.
            if payload.count > 0 { (frame.baseAddress! + prefix).copyMemory(from: payload.baseAddress!, byteCount: payload.count) }
            fill(UnsafeMutableRawBufferPointer(rebasing: frame[0..<prefix]),
                 UnsafeMutableRawBufferPointer(rebasing: frame[(prefix + payload.count)...]))
            return Result { () throws(WriteError) in try connection.write(UnsafeRawBufferPointer(frame)) }
        }
        try result.get()
    }
}

/// What a framed protocol implements: it gets whole frames, and is told (before the engine closes the
/// connection) when the peer sent an oversized frame.
public protocol FrameHandler {
    /// Whether the framed protocol authenticates (then a frame handler calls
    /// `Connection.markAuthenticated()` once it has). Default: true.
    static var requiresAuthentication: Bool { get }
    mutating func frame(_ frame: UnsafeRawBufferPointer, on connection: Connection)
    /// The peer broke the framing; the connection is closed right after this call. Default: nothing.
    mutating func frameError(_ error: FrameError, on connection: Connection)
}

extension FrameHandler {
    public static var requiresAuthentication: Bool { true }
    public mutating func frameError(_ error: FrameError, on connection: Connection) {}
}

/// Adapts a `FrameHandler` to the engine: decodes received bytes with `D` and delivers frames. An
/// oversized frame calls `frameError` and closes that connection only.
///
/// The decoder is held in a box (one allocation per connection) because engine handlers are copyable
/// values and decoders own memory.
public struct FramedHandler<D: FrameDecoder & ~Copyable, H: FrameHandler>: ConnectionHandler {
    final class Box { var decoder: D; init(_ d: consuming D) { decoder = d } }
    let box: Box
    public var handler: H
    private var failed = false

    public static var requiresAuthentication: Bool { H.requiresAuthentication }

    public init(decoder: consuming D, handler: H) {
        box = Box(decoder)
        self.handler = handler
    }

    public mutating func received(_ bytes: ReceivedBytes, on connection: Connection) {
        guard !failed else { return }
        do throws(FrameError) {
            try box.decoder.decode(bytes.bytes) { handler.frame($0, on: connection) }
        } catch {
            failed = true
            handler.frameError(error, on: connection)
            connection.close()
        }
    }
}
