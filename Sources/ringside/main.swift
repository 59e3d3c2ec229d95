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
        guard threads >= 1 else { throw ValidationError("--threads must be at least 1") }
        if let cpus, parseCPUs(cpus) == nil {
            throw ValidationError("--cpus takes comma-separated CPU numbers, e.g. 0,1 (got '\(cpus)')")
        }
    }

    private func parseCPUs(_ list: String) -> [Int]? {
        let cpus = list.split(separator: ",").map { Int($0) }
        guard !cpus.isEmpty, cpus.allSatisfy({ ($0 ?? -1) >= 0 }) else { return nil }
        return cpus.map { $0! }
    }

    func run() throws {
        var logger = Logger(label: "ringside")
        logger.logLevel = Logger.Level(rawValue: logLevel) ?? .info
        var config = ServerConfiguration(host: host, port: port, backend: backend)
        config.maxConnections = maxConnections
        config.bufferSize = bufferSize
        config.receiveBuffers = receiveBuffers
        config.sendBufferSize = sendBufferSize
        config.sendBuffers = sendBuffers
        config.ringEntries = ringEntries
        func seconds(_ s: Double) -> Duration? { s > 0 ? .milliseconds(Int64(s * 1000)) : nil }
        config.authenticationTimeout = seconds(authTimeout)
        config.idleTimeout = seconds(idleTimeout)
        config.writeStallTimeout = seconds(writeStallTimeout)
        config.maxConnectionsPerAddress = maxPerAddress > 0 ? maxPerAddress : nil
        config.threads = threads
        if let cpus { config.cpuAffinity = parseCPUs(cpus) } else if pin { config.cpuAffinity = Array(0..<threads) }

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
            var http = HTTPServerConfiguration()
            http.spoolThreshold = spoolThreshold
            http.headerTimeout = .milliseconds(Int64(headerTimeout * 1000))
            server = try RingsideServer.start(configuration: config, logger: logger,
                                              handler: HTTPServer.handler(router: .benchmarkRoutes, configuration: http))
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
    }
}

RingsideCommand.main()
