import CLiburing
import Foundation
import Glibc
import RingsideTLS

/// The open loop: requests leave at intended times on a fixed schedule (`rate` per second over all
/// connections, round-robin), and each request's latency is counted from its intended send time, so
/// a server stall cannot hide (coordinated omission corrected).
///
/// It runs on its own thread with its own io_uring (`PacerRing`), not on the engine's loop, whose
/// timers have 1 ms resolution. Pacing: the thread sleeps on an absolute-deadline io_uring timeout
/// until `margin` before the next intended send, then spins to it; `margin` follows the measured
/// wake-up cost. How late every send actually left (actual minus intended time) is recorded in
/// `LoadState.lateness`.
///
/// Confinement: everything below is touched by the creating thread until `start()`, then only by the
/// pacer thread until `wait()` returns.
final class OpenLoop<S: LoadStream>: @unchecked Sendable {
    private let state: LoadState
    private let ring: PacerRing
    private let count: Int
    /// Per-connection parallel arrays, `count` entries each, owned (released in `finish()`).
    private let fds: UnsafeMutablePointer<Int32>
    private let alive: UnsafeMutablePointer<Bool>
    private let streams: UnsafeMutablePointer<S>
    private let windows: UnsafeMutablePointer<LoadWindow>
    /// Receive buffers: `bufferSize` bytes per connection; one receive per live connection in flight.
    private let buffers: UnsafeMutableRawPointer
    private var pending: [[UInt8]]  // bytes send(2) did not take yet, per connection
    /// `--tls`: each connection's session (memory BIOs: the ring receives ciphertext, which is fed to
    /// it; requests are encrypted before `send`). Empty without TLS.
    private var sessions: [TLSClientSession?] = []
    /// Decrypted bytes of one receive (TLS only).
    private let plain: UnsafeMutableRawBufferPointer
    private var pendingConnections = 0
    private var receivesInFlight = 0
    private(set) var connected = 0
    private(set) var connectFailures = 0
    /// Nanoseconds between two sends (over all connections).
    private let period: Double
    /// How long before an intended send the pacer wakes up to spin (adapted to the wake-up cost).
    private var margin: UInt64 = 50_000
    private var maxMargin: UInt64 = 200_000
    /// Whether the pacer thread runs at a real-time priority.
    private var realtime = false
    /// How much of its time the pacer must spend off the CPU.
    private var duty = DutyCycle(minimumIdle: 0.002, period: 50_000_000)
    private var recentWakes = [UInt64](repeating: 0, count: 32)
    private var wakeCount = 0
    private let finished = DispatchSemaphore(value: 0)
    static var bufferSize: Int { 16 * 1024 }
    /// The most requests one connection keeps outstanding; a send beyond it counts as backlogged.
    static var windowCapacity: Int { 4096 }
    /// Bytes queued for one connection beyond which sends count as backlogged.
    static var pendingLimit: Int { 1 << 20 }

    init(state: LoadState, host: String, port: Int, connections: Int, rate: Double, tls: TLSClientContext? = nil) throws {
        self.state = state
        count = max(1, connections)
        period = 1e9 / rate
        ring = try PacerRing(entries: UInt32(min(4096, max(64, count * 2 + 16))))
        fds = .allocate(capacity: count)
        alive = .allocate(capacity: count)
        streams = .allocate(capacity: count)
        windows = .allocate(capacity: count)
        buffers = .allocate(byteCount: count * Self.bufferSize, alignment: 64)
        pending = Array(repeating: [], count: count)
        plain = .allocate(byteCount: tls == nil ? 1 : 16 * 1024, alignment: 16)
        if tls != nil { sessions = Array(repeating: nil, count: count) }
        for i in 0..<count {
            streams.advanced(by: i).initialize(to: S(state: state, index: i))
            windows.advanced(by: i).initialize(to: LoadWindow(capacity: Self.windowCapacity))
            var fd = blockingConnect(host: host, port: port)
            if fd < 0 {
                connectFailures += 1
            } else if let tls {
                // The handshake, blocking, before the pacer starts (each read bounded by --timeout); a
                // failure is counted in `state.tlsFailures`.
                if let session = Self.handshake(fd: fd, context: tls, state: state) {
                    sessions[i] = session
                } else {
                    Glibc.close(fd)
                    fd = -1
                }
            }
            fds[i] = fd
            alive[i] = fd >= 0
            if fd >= 0 { connected += 1 }
        }
    }

