import ArgumentParser
import Glibc
import Logging
import Ringside
import RingsideHTTP
import RingsideProtocols

extension BackendKind: ExpressibleByArgument {}

/// The protocols `ringside serve` can serve.
enum ServedProtocol: String, ExpressibleByArgument, CaseIterable {
    /// Echo every byte back.
    case echo
    /// HTTP/1.1: GET /plaintext, GET /json, POST /echo.
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
    @Option(help: "Log level (trace, debug, info, notice, warning, error, critical).") var logLevel = "info"
    @Option(help: "Echo: require this greeting line before echoing (clients that never send it are closed at --auth-timeout).")
    var authToken: String? = nil
    @Option(help: "Seconds a connection that must authenticate may take to do so (0: no deadline).") var authTimeout = 30.0
    @Option(help: "Seconds without a byte received or sent before a connection is closed (0: never).") var idleTimeout = 60.0
    @Option(help: "Seconds queued output may make no progress before the connection is aborted (0: never).")
    var writeStallTimeout = 30.0
    @Option(help: "Most simultaneous connections per remote address (0: no cap).") var maxPerAddress = 0
    @Option(help: "HTTP: seconds a client may take to send a complete request head.") var headerTimeout = 10.0
    @Option(help: "Event loops (threads), each with its own ring or epoll instance, pool and SO_REUSEPORT listener.")
    var threads = 1
    @Flag(help: "Pin loop i to CPU i (or to the --cpus list).") var pin = false
    @Option(help: "Pin loops to these CPUs, comma-separated (loop i on the (i mod count)th); implies --pin.")
    var cpus: String? = nil

    func validate() throws {
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
    private func seconds(_ s: Double, _ flag: String, zeroIsOff: Bool = true) throws(ConfigurationError) -> Duration? {
        let most = Double(ServerConfiguration.maximumDuration.components.seconds)
        guard s.isFinite, s >= 0, s <= most else {
            throw ConfigurationError(field: flag, problem: "\(s) is not a number of seconds in 0...\(Int(most)) (100 years)")
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
        config.authenticationTimeout = try seconds(authTimeout, "--auth-timeout")
        config.idleTimeout = try seconds(idleTimeout, "--idle-timeout")
        config.writeStallTimeout = try seconds(writeStallTimeout, "--write-stall-timeout")
        guard maxPerAddress >= 0 else { throw ConfigurationError(field: "--max-per-address", problem: "\(maxPerAddress) is negative (0: no cap)") }
        config.maxConnectionsPerAddress = maxPerAddress > 0 ? maxPerAddress : nil
        config.threads = threads
        if let cpus { config.cpuAffinity = parseCPUs(cpus) } else if pin { config.cpuAffinity = Array(0..<max(1, threads)) }
        do { try config.validate() } catch { throw ConfigurationError(field: Self.flag(error.field), problem: error.problem) }
        return config
    }

    private func httpConfiguration() throws(ConfigurationError) -> HTTPServerConfiguration {
        var http = HTTPServerConfiguration()
        http.spoolThreshold = spoolThreshold
        http.spoolDirectory = spoolDirectory
        guard let header = try seconds(headerTimeout, "--header-timeout"), header >= .milliseconds(1) else {
            throw ConfigurationError(field: "--header-timeout", problem: "\(headerTimeout) must be at least 0.001 seconds")
        }
        http.headerTimeout = header
        do { try http.validate() } catch { throw ConfigurationError(field: Self.flag(error.field), problem: error.problem) }
        return http
    }

    /// The flag that sets a configuration field (the field's own name when no flag does).
    static func flag(_ field: String) -> String {
        let flags = ["host": "--host", "port": "--port", "maxConnections": "--max-connections",
                     "bufferSize": "--buffer-size", "receiveBuffers": "--receive-buffers",
                     "sendBufferSize": "--send-buffer-size", "sendBuffers": "--send-buffers",
                     "ringEntries": "--ring-entries", "maxConnectionsPerAddress": "--max-per-address",
                     "threads": "--threads", "cpuAffinity": "--cpus", "spoolThreshold": "--spool-threshold",
                     "spoolDirectory": "--spool-directory", "headerTimeout": "--header-timeout"]
        return flags[field] ?? field
    }

    func run() throws {
        var logger = Logger(label: "ringside")
        logger.logLevel = Logger.Level(rawValue: logLevel) ?? .info
        let config = try serverConfiguration()
        let http = self.protocol == .http ? try httpConfiguration() : nil

        // SIGPIPE would kill us on a write to a reset peer; sends use MSG_NOSIGNAL, this is belt and braces.
        signal(SIGPIPE, SIG_IGN)
        // Block SIGINT/SIGTERM before the loop thread exists, so only sigwait below receives them.
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGINT)
        sigaddset(&set, SIGTERM)
        pthread_sigmask(SIG_BLOCK, &set, nil)

        let server: RunningServer
        switch self.protocol {
        case .echo:
            if let token = authToken {
                server = try RingsideServer.start(configuration: config, logger: logger) { AuthenticatedEchoHandler(token: token) }
            } else {
                server = try RingsideServer.start(configuration: config, logger: logger) { EchoHandler() }
            }
        case .asyncEcho:
            server = try RingsideServer.startAsync(configuration: config, requiresAuthentication: false,
                                                   logger: logger) { conn in
                for try await chunk in conn.inbound { try await conn.write(chunk) }
            }
        case .http:
            server = try RingsideServer.start(configuration: config, logger: logger,
                                              handler: HTTPServer.handler(router: .benchmarkRoutes, configuration: http!))
        }
        print("listening on \(host):\(server.port) backend=\(server.backend)\(threads > 1 ? " threads=\(threads)" : "")")
        fflush(nil)  // all output streams: the line must reach a pipe at once

        var sig: Int32 = 0
        sigwait(&set, &sig)
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
