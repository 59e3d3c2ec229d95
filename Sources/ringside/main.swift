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
            server = try RingsideServer.start(configuration: config, logger: logger) { EchoHandler() }
        case .http:
            var http = HTTPServerConfiguration()
            http.spoolThreshold = spoolThreshold
            server = try RingsideServer.start(configuration: config, logger: logger,
                                              handler: HTTPServer.handler(router: .benchmarkRoutes, configuration: http))
        }
        print("listening on \(host):\(server.port) backend=\(server.backend)")
        fflush(nil)  // all output streams: the line must reach a pipe at once

        var sig: Int32 = 0
        sigwait(&set, &sig)
        logger.info("signal \(sig): stopping")
        server.stop()
        try server.wait()
        let s = server.stats
        logger.info("stopped", metadata: [
            "accepted": "\(s.connectionsAccepted)", "bytesIn": "\(s.bytesIn)", "bytesOut": "\(s.bytesOut)",
        ])
    }
}

RingsideCommand.main()
