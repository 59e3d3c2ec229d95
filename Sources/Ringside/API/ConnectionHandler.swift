/// The protocol-agnostic per-connection handler.
///
/// A factory creates one handler value per accepted connection. Every method is called on that
/// connection's event-loop thread, never concurrently, so a handler needs no locks. The same handler
/// runs unchanged on the io_uring and epoll backends.
///
/// Bytes are pushed as they arrive (push parsing): `received(_:on:)` borrows them from the engine's
/// buffer pool for the duration of the call only. To keep them, either copy them, or hand the buffer
/// back for sending without a copy with ``Connection/send(_:)``.
///
/// ```swift
/// struct Echo: ConnectionHandler {
///     mutating func received(_ bytes: ReceivedBytes, on connection: Connection) {
///         // zero-copy: the receive buffer becomes the send buffer
///         do { try connection.send(bytes) } catch { connection.abort() }
///     }
/// }
/// ```
public protocol ConnectionHandler: SendableMetatype {
    /// Whether this protocol authenticates its clients. When true (the default), an inbound
    /// connection that has not called ``Connection/markAuthenticated()`` within
    /// ``ServerConfiguration/authenticationTimeout`` is closed. Protocols without authentication opt
    /// out explicitly by returning false.
    static var requiresAuthentication: Bool { get }

    /// The connection was accepted and is ready. Default: nothing.
    ///
    /// Take per-connection resources here rather than when the factory makes the value: a handler
    /// behind stream layers (``LayeredHandler``, TLS) is opened only once the layers are established,
    /// and a connection that ends before (a failed handshake) neither opens nor closes it.
    mutating func opened(on connection: Connection)

    /// Bytes arrived. `bytes` is valid only during this call.
    mutating func received(_ bytes: ReceivedBytes, on connection: Connection)

    /// The peer half-closed its side (read returned end-of-file). The connection may still send.
    /// Default: ``Connection/close()`` (flush what is queued, then close).
    mutating func inputClosed(on connection: Connection)

    /// The outbound queue drained below the low watermark after having been above the high one.
    /// Default: nothing.
    mutating func writable(on connection: Connection)

    /// The timer armed with ``Connection/setTimer(after:)`` came due. Default: nothing.
    mutating func timerFired(on connection: Connection)

    /// The connection is gone (descriptor closed, every operation completed). Called exactly once for
    /// a handler that was opened. Default: nothing.
    mutating func closed(reason: CloseReason)
}

extension ConnectionHandler {
    @inlinable public static var requiresAuthentication: Bool { true }
    @inlinable public mutating func opened(on connection: Connection) {}
    @inlinable public mutating func inputClosed(on connection: Connection) { connection.close() }
    @inlinable public mutating func writable(on connection: Connection) {}
    @inlinable public mutating func timerFired(on connection: Connection) {}
    @inlinable public mutating func closed(reason: CloseReason) {}
}

/// Why a connection ended.
public enum CloseReason: Equatable, Sendable, CustomStringConvertible {
    /// The handler (or a protocol layer) asked for it with ``Connection/close()``.
    case closedByHandler
    /// The handler aborted with ``Connection/abort()``: queued data was discarded.
    case abortedByHandler
    /// The peer closed (EOF after the handler's default `inputClosed`).
    case peerClosed
    /// A receive or send failed (for example ECONNRESET, EPIPE).
    case error(Errno)
    /// The server is shutting down.
    case serverShutdown
    /// A deadline passed (see ``ServerConfiguration`` and ``Connection/setReadDeadline(after:)``).
    case timedOut(Deadline)

    public var description: String {
        switch self {
        case .closedByHandler: "closed by handler"
        case .abortedByHandler: "aborted by handler"
        case .peerClosed: "peer closed"
        case .error(let e): "error: \(e)"
        case .serverShutdown: "server shutdown"
        case .timedOut(let d): "timed out: \(d)"
        }
    }
}

/// The deadlines the engine enforces on inbound connections.
public enum Deadline: String, Equatable, Sendable, CustomStringConvertible {
    /// Not authenticated within ``ServerConfiguration/authenticationTimeout``.
    case authentication
    /// No byte received or sent for ``ServerConfiguration/idleTimeout``.
    case idle
    /// A read deadline set with ``Connection/setReadDeadline(after:)`` passed.
    case read
    /// Queued output made no progress for ``ServerConfiguration/writeStallTimeout`` (the peer stopped
    /// reading).
    case writeStall

    public var description: String { rawValue }
}

/// Bytes received on a connection, borrowed from the engine's buffer pool for one handler call.
public struct ReceivedBytes {
    /// The received bytes. Do not keep this pointer after the call returns.
    public let bytes: UnsafeRawBufferPointer
    @usableFromInline let chunk: Int32
    @usableFromInline let offset: Int32

    @usableFromInline init(bytes: UnsafeRawBufferPointer, chunk: Int32, offset: Int32) {
        self.bytes = bytes; self.chunk = chunk; self.offset = offset
    }

    /// The number of bytes received.
    @inlinable public var count: Int { bytes.count }
}
