import Ringside

/// Echoes every byte back, without copying: each receive buffer is handed back as the send buffer.
/// When the peer half-closes, the echo finishes sending and then closes.
public struct EchoHandler: ConnectionHandler {
    /// Echo has no authentication step.
    public static var requiresAuthentication: Bool { false }

    public init() {}

    @inlinable
    public mutating func received(_ bytes: ReceivedBytes, on connection: Connection) {
        // The hand-back fails only if the connection no longer takes writes: then the client must not
        // think its bytes were echoed.
        do { try connection.send(bytes) } catch { connection.abort() }
    }
}
