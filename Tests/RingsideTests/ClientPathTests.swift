import Glibc
import Ringside
import Synchronization
import Testing

/// Records what the client handlers saw (written on the loop thread, read after it ended).
private final class ClientRecord: Sendable {
    let echoed = Atomic<Int>(0)
    let mismatches = Atomic<Int>(0)
}

/// Sends `rounds` 100-byte messages one at a time, checks each echo, then closes.
private struct PingClient: ConnectionHandler {
    let record: ClientRecord
    var rounds = 20
    var got = 0
    var message: [UInt8] = []

    mutating func opened(on connection: Connection) { sendNext(connection) }
    mutating func sendNext(_ connection: Connection) {
        message = (0..<100).map { UInt8(truncatingIfNeeded: $0 &+ rounds) }
        got = 0
        try? connection.write(message)
    }
    mutating func received(_ bytes: ReceivedBytes, on connection: Connection) {
        for b in bytes.bytes {
            if got >= message.count || b != message[got] { record.mismatches.add(1, ordering: .relaxed) }
            got += 1
        }
        if got == message.count {
            record.echoed.add(1, ordering: .relaxed)
            rounds -= 1
            if rounds == 0 { connection.close() } else { sendNext(connection) }
        }
    }
}

@Suite(.serialized) struct ClientPathTests {
    /// The engine's client path (connect, send, receive through the ring) against an echo server,
    /// each backend as client against each backend as server.
    @Test(arguments: allBackends, allBackends)
    func outboundConnectionsEcho(client: BackendKind, server serverBackend: BackendKind) throws {
        try skipIfUnavailable(client)
        try withEchoServer(serverBackend) { server in
            let record = ClientRecord()
            var config = ServerConfiguration(host: "127.0.0.1", port: 0, backend: client)
            config.listen = false
            config.connect = OutboundConnections(host: "127.0.0.1", port: server.port, count: 50)
            let loop = try RingsideServer.start(configuration: config) { PingClient(record: record) }
            #expect(eventually(10) { loop.stats.connectionsClosed == 50 })
            try loop.shutdown()
            let s = loop.stats
            #expect(s.connectionsConnected == 50 && s.connectFailures == 0)
            #expect(record.echoed.load(ordering: .relaxed) == 50 * 20)
            #expect(record.mismatches.load(ordering: .relaxed) == 0)
            #expect(s.buffersInUse == 0)
        }
    }

    @Test(arguments: allBackends) func refusedConnectsAreCounted(_ backend: BackendKind) throws {
        try skipIfUnavailable(backend)
        // A port nobody listens on: bind one, note it, close it.
        let probe = try RingsideServer.start(configuration: ServerConfiguration(backend: .epoll)) { PingClient(record: ClientRecord()) }
        let deadPort = probe.port
        try probe.shutdown()
        var config = ServerConfiguration(host: "127.0.0.1", port: 0, backend: backend)
        config.listen = false
        config.connect = OutboundConnections(host: "127.0.0.1", port: deadPort, count: 5)
        let loop = try RingsideServer.start(configuration: config) { PingClient(record: ClientRecord()) }
        #expect(eventually(5) { loop.stats.connectFailures == 5 })
        try loop.shutdown()
        #expect(loop.stats.connectionsOpen == 0)
    }
}
