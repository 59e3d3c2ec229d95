import CLiburing
import Dispatch
import Glibc
import Logging
import Synchronization

/// Starts Ringside servers.
///
/// ```swift
/// var config = ServerConfiguration(host: "127.0.0.1", port: 8080, backend: .auto)
/// let server = try RingsideServer.start(configuration: config) { Echo() }
/// print("listening on \(server.port) backend=\(server.backend)")
/// server.stop()          // from any thread; graceful
/// try server.wait()
/// ```
public enum RingsideServer {
    /// Starts `configuration.threads` event loops, each on its own thread with its own backend, buffer
    /// pool and listener, serving `makeHandler()`-created handlers, and returns once every loop listens
    /// (or throws the reason one could not, after stopping the ones already started).
    ///
    /// This entry point is `@inlinable` so that the handler calls are compiled where `H` is known,
    /// specialised for it (see `HandlerCalls`); the loop itself is compiled once, here.
    @inlinable
    public static func start<H: ConnectionHandler>(
        configuration: ServerConfiguration,
        logger: Logger = Logger(label: "ringside"),
        handler makeHandler: @escaping @Sendable () -> H
    ) throws -> RunningServer {
        try start(configuration: configuration, logger: logger, handlers: HandlerFactory(makeHandler))
    }

    /// `start<H>` once the handler calls are made: everything that does not depend on the handler type.
    @usableFromInline
    static func start(configuration: ServerConfiguration, logger: Logger, handlers: HandlerFactory) throws -> RunningServer {
        var configuration = configuration
        configuration.disabledFeatures.formUnion(try KernelFeatures.fromEnvironment())
        try configuration.applyCompletionBatchEnvironment()
        try configuration.applySendWaitEnvironment()
        let threads = configuration.threads
        try configuration.validate()
        try LockedMemoryPlan.fit(&configuration, logger: logger)
        var loops: [Loop] = []
        loops.reserveCapacity(threads)
        var first: Loop.Started? = nil
        // PROXY protocol: every handler sits behind the header phase (ProxyProtocolHandler).
        let policy = configuration.proxyProtocol.map { ProxyProtocolPolicy($0, logger: logger) }
        do {
            for index in 0..<threads {
                var config = configuration
                if let f = first {
                    // The first loop resolved port 0 and `.auto`; the others share its port (SO_REUSEPORT)
                    // and its backend, so one server never mixes backends.
                    config.port = f.port
                    config.backend = f.kind
                }
                if var out = config.connect, threads > 1 {
                    // `count` is the server's total: split it across the loops.
                    out.count = out.count / threads + (index < out.count % threads ? 1 : 0)
                    config.connect = out
                }
                let (loop, started) = try Loop.start(index: index, configuration: config, logger: logger,
                                                     handlers: handlers, proxy: policy)
                loops.append(loop)
                if first == nil { first = started }
            }
        } catch {
            for l in loops { l.control.requestStop() }
            for l in loops { try? l.wait() }
            throw error
        }
        let f = first!
        var metadata: Logger.Metadata = [
            "backend": "\(f.kind)", "features": "\(f.summary)",
            "threads": "\(threads)",
            "cpus": "\(configuration.cpuAffinity.map { $0.map(String.init).joined(separator: ",") } ?? "unpinned")",
            "maxConnections": "\(configuration.maxConnections)\(threads > 1 ? " per loop" : "")",
            "watermarks": "\(configuration.highWatermark)/\(configuration.lowWatermark)",
            "drainTimeout": "\(configuration.drainTimeout.compactDescription)",
            "authenticationTimeout": "\(configuration.authenticationTimeout.map(\.compactDescription) ?? "off")",
            "idleTimeout": "\(configuration.idleTimeout.map(\.compactDescription) ?? "off")",
            "writeStallTimeout": "\(configuration.writeStallTimeout.map(\.compactDescription) ?? "off")",
            "maxConnectionsPerAddress": "\(configuration.maxConnectionsPerAddress.map { "\($0)\(threads > 1 ? " per loop" : "")" } ?? "off")",
            "keepAlive": "\(configuration.keepAlive.map { "\($0.idle.compactDescription)/\($0.interval.compactDescription)x\($0.count)" } ?? "off")",
            "receiveBurstLimit": "\(configuration.receiveBurstLimit)",
            "disabledFeatures": "\(configuration.disabledFeatures)",
            "proxyProtocol": "\(configuration.proxyProtocol.map { "trusting \($0.trustedProxies.map(\.description).joined(separator: ",")), header within \($0.headerTimeout.compactDescription)" } ?? "off")",
        ]
        if configuration.listen { metadata["listen"] = "\(configuration.host):\(f.port)" }
        logger.info("ringside started", metadata: metadata)
        return RunningServer(port: f.port, backend: f.kind, loops: loops)
    }

