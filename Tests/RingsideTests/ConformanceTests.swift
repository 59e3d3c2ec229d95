import Foundation
import Glibc
import Ringside
import RingsideProtocols
import Testing

/// Behaviour every backend must show identically: exact echo under load, half-close, resets, clients
/// that never read (backpressure), handler-initiated close and abort, thousands of connections, and a
/// clean stop after all of it. Each test runs once per backend.
@Suite(.serialized, .timeLimit(.minutes(1)))
struct ConformanceTests {

    // MARK: exact echo

    @Test(arguments: allBackends)
    func exactEchoRandomPayloads(_ backend: BackendKind) throws {
        try withEchoServer(backend) { server in
            let sizes = Self.spreadSizes(count: 200, max: 1 << 20, seed: 7)
            #expect(sizes.contains(1) && sizes.contains(1 << 20))
            let payloads = sizes.enumerated().map { randomBytes($0.element, seed: UInt64(1000 + $0.offset)) }
            let report = try MultiClient(port: server.port, payloads: payloads,
                                         options: .init(connectAllFirst: true, timeout: 30)).run()
            let total = sizes.reduce(0, +)
            #expect(report.bytesSent == total)
            #expect(report.bytesReceived == total)
            #expect(eventually { server.stats.connectionsOpen == 0 })
            let s = server.stats
            #expect(s.connectionsAccepted == 200)
            #expect(s.bytesIn == total && s.bytesOut == total, "bytesIn \(s.bytesIn) bytesOut \(s.bytesOut) expected \(total)")
        }
    }

    // MARK: half-close

    @Test(arguments: allBackends)
    func clientHalfClose(_ backend: BackendKind) throws {
        try withEchoServer(backend) { server in
            // 300 KiB (above the high watermark), 1 byte and nothing at all, each followed by SHUT_WR:
            // every byte comes back, then EOF.
            let payloads = [randomBytes(300 * 1024, seed: 31), randomBytes(1, seed: 32), []]
            try MultiClient(port: server.port, payloads: payloads,
                            options: .init(halfClose: true, timeout: 10)).run()
            #expect(eventually { server.stats.connectionsOpen == 0 })

            // The same with the blocking client, one step at a time.
            let c = try TestClient(port: server.port)
            let small = randomBytes(4000, seed: 33)
            try c.send(small)
            c.shutdownWrite()
            #expect(try c.receiveUntilEOF() == small)
        }
    }

    /// `CloseReason.peerClosed` is documented as "EOF after the handler's default `inputClosed`".
    @Test(arguments: allBackends)
    func halfCloseReportsPeerClosed(_ backend: BackendKind) throws {
        let recorder = CloseRecorder()
        try withServer(backend, handler: { RecordingEcho(recorder: recorder) }) { server in
            let c = try TestClient(port: server.port)
            let payload = randomBytes(1000, seed: 34)
            try c.send(payload)
            c.shutdownWrite()
            #expect(try c.receiveUntilEOF() == payload)
            #expect(eventually { recorder.reasons.count == 1 })
            #expect(recorder.reasons == [.peerClosed])
        }
    }

    // MARK: resets

