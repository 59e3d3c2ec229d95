// nio-echo: a SwiftNIO TCP echo server on ONE event loop, the NIO baseline for bench/echo-bench.sh.
//
//   nio-echo --host 127.0.0.1 --port 0
//   prints:  listening on 127.0.0.1:PORT backend=swiftnio
//
// What NIO's own NIOEchoServer example does: write each inbound ByteBuffer back on channelRead,
// flush on channelReadComplete. Like Ringside: TCP_NODELAY on accepted sockets, backlog 4096,
// SO_REUSEADDR. SIGINT/SIGTERM close the listener, shut the event loop group down, exit 0.

import ArgumentParser
import Dispatch
import NIOCore
import NIOPeerSupport
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

final class EchoHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        context.write(data, promise: nil)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.flush()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

@main
struct NIOEcho: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "nio-echo",
        abstract: "SwiftNIO echo server on one event loop (baseline for bench/echo-bench.sh).")

    @Option(help: "Address to bind.") var host = "127.0.0.1"
    @Option(help: "Port; 0 picks a free one (printed).") var port = 0
    @Option(help: "listen(2) backlog.") var backlog: Int32 = 4096

    func run() throws {
        try serveOnOneLoop(host: host, port: port, backlog: backlog, name: "swiftnio") { channel in
            try channel.pipeline.syncOperations.addHandler(EchoHandler())
        }
    }
}
