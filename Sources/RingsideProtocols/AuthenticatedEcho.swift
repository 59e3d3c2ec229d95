import Ringside

/// Echo behind a shared-secret greeting: the client's first line must be exactly `token` followed by
/// `\n`; after it every byte is echoed. Until then nothing is echoed, and a wrong greeting closes the
/// connection. Connections that never greet are closed by the engine's authentication deadline
/// (``ServerConfiguration/authenticationTimeout``). A demonstration of ``Connection/markAuthenticated()``
/// (and the adversarial suite's target), not a real authentication scheme.
public struct AuthenticatedEchoHandler: ConnectionHandler {
    /// The greeting, including its final `\n`.
    private let greeting: [UInt8]
    /// Greeting bytes matched so far (the greeting may arrive in pieces).
    private var matched = 0

    public init(token: String) { greeting = Array(token.utf8) + [UInt8(ascii: "\n")] }

    public mutating func received(_ bytes: ReceivedBytes, on connection: Connection) {
        if matched == greeting.count { do { try connection.send(bytes) } catch { connection.abort() }; return }
        var i = 0
        while i < bytes.count && matched < greeting.count {
            guard bytes.bytes[i] == greeting[matched] else { connection.abort(); return }
            matched += 1
            i += 1
        }
        guard matched == greeting.count else { return }
        connection.markAuthenticated()
        if i < bytes.count {
            do { try connection.write(UnsafeRawBufferPointer(rebasing: bytes.bytes[i...])) } catch { connection.abort() }
        }
    }
}
