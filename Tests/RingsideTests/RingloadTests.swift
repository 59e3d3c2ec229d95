import Foundation
import Glibc
import Ringside
import RingsideProtocols
import Testing

/// Echoes, but flips one byte of everything past the first 1,000 bytes received.
private struct CorruptingEcho: ConnectionHandler {
    var seen = 0
    mutating func received(_ bytes: ReceivedBytes, on connection: Connection) {
        var copy = [UInt8](bytes.bytes)
        if seen + copy.count > 1000 { copy[copy.count - 1] ^= 0x5A }
        seen += copy.count
        try? connection.write(copy)
    }
}

/// Runs the ringload binary built next to the tests; returns its exit status and stdout.
private func ringload(_ args: [String]) throws -> (Int32, String) { try runBuilt("ringload", args) }

private func json(_ s: String) throws -> [String: Any] { try jsonObject(s) }

/// The closed-loop runs last 0.5 s: their checks (over 100 echoes; a corruption on each of the 4
/// connections) need far less than that gives. The open loop keeps 2 s: it measures a rate.
@Suite(.serialized) struct RingloadTests {
    @Test(arguments: allBackends) func verifiesEveryEchoedByte(_ backend: BackendKind) throws {
        try skipIfUnavailable(backend)
        try withEchoServer(.epoll) { server in
            let (status, out) = try ringload(["echo", "--target", "127.0.0.1:\(server.port)", "--connections", "8",
                                              "--duration", "0.5s", "--warmup", "0.2s", "--backend", backend.rawValue, "--json"])
            #expect(status == 0, "\(out)")
            let r = try json(out)
            #expect((r["messages"] as? Int ?? 0) > 100)
            #expect(((r["errors"] as? [String: Any])?["corrupt"] as? Int) == 0)
        }
    }

    @Test func corruptionIsCountedAndFailsTheRun() throws {
        try withServer(.epoll, handler: { CorruptingEcho() }) { server in
            let (status, out) = try ringload(["echo", "--target", "127.0.0.1:\(server.port)", "--connections", "4",
                                              "--size", "100", "--duration", "0.5s", "--warmup", "0.1s", "--json"])
            #expect(status == 1)
            let r = try json(out)
            #expect((((r["errors"] as? [String: Any])?["corrupt"] as? Int) ?? 0) >= 4, "\(out)")
        }
    }

    @Test func openLoopHoldsTheRequestedRate() throws {
        try withEchoServer(.epoll) { server in
            let (status, out) = try ringload(["echo", "--target", "127.0.0.1:\(server.port)", "--connections", "10",
                                              "--rate", "2000", "--duration", "2s", "--warmup", "0.3s", "--json"])
            #expect(status == 0)
            let rate = try json(out)["messagesPerSecond"] as? Double ?? 0
            #expect(rate > 1700 && rate < 2300, "open loop at 2000/s measured \(rate)")
        }
    }
}
