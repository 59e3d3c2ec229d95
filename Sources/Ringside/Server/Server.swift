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
    /// Starts one event loop on its own thread, serving `makeHandler()`-created handlers, and returns
    /// once it listens (or throws the reason it could not).
    public static func start<H: ConnectionHandler>(
        configuration: ServerConfiguration,
        logger: Logger = Logger(label: "ringside"),
        handler makeHandler: @escaping @Sendable () -> H
    ) throws -> RunningServer {
        let control = try LoopControl()
        let ready = DispatchSemaphore(value: 0)
        let startup = Locked<Result<(Int, BackendKind), any Error>?>(nil)
        let outcome = Locked<(any Error)?>(nil)
        let done = DispatchSemaphore(value: 0)
        let thread = LoopThread(name: "ringside-loop") {
            let backend: any EventLoopBackend
            do {
                backend = try makeBackend(configuration, control: control, logger: logger, factory: makeHandler)
            } catch {
                startup.withLock { $0 = .failure(error) }
                ready.signal()
                done.signal()
                return
            }
            let kind: BackendKind = backend.name == "uring" ? .uring : .epoll
            logger.info("ringside loop started", metadata: [
                "backend": "\(backend.name)", "config": "\(backend.summary)",
                "maxConnections": "\(configuration.maxConnections)",
                "watermarks": "\(configuration.highWatermark)/\(configuration.lowWatermark)",
            ])
            startup.withLock { $0 = .success(((backend as? PortReporting)?.port ?? configuration.port, kind)) }
            ready.signal()
            do { try backend.run() } catch { outcome.withLock { $0 = error } }
            done.signal()
        }
        try thread.start()
        ready.wait()
        switch startup.value! {
        case .failure(let e):
            done.wait()
            thread.join()
            throw e
        case .success(let (port, kind)):
            return RunningServer(port: port, backend: kind, control: control, thread: thread, done: done, outcome: outcome)
        }
    }

    static func makeBackend<H: ConnectionHandler>(
        _ config: ServerConfiguration, control: LoopControl, logger: Logger, factory: @escaping @Sendable () -> H
    ) throws -> any EventLoopBackend {
        switch config.backend {
        case .epoll:
            return try EpollBackend(config: config, control: control, logger: logger, factory: factory)
        case .uring:
            return try UringBackend(config: config, control: control, logger: logger, factory: factory)
        case .auto:
            do {
                return try UringBackend(config: config, control: control, logger: logger, factory: factory)
            } catch let e as RingSetupError {
                logger.warning("\(e); serving on epoll instead")
                return try EpollBackend(config: config, control: control, logger: logger, factory: factory)
            }
        }
    }
}

/// Backends that bound their own listener report the port they got (for `port: 0`).
protocol PortReporting { var port: Int { get } }
extension UringBackend: PortReporting {}
extension EpollBackend: PortReporting {}

/// A started server: its port and backend, its counters, and the way to stop it.
public final class RunningServer: Sendable {
    /// The port it listens on (the one picked when configured with port 0).
    public let port: Int
    /// The backend actually in use (never `.auto`).
    public let backend: BackendKind
    private let control: LoopControl
    private let thread: LoopThread
    private let done: DispatchSemaphore
    private let outcome: Locked<(any Error)?>
    private let joined = Locked(false)

    init(port: Int, backend: BackendKind, control: LoopControl, thread: LoopThread,
         done: DispatchSemaphore, outcome: Locked<(any Error)?>) {
        self.port = port; self.backend = backend; self.control = control
        self.thread = thread; self.done = done; self.outcome = outcome
    }

    /// Counters as of the loop's last iteration.
    public var stats: ServerStats { control.stats }

    /// Stops gracefully: stop accepting, flush queued output (up to `drainTimeout`), close every
    /// connection, and end the loop after every operation's final completion. Any thread; idempotent.
    public func stop() { control.requestStop() }

    /// Waits for the loop to end; rethrows the error that ended it, if any.
    public func wait() throws {
        let first = joined.withLock { j in defer { j = true }; return !j }
        if first {
            done.wait()
            thread.join()
        }
        if let e = outcome.value { throw e }
    }

    /// Stops and waits.
    public func shutdown() throws { stop(); try wait() }
}
