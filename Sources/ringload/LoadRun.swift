import Glibc
import Histogram
import Logging
import Ringside
import RingsideTLS

/// The engine's own log, quiet unless something is wrong (the results are the output here).
let quietLogger: Logger = {
    var l = Logger(label: "ringload")
    l.logLevel = .warning
    return l
}()

/// What to run.
struct LoadOptions: Sendable {
    enum Mode: String, Sendable, Codable { case echo, http }
    var mode: Mode = .echo
    var host = "127.0.0.1"
    var port = 0
    var connections = 50
    var size = 64
    var pipeline = 1
    var duration = 10.0
    var warmup = 2.0
    var rate: Double? = nil
    /// Open loop: run the pacer thread at SCHED_FIFO priority.
    var realtime = false
    var timeout = 5.0
    var backend: BackendKind = .auto
    var path = "/plaintext"
    var expectStatus = 200
    /// HTTP: an `Accept-Encoding` header value to send (e.g. "gzip"), nil for none.
    var acceptEncoding: String? = nil
    var progress = false
    /// Speak TLS on every connection (nil: plain TCP).
    var tls: TLSClientConfiguration? = nil
}

/// One run's figures (the JSON form of the result).
struct LoadResult: Codable, Sendable {
    var mode: String
    var target: String
    var backend: String
    var connections: Int
    var size: Int
    var pipeline: Int
    var rate: Double?
    var seconds: Double
    /// How far the measured window (where the caller sampled CPU and the clock) was from the window the
    /// messages were counted in, in ms: the main thread woke late (starved on its CPU). Large values make
    /// the rates and CPU per message meaningless (`ringload compare` discards such runs).
    var windowSkewMillis: Double
    var messages: Int
    var messagesPerSecond: Double
    var megabytesPerSecond: Double
    /// HTTP: bytes received per response (head and body, as on the wire).
    var bytesPerResponse: Double? = nil
    var latencyMicros: Latency
    /// Open loop: how late the generator issued its sends (actual minus intended send time).
    var sendLatenessMicros: Lateness?
    var errors: Errors
    var clientCPUPercent: Double
    var clientCPUMicrosPerMessage: Double
    var clientBound: Bool
    var warnings: [String]
    /// TLS runs: how the connections' handshakes went (nil: plain TCP).
    var tls: TLSSummary? = nil

    /// The handshakes of a `--tls` run (every connection's, warm-up included).
    struct TLSSummary: Codable, Sendable {
        /// Whether the server's certificate was verified (`--tls-ca`); false: any certificate accepted.
        var verified: Bool
        var resumption: Bool
        var handshakes: Int
        var resumed: Int
        var failures: Int
    }

    struct Latency: Codable, Sendable { var p50, p90, p99, p999, max, mean: Double }
    struct Lateness: Codable, Sendable { var p50, p99, max: Double }
    struct Errors: Codable, Sendable {
        var corrupt = 0, badStatus = 0, resets = 0, timeouts = 0, connectFailures = 0, backlogged = 0
        /// TLS: failed or cut-short handshakes and bad records (nil for plain TCP runs).
        var tls: Int? = nil
        var total: Int { corrupt + badStatus + resets + timeouts + connectFailures + (tls ?? 0) }
    }
}

/// CPU time of this process (user + system), in seconds.
func processCPUSeconds() -> Double {
    var ru = rusage()
    getrusage(RUSAGE_SELF.rawValue, &ru)
    return Double(ru.ru_utime.tv_sec) + Double(ru.ru_utime.tv_usec) / 1e6
        + Double(ru.ru_stime.tv_sec) + Double(ru.ru_stime.tv_usec) / 1e6
}

func sleepSeconds(_ s: Double) { if s > 0 { usleep(UInt32(min(s, 4000) * 1e6)) } }

