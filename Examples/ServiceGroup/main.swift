// Ringside embedded in a swift-service-lifecycle ServiceGroup, with swift-log logging and
// swift-metrics exported in the Prometheus text format on the same HTTP port.
// Run: swift run -c release ringside-service-example --port 8080 [--backend uring|epoll|auto]
//   curl localhost:8080/plaintext
//   curl localhost:8080/metrics
//   kill -TERM <pid>     (or Ctrl-C): stops accepting, drains, closes every connection, exits 0
import Glibc
import Logging
import Metrics
import Prometheus
import Ringside
import RingsideHTTP
import RingsideService
import ServiceLifecycle

var config = ServerConfiguration(host: "127.0.0.1", port: 8080, backend: .auto)
var arguments = CommandLine.arguments.dropFirst().makeIterator()
while let argument = arguments.next() {
    switch argument {
    case "--port": config.port = arguments.next().flatMap { Int($0) } ?? config.port
    case "--host": config.host = arguments.next() ?? config.host
    case "--backend": config.backend = arguments.next().flatMap { BackendKind(rawValue: $0) } ?? config.backend
    default:
        print("usage: ringside-service-example [--host 127.0.0.1] [--port 8080] [--backend uring|epoll|auto]")
        exit(2)
    }
}

LoggingSystem.bootstrap { label in
    var handler = StreamLogHandler.standardOutput(label: label)
    handler.logLevel = .info
    return handler
}
let logger = Logger(label: "ringside-service-example")

// Every swift-metrics metric in the process (Ringside's `ringside_*` included) lands in this registry.
let registry = PrometheusCollectorRegistry()
MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))

var router = HTTPRouter.benchmarkRoutes  // GET /plaintext, GET /json, POST /echo
router.get("/metrics") { _, res in
    res.setHeader("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
    res.write(registry.emitToBuffer())
}

signal(SIGPIPE, SIG_IGN)
let host = config.host
let ringside = RingsideService(
    configuration: config,
    logger: logger,
    metrics: RingsideMetrics.Options(interval: .seconds(1)),
    onStart: { server in
        print("listening on \(host):\(server.port) backend=\(server.backend)")
        fflush(nil)
    },
    handler: HTTPServer.handler(router: router)
)
let group = ServiceGroup(services: [ringside], gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
try await group.run()
logger.info("bye")
