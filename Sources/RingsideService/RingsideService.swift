import Dispatch
import Logging
import Ringside
import ServiceLifecycle

/// A Ringside server as a swift-service-lifecycle `Service`.
///
/// ``run()`` starts the server, publishes its stats with ``RingsideMetrics`` while it runs, and on
/// graceful shutdown or task cancellation stops it (stop accepting, drain queued output, close every
/// connection) and returns once its loop has ended. If the loop ends by itself with an error, `run()`
/// throws that error.
///
/// ```swift
/// let service = RingsideService(configuration: ServerConfiguration(port: 8080), logger: logger,
///                               handler: HTTPServer.handler(router: .benchmarkRoutes))
/// let group = ServiceGroup(services: [service], gracefulShutdownSignals: [.sigterm, .sigint],
///                          logger: logger)
/// try await group.run()
/// ```
///
/// The blocking parts (starting the loop thread and waiting for it to end) run on a dedicated
/// dispatch queue, never on the cooperative pool.
public final class RingsideService: Service, Sendable {
    private let start: @Sendable () throws -> RunningServer
    private let logger: Logger
    private let metrics: RingsideMetrics.Options?
    private let onStart: (@Sendable (RunningServer) -> Void)?
    private let state = PthreadMutex(State())

    private struct State: ~Copyable {
        var runCalled = false
        var server: RunningServer? = nil
        /// Why there is no server and never will be (start failed, or cancelled before starting).
        var failure: (any Error)? = nil
        var waiters: [Int: CheckedContinuation<RunningServer, any Error>] = [:]
        var nextWaiter = 0
    }

    /// Serves connections with handlers made by `handler`.
    ///
    /// - Parameters:
    ///   - configuration: the server's configuration (host, port, backend, sizes, ...).
    ///   - logger: used by the engine and for this service's start/stop messages.
    ///   - metrics: how to publish ``RingsideMetrics`` while the server runs; nil publishes nothing.
    ///   - onStart: called once the server listens (for example to learn `server.port`).
    ///   - handler: the per-connection handler factory, as for `RingsideServer.start`.
    public convenience init<H: ConnectionHandler>(
        configuration: ServerConfiguration,
        logger: Logger = Logger(label: "ringside"),
        metrics: RingsideMetrics.Options? = RingsideMetrics.Options(),
        onStart: (@Sendable (RunningServer) -> Void)? = nil,
        handler: @escaping @Sendable () -> H
    ) {
        self.init(logger: logger, metrics: metrics, onStart: onStart) {
            try RingsideServer.start(configuration: configuration, logger: logger, handler: handler)
        }
    }

    /// Runs the server that `start` starts (it must return a listening server or throw).
    public init(
        logger: Logger = Logger(label: "ringside"),
        metrics: RingsideMetrics.Options? = RingsideMetrics.Options(),
        onStart: (@Sendable (RunningServer) -> Void)? = nil,
        start: @escaping @Sendable () throws -> RunningServer
    ) {
        self.start = start
        self.logger = logger
        self.metrics = metrics
        self.onStart = onStart
    }

    /// The running server (its port, backend and stats), once ``run()`` has started it. Waits until
    /// then; throws the start error if it could not start. Still available after `run()` returned
    /// (the final stats).
    public var server: RunningServer {
        get async throws {
            let id = state.withLock { s in defer { s.nextWaiter += 1 }; return s.nextWaiter }
            return try await withTaskCancellationHandler {
                try await withCheckedThrowingContinuation { (c: CheckedContinuation<RunningServer, any Error>) in
                    let ready: Result<RunningServer, any Error>? = state.withLock { s in
                        if let server = s.server { return .success(server) }
                        if let failure = s.failure { return .failure(failure) }
                        if Task.isCancelled { return .failure(CancellationError()) }
                        s.waiters[id] = c
                        return nil
                    }
                    if let ready { c.resume(with: ready) }
                }
            } onCancel: {
                state.withLock { $0.waiters.removeValue(forKey: id) }?.resume(throwing: CancellationError())
            }
        }
    }

    /// Starts the server and serves until graceful shutdown or cancellation, then stops it and returns
    /// once its loop has ended. Throws the start error, or the error that ended the loop. Returns at
    /// once, without starting, if already cancelled or shutting down. Call once.
    public func run() async throws {
        try state.withLock { s in
            guard !s.runCalled else { throw RingsideServiceError.alreadyRun }
            s.runCalled = true
        }
        if Task.isCancelled || Task.isShuttingDownGracefully {
            resolve(.failure(CancellationError()))
            return
        }
        let server: RunningServer
        do {
            server = try await Self.offload(start)
        } catch {
            logger.error("ringside service failed to start", metadata: ["error": "\(error)"])
            resolve(.failure(error))
            throw error
        }
        logger.info("ringside service started", metadata: ["port": "\(server.port)", "backend": "\(server.backend)"])
        onStart?(server)
        resolve(.success(server))

        let reporter = metrics.map { RingsideMetrics(server: server, options: $0) }
        let logger = self.logger
        let ended: Result<Void, any Error> = await withTaskCancellationOrGracefulShutdownHandler {
            await withTaskGroup(of: Void.self) { group in
                if let reporter { group.addTask { await reporter.run() } }
                let ended: Result<Void, any Error>
                do {
                    try await Self.offload { try server.wait() }
                    ended = .success(())
                } catch {
                    ended = .failure(error)
                }
                group.cancelAll()
                return ended
            }
        } onCancelOrGracefulShutdown: {
            logger.info("ringside service stopping", metadata: ["port": "\(server.port)"])
            server.stop()
        }
        reporter?.report()
        switch ended {
        case .success:
            logger.info("ringside service stopped", metadata: ["port": "\(server.port)"])
        case .failure(let error):
            logger.error("ringside server loop failed", metadata: ["port": "\(server.port)", "error": "\(error)"])
            throw error
        }
    }

    private func resolve(_ result: Result<RunningServer, any Error>) {
        let waiters = state.withLock { s in
            switch result {
            case .success(let server): s.server = server
            case .failure(let error): s.failure = error
            }
            defer { s.waiters.removeAll() }
            return Array(s.waiters.values)
        }
        for w in waiters { w.resume(with: result) }
    }

    /// Runs blocking `body` on a dedicated queue (its own thread) and resumes with its result.
    static func offload<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { c in
            DispatchQueue(label: "ringside-service").async { c.resume(with: Result(catching: body)) }
        }
    }
}

/// Misuse of ``RingsideService``.
public enum RingsideServiceError: Error, Sendable, CustomStringConvertible {
    /// `run()` was called a second time.
    case alreadyRun

    public var description: String {
        switch self {
        case .alreadyRun: "RingsideService.run() can be called only once"
        }
    }
}