    @Test(arguments: allBackends)
    func clientResetMidStream(_ backend: BackendKind) throws {
        try withEchoServer(backend) { server in
            // Another client stays open, idle, through the whole test.
            let bystander = try TestClient(port: server.port)
            #expect(eventually { server.stats.connectionsOpen == 1 })

            // Four clients push a few MB each without reading, then reset (RST, not FIN) while the
            // server still has their echo queued or in flight.
            let stream = PatternStream(seed: 41)
            do {
                let resetters = try (0..<4).map { _ in try TestClient(port: server.port) }
                for r in resetters { r.setNonBlocking() }
                let sent = try blast(resetters.map(\.fd), stream: stream, maxBytesEach: 4 << 20,
                                     timeBound: 1.5, stallBound: 0.3)
                #expect(sent.allSatisfy { $0 > 256 * 1024 }, "each resetter should get past the high watermark: \(sent)")
                #expect(eventually { server.stats.connectionsOpen == 5 })
                for r in resetters { r.setLingerZero() }
            }  // closed here: RST
            #expect(eventually { server.stats.connectionsOpen == 1 },
                    "connectionsOpen \(server.stats.connectionsOpen), expected only the bystander")

            // The server is still up: the bystander and a new client get exact echoes.
            let small = randomBytes(32 * 1024, seed: 42)
            try bystander.send(small)
            #expect(try bystander.receive(exactly: small.count) == small)
            try MultiClient(port: server.port, payloads: [randomBytes(1 << 20, seed: 43)],
                            options: .init(timeout: 10)).run()
            #expect(eventually { server.stats.connectionsOpen == 1 })
        }
    }

    // MARK: backpressure

    @Test(arguments: allBackends)
    func clientThatNeverReads(_ backend: BackendKind) throws {
        var config = ServerConfiguration()
        let probe = BackpressureProbe()
        try withServer(backend, configure: {
            $0.highWatermark = 256 * 1024
            $0.lowWatermark = 64 * 1024
            config = $0
        }, handler: { ProbingEcho(probe: probe) }) { server in
            let c = try TestClient(port: server.port)
            c.setNonBlocking()
            let stream = PatternStream(seed: 51)
            // Send as fast as possible, never reading, for up to 2 s (less once the socket stays full).
            let sent = try blast([c.fd], stream: stream, maxBytesEach: 64 << 20, timeBound: 2, stallBound: 0.3)[0]
            #expect(sent < 32 << 20, "the server kept reading a client that never reads: \(sent) bytes accepted")
            #expect(sent > config.highWatermark)

            #expect(eventually { server.stats.readPauses >= 1 })
            let s = server.stats
            let p = probe.snapshot
            #expect(s.readPauses >= 1)
            #expect(s.maxQueuedBytes <= config.highWatermark + config.bufferSize,
                    """
                    outbound queue reached \(s.maxQueuedBytes) B; high watermark \(config.highWatermark) + one buffer \(config.bufferSize) = \(config.highWatermark + config.bufferSize). \
                    \(p.receivesWhileBackpressured) of \(p.receives) receives were delivered while the connection was already above the \
                    high watermark (queue up to \(p.maxQueuedAtReceive) B when one arrived); peak pool chunks in use \(s.peakBuffersInUse)
                    """)
            #expect(s.maxQueuedBytes > config.highWatermark)
            #expect(s.peakBuffersInUse <= config.receiveBuffers + config.sendBuffers)
            #expect(s.connectionsOpen == 1)

            // Now read it all back: every byte sent, in order, nothing lost or added.
            try readBack(c.fd, count: sent, stream: stream, timeout: 15)
            c.shutdownWrite()
            try expectEOF(c.fd, timeout: 5)
            #expect(eventually { server.stats.connectionsOpen == 0 })
            #expect(server.stats.bytesIn == sent && server.stats.bytesOut == sent)
        }
    }

    // MARK: server-initiated close and abort

    @Test(arguments: allBackends)
    func serverInitiatedClose(_ backend: BackendKind) throws {
        // write + close in `opened`: the greeting, then EOF.
        let greeting = Array("hello\n".utf8)
        let closer = CloseRecorder()
        try withServer(backend, handler: { GreetAndClose(recorder: closer, greeting: greeting) }) { server in
            let c = try TestClient(port: server.port)
            #expect(try c.receiveUntilEOF() == greeting)
            c.shutdownWrite() // the client's FIN ends the server's lingering close at once
            #expect(eventually { closer.reasons.count == 1 })
            #expect(closer.reasons == [.closedByHandler])
            #expect(closer.writeErrors.isEmpty)
        }

        // close() flushes a larger queue first (more than the high watermark, many chunks).
        let big = randomBytes(512 * 1024, seed: 61)
        let bigCloser = CloseRecorder()
        try withServer(backend, handler: { GreetAndClose(recorder: bigCloser, greeting: big) }) { server in
            let c = try TestClient(port: server.port)
            let got = try c.receiveUntilEOF()
            #expect(got.count == big.count)
            #expect(got == big)
            c.shutdownWrite()
            #expect(eventually { bigCloser.reasons.count == 1 })
            #expect(bigCloser.reasons == [.closedByHandler])
            #expect(bigCloser.writeErrors.isEmpty)
        }

        // abort() on the first byte received: EOF or ECONNRESET, reason `.abortedByHandler`.
        let aborter = CloseRecorder()
        try withServer(backend, handler: { AbortOnReceive(recorder: aborter) }) { server in
            let c = try TestClient(port: server.port)
            try c.send(Array("x".utf8))
            var byte: UInt8 = 0
            let n = recv(c.fd, &byte, 1, 0)
            let e = errno
            #expect(n == 0 || (n < 0 && e == ECONNRESET),
                    "expected EOF or ECONNRESET, got n=\(n) errno=\(String(cString: strerror(e)))")
            #expect(eventually { aborter.reasons.count == 1 })
            #expect(aborter.reasons == [.abortedByHandler])
            #expect(eventually { server.stats.connectionsOpen == 0 })
        }
    }

    // MARK: many connections

    @Test(arguments: allBackends)
    func twoThousandConnections(_ backend: BackendKind) throws {
        try withEchoServer(backend) { server in
            let n = 2000
            let payloads = (0..<n).map { randomBytes(64, seed: UInt64(20_000 + $0)) }
            let client = MultiClient(port: server.port, payloads: payloads,
                                     options: .init(connectAllFirst: true, timeout: 20, holdOpenUntilAllDone: true))
            try client.run(afterConnect: {
                // All 2,000 connected (client side) before any byte is sent; the server holds them all.
                #expect(eventually(10) { server.stats.connectionsOpen == n },
                        "connectionsOpen \(server.stats.connectionsOpen) with \(n) clients connected")
            })
            #expect(server.stats.connectionsAccepted >= n)
            #expect(server.stats.connectionsRefused == 0)
            #expect(eventually(10) { server.stats.connectionsOpen == 0 },
                    "connectionsOpen \(server.stats.connectionsOpen) after every client closed")
        }
    }

    // MARK: survives abuse, stops cleanly

    @Test(arguments: allBackends)
    func serverSurvivesAndStopsCleanly(_ backend: BackendKind) throws {
        try skipIfUnavailable(backend)
        let before = openDescriptorCount()
        let tableBefore = descriptorTable()
        // Clients still connected (one stuck with a full queue) when the server stops.
        var lingering: [TestClient] = []
        let stream = PatternStream(seed: 71)
        // The stop waits out the whole drain timeout (the stuck client's queue never drains, the idle and
        // partial clients never answer the lingering close's FIN), then aborts: short, as nothing here
        // depends on its length.
        try withEchoServer(backend, configure: { $0.drainTimeout = .milliseconds(200) }) { server in
            // Resets mid-stream.
            do {
                let resetters = try (0..<3).map { _ in try TestClient(port: server.port) }
                for r in resetters { r.setNonBlocking() }
                _ = try blast(resetters.map(\.fd), stream: stream, maxBytesEach: 2 << 20, timeBound: 0.5, stallBound: 0.2)
                for r in resetters { r.setLingerZero() }
            }
            // Half-closing clients of several sizes.
            let halfClosers = (0..<20).map { randomBytes(($0 + 1) * 10_000, seed: UInt64(7000 + $0)) }
            try MultiClient(port: server.port, payloads: halfClosers, options: .init(halfClose: true, timeout: 10)).run()
            // Clients that connect and close at once, some with a byte in flight.
            for k in 0..<50 {
                let c = try TestClient(port: server.port)
                if k % 2 == 0 { try c.send([UInt8(k)]) }
                if k % 3 == 0 { c.setLingerZero() }
            }
            // A client that never reads, left stuck; an idle one; one mid-message.
            let stuck = try TestClient(port: server.port)
            stuck.setNonBlocking()
            _ = try blast([stuck.fd], stream: stream, maxBytesEach: 16 << 20, timeBound: 1, stallBound: 0.2)
            let idle = try TestClient(port: server.port)
            let partial = try TestClient(port: server.port)
            try partial.send(randomBytes(100, seed: 72))
            lingering = [stuck, idle, partial]
            #expect(eventually { server.stats.connectionsOpen == 3 },
                    "connectionsOpen \(server.stats.connectionsOpen), expected the 3 lingering clients")
            #expect(eventually { server.stats.readPauses >= 1 })

            // Still serving exactly.
            try MultiClient(port: server.port, payloads: [randomBytes(200_000, seed: 73)], options: .init(timeout: 10)).run()
            #expect(try partial.receive(exactly: 100) == randomBytes(100, seed: 72))
        }
        // The stop closed every server-side connection: the lingering clients read EOF (or a reset).
        for c in lingering.dropFirst() {
            var byte: UInt8 = 0
            let n = recv(c.fd, &byte, 1, 0)
            #expect(n == 0 || (n < 0 && errno == ECONNRESET), "a lingering client was not closed by the stop: n=\(n)")
        }
        lingering.removeAll()
        // The loop thread has ended; its ring/epoll, eventfd and listener must be closed. (Other suites
        // running in parallel could hold descriptors for a moment, hence `eventually`.)
        let back = eventually(3) { openDescriptorCount() <= before + 2 }
        let after = openDescriptorCount()
        #expect(back, "descriptors before \(before), after \(after); new: \(newDescriptors(since: tableBefore))")
    }

    // MARK: helpers

    /// `count` sizes spread log-uniformly over 1...max, including exactly 1 and exactly `max`.
    static func spreadSizes(count: Int, max: Int, seed: UInt64) -> [Int] {
        var rng = SplitMix(seed: seed)
        var sizes = [1, max]
        while sizes.count < count {
            let u = Double(rng.next() >> 11) / Double(1 << 53)
            sizes.append(Swift.min(max, Swift.max(1, Int(exp(u * log(Double(max)))))))
        }
        // Interleave big and small (deterministically shuffled).
        for i in stride(from: sizes.count - 1, to: 0, by: -1) {
            sizes.swapAt(i, Int(rng.next() % UInt64(i + 1)))
        }
        return sizes
    }
}

