// What both SwiftNIO peers share: one event loop, the same socket options as Ringside (TCP_NODELAY,
// backlog, SO_REUSEADDR), the `listening on HOST:PORT backend=NAME` line, and a graceful stop on
// SIGINT/SIGTERM.
import Dispatch
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

/// Serves on one event loop until SIGINT/SIGTERM; `initChild` sets up each accepted channel's pipeline.
public func serveOnOneLoop(
    host: String, port: Int, backlog: Int32, name: String,
    initChild: @escaping @Sendable (any Channel) throws -> Void
) throws {
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    let bootstrap = ServerBootstrap(group: group)
        .serverChannelOption(.backlog, value: backlog)
        .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
        .childChannelInitializer { channel in
            channel.eventLoop.makeCompletedFuture { try initChild(channel) }
        }
        .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
        .childChannelOption(.socketOption(.so_reuseaddr), value: 1)
        .childChannelOption(.maxMessagesPerRead, value: 16)
        .childChannelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator())

    let channel = try bootstrap.bind(host: host, port: port).wait()
    let boundPort = channel.localAddress?.port ?? port
    print("listening on \(host):\(boundPort) backend=\(name)")
    fflush(nil)  // all output streams (stdout is a pipe under the benchmark runners)

    let signals = stopOnSignals { channel.close(promise: nil) }
    try channel.closeFuture.wait()
    try group.syncShutdownGracefully()
    withExtendedLifetime(signals) {}
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
