import Ringside

/// Echoes every byte back, without copying: each receive buffer is handed back as the send buffer.
/// When the peer half-closes, the echo finishes sending and then closes.
public struct EchoHandler: ConnectionHandler {
    /// Echo has no authentication step.
    public static var requiresAuthentication: Bool { false }

    public init() {}

    @inlinable
    public mutating func received(_ bytes: ReceivedBytes, on connection: Connection) {
        connection.send(bytes)
    }
}