// MARK: - handlers and recorders

/// Records, across threads, how connections ended and which writes failed.
final class CloseRecorder: Sendable {
    private let state = PthreadMutex<(reasons: [CloseReason], writeErrors: [WriteError])>(([], []))
    var reasons: [CloseReason] { state.withLock { $0.reasons } }
    var writeErrors: [WriteError] { state.withLock { $0.writeErrors } }
    func record(_ r: CloseReason) { state.withLock { $0.reasons.append(r) } }
    func record(_ e: WriteError) { state.withLock { $0.writeErrors.append(e) } }
}

/// Writes a greeting when the connection opens and closes it.
struct GreetAndClose: ConnectionHandler {
    let recorder: CloseRecorder
    let greeting: [UInt8]

    mutating func opened(on connection: Connection) {
        do { try connection.write(greeting) } catch { recorder.record(error) }
        connection.close()
    }
    mutating func received(_ bytes: ReceivedBytes, on connection: Connection) {}
    mutating func closed(reason: CloseReason) { recorder.record(reason) }
}

/// Aborts the connection on the first byte received.
struct AbortOnReceive: ConnectionHandler {
    let recorder: CloseRecorder
    mutating func received(_ bytes: ReceivedBytes, on connection: Connection) { connection.abort() }
    mutating func closed(reason: CloseReason) { recorder.record(reason) }
}

