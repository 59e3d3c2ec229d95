import Foundation
import Glibc
@testable import Ringside
import RingsideProtocols
import Testing

/// An echo that requires authentication: the first line must be `AUTH\n`; until then nothing is echoed.
struct AuthEcho: ConnectionHandler {
    private var authenticated = false
    mutating func received(_ bytes: ReceivedBytes, on connection: Connection) {
        if authenticated { do { try connection.send(bytes) } catch { connection.abort() }; return }
        if bytes.count >= 5 && Array(bytes.bytes.prefix(5)) == Array("AUTH\n".utf8) {
            authenticated = true
            connection.markAuthenticated()
            if bytes.count > 5 { try? connection.write(UnsafeRawBufferPointer(rebasing: bytes.bytes[5...])) }
        }
    }
}

/// Sets a read deadline when a line starts and clears it when the line ends (`\n`); echoes lines.
struct LineWithDeadline: ConnectionHandler {
    static var requiresAuthentication: Bool { false }
    var inLine = false
    mutating func received(_ bytes: ReceivedBytes, on connection: Connection) {
        for b in bytes.bytes {
            if !inLine { inLine = true; connection.setReadDeadline(after: .milliseconds(300)) }
            if b == UInt8(ascii: "\n") { inLine = false; connection.clearReadDeadline() }
        }
        do { try connection.send(bytes) } catch { connection.abort() }
    }
}

/// Connects from a chosen local address (127.0.0.x), so per-address caps can be exercised on loopback.
func connectFrom(_ source: String, port: Int) throws -> TestClient {
    let c = try TestClient(port: port, bindTo: source)
    return c
}

