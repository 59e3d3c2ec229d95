import ArgumentParser
import CLiburing
import Foundation
import Glibc
import Histogram
import RingsideTLS

/// What a handshake-mode connection does between its handshake and its close.
enum HandshakeRequest: String, ExpressibleByArgument, Codable, Sendable, CaseIterable {
    /// `GET --path`; the status and the body length are checked.
    case http
    /// `--size` bytes echoed back; every byte is checked.
    case echo
    /// Nothing: close once the handshake is done (TLS 1.3 with resumption: once the server's session
    /// ticket has arrived, so the next connection can resume).
    case none
}

struct Handshake: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "TLS handshake rate: each connection connects, handshakes (resuming the previous connection's session unless --no-tls-resume), does one request, closes, and starts over.",
        discussion: """
        Reports handshakes per second, how many were resumed (SSL_session_reused) and how many full, failures, \
        and the latency from connect to handshake done. bench/https-wrk.sh uses it to measure the server's \
        CPU per full and per resumed handshake.
        """)
    @Option(help: "Target HOST:PORT (loopback only in this project's tests).") var target: String
    @Option(help: "Connections in flight at once (each one connect-handshake-request-close loop).") var connections = 1
    @Option(help: "Measured duration (e.g. 5s); a hard stop for new connections.") var duration = Seconds(argument: "5s")!
    @Option(help: "Warm-up before measuring (excluded).") var warmup = Seconds(argument: "1s")!
    @Option(help: "A connection not done within this long counts as a timeout.") var timeout = Seconds(argument: "5s")!
    @Option(help: "After the handshake: http (GET --path; status and length checked), echo (--size bytes, every byte checked) or none.")
    var request: HandshakeRequest = .http
    @Option(help: "HTTP request path.") var path = "/plaintext"
    @Option(help: "Expected HTTP status.") var expectStatus = 200
    @Option(help: "Echo message size in bytes.") var size = 64
    @Option(help: "Pin the load generator to this CPU.") var cpu: Int?
    @Flag(help: "Print one JSON result instead of the table.") var json = false
    @OptionGroup(title: "TLS (always on here: --tls is implied)") var tls: TLSOptions

    func run() throws {
        if let cpu, rs_pin_to_cpu(Int32(cpu)) != 0 { printError("ringload: cannot pin to CPU \(cpu)\n") }
        let parts = target.split(separator: ":")
        guard parts.count == 2, let port = Int(parts[1]) else { throw ValidationError("--target must be HOST:PORT") }
        let host = String(parts[0]) == "localhost" ? "127.0.0.1" : String(parts[0])
        guard let config = tls.configuration(host: host, alpn: request == .http ? ["http/1.1"] : [], force: true) else { return }
        let context: TLSClientContext
        do { context = try TLSClientContext(config, logger: quietLogger) } catch { throw ValidationError("TLS: \(error)") }
        var o = HandshakeOptions(host: host, port: port)
        o.connections = max(1, connections)
        o.duration = duration.value
        o.warmup = warmup.value
        o.timeout = timeout.value
        o.request = request
        o.path = path
        o.expectStatus = expectStatus
        o.size = max(1, size)
        let r = try HandshakeRun(o, context: context).run()
        if json {
            let enc = JSONEncoder()
            enc.outputFormatting = [.sortedKeys]
            print(String(decoding: try enc.encode(r), as: UTF8.self))
        } else {
            print(formatTable([r.tableRow], header: handshakeTableHeader))
            print("resumption \(r.resumption ? "on" : "off"); \(r.version ?? "no handshake"); server certificate \(r.verified ? "verified" : "NOT verified (no --tls-ca)")")
            for w in r.warnings { print("warning: \(w)") }
        }
        if r.errors.total > 0 {
            printError("ringload: \(r.errors.total) failed connections: \(r.errors)\n")
            throw ExitCode(1)
        }
    }
}

struct HandshakeOptions {
    var host: String
    var port: Int
    var connections = 1
    var duration = 5.0
    var warmup = 1.0
    var timeout = 5.0
    var request = HandshakeRequest.http
    var path = "/plaintext"
    var expectStatus = 200
    var size = 64
}