/// What an echo saw of backpressure: receives delivered while the queue was above the high watermark.
final class BackpressureProbe: Sendable {
    struct Snapshot { var receives = 0; var receivesWhileBackpressured = 0; var maxQueuedAtReceive = 0 }
    private let state = PthreadMutex(Snapshot())
    var snapshot: Snapshot { state.withLock { $0 } }
    func note(queued: Int, backpressured: Bool) {
        state.withLock {
            $0.receives += 1
            if backpressured { $0.receivesWhileBackpressured += 1 }
            $0.maxQueuedAtReceive = max($0.maxQueuedAtReceive, queued)
        }
    }
}

/// Echo that notes, on each receive, how much output was already queued.
struct ProbingEcho: ConnectionHandler {
    let probe: BackpressureProbe
    mutating func received(_ bytes: ReceivedBytes, on connection: Connection) {
        probe.note(queued: connection.queuedOutboundBytes, backpressured: connection.isBackpressured)
        do { try connection.send(bytes) } catch { connection.abort() }
    }
}

/// Echo that records why each connection ended.
struct RecordingEcho: ConnectionHandler {
    let recorder: CloseRecorder
    mutating func received(_ bytes: ReceivedBytes, on connection: Connection) { do { try connection.send(bytes) } catch { connection.abort() } }
    mutating func closed(reason: CloseReason) { recorder.record(reason) }
}

// MARK: - streaming clients


/// An endless deterministic byte stream: a random block of prime length repeated, so a lost,
/// duplicated or reordered chunk shows up as a mismatch at its offset.
struct PatternStream {
    let block: [UInt8]
    init(seed: UInt64) { block = randomBytes(1_000_003, seed: seed) }

    /// Fills `buffer` with the stream's bytes starting at `offset`.
    func fill(_ buffer: UnsafeMutableRawBufferPointer, from offset: Int) {
        var done = 0
        block.withUnsafeBytes { b in
            while done < buffer.count {
                let pos = (offset + done) % block.count
                let n = min(buffer.count - done, block.count - pos)
                (buffer.baseAddress! + done).copyMemory(from: b.baseAddress! + pos, byteCount: n)
                done += n
            }
        }
    }

    /// The offset of the first byte of `bytes` that differs from the stream at `offset`, or nil.
    func firstMismatch(_ bytes: UnsafeRawBufferPointer, at offset: Int) -> Int? {
        var done = 0
        return block.withUnsafeBytes { b -> Int? in
            while done < bytes.count {
                let pos = (offset + done) % block.count
                let n = min(bytes.count - done, block.count - pos)
                if memcmp(bytes.baseAddress! + done, b.baseAddress! + pos, n) != 0 {
                    for k in 0..<n where bytes[done + k] != b[pos + k] { return offset + done + k }
                }
                done += n
            }
            return nil
        }
    }
}

