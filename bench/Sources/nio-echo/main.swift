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
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: backlog)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(EchoHandler())
                }
            }
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.maxMessagesPerRead, value: 16)
            .childChannelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator())

        let channel = try bootstrap.bind(host: host, port: port).wait()
        let boundPort = channel.localAddress?.port ?? port
        print("listening on \(host):\(boundPort) backend=swiftnio")
        fflush(nil)  // all output streams (stdout is a pipe under echo-bench.sh)

        let signals = stopOnSignals { channel.close(promise: nil) }
        try channel.closeFuture.wait()
        try group.syncShutdownGracefully()
        withExtendedLifetime(signals) {}
    }
}

/// Routes SIGINT and SIGTERM to `stop` (on a private queue) instead of the default termination.
func stopOnSignals(_ stop: @escaping @Sendable () -> Void) -> [any DispatchSourceSignal] {
    let queue = DispatchQueue(label: "signals")
    return [SIGINT, SIGTERM].map { sig in
        signal(sig, SIG_IGN)
        let source = DispatchSource.makeSignalSource(signal: sig, queue: queue)
        source.setEventHandler(handler: stop)
        source.resume()
        return source
    }
}
