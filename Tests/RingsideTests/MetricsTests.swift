import Glibc
import MetricsTestKit
import Ringside
import RingsideProtocols
import RingsideService
import Testing

/// `RingsideMetrics` publishes `ServerStats` to swift-metrics: each counter moves when its event is
/// forced. Every test gets its own `TestMetrics` through `RingsideMetrics.Options.factory`, so nothing
/// is bootstrapped globally.
@Suite(.serialized, .timeLimit(.minutes(1)))
struct MetricsTests {
    /// Runs `body` against a server on `backend` with a reporter publishing into a fresh TestMetrics.
    private func withMetrics<H: ConnectionHandler>(
        _ backend: BackendKind,
        configure: (inout ServerConfiguration) -> Void = { _ in },
        handler: @escaping @Sendable () -> H,
        _ body: (RunningServer, RingsideMetrics, MetricsProbe) throws -> Void
    ) throws {
        let test = TestMetrics()
        try withServer(backend, configure: configure, handler: handler) { server in
            let metrics = RingsideMetrics(server: server, options: .init(factory: test))
            try body(server, metrics, MetricsProbe(test: test, backend: backend))
        }
    }

    private func withEchoMetrics(
        _ backend: BackendKind, configure: (inout ServerConfiguration) -> Void = { _ in },
        _ body: (RunningServer, RingsideMetrics, MetricsProbe) throws -> Void
    ) throws {
        try withMetrics(backend, configure: configure, handler: { EchoHandler() }, body)
    }

    @Test(arguments: allBackends)
    func acceptedBytesAndClosed(_ backend: BackendKind) throws {
        try withEchoMetrics(backend) { server, metrics, probe in
            metrics.report()
            #expect(probe.counter("ringside_connections_accepted_total") == 0)
            #expect(probe.gauge("ringside_connections_open") == 0)
            do {
                let c = try TestClient(port: server.port)
                let payload = randomBytes(1000, seed: 1)
                try c.send(payload)
                #expect(try c.receive(exactly: payload.count) == payload)
                #expect(eventually { server.stats.bytesOut == 1000 })
                metrics.report()
                #expect(probe.counter("ringside_connections_accepted_total") == 1)
                #expect(probe.counter("ringside_bytes_received_total") == 1000)
                #expect(probe.counter("ringside_bytes_sent_total") == 1000)
                #expect(probe.gauge("ringside_connections_open") == 1)
                #expect(probe.gauge("ringside_buffers_in_use_peak").map { $0 >= 1 } == true)
                metrics.report()  // no change, no double counting
                #expect(probe.counter("ringside_connections_accepted_total") == 1)
                #expect(probe.counter("ringside_bytes_received_total") == 1000)
            }
            #expect(eventually { server.stats.connectionsClosed == 1 })
            metrics.report()
            #expect(probe.counter("ringside_connections_closed_total") == 1)
            #expect(probe.gauge("ringside_connections_open") == 0)
            #expect(probe.gauge("ringside_buffers_in_use") == 0)
            // Every metric carries the backend dimension.
            #expect(probe.test.counters.allSatisfy { $0.dimensions.contains { $0 == ("backend", backend.rawValue) } })
        }
    }

    @Test(arguments: allBackends)
    func refusedConnections(_ backend: BackendKind) throws {
        try withEchoMetrics(backend, configure: { $0.maxConnections = 1 }) { server, metrics, probe in
            let first = try TestClient(port: server.port)
            try first.send([1, 2, 3])
            #expect(try first.receive(exactly: 3) == [1, 2, 3])
            do {
                let second = try TestClient(port: server.port)
                // Closed at once: EOF (or a reset), never an echo.
                let echoed = (try? second.receiveUntilEOF()) ?? []
                #expect(echoed.isEmpty)
            }
            #expect(eventually { server.stats.connectionsRefused >= 1 })
            metrics.report()
            #expect(probe.counter("ringside_connections_refused_total") >= 1)
            #expect(probe.counter("ringside_connections_refused_per_address_total") == 0)
            #expect(probe.gauge("ringside_connections_open") == 1)
        }
    }