/// Whether the server side has closed `c`: a read returns EOF or a reset within `seconds`.
func closedByServer(_ c: TestClient, within seconds: Double) -> Bool {
    var tv = timeval(tv_sec: Int(seconds), tv_usec: Int((seconds - Double(Int(seconds))) * 1_000_000))
    setsockopt(c.fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    var buf = [UInt8](repeating: 0, count: 1 << 16)
    while true {
        let n = buf.withUnsafeMutableBytes { recv(c.fd, $0.baseAddress!, 1 << 16, 0) }
        if n > 0 { continue }  // drain whatever was queued
        if n == 0 { return true }
        let e = Errno.current
        if e == .interrupted { continue }
        return e.rawValue == ECONNRESET
    }
}

/// Echoes, but pauses reading after the first receive and resumes when its timer fires.
struct PausesThenEchoes: ConnectionHandler {
    static var requiresAuthentication: Bool { false }
    var paused = false
    mutating func received(_ bytes: ReceivedBytes, on connection: Connection) {
        do { try connection.send(bytes) } catch { connection.abort() }
        if !paused { paused = true; connection.pauseReading(); connection.setTimer(after: .milliseconds(500)) }
    }
    mutating func timerFired(on connection: Connection) { connection.resumeReading() }
}

/// One test per limit: each fails when its limit is removed.
@Suite(.serialized, .timeLimit(.minutes(2))) struct ProtectionTests {
    @Test(arguments: allBackends) func unauthenticatedConnectionIsClosedAtTheDeadline(_ backend: BackendKind) throws {
        try withServer(backend, configure: { $0.authenticationTimeout = .milliseconds(300) }, handler: { AuthEcho() }) { server in
            let good = try TestClient(port: server.port)
            try good.send(Array("AUTH\nhello".utf8))
            #expect(try good.receive(exactly: 5) == Array("hello".utf8))
            let lurker = try TestClient(port: server.port)
            try lurker.send(Array("no auth here".utf8))
            let start = ContinuousClock.now
            #expect(closedByServer(lurker, within: 3), "the unauthenticated connection must be closed")
            let took = start.duration(to: .now)
            #expect(took >= .milliseconds(200) && took < .seconds(2), "cut off after \(took)")
            // The authenticated client outlived the deadline and is still served.
            try good.send(Array("again".utf8))
            #expect(try good.receive(exactly: 5) == Array("again".utf8))
            #expect(eventually { server.stats.authenticationTimeouts == 1 }, "\(server.stats)")
        }
    }

    @Test(arguments: allBackends) func protocolsWithoutAuthenticationOptOut(_ backend: BackendKind) throws {
        try withEchoServer(backend, configure: { $0.authenticationTimeout = .milliseconds(100) }) { server in
            let c = try TestClient(port: server.port)
            usleep(400_000)
            try c.send([1, 2, 3])
            #expect(try c.receive(exactly: 3) == [1, 2, 3])
            #expect(server.stats.authenticationTimeouts == 0)
        }
    }

    @Test(arguments: allBackends) func idleConnectionIsClosedActiveOneIsNot(_ backend: BackendKind) throws {
        try withEchoServer(backend, configure: { $0.idleTimeout = .milliseconds(400) }) { server in
            let idle = try TestClient(port: server.port)
            let active = try TestClient(port: server.port)
            let start = ContinuousClock.now
            // The active client talks every 100 ms for 1.2 s: three idle periods.
            for k in 0..<12 {
                try active.send([UInt8(k)])
                #expect(try active.receive(exactly: 1) == [UInt8(k)])
                usleep(100_000)
            }
            #expect(closedByServer(idle, within: 0.1), "the idle connection must have been closed by now")
            #expect(start.duration(to: .now) >= .milliseconds(400))
            try active.send([99])
            #expect(try active.receive(exactly: 1) == [99])
            #expect(server.stats.idleTimeouts == 1, "\(server.stats)")
        }
    }

    @Test(arguments: allBackends) func readDeadlineClosesAnUnfinishedMessage(_ backend: BackendKind) throws {
        try withServer(backend, handler: { LineWithDeadline() }) { server in
            let finisher = try TestClient(port: server.port)
            let dawdler = try TestClient(port: server.port)
            try dawdler.send(Array("half a li".utf8))
            for _ in 0..<6 {  // whole lines, 100 ms apart: never past the 300 ms deadline
                try finisher.send(Array("line\n".utf8))
                #expect(try finisher.receive(exactly: 5) == Array("line\n".utf8))
                usleep(100_000)
            }
            #expect(closedByServer(dawdler, within: 1))
            #expect(server.stats.readTimeouts == 1, "\(server.stats)")
        }
    }

    @Test(arguments: allBackends) func peerThatStopsReadingIsCutOffAtTheWriteStallTimeout(_ backend: BackendKind) throws {
        try withEchoServer(backend, configure: { $0.writeStallTimeout = .milliseconds(500) }) { server in
            let reader = try TestClient(port: server.port)
            let hog = try TestClient(port: server.port, receiveBuffer: 4096)
            hog.setNonBlocking()
            // Send until the server stops reading it (its echo queue is stuck above the high watermark)
            // and cuts it off at the stall timeout.
            let chunk = [UInt8](repeating: 7, count: 64 * 1024)
            var sent = 0
            let until = ContinuousClock.now.advanced(by: .seconds(3))
            while ContinuousClock.now < until && sent < 32 << 20 && server.stats.writeStallTimeouts == 0 {
                let n = chunk.withUnsafeBytes { Glibc.send(hog.fd, $0.baseAddress!, chunk.count, Int32(MSG_NOSIGNAL)) }
                if n > 0 { sent += n } else { usleep(2_000) }
            }
            #expect(eventually(4) { server.stats.writeStallTimeouts == 1 }, "\(server.stats)")
            // Everyone else is served throughout, and the hog's buffers came back.
            try reader.send([1, 2, 3])
            #expect(try reader.receive(exactly: 3) == [1, 2, 3])
            #expect(eventually { server.stats.buffersInUse == 0 }, "\(server.stats)")
        }
    }

    @Test(arguments: allBackends) func connectionCapRefusesNewConnectionsOnly(_ backend: BackendKind) throws {
        try withEchoServer(backend, configure: { $0.maxConnections = 4 }) { server in
            let kept = try (0..<4).map { _ in try TestClient(port: server.port) }
            for c in kept { try c.send([5]); #expect(try c.receive(exactly: 1) == [5]) }
            let extra = try (0..<3).map { _ in try TestClient(port: server.port) }
            for c in extra { #expect(closedByServer(c, within: 2), "over the cap: closed at once") }
            for c in kept { try c.send([6]); #expect(try c.receive(exactly: 1) == [6]) }
            #expect(server.stats.connectionsRefused == 3, "\(server.stats)")
        }
    }

    @Test(arguments: allBackends) func perAddressCapCountsEachAddressSeparately(_ backend: BackendKind) throws {
        try withEchoServer(backend, configure: { $0.maxConnectionsPerAddress = 3 }) { server in
            var first = try (0..<3).map { _ in try connectFrom("127.0.0.1", port: server.port) }
            for c in first { try c.send([1]); #expect(try c.receive(exactly: 1) == [1]) }
            let over = try (0..<2).map { _ in try connectFrom("127.0.0.1", port: server.port) }
            for c in over { #expect(closedByServer(c, within: 2), "4th and 5th from one address: refused") }
            // Another address has its own allowance.
            let other = try (0..<3).map { _ in try connectFrom("127.0.0.2", port: server.port) }
            for c in other { try c.send([2]); #expect(try c.receive(exactly: 1) == [2]) }
            // Closing one frees its place.
            first.removeLast()
            #expect(eventually { server.stats.connectionsOpen == 5 })
            let again = try connectFrom("127.0.0.1", port: server.port)
            try again.send([3])
            #expect(try again.receive(exactly: 1) == [3])
            for c in first { try c.send([4]); #expect(try c.receive(exactly: 1) == [4]) }
            #expect(server.stats.connectionsRefusedPerAddress == 2, "\(server.stats)")
        }
    }

    @Test(arguments: allBackends) func handlerCanPauseAndResumeReading(_ backend: BackendKind) throws {
        try withServer(backend, handler: { PausesThenEchoes() }) { server in
            let c = try TestClient(port: server.port, receiveBuffer: 1 << 20)
            try c.send([1])
            #expect(try c.receive(exactly: 1) == [1])
            let payload = randomBytes(1 << 20, seed: 77)
            c.setNonBlocking()
            var sent = 0
            let until = ContinuousClock.now.advanced(by: .milliseconds(250))
            while ContinuousClock.now < until && sent < payload.count {
                let n = payload.withUnsafeBytes { Glibc.send(c.fd, $0.baseAddress! + sent, payload.count - sent, Int32(MSG_NOSIGNAL)) }
                if n > 0 { sent += n } else { usleep(1_000) }
            }
            // While paused the server takes at most one receive burst (io_uring) beyond the first byte.
            let taken = server.stats.bytesIn
            #expect(taken <= 1 + 256 * 1024 + 16 * 1024, "read \(taken) bytes while paused")
            #expect(sent > taken, "the client must have been held back")
            // After the resume everything arrives, in order.
            var fl = fcntl(c.fd, F_GETFL); fl &= ~O_NONBLOCK; _ = fcntl(c.fd, F_SETFL, fl)
            while sent < payload.count {
                let n = payload.withUnsafeBytes { Glibc.send(c.fd, $0.baseAddress! + sent, payload.count - sent, Int32(MSG_NOSIGNAL)) }
                if n > 0 { sent += n }
            }
            #expect(try c.receive(exactly: payload.count) == payload)
            #expect(server.stats.readPauses >= 1)
        }
    }

    /// An abort is a reset, not an orderly end: unsent data must not linger for a peer that will not
    /// take it (io_uring sets SO_LINGER 0 through the ring, Linux 6.7+).
    @Test(arguments: allBackends) func abortResetsTheConnection(_ backend: BackendKind) throws {
        struct Aborts: ConnectionHandler {
            static var requiresAuthentication: Bool { false }
            mutating func received(_ bytes: ReceivedBytes, on connection: Connection) {
                try? connection.write([UInt8](repeating: 1, count: 100_000))  // queued, then discarded
                connection.abort()
            }
        }
        try withServer(backend, handler: { Aborts() }) { server in
            let c = try TestClient(port: server.port)
            try c.send([1])
            var buf = [UInt8](repeating: 0, count: 1 << 20)
            var result = 1
            while result > 0 { result = buf.withUnsafeMutableBytes { recv(c.fd, $0.baseAddress!, 1 << 20, 0) } }
            #expect(result == -1 && Errno.current.rawValue == ECONNRESET, "expected a reset, got \(result == 0 ? "EOF" : "\(Errno.current)")")
        }
    }

    /// A peer that is still sending when the server closes gracefully gets the response and then an
    /// orderly end-of-file (lingering close), not a reset that could destroy the response.
    @Test(arguments: [(BackendKind.uring, true), (.uring, false), (.epoll, true), (.epoll, false)])
    func lingeringCloseEndsInEOFNotReset(_ backend: BackendKind, _ linger: Bool) throws {
        struct ByeAndClose: ConnectionHandler {
            static var requiresAuthentication: Bool { false }
            var said = false
            mutating func received(_ bytes: ReceivedBytes, on connection: Connection) {
                guard !said else { return }
                said = true
                // Stop reading (as a server answering 413 to a body it will not read does), answer, close:
                // what the client sends next stays unread in the server's socket.
                connection.pauseReading()
                try? connection.write(Array("bye".utf8))
                connection.close()
            }
        }
        try withServer(backend, configure: { if !linger { $0.lingerTimeout = nil } }, handler: { ByeAndClose() }) { server in
            let c = try TestClient(port: server.port)
            try c.send([UInt8](repeating: 1, count: 256 * 1024))  // more than one receive: some stays unread
            // Keep sending for a while after the server has answered and closed.
            let chunk = [UInt8](repeating: 2, count: 16 * 1024)
            let until = ContinuousClock.now.advanced(by: .milliseconds(300))
            var sendError: Int32 = 0
            while ContinuousClock.now < until {
                let n = chunk.withUnsafeBytes { Glibc.send(c.fd, $0.baseAddress!, chunk.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) }
                if n < 0 && Errno.current.rawValue != EAGAIN && sendError == 0 { sendError = Errno.current.rawValue }
                usleep(5_000)
            }
            var got: [UInt8] = []
            var buf = [UInt8](repeating: 0, count: 4096)
            var end = 1
            while true {
                let n = buf.withUnsafeMutableBytes { recv(c.fd, $0.baseAddress!, 4096, 0) }
                if n > 0 { got += buf[0..<n]; continue }
                end = n == 0 ? 0 : -Int(Errno.current.rawValue)
                break
            }
            // A reset shows as a failed send or as a pending socket error (Linux reports end-of-file to
            // recv after a reset, so the read alone cannot tell).
            var soError: Int32 = 0
            var len = socklen_t(MemoryLayout<Int32>.size)
            getsockopt(c.fd, SOL_SOCKET, SO_ERROR, &soError, &len)
            let reset = sendError == ECONNRESET || sendError == EPIPE || soError == ECONNRESET || end == -Int(ECONNRESET)
            #expect(got == Array("bye".utf8))
            if linger {
                #expect(!reset, "reset seen: send error \(sendError), SO_ERROR \(soError), end \(end)")
            } else {
                // Without lingering the kernel resets a connection closed with unread input: this is the
                // hazard the linger exists for (on a real network the reset can destroy the response).
                #expect(reset, "expected a reset without lingering: send error \(sendError), SO_ERROR \(soError)")
            }
        }
    }

    @Test(arguments: allBackends) func acceptedSocketsHaveTCPKeepalive(_ backend: BackendKind) throws {
        for keep in [true, false] {
            try withEchoServer(backend, configure: { if !keep { $0.keepAlive = nil } }) { server in
                let c = try TestClient(port: server.port)
                try c.send([1])
                _ = try c.receive(exactly: 1)
                // /proc/net/tcp: the server side of the connection (local port = server port) has the
                // keepalive timer (tr = 2) running.
                let timer = serverSideTimer(port: server.port)
                #expect(timer == (keep ? 2 : 0), "keepAlive \(keep): timer \(String(describing: timer))")
            }
        }
    }

    /// io_uring: a paused connection can hold at most one multishot's byte limit of the shared receive
    /// pool, so a client that floods without reading cannot starve the others of buffers.
    @Test(arguments: [256 * 1024, 0]) func receiveBurstLimitBoundsWhatAPausedConnectionHolds(_ limit: Int) throws {
        try withEchoServer(.uring, configure: {
            $0.receiveBurstLimit = limit == 0 ? 0 : 64 * 1024
            $0.writeStallTimeout = nil
            $0.highWatermark = 64 * 1024
            $0.lowWatermark = 16 * 1024
        }) { server in
            let hog = try TestClient(port: server.port, receiveBuffer: 4096)
            hog.setNonBlocking()
            let chunk = [UInt8](repeating: 9, count: 256 * 1024)
            // Flood for up to 1.5 s; once the server has taken nothing for 500 ms (its receive buffer and
            // ours are full, the paused connection is not read again) nothing more can arrive.
            let until = ContinuousClock.now.advanced(by: .milliseconds(1500))
            var lastTaken = ContinuousClock.now
            while ContinuousClock.now < until && lastTaken.duration(to: .now) < .milliseconds(500) {
                let n = chunk.withUnsafeBytes { Glibc.send(hog.fd, $0.baseAddress!, chunk.count, Int32(MSG_NOSIGNAL)) }
                if n <= 0 { usleep(1_000) } else { lastTaken = .now }
            }
            let s = server.stats
            let heldBytes = s.receivesHeld * 16 * 1024
            if limit == 0 {
                // Without the limit the kernel keeps filling buffers after the pause; this documents
                // the hazard the limit exists for (not an assertion of good behaviour).
                print("burst limit off: \(s.receivesHeld) receives held (\(heldBytes / 1024) KiB), peak buffers \(s.peakBuffersInUse)")
                // Bundles need the limit: unbounded, one completion could take the whole ring.
                #expect(s.bundledReceives == 0, "\(s)")
            } else {
                #expect(s.receiveBurstLimitEnds > 0, "multishot receives must end at the limit: \(s)")
                #expect(heldBytes <= 64 * 1024 + 16 * 1024, "held \(s.receivesHeld) receive chunks past the pause: \(s)")
                // A second client is served while the hog is paused.
                let other = try TestClient(port: server.port)
                try other.send([1, 2, 3])
                #expect(try other.receive(exactly: 3) == [1, 2, 3])
            }
            hog.setLingerZero()
        }
    }
}

/// The `tr` (timer) field of the server-side socket of a loopback connection on `port`, from
/// /proc/net/tcp (0: none, 1: retransmit, 2: keepalive, ...).
func serverSideTimer(port: Int) -> Int? {
    // /proc files report size 0: read them with read(2) until EOF.
    let fd = open("/proc/net/tcp", O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var buf = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress!, 65536) }
        if n <= 0 { break }
        bytes.append(contentsOf: buf[0..<n])
    }
    let text = String(decoding: bytes, as: UTF8.self)
    let hex = String(port, radix: 16, uppercase: true)
    let hexPort = ":" + String(repeating: "0", count: max(0, 4 - hex.count)) + hex
    for line in text.split(separator: "\n").dropFirst() {
        let f = line.split(separator: " ", omittingEmptySubsequences: true)
        guard f.count > 5, f[1].hasSuffix(hexPort), f[3] == "01" else { continue }  // local = server, ESTABLISHED
        let tr = f[5].split(separator: ":")[0]
        return Int(tr, radix: 16)
    }
    return nil
}