/// Runs one load: connects every connection (closed loop: through the engine's client path; open
/// loop: through `OpenLoop`, paced to the microsecond), warms up, measures for
/// `duration`, stops. `window` is called on this thread right at the start and end of the measured
/// window (the compare runner samples the server's CPU there).
func runLoad(_ o: LoadOptions, window: (Bool) -> Void = { _ in }) throws -> LoadResult {
    var request: [UInt8] = []
    if o.mode == .http {
        let coding = o.acceptEncoding.map { "Accept-Encoding: \($0)\r\n" } ?? ""
        request = Array("GET \(o.path) HTTP/1.1\r\nHost: \(o.host):\(o.port)\r\nUser-Agent: ringload\r\n\(coding)\r\n".utf8)
    }
    let state = LoadState(size: o.size, pipeline: o.pipeline, connections: o.connections, rate: o.rate,
                          timeout: o.timeout, request: request, expectStatus: o.expectStatus)
    let loop = try LoadLoop.start(o, state: state)
    // Under a real-time policy (`chrt -f`, inherited by the loop threads, which then run until they
    // block), this thread must still wake on time to sample the window's edges: one priority above.
    raiseAboveInheritedRealtimePriority()
    let start = nowNanos() + UInt64(o.warmup * 1e9)
    let end = start + UInt64(o.duration * 1e9)
    state.windowStart.store(start, ordering: .relaxed)
    state.windowEnd.store(end, ordering: .relaxed)
    sleepSeconds(o.warmup)
    window(true)
    let cpu0 = processCPUSeconds()
    let t0 = nowNanos()
    let tty = o.progress && isatty(STDERR_FILENO) != 0 && isatty(STDOUT_FILENO) != 0  // never into a pipe
    while nowNanos() < end {
        let left = Double(end - min(end, nowNanos())) / 1e9
        sleepSeconds(min(1, left))
        if tty {
            let done = state.completedInWindow.load(ordering: .relaxed)
            let el = max(1e-9, Double(nowNanos() - t0) / 1e9)
            printError(String(format: "\r  %.0fs  %d msgs  %.0f msgs/s   ", el, done, Double(done) / el))
        }
    }
    window(false)
    let cpu1 = processCPUSeconds()
    let t1 = nowNanos()
    if tty { printError("\r\u{1B}[K") }
    state.stopping.store(true, ordering: .relaxed)
    let (backend, connectFailures, stats) = try loop.stop()

    let secs = Double(t1 - t0) / 1e9
    let skew = Double(max(t0 > start ? t0 - start : start - t0, t1 > end ? t1 - end : end - t1)) / 1e6
    let msgs = Int(state.histogram.totalCount)
    let h = state.histogram
    func us(_ v: UInt64) -> Double { Double(v) / 1000 }
    let p50 = us(h.valueAtPercentile(50))
    let cpuPct = (cpu1 - cpu0) / secs * 100
    var warnings: [String] = []
    // The open loop's CPU includes its spinning before sends: there its lateness tells whether it
    // kept up, not its CPU.
    let clientBound = o.rate == nil && cpuPct >= 90
    if clientBound {
        warnings.append(String(format: "load generator used %.0f%% of a core: it may be the bottleneck, not the server", cpuPct))
    }
    if let e = state.pacerNote { warnings.append(e) }
    if skew > max(5, o.duration * 10) {  // 1% of the window, at least 5 ms
        warnings.append(String(format: "the measured window was off by %.0f ms (this thread was starved of its CPU): rates and CPU per message are not reliable", skew))
    }
    if state.backlogged > 0 {
        warnings.append("\(state.backlogged) open-loop sends could not be issued on time (window full): the server cannot keep up with --rate")
    }
    var lateness: LoadResult.Lateness? = nil
    if o.rate != nil {
        let l = state.lateness
        let late = LoadResult.Lateness(p50: us(l.valueAtPercentile(50)), p99: us(l.valueAtPercentile(99)), max: us(l.max))
        lateness = late
        if late.p99 > p50 / 10 {
            warnings.append(String(format: "generator lateness p99 %.1f µs exceeds a tenth of the measured p50 (%.1f µs): the latencies include the load generator's own delay", late.p99, p50))
        }
    }
    var errors = LoadResult.Errors()
    errors.corrupt = state.corrupt
    errors.badStatus = state.badStatus
    errors.resets = state.resets
    errors.timeouts = state.timeouts
    errors.connectFailures = connectFailures
    errors.backlogged = state.backlogged
    var tls: LoadResult.TLSSummary? = nil
    if let t = o.tls {
        // The closed loop's layers count in the client loop's stats; the open loop's pacer in `state`.
        let failures = stats.map { $0.tlsHandshakeFailures + $0.tlsHandshakesTruncated + $0.layerErrors } ?? state.tlsFailures
        errors.tls = failures
        tls = .init(verified: t.verifiesPeer, resumption: t.resumption, handshakes: stats?.tlsHandshakes ?? state.tlsHandshakes,
                    resumed: stats?.tlsResumptions ?? state.tlsResumed, failures: failures)
        if let note = state.tlsNote { warnings.append("TLS: \(note)") }
        if !t.verifiesPeer { warnings.append("TLS: the server's certificate was not verified (no --tls-ca)") }
    }
    return LoadResult(
        mode: o.mode.rawValue, target: "\(o.host):\(o.port)", backend: backend,
        connections: o.connections, size: o.mode == .echo ? o.size : 0, pipeline: o.pipeline, rate: o.rate,
        seconds: secs, windowSkewMillis: skew, messages: msgs, messagesPerSecond: Double(msgs) / secs,
        megabytesPerSecond: Double(state.bytesInWindow) / secs / 1e6,
        bytesPerResponse: o.mode == .http && msgs > 0 ? Double(state.bytesInWindow) / Double(msgs) : nil,
        latencyMicros: .init(p50: p50, p90: us(h.valueAtPercentile(90)),
                             p99: us(h.valueAtPercentile(99)), p999: us(h.valueAtPercentile(99.9)),
                             max: us(h.max), mean: h.mean / 1000),
        sendLatenessMicros: lateness,
        errors: errors, clientCPUPercent: cpuPct,
        clientCPUMicrosPerMessage: msgs > 0 ? (cpu1 - cpu0) * 1e6 / Double(msgs) : 0,
        clientBound: clientBound, warnings: warnings, tls: tls)
}

