import Foundation
import Glibc
import Ringside
import Synchronization
import Testing

/// The echo conformance behaviours, served through the async API (`RingsideServer.startAsync`: one
/// task per connection on the loop's executor), on both backends. Plus what only the async API has:
/// input backpressure against a task that does not read, cancellation, thread placement, and tasks
/// that outlive their connection when the server stops.
@Suite(.serialized, .timeLimit(.minutes(1)))
struct AsyncTests {

    // MARK: exact echo

    @Test(arguments: allBackends)
    func exactEchoRandomPayloads(_ backend: BackendKind) throws {
        let probe = AsyncProbe()
        try withAsyncServer(backend, probe: probe, body: asyncEcho(probe)) { server in
            var sizes = ConformanceTests.spreadSizes(count: 200, max: 1 << 20, seed: 107)
            sizes.append(6 << 20)  // one multi-megabyte stream
            let payloads = sizes.enumerated().map { randomBytes($0.element, seed: UInt64(5000 + $0.offset)) }
            let report = try MultiClient(port: server.port, payloads: payloads,
                                         options: .init(connectAllFirst: true, timeout: 40)).run()
            let total = sizes.reduce(0, +)
            #expect(report.bytesSent == total && report.bytesReceived == total)
            #expect(eventually { server.stats.connectionsOpen == 0 })
            let s = server.stats
            #expect(s.connectionsAccepted == sizes.count)
            #expect(s.bytesIn == total && s.bytesOut == total, "bytesIn \(s.bytesIn) bytesOut \(s.bytesOut) expected \(total)")
            #expect(probe.offLoop == 0, "a task ran off its loop thread")
        }
    }

    @Test(arguments: allBackends)
    func manyConcurrentClients(_ backend: BackendKind) throws {
        let probe = AsyncProbe()
        try withAsyncServer(backend, probe: probe, body: asyncEcho(probe)) { server in
            let n = 1000
            let payloads = (0..<n).map { randomBytes(64 + $0 % 3000, seed: UInt64(30_000 + $0)) }
            try MultiClient(port: server.port, payloads: payloads,
                            options: .init(connectAllFirst: true, timeout: 30, holdOpenUntilAllDone: true))
                .run(afterConnect: {
                    #expect(eventually(10) { server.stats.connectionsOpen == n })
                    #expect(eventually(10) { probe.started == n }, "tasks started: \(probe.started)")
                })
            #expect(eventually(10) { server.stats.connectionsOpen == 0 })
            #expect(eventually { probe.live == 0 }, "tasks still running: \(probe.live)")
        }
    }

    // MARK: half-close

    @Test(arguments: allBackends)
    func halfCloseEndsInboundAndStillWrites(_ backend: BackendKind) throws {
        let probe = AsyncProbe()
        let trailer = Array("bye".utf8)
        try withAsyncServer(backend, probe: probe, body: { conn in
            for try await chunk in conn.inbound { try await conn.write(chunk) }
            try await conn.write(trailer)  // after the peer's EOF: the output side is still open
            probe.note("eof")
        }) { server in
            let c = try TestClient(port: server.port)
            let payload = randomBytes(300 * 1024, seed: 131)  // above the high watermark
            try c.send(payload)
            c.shutdownWrite()
            #expect(try c.receiveUntilEOF() == payload + trailer)
            #expect(eventually { probe.events.contains("eof") })
            #expect(eventually { server.stats.connectionsOpen == 0 })
        }
    }

    @Test(arguments: allBackends)
    func clientHalfClose(_ backend: BackendKind) throws {
        let probe = AsyncProbe()
        try withAsyncServer(backend, probe: probe, body: asyncEcho(probe)) { server in
            // Every byte back, then EOF (the task returns at EOF: graceful close); including nothing at all.
            let payloads = [randomBytes(300 * 1024, seed: 132), randomBytes(1, seed: 133), []]
            try MultiClient(port: server.port, payloads: payloads, options: .init(halfClose: true, timeout: 10)).run()
            let c = try TestClient(port: server.port)
            let small = randomBytes(4000, seed: 134)
            try c.send(small)
            c.shutdownWrite()
            #expect(try c.receiveUntilEOF() == small)
            #expect(eventually { server.stats.connectionsOpen == 0 })
        }
    }

    // MARK: backpressure

