import Foundation
import Glibc
@testable import Ringside
import RingsideProtocols
import Synchronization
import Testing

/// Several event loops behind one port (SO_REUSEPORT): exact echo across loops, connections landing on
/// every loop, a clean stop of N loops, start failures that leave nothing behind, the stats merge, and
/// a graceful stop under request/response load that must not lose or cut a single reply.
@Suite(.serialized, .timeLimit(.minutes(1)))
struct MultiLoopTests {

    // MARK: echo across loops

    @Test(arguments: allBackends)
    func echoAcrossTwoLoops(_ backend: BackendKind) throws {
        try withEchoServer(backend, configure: { $0.threads = 2 }) { server in
            #expect(server.threads == 2)
            let sizes = (0..<300).map { 1 + ($0 * 7919) % (64 * 1024) }
            let payloads = sizes.enumerated().map { randomBytes($0.element, seed: UInt64(6000 + $0.offset)) }
            let report = try MultiClient(port: server.port, payloads: payloads,
                                         options: .init(connectAllFirst: true, timeout: 30)).run()
            let total = sizes.reduce(0, +)
            #expect(report.bytesReceived == total)
            #expect(eventually { server.stats.connectionsOpen == 0 })
            let perLoop = server.loopStats
            #expect(perLoop.count == 2)
            // SO_REUSEPORT hashes the 4-tuple: 300 connections all on one loop has odds of 2^-299.
            #expect(perLoop.allSatisfy { $0.connectionsAccepted > 0 },
                    "accepted per loop: \(perLoop.map(\.connectionsAccepted))")
            let s = server.stats
            #expect(s.connectionsAccepted == 300)
            #expect(perLoop.map(\.connectionsAccepted).reduce(0, +) == 300)
            #expect(s.bytesIn == total && s.bytesOut == total)
        }
    }

    /// Connections opened before the stop are spread over four loops; stop() ends every loop, every
    /// client sees EOF, and no descriptor is left behind.
    @Test(arguments: allBackends)
    func stopEndsEveryLoop(_ backend: BackendKind) throws {
        try skipIfUnavailable(backend)
        let fdsBefore = openDescriptorCount()
        var config = ServerConfiguration(host: "127.0.0.1", port: 0, backend: backend)
        config.threads = 4
        config.drainTimeout = .seconds(2)
        // The clients read their EOF only after stop() returned: the lingering close waits this long
        // for their FIN (not the default 2 s) before the close they see as EOF.
        config.lingerTimeout = .milliseconds(200)
        try stopEndsEveryLoop(config)
        // Every loop's ring/epoll, listener, eventfd and connection is gone with the server.
        // Other suites run in parallel and open descriptors too: allow 2 of theirs; a leaked loop would
        // leave at least 3 (ring or epoll, eventfd, listener).
        #expect(eventually(3) { openDescriptorCount() <= fdsBefore + 2 }, "descriptors \(fdsBefore) -> \(openDescriptorCount())")
    }

    private func stopEndsEveryLoop(_ configuration: ServerConfiguration) throws {
        var config = configuration
        let server = try RingsideServer.start(configuration: config) { EchoHandler() }
        let backend = config.backend
        #expect(server.backend == backend && server.threads == 4)
        do {
            let clients = try (0..<64).map { _ in try TestClient(port: server.port, timeoutSeconds: 5) }
            for (i, c) in clients.enumerated() {
                let m = randomBytes(100, seed: UInt64(i))
                try c.send(m)
                #expect(try c.receive(exactly: 100) == m)
            }
            #expect(server.loopStats.filter { $0.connectionsOpen > 0 }.count >= 2,
                    "open per loop: \(server.loopStats.map(\.connectionsOpen))")
            try server.shutdown()
            for c in clients { #expect(try c.receiveUntilEOF().isEmpty) }
        }
        let s = server.stats
        #expect(s.connectionsAccepted == 64 && s.connectionsClosed == 64 && s.connectionsOpen == 0)
        #expect(s.buffersInUse == 0)
        #expect(server.loopStats.allSatisfy { $0.connectionsOpen == 0 && $0.buffersInUse == 0 })
        try server.shutdown()  // idempotent
        // The port is free again: every loop closed its listener.
        config.port = server.port
        config.threads = 1
        let again = try RingsideServer.start(configuration: config) { EchoHandler() }
        try again.shutdown()
    }

    /// A loop that cannot start (here: pinned to a CPU that does not exist) makes start() throw after
    /// stopping the loops already running, leaving no thread, descriptor or bound port behind.
    @Test(arguments: allBackends)
    func failedLoopStopsTheStartedOnes(_ backend: BackendKind) throws {
        try skipIfUnavailable(backend)
        let fdsBefore = openDescriptorCount()
        var config = ServerConfiguration(host: "127.0.0.1", port: 0, backend: backend)
        config.threads = 3
        config.cpuAffinity = [0, 0, 4095]
        #expect(throws: SyscallError.self) {
            _ = try RingsideServer.start(configuration: config) { EchoHandler() }
        }
        // Other suites run in parallel and open descriptors too: allow 2 of theirs; a leaked loop would
        // leave at least 3 (ring or epoll, eventfd, listener).
        #expect(eventually(3) { openDescriptorCount() <= fdsBefore + 2 }, "descriptors \(fdsBefore) -> \(openDescriptorCount())")
        config.threads = 0
        config.cpuAffinity = nil
        #expect(throws: ConfigurationError(field: "threads", problem: "0 is outside 1...1024")) {
            _ = try RingsideServer.start(configuration: config) { EchoHandler() }
        }
    }

    /// Pinned loops serve like unpinned ones.
    @Test(arguments: allBackends)
    func pinnedLoopsServe(_ backend: BackendKind) throws {
        try withEchoServer(backend, configure: { $0.threads = 2; $0.cpuAffinity = [0] }) { server in
            let c = try TestClient(port: server.port)
            let m = randomBytes(5000, seed: 9)
            try c.send(m)
            #expect(try c.receive(exactly: m.count) == m)
        }
    }

    // MARK: stats merge

    /// Every stored field of ServerStats is merged (summed, or maximum for peaks) exactly once: adding a
    /// field without a merge rule fails here.
    @Test func mergeCoversEveryStoredField() {
        let rules = ServerStats.summedFields.map { ($0, true) } + ServerStats.maximumFields.map { ($0, false) }
        let labels = Mirror(reflecting: ServerStats()).children.compactMap(\.label)
        var covered: [String: Int] = [:]
        for (path, _) in rules {
            var probe = ServerStats()
            probe[keyPath: path] = 1
            let changed = zip(Mirror(reflecting: probe).children, Mirror(reflecting: ServerStats()).children)
                .filter { ($0.0.value as? Int) != ($0.1.value as? Int) }.compactMap(\.0.label)
            #expect(changed.count == 1)
            for l in changed { covered[l, default: 0] += 1 }
        }
        for l in labels { #expect(covered[l] == 1, "ServerStats.\(l) has \(covered[l] ?? 0) merge rules (needs exactly 1)") }

        // Sums and maxima, field by field, over three loops.
        var loops = [ServerStats(), ServerStats(), ServerStats()]
        for (n, (path, _)) in rules.enumerated() {
            for i in loops.indices { loops[i][keyPath: path] = (n + 1) * (i == 1 ? 10 : 1) }
        }
        let m = ServerStats.merged(loops)
        for (n, (path, summed)) in rules.enumerated() {
            #expect(m[keyPath: path] == (summed ? (n + 1) * 12 : (n + 1) * 10))
        }
        #expect(ServerStats.merged([loops[0]]) == loops[0])
        #expect(ServerStats.merged([]) == ServerStats())
    }

    // MARK: graceful stop under load

    /// Clients run numbered request/response exchanges, pipelined, across two loops; stop() is called
    /// mid-run while they keep sending. Whatever the server accepted must come back whole: each client's
    /// received stream is an exact prefix of what it sent, and across all clients the bytes received
    /// equal the bytes the server read and echoed (no reply lost to a reset or cut by the close).
    @Test(arguments: allBackends)
    func gracefulStopUnderLoadEcho(_ backend: BackendKind) throws {
        let delivered = ReplyCounter()
        try stopUnderLoad(backend, delivered: delivered, replies: nil) { CountingEcho(delivered: delivered) }
    }

    /// The same with a handler that only ever answers whole 64-byte messages (with copied writes): every
    /// client must end on a message boundary, with exactly as many replies as the server wrote.
    @Test(arguments: allBackends)
    func gracefulStopUnderLoadWholeMessages(_ backend: BackendKind) throws {
        let replies = ReplyCounter()
        try stopUnderLoad(backend, delivered: nil, replies: replies) { WholeMessageEcho(replies: replies) }
    }

    private func stopUnderLoad<H: ConnectionHandler>(
        _ backend: BackendKind, delivered: ReplyCounter?, replies: ReplyCounter?,
        handler: @escaping @Sendable () -> H
    ) throws {
        try skipIfUnavailable(backend)
        signal(SIGPIPE, SIG_IGN)
        var config = ServerConfiguration(host: "127.0.0.1", port: 0, backend: backend)
        config.threads = 2
        config.drainTimeout = .seconds(5)
        let server = try RingsideServer.start(configuration: config, handler: handler)
        let load = StopUnderLoad(port: server.port, connections: 64, window: 8)
        let result = try load.run(runFor: 0.3, deadline: 15) { server.stop() }
        try server.wait()
        let s = server.stats
        #expect(s.connectionsOpen == 0 && s.buffersInUse == 0 && s.connectionsAccepted == s.connectionsClosed)
        #expect(server.loopStats.allSatisfy { $0.connectionsAccepted > 0 }, "\(server.loopStats.map(\.connectionsAccepted))")
        #expect(result.problems.isEmpty, "\(result.problems.prefix(5))")
        #expect(result.messagesBeforeStop >= 64, "too little traffic before the stop: \(result.messagesBeforeStop)")
        // Nothing the server wrote was lost or cut: all of it arrived.
        #expect(s.bytesOut == result.bytesReceived,
                "server wrote \(s.bytesOut) B, clients received \(result.bytesReceived) B (ends: \(result.endings))")
        if let replies {
            #expect(result.bytesReceived % StopUnderLoad.messageSize == 0)
            #expect(replies.value * StopUnderLoad.messageSize == result.bytesReceived,
                    "replies written \(replies.value), bytes received \(result.bytesReceived)")
        }
        if let delivered {
            // Every byte handed to the handler was echoed and arrived. (Input the loop read after the
            // stop, while the connection was already closing, is discarded by design, never delivered:
            // it is in bytesIn but not here.)
            #expect(delivered.value == result.bytesReceived,
                    "handler got \(delivered.value) B, clients received \(result.bytesReceived) B")
        }
        print("[\(backend)] stop under load: \(result.bytesReceived / StopUnderLoad.messageSize) replies, \(result.messagesBeforeStop) before stop, \(s.bytesIn - result.bytesReceived) B read after the stop and discarded, ends \(result.endings)")
    }
}