/// One handshake-mode run's figures (the JSON form of the result).
struct HandshakeResult: Codable, Sendable {
    var mode = "handshake"
    var target: String
    var connections: Int
    var request: HandshakeRequest
    var seconds: Double
    /// Handshakes completed in the measured window, and how many of them resumed a session.
    var handshakes: Int
    var resumed: Int
    var full: Int
    var handshakesPerSecond: Double
    /// Connect to handshake done, for the handshakes of the window.
    var latencyMicros: LoadResult.Latency
    /// Every handshake of the run (warm-up and the drain at the end included): to compare with the
    /// server's own counters.
    var totalHandshakes: Int
    var totalResumed: Int
    var errors: Errors
    var resumption: Bool
    var verified: Bool
    /// The version of the last handshake ("TLSv1.3").
    var version: String?
    var clientCPUPercent: Double
    var clientCPUMicrosPerHandshake: Double
    var warnings: [String]

    struct Errors: Codable, Sendable, CustomStringConvertible {
        /// connect() failed; the handshake failed or was cut short; the request's answer was wrong
        /// (bytes, length), or its status; the connection took longer than --timeout.
        var connectFailures = 0, handshakeFailures = 0, corrupt = 0, badStatus = 0, timeouts = 0
        var total: Int { connectFailures + handshakeFailures + corrupt + badStatus + timeouts }
        var description: String {
            "connect \(connectFailures), handshake \(handshakeFailures), corrupt \(corrupt), status \(badStatus), timeouts \(timeouts)"
        }
    }

    var tableRow: TableRow {
        TableRow(cells: [
            "handshake \(target)", String(format: "%.0f", handshakesPerSecond), "\(full)", "\(resumed)",
            String(format: "%.0f", latencyMicros.p50), String(format: "%.0f", latencyMicros.p99),
            String(format: "%.0f", latencyMicros.max), "\(errors.total)", String(format: "%.0f%%", clientCPUPercent),
        ])
    }
}

let handshakeTableHeader = ["run", "handshakes/s", "full", "resumed", "p50 µs", "p99 µs", "max µs", "errors", "client CPU"]

/// The handshake mode's connections: one thread, non-blocking sockets under edge-triggered epoll, each
/// connection a state machine (connect, handshake, request, response, close, start over). The
/// engine's client path opens its connections once, at start: this mode opens thousands per second.
final class HandshakeRun {
    private enum Phase { case idle, connecting, handshaking, writing, reading, awaitingTicket }

    private struct Slot {
        var fd: Int32 = -1
        var phase = Phase.idle
        var session: TLSClientSession? = nil
        var ticket: TLSSessionTicket? = nil
        var started: UInt64 = 0
        var written = 0
        var response: [UInt8] = []
    }

