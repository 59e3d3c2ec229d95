// hummingbird-http: a Hummingbird 2 app serving `GET /plaintext` ("Hello, World!", text/plain) on ONE
// NIO event loop: the Swift framework a user would pick today, as the async-route peer for wrk
// (bench/http-async-wrk.sh).
//
//   hummingbird-http --host 127.0.0.1 --port 0
//   prints:  listening on 127.0.0.1:PORT backend=hummingbird
//
// Hummingbird runs route handlers as Swift tasks on the global concurrent executor (its design), so a
// request hops from the NIO loop thread to the cooperative pool and back. SIGINT/SIGTERM: exit 0.

import Hummingbird
import Logging
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

@main
struct HummingbirdPlaintext {
    static func main() async throws {
        var host = "127.0.0.1"
        var port = 0
        var args = CommandLine.arguments.dropFirst()
        while let a = args.popFirst() {
            switch a {
            case "--host": host = args.popFirst() ?? host
            case "--port": port = Int(args.popFirst() ?? "") ?? port
            default:
                writeLine(2, "usage: hummingbird-http [--host H] [--port P]\n")
                exit(2)
            }
        }
        let (host_, port_) = (host, port)
        let router = Router()
        router.get("/plaintext") { _, _ -> Response in
            var headers = HTTPFields()
            headers[.contentType] = "text/plain"
            return Response(status: .ok, headers: headers,
                            body: ResponseBody(byteBuffer: ByteBuffer(string: "Hello, World!")))
        }
        var logger = Logger(label: "hummingbird-http")
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