/// Counts replies (or bytes) handlers produced, across loop threads.
final class ReplyCounter: Sendable {
    private let count = Atomic<Int>(0)
    func add(_ n: Int = 1) { count.add(n, ordering: .relaxed) }
    var value: Int { count.load(ordering: .relaxed) }
}

/// Echo (zero-copy `send`), counting the bytes handed to the handler.
struct CountingEcho: ConnectionHandler {
    static var requiresAuthentication: Bool { false }
    let delivered: ReplyCounter
    mutating func received(_ bytes: ReceivedBytes, on connection: Connection) {
        delivered.add(bytes.count)
        do { try connection.send(bytes) } catch { connection.abort() }
    }
}

/// Replies to whole `StopUnderLoad.messageSize`-byte messages only (a partial one waits for the rest),
/// with copied writes.
struct WholeMessageEcho: ConnectionHandler {
    static var requiresAuthentication: Bool { false }
    let replies: ReplyCounter
    var partial: [UInt8] = []

    mutating func received(_ bytes: ReceivedBytes, on connection: Connection) {
        partial.append(contentsOf: bytes.bytes)
        let whole = partial.count - partial.count % StopUnderLoad.messageSize
        guard whole > 0 else { return }
        for m in stride(from: 0, to: whole, by: StopUnderLoad.messageSize) {
            do { try connection.write(Array(partial[m..<m + StopUnderLoad.messageSize])) } catch {
                connection.abort()
                return
            }
            replies.add()
        }
        partial.removeFirst(whole)
    }
}

