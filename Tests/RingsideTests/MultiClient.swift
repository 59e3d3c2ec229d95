import Foundation
import Glibc

/// A single-threaded, non-blocking, poll(2)-driven test client that runs many echo exchanges at once
/// against 127.0.0.1:`port`.
///
/// Every connection has a payload to send and expects to read back exactly those bytes. Sending and
/// receiving are interleaved on every connection (the server stops reading a client whose outbound
/// queue is above its high watermark, so a client that sends everything before reading anything can
/// deadlock with the server; this driver never does that).
///
/// Options: connect every connection before any sends (`connectAllFirst`, with an optional hook run
/// once all are connected), half-close after sending and expect EOF after the echo (`halfClose`), and
/// an overall timeout that throws a summary of the incomplete connections. Bytes are verified as they
/// arrive; a mismatch is reported with its connection index and offset.
struct MultiClient {
    struct Options {
        /// Establish every connection before any connection sends a byte.
        var connectAllFirst = false
        /// After sending the whole payload, shut down the write side (SHUT_WR), and require EOF right
        /// after the last echoed byte.
        var halfClose = false
        /// Overall deadline for the whole run, in seconds.
        var timeout: Double = 20
        /// Largest single send(2), in bytes.
        var maxSendSize = 256 * 1024
        /// Keep each connection open until every connection is complete (otherwise a connection is
        /// closed as soon as it is complete).
        var holdOpenUntilAllDone = false
        /// How many connects may be in progress at once (keeps the listen backlog from overflowing).
        var maxPendingConnects = 1024

        init(connectAllFirst: Bool = false, halfClose: Bool = false, timeout: Double = 20,
             holdOpenUntilAllDone: Bool = false) {
            self.connectAllFirst = connectAllFirst
            self.halfClose = halfClose
            self.timeout = timeout
            self.holdOpenUntilAllDone = holdOpenUntilAllDone
        }
    }

    struct Report {
        var connections = 0
        var bytesSent = 0
        var bytesReceived = 0
        var seconds: Double = 0
    }

    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    private enum Phase: CustomStringConvertible {
        case idle, connecting, connected, done, failed
        var description: String {
            switch self {
            case .idle: "not started"
            case .connecting: "connecting"
            case .connected: "exchanging"
            case .done: "done"
            case .failed: "failed"
            }
        }
    }

    private struct Conn {
        var fd: Int32 = -1
        var phase: Phase = .idle
        var sent = 0
        var received = 0
        var writeShut = false
        var eof = false
        var problem: String? = nil
    }

    let port: Int
    let payloads: [[UInt8]]
    var options: Options

    init(port: Int, payloads: [[UInt8]], options: Options = Options()) {
        self.port = port
        self.payloads = payloads
        self.options = options
    }