    /// Two receive buffers for 40 busy clients: the provided-buffer ring runs dry (-ENOBUFS) and
    /// multishot receives are re-armed (io_uring only).
    @Test func noBufferEventsOnUring() throws {
        try withEchoMetrics(.uring, configure: { $0.receiveBuffers = 2; $0.bufferSize = 4096 }) { server, metrics, probe in
            let clients = try (0..<40).map { _ in try TestClient(port: server.port) }
            let payloads = (0..<40).map { randomBytes(48 * 1024, seed: UInt64($0 + 1)) }
            for (c, p) in zip(clients, payloads) { try c.send(p) }
            for (c, p) in zip(clients, payloads) { #expect(try c.receive(exactly: p.count) == p) }
            let s = server.stats
            metrics.report()
            #expect(s.noBufferEvents > 0)
            #expect(probe.counter("ringside_no_buffer_events_total") >= Int64(s.noBufferEvents))
            #expect(probe.counter("ringside_recv_rearms_total") >= Int64(s.recvRearms))
            #expect(probe.counter("ringside_recv_rearms_total") > 0)
        }
    }

    /// A 2-entry SQ fills up under 50 clients (io_uring only).
    @Test func submissionQueueFullOnUring() throws {
        try withEchoMetrics(.uring, configure: { $0.ringEntries = 2 }) { server, metrics, probe in
            let clients = try (0..<50).map { _ in try TestClient(port: server.port) }
            let payloads = (0..<50).map { randomBytes(2000, seed: UInt64($0 + 100)) }
            for (c, p) in zip(clients, payloads) { try c.send(p) }
            for (c, p) in zip(clients, payloads) { #expect(try c.receive(exactly: p.count) == p) }
            metrics.report()
            #expect(probe.counter("ringside_sq_full_events_total") > 0)
        }
    }

    /// A 2-entry CQ overflows under 64 busy multishot receives (io_uring only): the overflow counter
    /// moves, and nothing is dropped.
    @Test func completionQueueOverflowOnUring() throws {
        try withEchoMetrics(.uring, configure: { $0.ringEntries = 2; $0.completionEntries = 2 }) { server, metrics, probe in
            let clients = try (0..<64).map { _ in try TestClient(port: server.port) }
            let payloads = (0..<64).map { randomBytes(64 * 1024, seed: UInt64($0 + 200)) }
            for (c, p) in zip(clients, payloads) { try c.send(p) }
            for (c, p) in zip(clients, payloads) { #expect(try c.receive(exactly: p.count) == p) }
            metrics.report()
            #expect(server.stats.cqOverflowEvents > 0)
            #expect(probe.counter("ringside_cq_overflow_events_total") > 0)
        }
    }

    /// A connection that sends nothing is closed by the idle deadline, counted with reason "idle".
    @Test(arguments: allBackends)
    func idleDeadlineClosure(_ backend: BackendKind) throws {
        try withEchoMetrics(backend, configure: { $0.idleTimeout = .milliseconds(300) }) { server, metrics, probe in
            let c = try TestClient(port: server.port, timeoutSeconds: 5)
            #expect(try c.receiveUntilEOF().isEmpty)
            #expect(eventually { server.stats.idleTimeouts == 1 && server.stats.connectionsClosed == 1 })
            metrics.report()
            #expect(probe.counter("ringside_deadline_closures_total", ("reason", "idle")) == 1)
            #expect(probe.counter("ringside_deadline_closures_total", ("reason", "authentication")) == 0)
            #expect(probe.counter("ringside_connections_closed_total") == 1)
        }
    }

    /// A handler that requires authentication and never grants it: closed by the authentication
    /// deadline, counted with reason "authentication".
    @Test(arguments: allBackends)
    func authenticationDeadlineClosure(_ backend: BackendKind) throws {
        try withMetrics(backend, configure: { $0.authenticationTimeout = .milliseconds(300) },
                        handler: { NeverAuthenticates() }) { server, metrics, probe in
            let c = try TestClient(port: server.port, timeoutSeconds: 5)
            try c.send([1])
            _ = try? c.receiveUntilEOF()
            #expect(eventually { server.stats.authenticationTimeouts == 1 })
            metrics.report()
            #expect(probe.counter("ringside_deadline_closures_total", ("reason", "authentication")) == 1)
            #expect(probe.counter("ringside_deadline_closures_total", ("reason", "idle")) == 0)
        }
    }

    /// `run()` samples on its own every interval and returns when its task is cancelled.
    @Test(arguments: allBackends)
    func periodicReporting(_ backend: BackendKind) async throws {
        try skipIfUnavailable(backend)
        let test = TestMetrics()
        let server = try RingsideServer.start(configuration: ServerConfiguration(host: "127.0.0.1", port: 0, backend: backend)) {
            EchoHandler()
        }
        let metrics = RingsideMetrics(server: server, options: .init(interval: .milliseconds(20), factory: test))
        let probe = MetricsProbe(test: test, backend: backend)
        let reporting = Task { await metrics.run() }
        do {
            let c = try TestClient(port: server.port)
            try c.send(Array(repeating: 7, count: 100))
            #expect(try c.receive(exactly: 100) == Array(repeating: 7, count: 100))
        }
        var seen = false
        for _ in 0..<250 where !seen {
            try await Task.sleep(for: .milliseconds(20))
            seen = probe.counter("ringside_connections_closed_total") == 1 && probe.counter("ringside_bytes_sent_total") == 100
        }
        #expect(seen, "the periodic reporter did not publish the closed connection")
        reporting.cancel()
        await reporting.value
        try server.shutdown()
    }
}

/// Reads what a `RingsideMetrics` published into a TestMetrics.
struct MetricsProbe: Sendable {
    let test: TestMetrics
    let backend: BackendKind

    /// The counter's total (0 if it was never created).
    func counter(_ label: String, _ extra: (String, String)...) -> Int64 {
        test.counterTotal(label: label, dimensions: [("backend", backend.rawValue)] + extra)
    }

    /// The gauge's last value (nil if never recorded).
    func gauge(_ label: String) -> Double? {
        (try? test.expectGauge(label, [("backend", backend.rawValue)]))?.lastValue
    }
}

/// Echoes, but never calls `markAuthenticated()`.
private struct NeverAuthenticates: ConnectionHandler {
    static var requiresAuthentication: Bool { true }
    mutating func received(_ bytes: ReceivedBytes, on connection: Connection) { do { try connection.send(bytes) } catch { connection.abort() } }
}