/// Many non-blocking clients on one poll(2) loop, each running numbered 64-byte request/response
/// exchanges with up to `window` requests outstanding, verifying every received byte against what it
/// sent. After `runFor` seconds it calls `stop` and keeps going (clients go on sending until the
/// server's close reaches them) until every connection has ended: EOF, or a reset once the server
/// closed with unread input. A send refused after the server's close just ends that client's sending.
struct StopUnderLoad {
    static let messageSize = 64
    let port: Int
    let connections: Int
    let window: Int

    struct Result {
        var bytesReceived = 0
        var messagesBeforeStop = 0
        var endings: [String: Int] = [:]
        var problems: [String] = []
    }

    private struct Conn {
        var fd: Int32
        var sent = 0
        var received = 0
        var sendClosed = false
        var ended = false
    }

    /// Byte `offset` of connection `c`'s request stream: message k carries k in its first 8 bytes,
    /// then a pattern of (c, k, position).
    static func byte(_ c: Int, _ offset: Int) -> UInt8 {
        let k = offset / messageSize, i = offset % messageSize
        if i < 8 { return UInt8(truncatingIfNeeded: UInt64(k) >> (8 * UInt64(i))) }
        return UInt8(truncatingIfNeeded: c &* 7 &+ k &* 13 &+ i)
    }