    private let o: HandshakeOptions
    private let context: TLSClientContext
    private var slots: [Slot]
    private let epfd: Int32
    private let address: sockaddr_in
    private let request: [UInt8]
    private var expectBodyLength: Int? = nil
    private var histogram = Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: 120_000_000_000,
                                              numberOfSignificantValueDigits: .three)
    private var windowStart: UInt64 = .max
    private var windowEnd: UInt64 = .max
    private var stopping = false
    private var handshakes = 0, resumed = 0, totalHandshakes = 0, totalResumed = 0
    private var errors = HandshakeResult.Errors()
    private var version: String? = nil
    private var firstFailure: String? = nil
    private let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 16 * 1024, alignment: 16)
    /// Slots whose next connection starts at the top of the next loop turn (not from inside a failure,
    /// where a refused connect would recurse).
    private var restarts: [Int] = []

    init(_ o: HandshakeOptions, context: TLSClientContext) throws {
        self.o = o
        self.context = context
        slots = Array(repeating: Slot(), count: o.connections)
        var a = sockaddr_in()
        a.sin_family = sa_family_t(AF_INET)
        a.sin_port = in_port_t(UInt16(o.port).bigEndian)
        guard inet_pton(AF_INET, o.host, &a.sin_addr) == 1 else { throw ValidationError("--target: \(o.host) is not a numeric IPv4 address") }
        address = a
        switch o.request {
        case .http: request = Array("GET \(o.path) HTTP/1.1\r\nHost: \(o.host):\(o.port)\r\nUser-Agent: ringload\r\n\r\n".utf8)
        case .echo: request = (0..<o.size).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 1) }
        case .none: request = []
        }
        epfd = epoll_create1(Int32(EPOLL_CLOEXEC))
        guard epfd >= 0 else { throw ValidationError("epoll_create1: \(String(cString: strerror(errno)))") }
    }

    deinit {
        for s in slots where s.fd >= 0 { close(s.fd) }
        close(epfd)
        buffer.deallocate()
    }

    /// Runs the warm-up, the measured window and a drain of the connections still in flight (bounded
    /// by --timeout); returns the figures.
    func run() throws -> HandshakeResult {
        windowStart = nowNanos() + UInt64(o.warmup * 1e9)
        windowEnd = windowStart + UInt64(o.duration * 1e9)
        restarts = Array(slots.indices)
        var cpu0 = 0.0, cpu1 = 0.0
        var sampled0 = false
        var drainDeadline: UInt64 = .max
        var events = [epoll_event](repeating: epoll_event(), count: 256)
        while true {
            let now = nowNanos()
            if !sampled0 && now >= windowStart { cpu0 = processCPUSeconds(); sampled0 = true }
            if !stopping && now >= windowEnd {
                cpu1 = processCPUSeconds()
                stopping = true
                drainDeadline = now + UInt64(min(o.timeout, 5) * 1e9)
            }
            if stopping {
                restarts.removeAll()
                if slots.allSatisfy({ $0.phase == .idle }) || now >= drainDeadline { break }
            }
            while let i = restarts.popLast() { start(i) }
            let until = stopping ? drainDeadline : (sampled0 ? windowEnd : windowStart)
            let waitMillis = restarts.isEmpty ? Int32(max(0, min(100, (Double(until) - Double(now)) / 1e6)).rounded(.up)) : 0
            let n = epoll_wait(epfd, &events, Int32(events.count), waitMillis)
            if n < 0 {
                if errno == EINTR { continue }
                throw ValidationError("epoll_wait: \(String(cString: strerror(errno)))")
            }
            for k in 0..<Int(n) {
                let i = Int(events[k].data.u64)
                guard i < slots.count, slots[i].fd >= 0 else { continue }
                drive(i, events: events[k].events)
            }
            expire(nowNanos())
        }
        // Connections cut at the drain deadline are not counted as failures: the run was over.
        for i in slots.indices where slots[i].phase != .idle { finish(i, restart: false) }
        let secs = Double(windowEnd - windowStart) / 1e9
        func us(_ v: UInt64) -> Double { Double(v) / 1000 }
        let h = histogram
        let cpuPct = (cpu1 - cpu0) / secs * 100
        var warnings: [String] = []
        if !context.configuration.verifiesPeer { warnings.append("TLS: the server's certificate was not verified (no --tls-ca)") }
        if cpuPct >= 90 { warnings.append(String(format: "load generator used %.0f%% of a core: it may be the bottleneck, not the server", cpuPct)) }
        if context.configuration.resumption && totalHandshakes > o.connections && totalResumed == 0 {
            warnings.append("resumption is on but no handshake was resumed: the server issues no session tickets (or refuses them)")
        }
        if let f = firstFailure { warnings.append("first failure: \(f)") }
        return HandshakeResult(
            target: "\(o.host):\(o.port)", connections: o.connections, request: o.request, seconds: secs,
            handshakes: handshakes, resumed: resumed, full: handshakes - resumed,
            handshakesPerSecond: Double(handshakes) / secs,
            latencyMicros: .init(p50: us(h.valueAtPercentile(50)), p90: us(h.valueAtPercentile(90)),
                                 p99: us(h.valueAtPercentile(99)), p999: us(h.valueAtPercentile(99.9)),
                                 max: us(h.max), mean: h.mean / 1000),
            totalHandshakes: totalHandshakes, totalResumed: totalResumed, errors: errors,
            resumption: context.configuration.resumption, verified: context.configuration.verifiesPeer,
            version: version, clientCPUPercent: cpuPct,
            clientCPUMicrosPerHandshake: handshakes > 0 ? (cpu1 - cpu0) * 1e6 / Double(handshakes) : 0,
            warnings: warnings)
    }

    /// Opens slot `i`'s next connection (a non-blocking connect).
    private func start(_ i: Int) {
        guard !stopping else { return }
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { fail(i, \.connectFailures, "socket: \(String(cString: strerror(errno)))"); return }
        var one: Int32 = 1
        _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        slots[i].fd = fd
        slots[i].started = nowNanos()
        slots[i].written = 0
        slots[i].response.removeAll(keepingCapacity: true)
        var ev = epoll_event()
        ev.events = EPOLLIN.rawValue | EPOLLOUT.rawValue | EPOLLRDHUP.rawValue | EPOLLET.rawValue
        ev.data.u64 = UInt64(i)
        guard epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) == 0 else {
            fail(i, \.connectFailures, "epoll_ctl: \(String(cString: strerror(errno)))"); return
        }
        var a = address
        let r = withUnsafePointer(to: &a) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        if r == 0 || errno == EINPROGRESS {
            slots[i].phase = .connecting
            if r == 0 { drive(i, events: EPOLLOUT.rawValue) }
        } else {
            fail(i, \.connectFailures, "connect: \(String(cString: strerror(errno)))")
        }
    }

    /// Advances slot `i` as far as its socket allows.
    private func drive(_ i: Int, events: UInt32) {
        while slots[i].fd >= 0 {
            switch slots[i].phase {
            case .idle: return
            case .connecting:
                guard events & (EPOLLOUT.rawValue | EPOLLERR.rawValue | EPOLLHUP.rawValue) != 0 else { return }
                var err: Int32 = 0
                var len = socklen_t(MemoryLayout<Int32>.size)
                _ = getsockopt(slots[i].fd, SOL_SOCKET, SO_ERROR, &err, &len)
                guard err == 0 else { fail(i, \.connectFailures, "connect: \(String(cString: strerror(err)))"); return }
                do {
                    slots[i].session = try context.session(socket: slots[i].fd, resuming: slots[i].ticket)
                } catch {
                    fail(i, \.handshakeFailures, "\(error)"); return
                }
                slots[i].phase = .handshaking
            case .handshaking:
                switch slots[i].session!.handshake() {
                case .done: handshakeDone(i)
                case .wantRead, .wantWrite: return
                case .closed: fail(i, \.handshakeFailures, "the server closed during the handshake"); return
                case .failed(let why): fail(i, \.handshakeFailures, why); return
                }
            case .writing:
                let step = request.withUnsafeBytes { p in
                    slots[i].session!.write(UnsafeRawBufferPointer(rebasing: p[slots[i].written...]))
                }
                switch step {
                case .done(let n):
                    slots[i].written += n
                    if slots[i].written == request.count { slots[i].phase = .reading }
                case .wantRead, .wantWrite: return
                case .closed: fail(i, \.corrupt, "the server closed before the request was sent"); return
                case .failed(let why): fail(i, \.corrupt, why); return
                }
            case .reading, .awaitingTicket:
                switch slots[i].session!.read(into: buffer) {
                case .done(let n):
                    guard slots[i].phase == .reading else { fail(i, \.corrupt, "unsolicited bytes after the handshake"); return }
                    slots[i].response.append(contentsOf: UnsafeRawBufferPointer(rebasing: buffer[0..<n]))
                    if let verdict = checkResponse(slots[i].response) {
                        if let kind = verdict { fail(i, kind, "wrong response"); return }
                        finish(i, restart: true)
                        return
                    }
                case .wantRead, .wantWrite:
                    if slots[i].phase == .awaitingTicket && slots[i].session!.ticket != nil { finish(i, restart: true) }
                    return
                case .closed:
                    if slots[i].phase == .awaitingTicket { finish(i, restart: true); return }
                    fail(i, \.corrupt, "the server closed before the response was complete"); return
                case .failed(let why): fail(i, \.corrupt, why); return
                }
            }
        }
    }

    private func handshakeDone(_ i: Int) {
        let now = nowNanos()
        let session = slots[i].session!
        let wasResumed = session.isResumed
        totalHandshakes += 1
        if wasResumed { totalResumed += 1 }
        if now >= windowStart && now < windowEnd {
            handshakes += 1
            if wasResumed { resumed += 1 }
            _ = histogram.record(max(1, now - slots[i].started))
        }
        if version == nil || totalHandshakes % 1024 == 0 { version = session.protocolVersion }
        switch o.request {
        case .http, .echo: slots[i].phase = .writing
        case .none:
            // TLS 1.3 sends its tickets after the handshake: wait for one, or the next cannot resume.
            let needsTicket = context.configuration.resumption && session.ticket == nil
            if needsTicket { slots[i].phase = .awaitingTicket } else { finish(i, restart: true) }
        }
    }

    /// nil: incomplete; .some(nil): a good response; .some(kind): wrong (status or bytes).
    private func checkResponse(_ r: [UInt8]) -> WritableKeyPath<HandshakeResult.Errors, Int>?? {
        switch o.request {
        case .echo:
            if r.count < request.count { return r.elementsEqual(request[0..<r.count]) ? nil : .some(\.corrupt) }
            return r == request ? .some(nil) : .some(\.corrupt)
        case .none: return .some(\.corrupt)
        case .http:
            guard let end = findHeadEnd(r) else { return r.count > 16384 ? .some(\.corrupt) : nil }
            let head = String(decoding: r[0..<end], as: UTF8.self)
            let lines = head.split(separator: "\r\n")
            guard let first = lines.first, first.hasPrefix("HTTP/1."), first.count >= 12,
                  let status = Int(first.dropFirst(9).prefix(3)) else { return .some(\.corrupt) }
            var length: Int? = nil
            for l in lines.dropFirst() where l.lowercased().hasPrefix("content-length:") {
                length = Int(l.dropFirst(15).trimmingCharacters(in: .whitespaces))
            }
            guard let length else { return .some(\.corrupt) }  // chunked: not measured here
            let have = r.count - (end + 4)
            if have < length { return nil }
            if have > length { return .some(\.corrupt) }
            if status != o.expectStatus { return .some(\.badStatus) }
            if let e = expectBodyLength, e != length { return .some(\.corrupt) }
            expectBodyLength = length
            return .some(nil)
        }
    }

    private func findHeadEnd(_ r: [UInt8]) -> Int? {
        guard r.count >= 4 else { return nil }
        for k in 0...(r.count - 4) where r[k] == 13 && r[k + 1] == 10 && r[k + 2] == 13 && r[k + 3] == 10 { return k }
        return nil
    }

    /// Counts a failure of slot `i`'s connection, closes it and starts the next.
    private func fail(_ i: Int, _ kind: WritableKeyPath<HandshakeResult.Errors, Int>, _ why: String) {
        errors[keyPath: kind] += 1
        if firstFailure == nil { firstFailure = why }
        closeSlot(i, graceful: false)
        if !stopping { restarts.append(i) }
    }

    /// Slot `i`'s connection is done: keep its ticket, close it (close_notify first), start the next.
    private func finish(_ i: Int, restart: Bool) {
        if let t = slots[i].session?.ticket { slots[i].ticket = t }
        closeSlot(i, graceful: true)
        if restart && !stopping { restarts.append(i) }
    }

    private func closeSlot(_ i: Int, graceful: Bool) {
        if graceful, let s = slots[i].session { s.shutdown() }
        slots[i].session = nil
        if slots[i].fd >= 0 { close(slots[i].fd) }  // also leaves the epoll set
        slots[i].fd = -1
        slots[i].phase = .idle
    }

    /// Connections older than --timeout: counted, closed, replaced.
    private func expire(_ now: UInt64) {
        let limit = UInt64(o.timeout * 1e9)
        for i in slots.indices where slots[i].phase != .idle && now - slots[i].started > limit {
            fail(i, \.timeouts, "no answer within \(o.timeout) s")
        }
    }
}