    /// A client that sends without reading: `write` waits above the high watermark, the task stops
    /// consuming, and the engine stops reading; the outbound queue stays within the high watermark plus
    /// one receive buffer, as with the callback echo.
    @Test(arguments: allBackends)
    func clientThatNeverReads(_ backend: BackendKind) throws {
        let probe = AsyncProbe()
        var config = ServerConfiguration()
        try withAsyncServer(backend, probe: probe, configure: {
            $0.highWatermark = 256 * 1024
            $0.lowWatermark = 64 * 1024
            config = $0
        }, body: asyncEcho(probe)) { server in
            let c = try TestClient(port: server.port)
            c.setNonBlocking()
            let stream = PatternStream(seed: 151)
            let sent = try blast([c.fd], stream: stream, maxBytesEach: 64 << 20, timeBound: 2, stallBound: 0.3)[0]
            #expect(sent < 32 << 20, "the server kept reading a client that never reads: \(sent) bytes accepted")
            #expect(sent > config.highWatermark)
            #expect(eventually { server.stats.readPauses >= 1 })
            let s = server.stats
            #expect(s.maxQueuedBytes <= config.highWatermark + config.bufferSize,
                    "outbound queue reached \(s.maxQueuedBytes) B; limit \(config.highWatermark + config.bufferSize)")
            #expect(s.connectionsOpen == 1)

            try readBack(c.fd, count: sent, stream: stream, timeout: 15)
            c.shutdownWrite()
            try expectEOF(c.fd, timeout: 5)
            #expect(eventually { server.stats.connectionsOpen == 0 })
            #expect(server.stats.bytesIn == sent && server.stats.bytesOut == sent)
        }
    }

    /// A task that does not consume its input: the engine stops reading after `inboundBufferLimit`
    /// (plus what the kernel completed before the pause landed), then resumes once the task reads.
    @Test(arguments: allBackends)
    func taskThatDoesNotReadPausesInput(_ backend: BackendKind) throws {
        let probe = AsyncProbe()
        let gate = Atomic<Bool>(false)
        let limit = 64 * 1024
        try withAsyncServer(backend, probe: probe, inboundLimit: limit, body: { conn in
            while !gate.load(ordering: .acquiring) { try await Task.sleep(for: .milliseconds(5)) }
            #expect(conn.executor.isCurrent)  // resumed from the timer thread, back on the loop
            for try await chunk in conn.inbound { try await conn.write(chunk) }
        }) { server in
            let c = try TestClient(port: server.port)
            c.setNonBlocking()
            let stream = PatternStream(seed: 161)
            let sent = try blast([c.fd], stream: stream, maxBytesEach: 64 << 20, timeBound: 2, stallBound: 0.3)[0]
            #expect(eventually { server.stats.readPauses >= 1 })
            let taken = server.stats.bytesIn
            #expect(taken <= limit + 1 << 20, "the server read \(taken) bytes for a task that consumed none")
            #expect(taken >= limit)
            #expect(sent < 32 << 20)
            gate.store(true, ordering: .releasing)
            try readBack(c.fd, count: sent, stream: stream, timeout: 15)
            c.shutdownWrite()
            try expectEOF(c.fd, timeout: 5)
            #expect(eventually { server.stats.connectionsOpen == 0 })
            #expect(server.stats.bytesIn == sent && server.stats.bytesOut == sent)
        }
    }

    // MARK: errors, cancellation, close

    @Test(arguments: allBackends)
    func resetSurfacesAsError(_ backend: BackendKind) throws {
        let probe = AsyncProbe()
        try withAsyncServer(backend, probe: probe, body: { conn in
            do {
                for try await chunk in conn.inbound { try await conn.write(chunk) }
                probe.note("ended")
            } catch let e as AsyncConnectionError {
                probe.note("\(e)")
                throw e
            }
        }) { server in
            do {
                let c = try TestClient(port: server.port)
                c.setNonBlocking()
                _ = try blast([c.fd], stream: PatternStream(seed: 171), maxBytesEach: 4 << 20, timeBound: 1, stallBound: 0.3)
                c.setLingerZero()
            }  // RST
            #expect(eventually { probe.events.count == 1 })
            #expect(probe.events.first?.hasPrefix("connection closed (error") == true, "\(probe.events)")
            #expect(eventually { server.stats.connectionsOpen == 0 })
        }
    }

    @Test(arguments: allBackends)
    func cancellationClosesTheConnection(_ backend: BackendKind) throws {
        let probe = AsyncProbe()
        try withAsyncServer(backend, probe: probe, body: { conn in
            // A task on the connection's executor, cancelled from another thread while it waits to read.
            let reader = Task(executorPreference: conn.executor) {
                for try await chunk in conn.inbound { try await conn.write(chunk) }
            }
            Thread.detachNewThread { usleep(100_000); reader.cancel() }
            do {
                try await reader.value
            } catch is CancellationError {
                probe.note("cancelled")
                throw CancellationError()
            }
        }) { server in
            let c = try TestClient(port: server.port)
            try c.send([1, 2, 3])
            #expect(try c.receive(exactly: 3) == [1, 2, 3])
            #expect(closedByServer(c, within: 3))  // aborted by the cancellation (a reset)
            #expect(probe.events == ["cancelled"])
            #expect(eventually { server.stats.connectionsOpen == 0 })
        }
    }

    @Test(arguments: allBackends)
    func returningClosesGracefully(_ backend: BackendKind) throws {
        let probe = AsyncProbe()
        let greeting = randomBytes(700 * 1024, seed: 181)  // several times the high watermark
        try withAsyncServer(backend, probe: probe, body: { conn in
            try await conn.write(greeting)
        }) { server in
            let c = try TestClient(port: server.port)
            #expect(try c.receiveUntilEOF() == greeting)  // flushed, then closed
            c.shutdownWrite()  // the client's FIN ends the server's lingering close at once
            #expect(eventually { server.stats.connectionsOpen == 0 })
        }
    }

    // MARK: stop

    /// The server stops with async connections open: idle, mid-read, stuck behind a client that does
    /// not read, and a task asleep outside the loop. Everything ends, no task, buffer or descriptor left.
    @Test(arguments: allBackends)
    func serverStopEndsTasks(_ backend: BackendKind) throws {
        try skipIfUnavailable(backend)
        let before = openDescriptorCount()
        let probe = AsyncProbe()
        var lingering: [TestClient] = []
        // The stop waits out the whole drain timeout (the stuck client never reads, the others never
        // answer the lingering close), then aborts: short, as nothing checked depends on its length.
        try withAsyncServer(backend, probe: probe, configure: { $0.drainTimeout = .milliseconds(200) }, body: { conn in
            var first = true
            do {
                for try await chunk in conn.inbound {
                    if first, chunk.count == 1, chunk.bytes == [0x5A] {
                        try await Task.sleep(for: .seconds(60))  // ends by cancellation at the stop
                    }
                    first = false
                    try await conn.write(chunk)
                }
            } catch {
                probe.note(error is CancellationError ? "cancelled" : "\(error)")
                throw error
            }
        }) { server in
            let idle = try TestClient(port: server.port)
            let partial = try TestClient(port: server.port)
            try partial.send(randomBytes(100, seed: 191))
            let sleeper = try TestClient(port: server.port)
            try sleeper.send([0x5A])
            let stuck = try TestClient(port: server.port)
            stuck.setNonBlocking()
            _ = try blast([stuck.fd], stream: PatternStream(seed: 192), maxBytesEach: 16 << 20, timeBound: 1, stallBound: 0.2)
            lingering = [idle, partial, sleeper, stuck]
            #expect(eventually { server.stats.connectionsOpen == 4 })
            #expect(try partial.receive(exactly: 100) == randomBytes(100, seed: 191))
            #expect(eventually { probe.live == 4 })
        }
        #expect(probe.live == 0, "tasks still running after the stop: \(probe.live)")
        #expect(probe.events.count == 4, "\(probe.events)")
        for c in lingering.prefix(3) {
            var byte: UInt8 = 0
            let n = recv(c.fd, &byte, 1, 0)
            #expect(n == 0 || (n < 0 && errno == ECONNRESET), "a lingering client was not closed by the stop: n=\(n)")
        }
        lingering.removeAll()
        #expect(eventually(3) { openDescriptorCount() <= before + 2 }, "descriptors before \(before), after \(openDescriptorCount())")
    }
}

