// nio-http: a SwiftNIO HTTP/1.1 plaintext server on ONE event loop (the NIO baseline for wrk).
//
//   nio-http --host 127.0.0.1 --port 0
//   prints:  listening on 127.0.0.1:PORT backend=swiftnio-http
//
// `GET /plaintext` answers `Hello, World!` (text/plain, content-length 13); anything else 404.
// Keep-alive is honoured (HTTP/1.1 default, HTTP/1.0 with `Connection: keep-alive`); otherwise the
// connection is closed after the response. Responses are written on `.end` and flushed on
// channelReadComplete, so pipelined requests leave in one write. SIGINT/SIGTERM: exit 0.

import ArgumentParser
import Dispatch
import NIOCore
import NIOPeerSupport
import NIOHTTP1
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

@main
struct NIOHTTPPlaintext: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "nio-http",
        abstract: "SwiftNIO HTTP/1.1 plaintext server on one event loop (GET /plaintext).")

    @Option(help: "Address to bind.") var host = "127.0.0.1"
    @Option(help: "Port; 0 picks a free one (printed).") var port = 0
    @Option(help: "listen(2) backlog.") var backlog: Int32 = 4096

    func run() throws {
        try serveOnOneLoop(host: host, port: port, backlog: backlog, name: "swiftnio-http") { channel in
            try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
            try channel.pipeline.syncOperations.addHandler(PlaintextHandler())
        }
    }
}