/// The connections of one run: the engine's client loop (closed loop) or the open-loop pacer.
enum LoadLoop {
    case engine(RunningServer)
    case echoPacer(OpenLoop<EchoStream>)
    case httpPacer(OpenLoop<HTTPStream>)

    /// Connects every connection (bounded to 10 s for the engine) and starts sending.
    static func start(_ o: LoadOptions, state: LoadState) throws -> LoadLoop {
        if let rate = state.rate {
            var context: TLSClientContext? = nil
            if let t = o.tls {
                do { context = try TLSClientContext(t, logger: quietLogger) } catch { throw LoadError("TLS: \(error)") }
            }
            switch o.mode {
            case .echo:
                let p = try OpenLoop<EchoStream>(state: state, host: o.host, port: o.port, connections: o.connections, rate: rate, tls: context)
                p.start(realtime: o.realtime)
                return .echoPacer(p)
            case .http:
                let p = try OpenLoop<HTTPStream>(state: state, host: o.host, port: o.port, connections: o.connections, rate: rate, tls: context)
                p.start(realtime: o.realtime)
                return .httpPacer(p)
            }
        }
        var config = ServerConfiguration(host: o.host, port: 0, backend: o.backend)
        config.listen = false
        config.connect = OutboundConnections(host: o.host, port: o.port, count: o.connections)
        config.maxConnections = o.connections + 8
        config.sendBuffers = max(512, o.connections * max(1, (o.size * o.pipeline + 4095) / 4096) + 64)
        config.drainTimeout = .seconds(1)
        let loop: RunningServer
        if let t = o.tls {
            // TLS: a client layer under each handler (the same handlers, over the decrypted stream).
            // Records add up to ~2% plus a header per write: room for them in the send pool.
            config.sendBuffers += config.sendBuffers / 8
            let context: TLSClientContext
            do { context = try TLSClientContext(t, logger: quietLogger) } catch { throw LoadError("TLS: \(error)") }
            let layers = LayerStackFactory([context])
            switch o.mode {
            case .echo: loop = try RingsideServer.start(configuration: config, logger: quietLogger, layers: layers) { EchoLoadHandler(state: state) }
            case .http: loop = try RingsideServer.start(configuration: config, logger: quietLogger, layers: layers) { HTTPLoadHandler(state: state) }
            }
        } else {
            switch o.mode {
            case .echo: loop = try RingsideServer.start(configuration: config, logger: quietLogger) { EchoLoadHandler(state: state) }
            case .http: loop = try RingsideServer.start(configuration: config, logger: quietLogger) { HTTPLoadHandler(state: state) }
            }
        }
        // Every connection connected (and, with TLS, through its handshake) or failed: then the warm-up.
        let connectDeadline = nowNanos() + 10_000_000_000
        while nowNanos() < connectDeadline {
            let s = loop.stats
            let failed = s.connectFailures + s.tlsHandshakeFailures + s.tlsHandshakesTruncated
            let up = o.tls == nil ? s.connectionsConnected : s.tlsHandshakes
            if up + failed >= o.connections { break }
            usleep(2_000)
        }
        return .engine(loop)
    }

    /// Stops (after `state.stopping` was set) and joins; returns the backend name, failed connects and
    /// the client loop's counters (engine only).
    func stop() throws -> (String, Int, ServerStats?) {
        switch self {
        case .engine(let loop):
            loop.stop()
            try loop.wait()
            let stats = loop.stats
            return (loop.backend.rawValue, stats.connectFailures, stats)
        case .echoPacer(let p):
            p.wait()
            return ("uring-pacer", p.connectFailures, nil)
        case .httpPacer(let p):
            p.wait()
            return ("uring-pacer", p.connectFailures, nil)
        }
    }
}

/// Raises the calling thread one priority step above the SCHED_FIFO/SCHED_RR priority it runs at (no-op
/// under a normal policy, or where the limit forbids it).
func raiseAboveInheritedRealtimePriority() {
    var policy: Int32 = 0
    var param = sched_param()
    guard pthread_getschedparam(pthread_self(), &policy, &param) == 0,
          policy == SCHED_FIFO || policy == SCHED_RR else { return }
    let top = sched_get_priority_max(policy)
    guard param.sched_priority < top else { return }
    param.sched_priority += 1
    _ = pthread_setschedparam(pthread_self(), policy, &param)
}

/// A run that cannot start (a bad combination of options, a TLS file that cannot be read).
struct LoadError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

extension LoadResult.Errors: CustomStringConvertible {
    /// "corrupt 0, badStatus 0, ..." (TLS failures only on TLS runs).
    var description: String {
        var s = "corrupt \(corrupt), badStatus \(badStatus), resets \(resets), timeouts \(timeouts), connectFailures \(connectFailures), backlogged \(backlogged)"
        if let tls { s += ", tls \(tls)" }
        return s
    }
}
