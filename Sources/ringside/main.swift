import ArgumentParser
import Glibc
import Logging
import Ringside
import RingsideHTTP
import RingsideProtocols
import RingsideTLS

extension BackendKind: ExpressibleByArgument {}

/// A duration flag: `10s`, `500ms`, `2m`, `1.5s`, or a plain number of seconds; shown as `10s`/`500ms`.
struct DurationArgument: ExpressibleByArgument, CustomStringConvertible {
    let seconds: Double

    init(seconds: Double) { self.seconds = seconds }

    init?(argument: String) {
        let a = argument.lowercased()
        let v: Double?
        if a.hasSuffix("ms") { v = Double(a.dropLast(2)).map { $0 / 1000 } }
        else if a.hasSuffix("s") { v = Double(a.dropLast()) }
        else if a.hasSuffix("m") { v = Double(a.dropLast()).map { $0 * 60 } }
        else { v = Double(a) }
        guard let v, v.isFinite else { return nil }
        seconds = v
    }

    var description: String { Self.format(seconds) }
    var defaultValueDescription: String { description }

    /// `0s`, `500ms`, `10s`, `1.5s`, `120s`.
    static func format(_ s: Double) -> String {
        if s == 0 { return "0s" }
        guard s.isFinite, abs(s) < 1e15 else { return "\(s)s" }
        if abs(s) < 1, (s * 1000).rounded() == s * 1000 { return "\(Int(s * 1000))ms" }
        if s.rounded() == s { return "\(Int(s))s" }
        return "\(s)s"
    }
}

/// The protocols `ringside serve` can serve.
enum ServedProtocol: String, ExpressibleByArgument, CaseIterable {
    /// Echo every byte back.
    case echo
    /// HTTP/1.1: GET /plaintext, GET /json, GET /json/100k, POST /echo, GET /ready, and the async routes GET /async/plaintext,
    /// GET /delay/{ms}, GET /users/{id}.
    case http
    /// Echo through the async API (`RingsideServer.startAsync`): one task per connection on its loop.
    case asyncEcho = "async-echo"
}

struct RingsideCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ringside",
        abstract: "Ringside: an io_uring server engine for Swift.",
        subcommands: [Serve.self]
    )
}

struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve a bundled protocol until SIGINT/SIGTERM.")

    @Option(help: "Protocol to serve: \(ServedProtocol.allCases.map(\.rawValue).joined(separator: ", ")).")
    var `protocol`: ServedProtocol = .echo
    @Option(help: "Backend: uring, epoll or auto (io_uring, falling back to epoll with the reason logged).")
    var backend: BackendKind = .auto
    @Option(help: "Numeric address to bind.") var host = "127.0.0.1"
    @Option(help: "Port; 0 picks a free one (printed).") var port = 0
    @Option(help: "Maximum simultaneous connections.") var maxConnections = 16384
    @Option(help: "Pool chunk size in bytes.") var bufferSize = 16 * 1024
    @Option(help: "Receive chunks (provided-buffer ring entries; a power of two).") var receiveBuffers = 128
    @Option(help: "Send chunk size in bytes.") var sendBufferSize = 4 * 1024
    @Option(help: "Send chunks for copied writes.") var sendBuffers = 512
    @Option(help: "io_uring SQ entries.") var ringEntries: UInt32 = 1024
    @Option(help: "HTTP: request bodies larger than this many bytes are spooled to a temporary file.")
    var spoolThreshold = 1 << 20
    @Option(help: "HTTP: directory for spooled request bodies (a body that cannot be stored there is answered 507 or 500).")
    var spoolDirectory = "/tmp"
    @Option(help: "HTTP: serve the files under this directory at /static/ (GET and HEAD; ETag, ranges; nothing outside it).")
    var `static`: String? = nil
    @Option(help: "io_uring: file sends of at least this many bytes go from the page cache to the socket by splice through a pipe (0: never; they read into send chunks).")
    var fileSpliceThreshold = 64 * 1024
    @Flag(help: "Register the buffer slab as fixed buffers (io_uring: file sends read into it with READ_FIXED; costs RLIMIT_MEMLOCK per loop).")
    var registerBuffers = false
    @Option(help: ArgumentHelp("io_uring with --register-buffers: send runs of at least BYTES from the registered send chunks with zero-copy SEND_ZC (Linux 6.2+; off by default: over loopback the kernel copies anyway).", valueName: "bytes"))
    var zeroCopySends: Int? = nil
    @Flag(help: "HTTP: compress responses (gzip, zstd, deflate, as Accept-Encoding asks) of compressible types from 1 KiB.")
    var compression = false
    @Option(help: "HTTP: with --compression, the gzip/deflate level (1 fastest ... 9 smallest).") var compressionLevel = 1
    @Option(help: "HTTP: with --compression, the zstd level (1 ... 19).") var zstdLevel = 1
    @Option(help: "Log level (trace, debug, info, notice, warning, error, critical).") var logLevel = "info"
    @Option(help: "Echo: require this greeting line before echoing (clients that never send it are closed at --auth-timeout).")
    var authToken: String? = nil
    @Option(help: "How long a connection that must authenticate may take to do so (e.g. 30s, 500ms; 0: no deadline).")
    var authTimeout = DurationArgument(seconds: 30)
    @Option(help: "How long without a byte received or sent before a connection is closed (0: never).")
    var idleTimeout = DurationArgument(seconds: 60)
    @Option(help: "How long queued output may make no progress before the connection is aborted (0: never).")
    var writeStallTimeout = DurationArgument(seconds: 30)
    @Option(help: "Most simultaneous connections per remote address (the client's, with --proxy-protocol; 0: no cap).")
    var maxPerAddress = 0
    @Option(help: "HTTP: how long a client may take to send a complete request head.")
    var headerTimeout = DurationArgument(seconds: 10)
    @Flag(help: "Accept PROXY protocol headers (v1 and v2) from --trusted-proxies: the client's address then counts for --max-per-address and logs.")
    var proxyProtocol = false
    @Option(help: "With --proxy-protocol: addresses or CIDR blocks whose headers are believed, comma-separated (IPv4 and IPv6).")
    var trustedProxies = "127.0.0.0/8,::1"
    @Option(help: "With --proxy-protocol: how long a trusted proxy may take to send its header.")
    var proxyHeaderTimeout = DurationArgument(seconds: 5)
    @Option(help: "After SIGTERM/SIGINT, keep serving this long with the HTTP readiness route (GET /ready) answering 503, so load balancers take this instance out of rotation before connections close; a second signal stops at once.")
    var shutdownDelay = DurationArgument(seconds: 0)
    @Option(help: "Event loops (threads), each with its own ring or epoll instance, pool and SO_REUSEPORT listener.")
    var threads = 1
    @Option(help: "Serve TLS (1.2 and 1.3) with this certificate chain (PEM); needs --tls-key. SIGHUP reloads both files. Every protocol (echo, async-echo, http).")
    var tlsCert: String? = nil
    @Option(help: "The private key (PEM) of --tls-cert.") var tlsKey: String? = nil
    @Flag(help: "Pin loop i to CPU i (or to the --cpus list).") var pin = false
    @Option(help: "Pin loops to these CPUs, comma-separated (loop i on the (i mod count)th); implies --pin.")
    var cpus: String? = nil

    func validate() throws {
        if (tlsCert == nil) != (tlsKey == nil) { throw ValidationError("--tls-cert and --tls-key go together") }
        if let cpus, parseCPUs(cpus) == nil {
            throw ValidationError("--cpus takes comma-separated CPU numbers, e.g. 0,1 (got '\(cpus)')")
        }
        guard Logger.Level(rawValue: logLevel) != nil else {
            throw ValidationError("--log-level takes one of \(Logger.Level.allCases.map(\.rawValue).joined(separator: ", ")) (got '\(logLevel)')")
        }
    }

    private func parseCPUs(_ list: String) -> [Int]? {
        let cpus = list.split(separator: ",").map { Int($0) }
        guard !cpus.isEmpty, cpus.allSatisfy({ ($0 ?? -1) >= 0 }) else { return nil }
        return cpus.map { $0! }
    }

    /// `--flag` seconds as a duration: finite, 0 or more, at most 100 years; 0 is nil when `zeroIsOff`.
    private func seconds(_ d: DurationArgument, _ flag: String, zeroIsOff: Bool = true) throws(ConfigurationError) -> Duration? {
        let most = Double(ServerConfiguration.maximumDuration.components.seconds)
        let s = d.seconds
        guard s.isFinite, s >= 0, s <= most else {
            throw ConfigurationError(field: flag, problem: "\(d) is not a duration in 0s...\(Int(most))s (100 years)")
        }
        if s == 0 && zeroIsOff { return nil }
        return .nanoseconds(Int64(s * 1e9))  // s <= 3.2e9: fits
    }

    /// The engine configuration from the flags, validated.
    private func serverConfiguration() throws(ConfigurationError) -> ServerConfiguration {
        var config = ServerConfiguration(host: host, port: port, backend: backend)
        config.maxConnections = maxConnections
        config.bufferSize = bufferSize
        config.receiveBuffers = receiveBuffers
        config.sendBufferSize = sendBufferSize
        config.sendBuffers = sendBuffers
        config.ringEntries = ringEntries
        config.registerBuffers = registerBuffers
        guard fileSpliceThreshold >= 0 else { throw ConfigurationError(field: "--file-splice-threshold", problem: "\(fileSpliceThreshold) is negative (0: never splice)") }
        config.fileSpliceThreshold = fileSpliceThreshold > 0 ? fileSpliceThreshold : nil
        config.zeroCopySendThreshold = zeroCopySends
        config.authenticationTimeout = try seconds(authTimeout, "--auth-timeout")
        config.idleTimeout = try seconds(idleTimeout, "--idle-timeout")
        config.writeStallTimeout = try seconds(writeStallTimeout, "--write-stall-timeout")
        guard maxPerAddress >= 0 else { throw ConfigurationError(field: "--max-per-address", problem: "\(maxPerAddress) is negative (0: no cap)") }
        config.maxConnectionsPerAddress = maxPerAddress > 0 ? maxPerAddress : nil
        config.threads = threads
        if proxyProtocol {
            var ranges: [AddressRange] = []
            for item in trustedProxies.split(separator: ",") {
                guard let r = AddressRange(String(item.filter { $0 != " " })) else {
                    throw ConfigurationError(field: "--trusted-proxies", problem: "'\(item)' is not an address or CIDR block (e.g. 10.0.0.0/8, ::1)")
                }
                ranges.append(r)
            }
            guard let timeout = try seconds(proxyHeaderTimeout, "--proxy-header-timeout"), timeout >= .milliseconds(1) else {
                throw ConfigurationError(field: "--proxy-header-timeout", problem: "\(proxyHeaderTimeout) must be at least 1ms")
            }
            config.proxyProtocol = ProxyProtocolConfiguration(trustedProxies: ranges, headerTimeout: timeout)
        }
        if let cpus { config.cpuAffinity = parseCPUs(cpus) } else if pin { config.cpuAffinity = Array(0..<max(1, threads)) }
        do { try config.validate() } catch { throw ConfigurationError(field: Self.flag(error.field), problem: error.problem) }
        return config
    }

    private func httpConfiguration() throws(ConfigurationError) -> HTTPServerConfiguration {
        var http = HTTPServerConfiguration()
        http.spoolThreshold = spoolThreshold
        http.spoolDirectory = spoolDirectory
        guard let header = try seconds(headerTimeout, "--header-timeout"), header >= .milliseconds(1) else {
            throw ConfigurationError(field: "--header-timeout", problem: "\(headerTimeout) must be at least 1ms")
        }
        http.headerTimeout = header
        http.compression.enabled = compression
        guard (1...9).contains(compressionLevel) else {
            throw ConfigurationError(field: "--compression-level", problem: "\(compressionLevel) is not in 1...9")
        }
        guard (1...19).contains(zstdLevel) else {
            throw ConfigurationError(field: "--zstd-level", problem: "\(zstdLevel) is not in 1...19")
        }
        http.compression.level = compressionLevel
        http.compression.zstdLevel = zstdLevel
        do { try http.validate() } catch { throw ConfigurationError(field: Self.flag(error.field), problem: error.problem) }
        return http
    }

    /// The flag that sets a configuration field (the field's own name when no flag does).
    static func flag(_ field: String) -> String {
        let flags = ["host": "--host", "port": "--port", "maxConnections": "--max-connections",
                     "bufferSize": "--buffer-size", "receiveBuffers": "--receive-buffers",
                     "sendBufferSize": "--send-buffer-size", "sendBuffers": "--send-buffers",
                     "ringEntries": "--ring-entries", "zeroCopySendThreshold": "--zero-copy-sends", "maxConnectionsPerAddress": "--max-per-address",
                     "threads": "--threads", "cpuAffinity": "--cpus", "spoolThreshold": "--spool-threshold",
                     "spoolDirectory": "--spool-directory", "headerTimeout": "--header-timeout",
                     "proxyProtocol.headerTimeout": "--proxy-header-timeout"]
        return flags[field] ?? field
    }

    func run() throws {
        var logger = Logger(label: "ringside")
        logger.logLevel = Logger.Level(rawValue: logLevel) ?? .info
        let config = try serverConfiguration()
        let http = self.protocol == .http ? try httpConfiguration() : nil
        let readiness = Readiness()
        let delay = try seconds(shutdownDelay, "--shutdown-delay") ?? .zero

        // SIGPIPE would kill us on a write to a reset peer; sends use MSG_NOSIGNAL, this is belt and braces.
        signal(SIGPIPE, SIG_IGN)
        // Block SIGINT/SIGTERM before the loop thread exists, so only sigwait below receives them.
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGINT)
        sigaddset(&set, SIGTERM)
        sigaddset(&set, SIGHUP)
        pthread_sigmask(SIG_BLOCK, &set, nil)

        // TLS: every connection behind a TLS layer (one context shared by the loops).
        let tls: TLSContext?
        if let tlsCert, let tlsKey {
            do { tls = try TLSContext(TLSConfiguration(certificateFile: tlsCert, keyFile: tlsKey), logger: logger) } catch {
                usageError("--tls-cert/--tls-key: \(error)")
            }
        } else {
            tls = nil
        }
        func start<H: ConnectionHandler>(_ make: @escaping @Sendable () -> H) throws -> RunningServer {
            if let tls { return try RingsideServer.start(configuration: config, logger: logger, layers: LayerStackFactory([tls]), handler: make) }
            return try RingsideServer.start(configuration: config, logger: logger, handler: make)
        }

        let server: RunningServer
        switch self.protocol {
        case .echo:
            if let token = authToken {
                server = try start { AuthenticatedEchoHandler(token: token) }
            } else {
                server = try start { EchoHandler() }
            }
        case .asyncEcho:
            let echo: @Sendable (AsyncConnection) async throws -> Void = { conn in
                for try await chunk in conn.inbound { try await conn.write(chunk) }
            }
            if let tls {
                server = try RingsideServer.startAsync(configuration: config, requiresAuthentication: false,
                                                       layers: LayerStackFactory([tls]), logger: logger, echo)
            } else {
                server = try RingsideServer.startAsync(configuration: config, requiresAuthentication: false, logger: logger, echo)
            }
        case .http:
            var router = HTTPRouter.benchmarkRoutes
            router.readiness("/ready", readiness)
            if let dir = `static` {
                do { try router.files("/static", root: dir) } catch {
                    throw ConfigurationError(field: "--static", problem: "\(error)")
                }
            }
            server = try start(HTTPServer.handler(router: router, configuration: http!))

        }
        print("listening on \(host):\(server.port) backend=\(server.backend)\(threads > 1 ? " threads=\(threads)" : "")\(tls != nil ? " tls" : "")")
        fflush(nil)  // all output streams: the line must reach a pipe at once

        var sig: Int32 = 0
        while true {
            sigwait(&set, &sig)
            guard sig == SIGHUP else { break }
            // SIGHUP: reload the certificate and key (new connections use them; a failure keeps the old).
            if let tls {
                do { try tls.reload() } catch { logger.error("SIGHUP: TLS reload failed, keeping the current certificates: \(error)") }
            } else {
                logger.info("SIGHUP: nothing to reload (no TLS)")
            }
        }
        sigdelset(&set, SIGHUP)
        readiness.markUnready()
        if delay > .zero {
            // Still serving, unready: the load balancer's health checks take this instance out of rotation.
            logger.info("signal \(sig): unready; stopping in \(shutdownDelay) (a second signal stops at once)")
            var ts = timespec(tv_sec: Int(delay.components.seconds), tv_nsec: Int(delay.components.attoseconds / 1_000_000_000))
            if sigtimedwait(&set, nil, &ts) > 0 { logger.info("second signal: stopping now") }
        }
        logger.info("signal \(sig): stopping")
        server.stop()
        try server.wait()
        let s = server.stats
        logger.info("stopped", metadata: [
            "accepted": "\(s.connectionsAccepted)", "bytesIn": "\(s.bytesIn)", "bytesOut": "\(s.bytesOut)",
            "open": "\(s.connectionsOpen)", "buffersInUse": "\(s.buffersInUse)", "peakBuffersInUse": "\(s.peakBuffersInUse)",
            "refused": "\(s.connectionsRefused)", "refusedPerAddress": "\(s.connectionsRefusedPerAddress)",
            "authTimeouts": "\(s.authenticationTimeouts)", "idleTimeouts": "\(s.idleTimeouts)",
            "writeStallTimeouts": "\(s.writeStallTimeouts)", "readTimeouts": "\(s.readTimeouts)",
            "tls": "handshakes \(s.tlsHandshakes) resumed \(s.tlsResumptions) failed \(s.tlsHandshakeFailures) truncated \(s.tlsHandshakesTruncated) timeouts \(s.tlsHandshakeTimeouts) overCap \(s.tlsHandshakesOverCap) evicted \(s.tlsHandshakesEvicted) kernelTransmit \(s.tlsKernelTransmits) errors \(s.layerErrors)",
            "fileSplices": "\(s.fileSplices) bytes \(s.fileSpliceBytes) fallbacks \(s.fileSpliceFallbacks) pipesInUse \(s.splicePipesInUse)",
            "proxyHeaders": "accepted \(s.proxyHeadersAccepted) rejected \(s.proxyHeadersRejected) untrusted \(s.proxyHeadersUntrusted) timeouts \(s.proxyHeaderTimeouts)",
            "zeroCopySends": "sent \(s.zeroCopySends) zeroCopy \(s.zeroCopySendsCompleted) copied \(s.zeroCopySendsCopied)",
            "acceptedPerLoop": "\(server.loopStats.map { String($0.connectionsAccepted) }.joined(separator: ","))",
        ])
        if let h = http?.stats {
            logger.info("http", metadata: [
                "spoolFailures": "\(h.spoolFailures)", "continueWriteFailures": "\(h.continueWriteFailures)",
                "responsesDeferred": "\(h.responsesDeferred)", "fileReadFailures": "\(h.fileReadFailures)",
                "responsesCutOff": "\(h.responsesCutOff)", "pipelineOverflows": "\(h.pipelineOverflows)",
            ])
        }
    }
}

/// Usage and configuration errors: one line on stderr, exit status 2 (never a trap). Help and version
/// requests and run-time failures go through ArgumentParser as usual.
func usageError(_ message: String) -> Never {
    let line = message.split(separator: "\n", omittingEmptySubsequences: true).first.map(String.init) ?? message
    var text = "ringside: \(line)\n"
    text.withUTF8 { _ = Glibc.write(2, $0.baseAddress, $0.count) }
    exit(2)
}

do {
    var command = try RingsideCommand.parseAsRoot()
    try command.run()
} catch let error as ConfigurationError {
    usageError("\(error.field): \(error.problem)")
} catch {
    if RingsideCommand.exitCode(for: error) == .validationFailure {
        usageError(RingsideCommand.message(for: error))
    }
    RingsideCommand.exit(withError: error)
}