    func run(runFor: Double, deadline: Double, stop: () -> Void) throws -> Result {
        var conns: [Conn] = []
        defer { for c in conns { Glibc.close(c.fd) } }
        for _ in 0..<connections {
            let t = try TestClient(port: port)
            let fd = dup(t.fd)
            guard fd >= 0 else { throw ClientError("dup: \(Errno.current)") }
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            conns.append(Conn(fd: fd))
        }
        var result = Result()
        let start = ContinuousClock.now
        var stopped = false
        var message = [UInt8](repeating: 0, count: Self.messageSize * window)
        var buffer = [UInt8](repeating: 0, count: 65536)
        var pfds = [pollfd](repeating: pollfd(), count: connections)
        while conns.contains(where: { !$0.ended }) {
            let elapsed = Double((ContinuousClock.now - start).components.attoseconds) / 1e18
                + Double((ContinuousClock.now - start).components.seconds)
            if !stopped && elapsed >= runFor {
                result.messagesBeforeStop = conns.map(\.received).reduce(0, +) / Self.messageSize
                stop()
                stopped = true
            }
            if elapsed > deadline {
                result.problems.append("deadline: \(conns.filter { !$0.ended }.count) connections never ended")
                break
            }
            for i in conns.indices {
                var events = Int16(POLLIN)
                if !conns[i].sendClosed && conns[i].sent - conns[i].received < Self.messageSize * window {
                    events |= Int16(POLLOUT)
                }
                pfds[i] = pollfd(fd: conns[i].ended ? -1 : conns[i].fd, events: events, revents: 0)
            }
            let n = poll(&pfds, nfds_t(pfds.count), 50)
            if n < 0 && Errno.current != .interrupted { throw ClientError("poll: \(Errno.current)") }
            if n <= 0 { continue }
            for i in conns.indices where pfds[i].revents != 0 && !conns[i].ended {
                // Send: fill the window with whole messages (a short send resumes mid-message).
                if pfds[i].revents & Int16(POLLOUT) != 0 && !conns[i].sendClosed {
                    let room = Self.messageSize * window - (conns[i].sent - conns[i].received)
                    let end = conns[i].sent + room - (conns[i].sent + room) % Self.messageSize
                    let len = end - conns[i].sent
                    if len > 0 {
                        for j in 0..<len { message[j] = Self.byte(i, conns[i].sent + j) }
                        let w = message.withUnsafeBytes { Glibc.send(conns[i].fd, $0.baseAddress!, len, Int32(MSG_NOSIGNAL)) }
                        if w > 0 {
                            conns[i].sent += w
                        } else if w < 0, Errno.current != .wouldBlock, Errno.current != .interrupted {
                            // EPIPE / ECONNRESET: the server has closed; keep reading what it sent.
                            conns[i].sendClosed = true
                        }
                    }
                }
                // Receive and verify.
                while true {
                    let r = buffer.withUnsafeMutableBytes { recv(conns[i].fd, $0.baseAddress!, 65536, 0) }
                    if r > 0 {
                        for j in 0..<r where buffer[j] != Self.byte(i, conns[i].received + j) {
                            result.problems.append("connection \(i): wrong byte at offset \(conns[i].received + j)")
                            conns[i].ended = true
                            break
                        }
                        conns[i].received += r
                        if conns[i].received > conns[i].sent {
                            result.problems.append("connection \(i): received \(conns[i].received) B, sent only \(conns[i].sent)")
                            conns[i].ended = true
                        }
                        if conns[i].ended { break }
                        continue
                    }
                    if r == 0 {
                        conns[i].ended = true
                        result.endings["eof", default: 0] += 1
                        if !stopped { result.problems.append("connection \(i): EOF before the stop") }
                    } else if Errno.current == .wouldBlock || Errno.current == .interrupted {
                        // Nothing more now.
                    } else {
                        conns[i].ended = true
                        result.endings["\(Errno.current)", default: 0] += 1
                        if !stopped { result.problems.append("connection \(i): \(Errno.current) before the stop") }
                    }
                    break
                }
            }
        }
        result.bytesReceived = conns.map(\.received).reduce(0, +)
        return result
    }
}
