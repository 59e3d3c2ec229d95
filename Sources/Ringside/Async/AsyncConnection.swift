import Glibc

/// One connection seen from structured concurrency: inbound bytes as an `AsyncSequence`, writes that
/// wait out backpressure, close/abort/half-close.
///
/// Created by ``RingsideServer/startAsync(configuration:requiresAuthentication:inboundBufferLimit:logger:_:)``
/// for every accepted connection and handed to a task that runs on the connection's loop thread
/// (its ``executor`` is the task's executor preference). Use it from that task, or from child tasks
/// that inherit the preference; using it on another thread while the loop runs traps.
///
/// ```swift
/// let server = try RingsideServer.startAsync(configuration: config, requiresAuthentication: false) { conn in
///     for try await chunk in conn.inbound { try await conn.write(chunk) }
/// }   // returning closes the connection gracefully (queued output is flushed first)
/// ```
///
/// - When the task returns, the connection is closed gracefully; when it throws (cancellation
///   included), it is aborted.
/// - The inbound sequence ends at the peer's end-of-file (half-close: you may still write) and after
///   ``close()``/``abort()``; it throws ``AsyncConnectionError/connectionClosed(_:)`` when the
///   connection ended any other way (reset, server shutdown, a deadline).
/// - A server shutdown cancels the task, so awaits elsewhere (sleeps, other services) end too.
public struct AsyncConnection: Sendable {
    let box: AsyncConnectionBox

    init(box: AsyncConnectionBox) { self.box = box }

    /// The bytes the peer sends, in order, as they arrive (chunks of whatever size the kernel
    /// delivered, coalesced while the task was busy). One iterator at a time.
    public var inbound: Inbound { Inbound(box: box) }

    /// The loop's executor: prefer it (`Task(executorPreference:)`, `withTaskExecutorPreference`) for
    /// child tasks that use this connection.
    public var executor: LoopExecutor { box.executor }

    /// An identifier unique among the connections open on this loop.
    public var id: UInt64 { box.id }

    /// Queues `bytes` for sending (copied into the engine's pooled send buffers). Returns as soon as
    /// they are queued when the outbound queue is at or below the high watermark; otherwise waits until
    /// the queue has drained below the low watermark (large writes are queued piece by piece, so the
    /// queue never exceeds the high watermark by more than one receive-buffer size).
    /// - Throws: ``AsyncConnectionError``, or `CancellationError` when the task was cancelled.
    public func write(_ bytes: [UInt8]) async throws {
        try await box.write(total: bytes.count) { (c, offset, n) throws(WriteError) in
            let r: Result<Void, WriteError> = bytes.withUnsafeBytes { p in
                Result { () throws(WriteError) in try c.write(UnsafeRawBufferPointer(rebasing: p[offset..<offset + n])) }
            }
            try r.get()
        }
    }

    /// Queues the UTF-8 bytes of `string` (see ``write(_:)-([UInt8])``).
    public func write(_ string: String) async throws {
        try await write(Array(string.utf8))
    }

    /// Queues received bytes for sending (echo without an intermediate array).
    public func write(_ bytes: InboundBytes) async throws {
        let box = self.box
        try await box.write(total: bytes.count) { (c, offset, n) throws(WriteError) in
            precondition(box.epoch == bytes.epoch, "InboundBytes written after the next element was requested")
            try c.write(UnsafeRawBufferPointer(start: bytes.base + offset, count: n))
        }
    }

    /// Bytes queued for sending and not yet taken by the kernel.
    public var queuedOutboundBytes: Int { box.queuedOutboundBytes }

    /// Flushes what is queued, then closes. The inbound sequence ends; later writes throw
    /// ``AsyncConnectionError/outputClosed``.
    public func close() { box.close(abort: false) }

    /// Closes now, discarding queued output.
    public func abort() { box.close(abort: true) }

    /// Flushes what is queued, then half-closes (the peer reads end-of-file); reading continues.
    public func shutdownOutput() { box.shutdownOutput() }

    /// Marks the connection authenticated (see ``ServerConfiguration/authenticationTimeout``).
    public func markAuthenticated() { box.markAuthenticated() }

    /// The inbound byte stream of a connection.
    public struct Inbound: AsyncSequence {
        public typealias Element = InboundBytes
        let box: AsyncConnectionBox

        public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(box: box) }

        public struct AsyncIterator: AsyncIteratorProtocol {
            let box: AsyncConnectionBox
            /// The next chunk; nil at end-of-file. Requesting it ends the validity of the previous one.
            public mutating func next() async throws -> InboundBytes? { try await box.next() }
        }
    }
}

/// Bytes received on an ``AsyncConnection``, held in the connection's own reusable buffer (not the
/// engine's pool) until the next element is requested from the iterator. Copy them (``bytes``) to keep
/// them longer; using them after the next `next()` traps.
public struct InboundBytes {
    let box: AsyncConnectionBox
    let epoch: UInt64
    let base: UnsafeRawPointer
    /// The number of bytes.
    public let count: Int

    /// Calls `body` with the bytes (valid during the call).
    public func withUnsafeBytes<R, E: Error>(_ body: (UnsafeRawBufferPointer) throws(E) -> R) throws(E) -> R {
        precondition(box.epoch == epoch, "InboundBytes used after the next element was requested")
        return try body(UnsafeRawBufferPointer(start: base, count: count))
    }

    /// A copy of the bytes.
    public var bytes: [UInt8] { withUnsafeBytes { Array($0) } }
}

/// Why an ``AsyncConnection`` operation failed.
public enum AsyncConnectionError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The connection ended (the engine's reason: reset, server shutdown, a deadline, ...).
    case connectionClosed(CloseReason)
    /// This task closed, aborted or half-closed the connection itself; nothing was written.
    case outputClosed
    /// Two reads (or two writes) were awaited on the same connection at the same time.
    case concurrentAccess

    public var description: String {
        switch self {
        case .connectionClosed(let r): "connection closed (\(r))"
        case .outputClosed: "output closed by this side"
        case .concurrentAccess: "concurrent reads or writes on one connection"
        }
    }
}
