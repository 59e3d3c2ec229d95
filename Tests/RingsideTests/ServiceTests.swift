import Glibc
import Logging
import MetricsTestKit
import Ringside
import RingsideProtocols
import RingsideService
import ServiceLifecycle
import Testing

/// `RingsideService` under swift-service-lifecycle: a ServiceGroup's graceful shutdown (or task
/// cancellation) stops the server, `run()` returns only after the loop ended, and nothing is left
/// behind (connections, pool buffers, descriptors, the port).
@Suite(.serialized, .timeLimit(.minutes(1)))
struct ServiceTests {
    private static let logger = Logger(label: "ringside-service-tests", factory: { _ in SwiftLogNoOpLogHandler() })

    private func configuration(_ backend: BackendKind) -> ServerConfiguration {
        var config = ServerConfiguration(host: "127.0.0.1", port: 0, backend: backend)
        config.drainTimeout = .seconds(2)
        // The client kept open through a graceful shutdown never closes its end: the stop's lingering
        // close waits for it this long (not the default 2 s) before the close the client sees as EOF.
        config.lingerTimeout = .milliseconds(200)
        return config
    }

    @Test(arguments: allBackends)
    func groupGracefulShutdownStopsServer(_ backend: BackendKind) async throws {
        try skipIfUnavailable(backend)
        signal(SIGPIPE, SIG_IGN)
        let released = WeakServer()
        let port = try await serveThenShutDownGroup(backend, released: released)
        // The port refuses new connections.
        #expect(throws: ClientError.self) { _ = try TestClient(port: port, timeoutSeconds: 2) }
        // No socket on the port is left open (listener or connection, ordinary or io_uring direct
        // descriptor; TIME_WAIT remnants hold no socket)...
        #expect(eventually { openSocketsOnPort(port) == 0 }, "sockets still open on port \(port)")
        // ...and the server object is gone with the group and the service (its loop descriptors close
        // with it). (A process-wide descriptor count is not used: other suites run in parallel.)
        #expect(eventually { released.server == nil }, "the RunningServer outlived the service")
    }

    /// Runs a RingsideService in a ServiceGroup, echoes on one connection, triggers the group's graceful
    /// shutdown with that connection still open, and checks the aftermath. Returns the port.
    private func serveThenShutDownGroup(_ backend: BackendKind, released: WeakServer) async throws -> Int {
        let test = TestMetrics()
        let probe = MetricsProbe(test: test, backend: backend)
        let started = PortBox()
        let service = RingsideService(
            configuration: configuration(backend), logger: Self.logger,
            metrics: .init(interval: .milliseconds(20), factory: test),
            onStart: { server in started.port.withLock { $0 = server.port } },
            handler: { EchoHandler() })
        let group = ServiceGroup(services: [service], logger: Self.logger)
        let running = Task { try await group.run() }

        let server = try await service.server
        released.server = server
        #expect(server.backend == backend)
        #expect(started.port.withLock { $0 } == server.port)
        do {
            // One client echoes and stays connected through the shutdown.
            let client = try TestClient(port: server.port)
            let payload = randomBytes(5000, seed: 61)
            try client.send(payload)
            #expect(try client.receive(exactly: payload.count) == payload)
            // The reporter runs with the service.
            var reported = false
            for _ in 0..<250 where !reported {
                try await Task.sleep(for: .milliseconds(20))
                reported = probe.counter("ringside_bytes_sent_total") == 5000
            }
            #expect(reported, "the service's metrics reporter did not publish")
            #expect(probe.gauge("ringside_connections_open") == 1)

            #expect(openSocketsOnPort(server.port) >= 2, "at least the listener and the accepted connection")

            await group.triggerGracefulShutdown()
            try await running.value  // ServiceGroup.run returned, so RingsideService.run returned
            #expect(try client.receiveUntilEOF().isEmpty, "the open client must see EOF")
        }
        let s = server.stats
        #expect(s.connectionsOpen == 0 && s.connectionsAccepted == 1 && s.connectionsClosed == 1, "\(s)")
        #expect(s.buffersInUse == 0)
        // The final sample, taken after the loop ended.
        #expect(probe.counter("ringside_connections_closed_total") == 1)
        #expect(probe.gauge("ringside_connections_open") == 0)
        return server.port
    }

    @Test(arguments: allBackends)
    func taskCancellationStopsServer(_ backend: BackendKind) async throws {
        try skipIfUnavailable(backend)
        let service = RingsideService(configuration: configuration(backend), logger: Self.logger, metrics: nil) {
            EchoHandler()
        }
        let running = Task { try await service.run() }
        let server = try await service.server
        do {
            let c = try TestClient(port: server.port)
            try c.send([9, 9])
            #expect(try c.receive(exactly: 2) == [9, 9])
        }
        running.cancel()
        try await running.value
        #expect(server.stats.connectionsOpen == 0 && server.stats.connectionsClosed == 1)
        #expect(throws: ClientError.self) { _ = try TestClient(port: server.port, timeoutSeconds: 2) }
        // run() can be called only once.
        await #expect(throws: RingsideServiceError.self) { try await service.run() }
    }

    /// A server that cannot start (its address is not numeric) makes `run()` throw, and `server`
    /// throws too.
    @Test(arguments: allBackends)
    func startFailureIsThrown(_ backend: BackendKind) async throws {
        try skipIfUnavailable(backend)
        var config = configuration(backend)
        config.host = "not-an-address"
        let service = RingsideService(configuration: config, logger: Self.logger, metrics: nil) { EchoHandler() }
        let group = ServiceGroup(services: [service], logger: Self.logger)
        await #expect(throws: (any Error).self) { try await group.run() }
        await #expect(throws: (any Error).self) { _ = try await service.server }
    }

    /// Waiting for `server` is cancellable.
    @Test func waitingForServerIsCancellable() async throws {
        let service = RingsideService(configuration: configuration(.epoll), logger: Self.logger, metrics: nil) {
            EchoHandler()
        }
        let waiter = Task { try await service.server }
        try await Task.sleep(for: .milliseconds(20))
        waiter.cancel()
        await #expect(throws: CancellationError.self) { _ = try await waiter.value }
    }
}

private final class PortBox: Sendable {
    let port = PthreadMutex<Int?>(nil)
}

private final class WeakServer {
    weak var server: RunningServer?
}

/// TCP sockets (IPv4 and IPv6) whose local port is `port` and that are still open (a socket inode;
/// TIME_WAIT entries have none), from /proc/net/tcp{,6}.
private func openSocketsOnPort(_ port: Int) -> Int {
    var count = 0
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        guard let f = fopen(table, "r") else { continue }
        defer { fclose(f) }
        var line = [CChar](repeating: 0, count: 512)
        _ = fgets(&line, Int32(line.count), f)  // header
        while fgets(&line, Int32(line.count), f) != nil {
            let text = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            let fields = text.split(separator: " ", omittingEmptySubsequences: true)
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...
            guard fields.count > 9, let colon = fields[1].lastIndex(of: ":"),
                  let localPort = Int(fields[1][fields[1].index(after: colon)...], radix: 16),
                  let inode = Int(fields[9]) else { continue }
            if localPort == port && inode != 0 { count += 1 }
        }
    }
    return count
}