    /// Runs every exchange to completion. `afterConnect` runs once every connection is established
    /// (only with `connectAllFirst`), before any byte is sent; an error it throws aborts the run.
    /// Throws a `Failure` naming each incomplete or wrong connection.
    @discardableResult
    func run(afterConnect: (() throws -> Void)? = nil) throws -> Report {
        let start = ContinuousClock.now
        let deadline = start.advanced(by: .milliseconds(Int(options.timeout * 1000)))
        var conns = [Conn](repeating: Conn(), count: payloads.count)
        defer { for c in conns where c.fd >= 0 { Glibc.close(c.fd) } }
        var scratch = [UInt8](repeating: 0, count: 256 * 1024)
        var nextToConnect = 0
        var connecting = 0
        var sendingAllowed = !options.connectAllFirst
        var report = Report(connections: payloads.count)
        var pfds: [pollfd] = []
        var pollIndex: [Int] = []
        pfds.reserveCapacity(payloads.count)
        pollIndex.reserveCapacity(payloads.count)

        func finished(_ c: Conn) -> Bool { c.phase == .done || c.phase == .failed }

        func fail(_ i: Int, _ why: String) {
            conns[i].problem = why
            conns[i].phase = .failed
            if conns[i].fd >= 0 { Glibc.close(conns[i].fd); conns[i].fd = -1 }
        }

        func checkComplete(_ i: Int) {
            let c = conns[i]
            guard c.phase == .connected, c.received == payloads[i].count, c.sent == payloads[i].count else { return }
            if options.halfClose && !c.eof { return }
            conns[i].phase = .done
            if !options.holdOpenUntilAllDone { Glibc.close(conns[i].fd); conns[i].fd = -1 }
        }

        func startConnect(_ i: Int) throws {
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { throw Failure(description: "connection \(i): socket: \(String(cString: strerror(errno)))") }
            var addr = sockaddr_in()
            addr.sin_family = sa_family_t(AF_INET)
            addr.sin_port = in_port_t(UInt16(port).bigEndian)
            addr.sin_addr.s_addr = inet_addr("127.0.0.1")
            let r = withUnsafePointer(to: &addr) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            conns[i].fd = fd
            if r == 0 {
                conns[i].phase = .connected
            } else if errno == EINPROGRESS || errno == EINTR {
                conns[i].phase = .connecting
                connecting += 1
            } else {
                fail(i, "connect: \(String(cString: strerror(errno)))")
            }
        }

        func doSend(_ i: Int) {
            let payload = payloads[i]
            while conns[i].sent < payload.count {
                let off = conns[i].sent
                let len = min(options.maxSendSize, payload.count - off)
                let n = payload.withUnsafeBytes { Glibc.send(conns[i].fd, $0.baseAddress! + off, len, Int32(MSG_NOSIGNAL)) }
                if n > 0 { conns[i].sent += n; report.bytesSent += n; continue }
                if n < 0 && errno == EINTR { continue }
                if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { return }
                fail(i, "send at offset \(off) of \(payload.count): \(String(cString: strerror(errno)))")
                return
            }
            if options.halfClose && !conns[i].writeShut {
                if Glibc.shutdown(conns[i].fd, Int32(SHUT_WR)) != 0 {
                    fail(i, "shutdown(SHUT_WR): \(String(cString: strerror(errno)))")
                    return
                }
                conns[i].writeShut = true
            }
        }

        func doReceive(_ i: Int) {
            let payload = payloads[i]
            while true {
                let n = scratch.withUnsafeMutableBytes { recv(conns[i].fd, $0.baseAddress!, $0.count, 0) }
                if n > 0 {
                    let off = conns[i].received
                    if off + n > payload.count {
                        // Verify what fits, then report the surplus.
                        let fits = payload.count - off
                        for k in 0..<fits where scratch[k] != payload[off + k] {
                            fail(i, mismatch(i, at: off + k, expected: payload[off + k], got: scratch[k]))
                            return
                        }
                        fail(i, "received \(off + n - payload.count) bytes more than the \(payload.count) sent (first surplus byte at offset \(payload.count))")
                        return
                    }
                    let same = payload.withUnsafeBytes { p in
                        scratch.withUnsafeBytes { s in memcmp(p.baseAddress! + off, s.baseAddress!, n) == 0 }
                    }
                    if !same {
                        var k = 0
                        while scratch[k] == payload[off + k] { k += 1 }
                        fail(i, mismatch(i, at: off + k, expected: payload[off + k], got: scratch[k]))
                        return
                    }
                    conns[i].received += n
                    report.bytesReceived += n
                    if conns[i].received == payload.count && !options.halfClose { break }
                    continue
                }
                if n == 0 {
                    conns[i].eof = true
                    if conns[i].received < payload.count {
                        fail(i, "EOF after \(conns[i].received) of \(payload.count) echoed bytes (sent \(conns[i].sent))")
                    } else if options.halfClose && !conns[i].writeShut {
                        fail(i, "EOF before the client half-closed")
                    }
                    return
                }
                if errno == EINTR { continue }
                if errno == EAGAIN || errno == EWOULDBLOCK { return }
                fail(i, "recv after \(conns[i].received) of \(payload.count) bytes (sent \(conns[i].sent)): \(String(cString: strerror(errno)))")
                return
            }
        }

        func mismatch(_ i: Int, at offset: Int, expected: UInt8, got: UInt8) -> String {
            "byte mismatch at offset \(offset) of \(payloads[i].count): expected \(expected), got \(got)"
        }

        while true {
            // Start connects, at most `maxPendingConnects` in progress.
            while nextToConnect < payloads.count && connecting < options.maxPendingConnects {
                try startConnect(nextToConnect)
                nextToConnect += 1
            }
            if !sendingAllowed && nextToConnect == payloads.count && connecting == 0 {
                if let failed = conns.indices.first(where: { conns[$0].phase == .failed }) {
                    throw Failure(description: "connection \(failed) failed before sending: \(conns[failed].problem ?? "?")")
                }
                try afterConnect?()
                sendingAllowed = true
            }
            if sendingAllowed {
                // Kick off every newly connected connection (an empty payload without half-close is
                // complete as soon as it is connected).
                for i in 0..<nextToConnect where conns[i].phase == .connected && conns[i].sent == 0 && !conns[i].writeShut {
                    doSend(i)
                    checkComplete(i)
                }
            }
            if nextToConnect == payloads.count && conns.allSatisfy(finished) { break }

            let now = ContinuousClock.now
            if now >= deadline {
                throw Failure(description: "timed out after \(options.timeout) s: " + summary(conns, sendingAllowed: sendingAllowed))
            }
            pfds.removeAll(keepingCapacity: true)
            pollIndex.removeAll(keepingCapacity: true)
            for i in 0..<nextToConnect {
                let c = conns[i]
                var ev: Int16 = 0
                switch c.phase {
                case .connecting: ev = Int16(POLLOUT)
                case .connected:
                    if sendingAllowed {
                        ev = Int16(POLLIN)
                        if c.sent < payloads[i].count || (options.halfClose && !c.writeShut) { ev |= Int16(POLLOUT) }
                    }
                default: break
                }
                if ev != 0 {
                    pfds.append(pollfd(fd: c.fd, events: ev, revents: 0))
                    pollIndex.append(i)
                }
            }
            let left = now.duration(to: deadline)
            let ms = Int32(clamping: max(1, min(200, left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000)))
            if pfds.isEmpty { usleep(1000); continue }
            let r = poll(&pfds, nfds_t(pfds.count), ms)
            if r < 0 {
                if errno == EINTR { continue }
                throw Failure(description: "poll: \(String(cString: strerror(errno)))")
            }
            if r == 0 { continue }
            for k in 0..<pfds.count where pfds[k].revents != 0 {
                let i = pollIndex[k]
                let re = pfds[k].revents
                switch conns[i].phase {
                case .connecting:
                    var err: Int32 = 0
                    var len = socklen_t(MemoryLayout<Int32>.size)
                    getsockopt(conns[i].fd, SOL_SOCKET, SO_ERROR, &err, &len)
                    connecting -= 1
                    if err != 0 {
                        fail(i, "connect: \(String(cString: strerror(err)))")
                    } else {
                        conns[i].phase = .connected
                    }
                case .connected:
                    if re & Int16(POLLOUT) != 0 { doSend(i) }
                    if conns[i].phase == .connected && re & Int16(POLLIN | POLLERR | POLLHUP) != 0 { doReceive(i) }
                    checkComplete(i)
                default: break
                }
            }
        }
        let elapsed = ContinuousClock.now - start
        report.seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        let failures = conns.indices.filter { conns[$0].phase == .failed }
        if !failures.isEmpty {
            var lines = failures.prefix(20).map { "  connection \($0) (payload \(payloads[$0].count) B): \(conns[$0].problem ?? "?")" }
            if failures.count > 20 { lines.append("  ... and \(failures.count - 20) more") }
            throw Failure(description: "\(failures.count) of \(payloads.count) connections failed:\n" + lines.joined(separator: "\n"))
        }
        return report
    }

    private func summary(_ conns: [Conn], sendingAllowed: Bool) -> String {
        let incomplete = conns.indices.filter { conns[$0].phase != .done }
        var lines = ["\(incomplete.count) of \(conns.count) connections incomplete\(sendingAllowed ? "" : " (still waiting for every connect before sending)"):"]
        for i in incomplete.prefix(20) {
            let c = conns[i]
            var s = "  connection \(i) [\(c.phase)]: sent \(c.sent)/\(payloads[i].count), echoed \(c.received)/\(payloads[i].count)"
            if options.halfClose { s += ", write side \(c.writeShut ? "shut" : "open"), eof \(c.eof)" }
            if let p = c.problem { s += ", \(p)" }
            lines.append(s)
        }
        if incomplete.count > 20 { lines.append("  ... and \(incomplete.count - 20) more") }
        return lines.joined(separator: "\n")
    }
}