// MARK: - helpers

/// The async echo, noting where its task runs.
func asyncEcho(_ probe: AsyncProbe) -> @Sendable (AsyncConnection) async throws -> Void {
    { conn in
        for try await chunk in conn.inbound {
            if !conn.executor.isCurrent { probe.noteOffLoop() }
            try await conn.write(chunk)
        }
    }
}

/// Counts tasks and records what they saw, across threads.
final class AsyncProbe: Sendable {
    private struct State { var started = 0; var live = 0; var offLoop = 0; var events: [String] = [] }
    private let state = PthreadMutex(State())
    var started: Int { state.withLock { $0.started } }
    var live: Int { state.withLock { $0.live } }
    var offLoop: Int { state.withLock { $0.offLoop } }
    var events: [String] { state.withLock { $0.events } }
    func begin() { state.withLock { $0.started += 1; $0.live += 1 } }
    func end() { state.withLock { $0.live -= 1 } }
    func noteOffLoop() { state.withLock { $0.offLoop += 1 } }
    func note(_ e: String) { state.withLock { $0.events.append(e) } }
}

/// `withServer` for the async API: starts `body` per connection, runs `test`, stops the server, and
/// checks that nothing leaked (connections, pool buffers) and that every task has ended.
func withAsyncServer(
    _ backend: BackendKind,
    probe: AsyncProbe,
    configure: (inout ServerConfiguration) -> Void = { _ in },
    inboundLimit: Int = 64 * 1024,
    body: @escaping @Sendable (AsyncConnection) async throws -> Void,
    _ test: (RunningServer) throws -> Void
) throws {
    var started = false
    defer {
        if started { #expect(eventually(2) { probe.live == 0 }, "connection tasks still running after stop: \(probe.live)") }
    }
    try withServer(backend, configure: configure, start: { config in
        let server = try RingsideServer.startAsync(configuration: config, requiresAuthentication: false,
                                                   inboundBufferLimit: inboundLimit) { conn in
            probe.begin()
            defer { probe.end() }
            #expect(conn.executor.isCurrent, "task started off its loop thread")
            try await body(conn)
        }
        started = true
        return server
    }, test)
}
