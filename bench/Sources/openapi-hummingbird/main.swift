// openapi-hummingbird: the OpenAPI example service (Examples/OpenAPIService: the same generated code
// and the same `ItemsHandler`) on Hummingbird 2 through swift-openapi-hummingbird, ONE NIO event loop:
// the peer of `ringside-openapi-example` for bench/openapi-wrk.sh.
//
//   openapi-hummingbird --host 127.0.0.1 --port 0
//   prints:  listening on 127.0.0.1:PORT backend=hummingbird
//
// Registered with the same middleware as the Ringside example (`ErrorHandlingMiddleware`).
// SIGINT/SIGTERM: exit 0.

import Hummingbird
import Logging
import NIOCore
import NIOPosix
import OpenAPIHummingbird
import OpenAPIItemsService
import OpenAPIRuntime

#if canImport(Glibc)
import Glibc
#endif

@main
struct OpenAPIHummingbirdPeer {
    static func main() async throws {
        var host = "127.0.0.1"
        var port = 0
        var args = CommandLine.arguments.dropFirst()
        while let a = args.popFirst() {
            switch a {
            case "--host": host = args.popFirst() ?? host
            case "--port": port = Int(args.popFirst() ?? "") ?? port
            default:
                writeLine(2, "usage: openapi-hummingbird [--host H] [--port P]\n")
                exit(2)
            }
        }
        let (host_, port_) = (host, port)
        let router = Router()
        try ItemsHandler().registerHandlers(on: router, middlewares: [ErrorHandlingMiddleware()])
        var logger = Logger(label: "openapi-hummingbird")
        logger.logLevel = .error
        let app = Application(
            router: router,
            configuration: .init(address: .hostname(host, port: port), serverName: nil),
            onServerRunning: { channel in
                let p = channel.localAddress?.port ?? port_
                writeLine(1, "listening on \(host_):\(p) backend=hummingbird\n")
            },
            eventLoopGroupProvider: .shared(MultiThreadedEventLoopGroup(numberOfThreads: 1)),
            logger: logger
        )
        try await app.runService()
    }
}

/// Writes `s` to descriptor `fd` unbuffered (the benchmark scripts wait for the "listening" line).
func writeLine(_ fd: Int32, _ s: String) {
    var s = s
    s.withUTF8 { b in _ = Glibc.write(fd, b.baseAddress, b.count) }
}