/// Sends the stream on every (non-blocking) socket, round-robin, never reading, until each has sent
/// `maxBytesEach`, `timeBound` seconds pass, or no socket accepted a byte for `stallBound` seconds.
/// Returns the bytes each socket sent.
func blast(_ fds: [Int32], stream: PatternStream, maxBytesEach: Int, timeBound: Double, stallBound: Double) throws -> [Int] {
    var sent = [Int](repeating: 0, count: fds.count)
    var buf = [UInt8](repeating: 0, count: 64 * 1024)
    let start = ContinuousClock.now
    var lastProgress = start
    let limit = Duration.milliseconds(Int(timeBound * 1000))
    let stall = Duration.milliseconds(Int(stallBound * 1000))
    while true {
        let now = ContinuousClock.now
        if now - start >= limit || now - lastProgress >= stall { break }
        var progressed = false
        var allDone = true
        for (k, fd) in fds.enumerated() where sent[k] < maxBytesEach {
            allDone = false
            let len = min(buf.count, maxBytesEach - sent[k])
            buf.withUnsafeMutableBytes { stream.fill(UnsafeMutableRawBufferPointer(rebasing: $0[0..<len]), from: sent[k]) }
            let n = buf.withUnsafeBytes { Glibc.send(fd, $0.baseAddress!, len, Int32(MSG_NOSIGNAL)) }
            if n > 0 { sent[k] += n; progressed = true; continue }
            if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) { continue }
            throw ClientError("send on client \(k) after \(sent[k]) bytes: \(String(cString: strerror(errno)))")
        }
        if allDone { break }
        if progressed { lastProgress = ContinuousClock.now } else { usleep(2000) }
    }
    return sent
}

/// Reads exactly `count` bytes (with a timeout) and checks they are the stream's first `count` bytes.
func readBack(_ fd: Int32, count: Int, stream: PatternStream, timeout: Double) throws {
    var got = 0
    var buf = [UInt8](repeating: 0, count: 256 * 1024)
    let deadline = ContinuousClock.now.advanced(by: .milliseconds(Int(timeout * 1000)))
    while got < count {
        guard ContinuousClock.now < deadline else {
            throw ClientError("timed out reading back: \(got) of \(count) bytes echoed")
        }
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        if poll(&p, 1, 100) <= 0 { continue }
        let want = min(buf.count, count - got)
        let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, want, 0) }
        if n == 0 { throw ClientError("EOF after \(got) of \(count) echoed bytes") }
        if n < 0 {
            if errno == EAGAIN || errno == EINTR { continue }
            throw ClientError("recv after \(got) of \(count) echoed bytes: \(String(cString: strerror(errno)))")
        }
        if let bad = buf.withUnsafeBytes({ stream.firstMismatch(UnsafeRawBufferPointer(rebasing: $0[0..<n]), at: got) }) {
            throw ClientError("echo differs from what was sent at offset \(bad) (of \(count))")
        }
        got += n
    }
}

/// Waits for end-of-file on `fd`; throws on extra bytes, reset or timeout.
func expectEOF(_ fd: Int32, timeout: Double) throws {
    let deadline = ContinuousClock.now.advanced(by: .milliseconds(Int(timeout * 1000)))
    while ContinuousClock.now < deadline {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        if poll(&p, 1, 100) <= 0 { continue }
        var byte: UInt8 = 0
        let n = recv(fd, &byte, 1, 0)
        if n == 0 { return }
        if n > 0 { throw ClientError("unexpected extra byte after the echo") }
        if errno == EAGAIN || errno == EINTR { continue }
        throw ClientError("expected EOF, got \(String(cString: strerror(errno)))")
    }
    throw ClientError("timed out waiting for EOF")
}

/// Every open descriptor of this process and what it refers to (readlink of /proc/self/fd/N).
func descriptorTable() -> [Int32: String] {
    var table: [Int32: String] = [:]
    guard let names = try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd") else { return table }
    for name in names {
        guard let fd = Int32(name) else { continue }
        var buf = [CChar](repeating: 0, count: 256)
        let n = readlink("/proc/self/fd/\(name)", &buf, buf.count - 1)
        table[fd] = n > 0 ? String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self) : "?"
    }
    return table
}

/// Descriptors open now that were not open (with the same target) in `before`.
func newDescriptors(since before: [Int32: String]) -> String {
    descriptorTable().filter { before[$0.key] != $0.value }.sorted { $0.key < $1.key }
        .map { "\($0.key) -> \($0.value)" }.joined(separator: ", ")
}