    /// A backend for `config` whose handlers `handlers` makes (behind the PROXY protocol's header phase
    /// when `proxy` is set).
    static func makeBackend(
        _ config: ServerConfiguration, control: LoopControl, logger: Logger, handlers: HandlerFactory,
        proxy: ProxyProtocolPolicy?
    ) throws -> any EventLoopBackend {
        let table = { (core: LoopCore) -> HandlerTable in
            let calls = if let proxy { handlers.makeProxied(core.capacity, proxy) } else { handlers.make(core.capacity) }
            return HandlerTable(core: core, calls: calls)
        }
        let auth = handlers.requiresAuthentication
        switch config.backend {
        case .epoll:
            return try EpollBackend(config: config, control: control, logger: logger, handlers: table, requiresAuthentication: auth)
        case .uring:
            return try UringBackend(config: config, control: control, logger: logger, handlers: table, requiresAuthentication: auth)
        case .auto:
            do {
                return try UringBackend(config: config, control: control, logger: logger, handlers: table, requiresAuthentication: auth)
            } catch let e as RingSetupError {
                logger.warning("\(e); serving on epoll instead")
                return try EpollBackend(config: config, control: control, logger: logger, handlers: table, requiresAuthentication: auth)
            }
        }
    }
}

/// Backends that bound their own listener report the port they got (for `port: 0`).
protocol PortReporting { var port: Int { get } }
extension UringBackend: PortReporting {}
extension EpollBackend: PortReporting {}

/// One event loop of a server: its thread, its control block and how it ended.
final class Loop: Sendable {
    /// What a loop reports once it listens.
    struct Started: Sendable {
        var port: Int
        var kind: BackendKind
        var summary: String
    }

    let control: LoopControl
    private let thread: LoopThread
    private let done: DispatchSemaphore
    private let outcome: Locked<(any Error)?>
    private let joined = Locked(false)

    private init(control: LoopControl, thread: LoopThread, done: DispatchSemaphore, outcome: Locked<(any Error)?>) {
        self.control = control; self.thread = thread; self.done = done; self.outcome = outcome
    }

    /// Starts loop `index` on its own thread (pinned first, when `cpuAffinity` says so, so the ring and
    /// pool are allocated on that CPU's node) and returns once its backend listens.
    static func start(
        index: Int, configuration: ServerConfiguration, logger: Logger, handlers: HandlerFactory,
        proxy: ProxyProtocolPolicy?
    ) throws -> (Loop, Started) {
        let control = try LoopControl()
        let ready = DispatchSemaphore(value: 0)
        let startup = Locked<Result<Started, any Error>?>(nil)
        let outcome = Locked<(any Error)?>(nil)
        let done = DispatchSemaphore(value: 0)
        let cpu = configuration.cpuAffinity.map { $0[index % $0.count] }
        let thread = LoopThread(name: "ringside-loop-\(index)") {
            let backend: any EventLoopBackend
            do {
                if let cpu {
                    let r = rs_pin_to_cpu(Int32(clamping: cpu))
                    if r < 0 { throw SyscallError("sched_setaffinity(loop \(index) to CPU \(cpu))", Errno(rawValue: -r)) }
                }
                backend = try RingsideServer.makeBackend(configuration, control: control, logger: logger, handlers: handlers, proxy: proxy)
            } catch {
                startup.withLock { $0 = .failure(error) }
                ready.signal()
                done.signal()
                return
            }
            let kind: BackendKind = backend.name == "uring" ? .uring : .epoll
            let port = (backend as? PortReporting)?.port ?? configuration.port
            startup.withLock { $0 = .success(Started(port: port, kind: kind, summary: backend.summary)) }
            ready.signal()
            do { try backend.run() } catch { outcome.withLock { $0 = error } }
            // However the loop ended, its executor must stop claiming this thread: jobs still queued
            // go to the global executor (a loop that died with an error never shut it down).
            control.executor.abandon()
            done.signal()
        }
        try thread.start()
        ready.wait()
        switch startup.value! {
        case .failure(let e):
            done.wait()
            thread.join()
            throw e
        case .success(let started):
            return (Loop(control: control, thread: thread, done: done, outcome: outcome), started)
        }
    }

    /// Waits for the loop to end (the first caller joins the thread); rethrows the error that ended it.
    func wait() throws {
        let first = joined.withLock { j in defer { j = true }; return !j }
        if first {
            done.wait()
            thread.join()
        }
        if let e = outcome.value { throw e }
    }
}

/// A started server: its port and backend, its counters, and the way to stop it.
public final class RunningServer: Sendable {
    /// The port it listens on (the one picked when configured with port 0).
    public let port: Int
    /// The backend actually in use (never `.auto`).
    public let backend: BackendKind
    private let loops: [Loop]

    init(port: Int, backend: BackendKind, loops: [Loop]) {
        self.port = port; self.backend = backend; self.loops = loops
    }

    /// The number of event loops (`ServerConfiguration.threads`).
    public var threads: Int { loops.count }

    /// Counters as of each loop's last iteration, summed over the loops (peaks: the largest).
    public var stats: ServerStats {
        loops.count == 1 ? loops[0].control.stats : .merged(loops.lazy.map { $0.control.stats })
    }

    /// Each loop's own counters, in loop order.
    public var loopStats: [ServerStats] { loops.map { $0.control.stats } }

    /// Stops gracefully: every loop stops accepting, flushes queued output (up to `drainTimeout`),
    /// closes every connection, and ends after every operation's final completion. Any thread;
    /// idempotent.
    public func stop() { for l in loops { l.control.requestStop() } }

    /// Waits for every loop to end; rethrows the first error that ended one, if any.
    public func wait() throws {
        var failure: (any Error)? = nil
        for l in loops {
            do { try l.wait() } catch { if failure == nil { failure = error } }
        }
        if let failure { throw failure }
    }

    /// Stops and waits.
    public func shutdown() throws { stop(); try wait() }
}