    /// A TLS client handshake on the blocking socket `fd`; the session, or nil (counted in
    /// `state.tlsFailures`, the first reason in `state.tlsNote`).
    private static func handshake(fd: Int32, context: TLSClientContext, state: LoadState) -> TLSClientSession? {
        func failed(_ why: String) -> TLSClientSession? {
            state.tlsFailures += 1
            if state.tlsNote == nil { state.tlsNote = why }
            return nil
        }
        let session: TLSClientSession
        do { session = try context.memorySession(resuming: context.configuration.resumption ? context.latestTicket : nil) } catch {
            return failed("\(error)")
        }
        var tv = timeval(tv_sec: Int(state.timeoutNanos / 1_000_000_000), tv_usec: Int(state.timeoutNanos % 1_000_000_000 / 1000))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        defer {
            var zero = timeval()
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &zero, socklen_t(MemoryLayout<timeval>.size))
        }
        var buffer = [UInt8](repeating: 0, count: 16 * 1024)
        while true {
            let step = session.handshake()
            var sent = true
            session.takeOutput { c in
                var off = 0
                while sent && off < c.count {
                    let n = Glibc.send(fd, c.baseAddress! + off, c.count - off, Int32(MSG_NOSIGNAL))
                    if n <= 0 { sent = false } else { off += n }
                }
            }
            guard sent else { return failed("handshake: send: \(String(cString: strerror(errno)))") }
            switch step {
            case .done:
                state.tlsHandshakes += 1
                if session.isResumed { state.tlsResumed += 1 }
                return session
            case .wantRead:
                let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
                guard n > 0 else { return failed(n == 0 ? "the server closed during the handshake" : "handshake: recv: \(String(cString: strerror(errno)))") }
                buffer.withUnsafeBytes { session.feed(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
            case .wantWrite: continue
            case .closed: return failed("the server closed during the handshake")
            case .failed(let why): return failed(why)
            }
        }
    }


    /// Starts the pacer thread (it inherits this thread's CPU affinity), at SCHED_FIFO priority if
    /// `realtime` (a refusal is noted in `state.pacerNote`).
    func start(realtime: Bool) {
        let t = Thread { [self] in
            if realtime {
                var p = sched_param(sched_priority: 50)
                let r = pthread_setschedparam(pthread_self(), SCHED_FIFO, &p)
                if r != 0 { state.pacerNote = "--realtime: SCHED_FIFO refused (\(String(cString: strerror(r)))); the pacer runs at normal priority" }
            }
            // A real-time pacer (--realtime, or started under `chrt`) that spun all the time would be
            // throttled by the kernel (sched_rt_runtime_us) for tens of milliseconds: it sleeps in
            // every gap between sends and spins at most half of it.
            let policy = sched_getscheduler(0)
            if policy == SCHED_FIFO || policy == SCHED_RR {
                maxMargin = min(maxMargin, UInt64(period / 2))
                self.realtime = true
                // Linux 6.12+ serves starved normal tasks 50 ms at a stretch (the fair deadline server) when
                // real-time ones leave them too little; measured here, 8% idle was too little and 20%
                // in 50 µs pauses every 250 µs was enough.
                duty = DutyCycle(minimumIdle: 0.2, period: 250_000)
            }
            run()
            finish()
            finished.signal()
        }
        t.name = "ringload-pacer"
        t.start()
    }

    /// Waits for the pacer thread to end (after `state.stopping` was set).
    func wait() { finished.wait() }

    private func run() {
        for i in 0..<count where alive[i] { armReceive(i) }
        let t0 = nowNanos() + 1_000_000
        var j: UInt64 = 0
        var next = t0
        var lastWatch = t0
        // Past the window's end plus a little (main normally sets `stopping` first; this bounds a run
        // whose main thread cannot get the CPU from a real-time pacer).
        while !state.isStopping && !pastWindow(nowNanos()) {
            var now = nowNanos()
            // At most `count` sends per round, so receives are reaped even when the pacer falls behind.
            var burst = 0
            while next <= now && burst < count {
                sendDue(Int(j % UInt64(count)), intended: next)
                j += 1
                burst += 1
                next = t0 &+ UInt64(Double(j) * period)
                now = nowNanos()
            }
            _ = ring.reap { i, res in received(i, res) }
            if pendingConnections > 0 { flushPending() }
            if now &- lastWatch >= 10_000_000 { watchdog(now); lastWatch = now }
            now = nowNanos()
            // Sleep to `margin` before the next send when the gap is worth a wake-up (twice the wake-up
            // cost; a real-time pacer sleeps in every gap of 2 µs or more beyond `margin`), else spin.
            if next > now &+ margin &+ (realtime ? 2_000 : margin) {
                let wakeAt = min(next - margin, now + 10_000_000)
                ring.wake(at: wakeAt)
                ring.wait()
                let woke = nowNanos()
                duty.slept(woke &- now)
                if woke >= wakeAt { adapt(late: woke - wakeAt) }
            } else if let pause = duty.pauseNeeded(now: now) {
                // Off the CPU too little lately (even when behind): a real pause (not a ring wait, which
                // any completion ends), so the other threads of this CPU get to run; for a real-time
                // pacer, before the kernel's real-time throttling stops it for tens of milliseconds.
                sleepUntil(now + pause, spin: 0)
                duty.slept(nowNanos() &- now)
            } else {
                ring.submitPending()  // receives re-armed above; then spin to `next`
            }
        }
    }

    /// Whether `now` is 100 ms past the window's end (not while the end is unset, `.max`).
    private func pastWindow(_ now: UInt64) -> Bool {
        let end = state.windowEnd.load(ordering: .relaxed)
        return end < UInt64.max - 100_000_000 && now > end + 100_000_000
    }

    /// Follows the wake-up cost (how long after its deadline a sleeping pacer runs again): the 90th
    /// percentile of the last 32 wake-ups, so a rare preemption does not turn the pacer into a
    /// spinner. The pacer wakes that (plus 5 µs) early and spins the rest, between 5 µs and `maxMargin`.
    private func adapt(late: UInt64) {
        recentWakes[wakeCount % recentWakes.count] = late
        wakeCount += 1
        guard wakeCount % 8 == 0 else { return }
        let n = min(wakeCount, recentWakes.count)
        let p90 = recentWakes[0..<n].sorted()[n * 9 / 10]
        margin = min(maxMargin, max(5_000, p90 + 5_000))
    }

    private func sendDue(_ i: Int, intended: UInt64) {
        guard alive[i] else { return }  // a dropped connection's sends are gone (counted as its error)
        guard !windows[i].isFull, pending[i].count < Self.pendingLimit else { state.backlog(intended: intended); return }
        let bytes = streams[i].request(windows[i].nextIndex)
        let actual = nowNanos()
        if let session = sessions.isEmpty ? nil : sessions[i] {
            guard session.write(bytes) == .done(bytes.count) else {
                state.tlsFailures += 1
                drop(i, timedOut: false, counted: true)
                return
            }
            var ok = true
            session.takeOutput { c in if ok { ok = transmit(i, c) } }
            guard ok else { return }
        } else {
            guard transmit(i, bytes) else { return }
        }
        windows[i].didSend(stamp: intended)
        state.sent(intended: intended, actual: actual)
    }

    /// Sends `bytes` on connection `i` (what send(2) does not take now waits in `pending`); false when
    /// the connection failed (dropped).
    private func transmit(_ i: Int, _ bytes: UnsafeRawBufferPointer) -> Bool {
        if pending[i].isEmpty {
            let n = Glibc.send(fds[i], bytes.baseAddress, bytes.count, Int32(MSG_DONTWAIT | MSG_NOSIGNAL))
            if n < 0 && errno != EAGAIN && errno != EINTR { drop(i, timedOut: false); return false }
            let took = max(0, n)
            if took < bytes.count {
                pending[i].append(contentsOf: bytes[took...])
                pendingConnections += 1
            }
        } else {
            pending[i].append(contentsOf: bytes)
        }
        return true
    }

    private func flushPending() {
        for i in 0..<count where !pending[i].isEmpty {
            let n = pending[i].withUnsafeBytes { Glibc.send(fds[i], $0.baseAddress, $0.count, Int32(MSG_DONTWAIT | MSG_NOSIGNAL)) }
            if n < 0 && errno != EAGAIN && errno != EINTR { drop(i, timedOut: false); continue }
            if n > 0 { pending[i].removeFirst(n) }
            if pending[i].isEmpty { pendingConnections -= 1 }
        }
    }

    private func armReceive(_ i: Int) {
        ring.receive(fd: fds[i], into: buffers + i * Self.bufferSize, count: Self.bufferSize, index: i)
        receivesInFlight += 1
    }

    private func received(_ i: Int, _ res: Int32) {
        receivesInFlight -= 1
        guard alive[i] else { return }
        if res > 0 {
            let bytes = UnsafeRawBufferPointer(start: buffers + i * Self.bufferSize, count: Int(res))
            if let session = sessions.isEmpty ? nil : sessions[i] {
                session.feed(bytes)
                decrypt: while true {
                    switch session.read(into: plain) {
                    case .done(let n):
                        guard streams[i].consume(UnsafeRawBufferPointer(rebasing: plain[0..<n]), window: &windows[i], state: state, now: nowNanos()) != nil else {
                            drop(i, timedOut: false, counted: true)
                            return
                        }
                    case .wantRead, .wantWrite: break decrypt
                    case .closed: drop(i, timedOut: false); return
                    case .failed(let why):
                        state.tlsFailures += 1
                        if state.tlsNote == nil { state.tlsNote = why }
                        drop(i, timedOut: false, counted: true)
                        return
                    }
                }
                if session.outputPending > 0 {
                    var ok = true
                    session.takeOutput { c in if ok { ok = transmit(i, c) } }
                    guard ok else { return }
                }
            } else {
                guard streams[i].consume(bytes, window: &windows[i], state: state, now: nowNanos()) != nil else {
                    drop(i, timedOut: false, counted: true)
                    return
                }
            }
            armReceive(i)
        } else if res == -EINTR || res == -EAGAIN {
            armReceive(i)
        } else {
            drop(i, timedOut: false)  // end-of-file or an error: the server closed or reset
        }
    }

    private func watchdog(_ now: UInt64) {
        for i in 0..<count where alive[i] && windows[i].timedOut(now: now, timeout: state.timeoutNanos) {
            drop(i, timedOut: true)
        }
    }

    /// Gives up on connection `i`: counted as a timeout or a reset (unless stopping, or already counted
    /// as corrupt), shut down so its receive completes.
    private func drop(_ i: Int, timedOut: Bool, counted: Bool = false) {
        guard alive[i] else { return }
        alive[i] = false
        if !counted && !state.isStopping {
            if timedOut { state.timeouts += 1 } else { state.resets += 1 }
        }
        if !pending[i].isEmpty { pending[i] = []; pendingConnections -= 1 }
        shutdown(fds[i], Int32(SHUT_RDWR))
    }

    /// Ends every connection, reaps every receive still in flight (so no buffer is written after it
    /// is freed), then releases everything. If a receive does not come back within a second, the
    /// buffers are leaked rather than freed under it.
    private func finish() {
        for i in 0..<count where fds[i] >= 0 { shutdown(fds[i], Int32(SHUT_RDWR)) }
        for i in 0..<count { alive[i] = false }
        let deadline = nowNanos() + 1_000_000_000
        while receivesInFlight > 0 && nowNanos() < deadline {
            ring.wake(at: min(deadline, nowNanos() + 50_000_000))
            ring.wait()
            _ = ring.reap { i, res in received(i, res) }
        }
        ring.close()
        for i in 0..<count where fds[i] >= 0 { Glibc.close(fds[i]) }
        for i in 0..<count { streams[i].deallocate(); windows[i].deallocate() }
        streams.deinitialize(count: count); streams.deallocate()
        windows.deinitialize(count: count); windows.deallocate()
        fds.deallocate(); alive.deallocate()
        sessions = []
        plain.deallocate()
        if receivesInFlight == 0 { buffers.deallocate() }
    }
}

/// Keeps a busy pacer off the CPU for at least `minimumIdle` of every `period` (ns).
struct DutyCycle {
    let minimumIdle: Double
    private var periodStart: UInt64 = 0
    private var idle: UInt64 = 0

    let period: UInt64

    init(minimumIdle: Double, period: UInt64) { self.minimumIdle = minimumIdle; self.period = period }

    mutating func slept(_ ns: UInt64) { idle &+= ns }

    /// How long to pause now (nil: no need), checked once per period.
    mutating func pauseNeeded(now: UInt64) -> UInt64? {
        if periodStart == 0 { periodStart = now }
        let elapsed = now &- periodStart
        guard elapsed >= period else { return nil }
        let want = UInt64(Double(elapsed) * minimumIdle)
        let owed = idle < want ? want - idle : 0
        periodStart = now
        idle = 0
        return owed > 0 ? max(owed, 10_000) : nil
    }
}

/// A blocking TCP connect with TCP_NODELAY; -1 on failure.
func blockingConnect(host: String, port: Int) -> Int32 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { return -1 }
    var one: Int32 = 1
    setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = in_port_t(UInt16(port).bigEndian)
    addr.sin_addr.s_addr = inet_addr(host)
    let r = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    if r != 0 { Glibc.close(fd); return -1 }
    return fd
}
