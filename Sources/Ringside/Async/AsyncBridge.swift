import Glibc
import Logging

extension RingsideServer {
    /// Starts a server whose connections are served by `body`, one task per connection, each running on
    /// its connection's loop thread (the loop's ``LoopExecutor`` is the task's executor preference), so
    /// a message costs no thread hop.
    ///
    /// ```swift
    /// let server = try RingsideServer.startAsync(configuration: config, requiresAuthentication: false) { conn in
    ///     for try await chunk in conn.inbound { try await conn.write(chunk) }
    /// }
    /// ```
    ///
    /// - Parameters:
    ///   - configuration: the server's configuration (validated first, as by ``RingsideServer/start(configuration:logger:handler:)``).
    ///   - requiresAuthentication: whether connections must call ``AsyncConnection/markAuthenticated()``
    ///     within ``ServerConfiguration/authenticationTimeout`` (see
    ///     ``ConnectionHandler/requiresAuthentication``).
    ///   - inboundBufferLimit: received bytes buffered for a task that has not consumed them yet; at
    ///     this many the engine stops reading the connection until the task takes them.
    ///   - logger: where the server logs its start, its loops' failures and its refusals.
    ///   - body: serves one connection. Returning closes it gracefully; throwing aborts it.
    public static func startAsync(
        configuration: ServerConfiguration,
        requiresAuthentication: Bool = true,
        inboundBufferLimit: Int = 64 * 1024,
        logger: Logger = Logger(label: "ringside"),
        _ body: @escaping @Sendable (AsyncConnection) async throws -> Void
    ) throws -> RunningServer {
        precondition(inboundBufferLimit > 0)
        if requiresAuthentication {
            return try start(configuration: configuration, logger: logger) {
                AsyncBridge<AuthenticationRequired>(body: body, inboundLimit: inboundBufferLimit, logger: logger)
            }
        }
        return try start(configuration: configuration, logger: logger) {
            AsyncBridge<NoAuthentication>(body: body, inboundLimit: inboundBufferLimit, logger: logger)
        }
    }
}

protocol AsyncAuthenticationPolicy: Sendable { static var requiresAuthentication: Bool { get } }
enum AuthenticationRequired: AsyncAuthenticationPolicy { static var requiresAuthentication: Bool { true } }
enum NoAuthentication: AsyncAuthenticationPolicy { static var requiresAuthentication: Bool { false } }

/// The callback handler behind an async connection: it starts the connection's task on the loop
/// executor and feeds it (bytes, end-of-file, writable, close) through the connection's box.
struct AsyncBridge<Policy: AsyncAuthenticationPolicy>: ConnectionHandler {
    static var requiresAuthentication: Bool { Policy.requiresAuthentication }

    let body: @Sendable (AsyncConnection) async throws -> Void
    let inboundLimit: Int
    let logger: Logger
    var box: AsyncConnectionBox? = nil

    init(body: @escaping @Sendable (AsyncConnection) async throws -> Void, inboundLimit: Int, logger: Logger) {
        self.body = body; self.inboundLimit = inboundLimit; self.logger = logger
    }

    mutating func opened(on connection: Connection) {
        guard let executor = LoopExecutor.current else {
            preconditionFailure("async connection opened outside a loop bound to its executor")
        }
        let box = AsyncConnectionBox(connection: connection, executor: executor, inboundLimit: inboundLimit)
        self.box = box
        let conn = AsyncConnection(box: box)
        let body = self.body
        let logger = self.logger
        executor.liveTasks.add(1, ordering: .relaxed)
        // The task's first job is enqueued here, on the loop thread: it runs after this batch of handler
        // calls, like every later resumption.
        box.task = Task(executorPreference: executor) {
            var failure: (any Error)? = nil
            do {
                try await body(conn)
            } catch {
                failure = error
            }
            conn.box.finish(failure: failure, logger: logger)
        }
    }

    mutating func received(_ bytes: ReceivedBytes, on connection: Connection) { box!.received(bytes.bytes) }
    mutating func inputClosed(on connection: Connection) { box!.inputClosed() }
    mutating func writable(on connection: Connection) { box!.wakeWriter() }
    mutating func timerFired(on connection: Connection) { box!.wakeWriter() }
    mutating func closed(reason: CloseReason) {
        box?.closed(reason: reason)
        box = nil
    }
}

/// The loop-side state of one async connection, shared by its bridge handler (loop callbacks) and its
/// task (which runs on the same loop thread).
///
/// `@unchecked Sendable`. Invariants:
/// - Every member is read and written on the loop thread only (`executor.isCurrent`), except after the
///   loop has stopped: then `closed(reason:)` has run for every connection (or the loop died), no loop
///   code touches the box again, and the task (now on the global executor) may read it alone.
/// - `core`/`slot` are used only while `open` (before `closed(reason:)`, on the loop thread): the slot
///   still belongs to this connection and the loop (owner of `core`) is running.
/// - `lent` is the memory of the element handed out last; it is neither written nor reallocated until
///   the next `next()` (which bumps `epoch`). Received bytes go to `fill`.
/// - At most one reader and one writer continuation wait; each is resumed exactly once (`wake…` clears
///   it before resuming), and a waiter re-checks the state when it wakes.
final class AsyncConnectionBox: @unchecked Sendable {
    /// The engine handle (it carries the connection's generation: once the connection is gone, it
    /// cannot reach the slot's next occupant).
    let connection: Connection
    var core: LoopCore { connection.core }
    var slot: Int32 { connection.slot }
    let executor: LoopExecutor
    let inboundLimit: Int
    let id: UInt64

    var open = true
    var closeReason: CloseReason = .closedByHandler
    var inputEnded = false
    var closedHere = false
    var outputShut = false

    var fill = ByteStore()
    var lent = ByteStore()
    var epoch: UInt64 = 0
    /// Whether this bridge paused the engine's reading (unread input reached `inboundLimit`).
    var inputPaused = false

    var reader: UnsafeContinuation<Void, Never>? = nil
    var writer: UnsafeContinuation<Void, Never>? = nil
    var task: Task<Void, Never>? = nil

    init(connection: Connection, executor: LoopExecutor, inboundLimit: Int) {
        self.connection = connection; self.executor = executor; self.inboundLimit = inboundLimit
        id = connection.id
    }

    deinit {
        fill.free()
        lent.free()
    }

    // MARK: loop callbacks

    func received(_ bytes: UnsafeRawBufferPointer) {
        if closedHere { return }
        fill.append(bytes)
        if !inputPaused && fill.count >= inboundLimit { pauseInput() }
        wakeReader()
    }

    func inputClosed() {
        inputEnded = true
        wakeReader()
    }

    func closed(reason: CloseReason) {
        open = false
        closeReason = reason
        wakeReader()
        wakeWriter()
        // The server is going away: end the task's other awaits too, so the loop can finish.
        if reason == .serverShutdown { task?.cancel() }
        task = nil  // the task holds this box: no cycle
    }

    // MARK: backpressure on input

    /// Stops the engine reading this connection (`Connection.pauseReading`: io_uring cancels the
    /// multishot receive and holds what the kernel still completes; epoll drops EPOLLIN) until the task
    /// has taken the buffered input.
    private func pauseInput() {
        inputPaused = true
        guard open else { return }
        connection.pauseReading()
    }

    private func resumeInput() {
        inputPaused = false
        guard open else { return }
        connection.resumeReading()
    }

    // MARK: task side

    /// On the loop thread; or, once the loop has stopped, anywhere (the box is then read by the task
    /// alone). Traps when used on another thread while the loop runs.
    @inline(__always) private func checkThread() throws {
        if executor.isCurrent { return }
        if executor.isStopped {
            if open { open = false; closeReason = .serverShutdown }  // the loop died without closing
            return
        }
        preconditionFailure("AsyncConnection used off its loop thread: use it in its task, or in a task that prefers its executor")
    }

    func next() async throws -> InboundBytes? {
        while true {
            try checkThread()
            epoch &+= 1
            lent.count = 0
            if Task.isCancelled { throw CancellationError() }
            if fill.count > 0 {
                swap(&fill, &lent)
                if inputPaused { resumeInput() }
                return InboundBytes(box: self, epoch: epoch, base: UnsafeRawPointer(lent.base!), count: lent.count)
            }
            if inputEnded || closedHere { return nil }
            if !open { throw AsyncConnectionError.connectionClosed(closeReason) }
            if reader != nil { throw AsyncConnectionError.concurrentAccess }
            await withTaskCancellationHandler {
                await withUnsafeContinuation { c in
                    reader = c
                    if Task.isCancelled { wakeReader() }  // cancelled before the handler could see a waiter
                }
            } onCancel: {
                requestCancel()
            }
        }
    }

    /// Queues `total` bytes through `piece(connection, offset, count)`, piece by piece, waiting while
    /// the queue is above the high watermark or the send pool is exhausted.
    func write(total: Int, _ piece: (Connection, Int, Int) throws(WriteError) -> Void) async throws {
        var offset = 0
        repeat {
            try checkThread()
            if Task.isCancelled { throw CancellationError() }
            guard open else { throw AsyncConnectionError.connectionClosed(closeReason) }
            if offset == total { return }
            let queued = core.states[Int(slot)].queuedBytes
            if queued > core.highWatermark {
                try await waitWriter()
                continue
            }
            let n = min(total - offset, core.highWatermark - queued + core.pool.receiveChunkSize)
            do {
                try piece(connection, offset, n)
            } catch .bufferPoolExhausted {
                // Shared send pool empty: retry in 1 ms (the connection timer is this bridge's own).
                connection.setTimer(after: .milliseconds(1))
                try await waitWriter()
                continue
            } catch {
                if closedHere || outputShut { throw AsyncConnectionError.outputClosed }
                throw AsyncConnectionError.connectionClosed(core.states[Int(slot)].closeReason)
            }
            offset += n
        } while offset < total
    }

    private func waitWriter() async throws {
        if writer != nil { throw AsyncConnectionError.concurrentAccess }
        await withTaskCancellationHandler {
            await withUnsafeContinuation { c in
                writer = c
                if Task.isCancelled { wakeWriter() }
            }
        } onCancel: {
            requestCancel()
        }
    }

    var queuedOutboundBytes: Int {
        guard executor.isCurrent, open else { return 0 }
        return core.states[Int(slot)].queuedBytes
    }

    func close(abort: Bool) {
        try? checkThread()
        closedHere = true
        if open {
            let c = connection
            if abort { c.abort() } else { c.close() }
        }
        wakeReader()
        wakeWriter()
    }

    func shutdownOutput() {
        try? checkThread()
        outputShut = true
        if open { connection.shutdownOutput() }
    }

    func markAuthenticated() {
        try? checkThread()
        if open { connection.markAuthenticated() }
    }

    /// The task ended: close gracefully after a return, abort after a throw.
    func finish(failure: (any Error)?, logger: Logger) {
        executor.liveTasks.subtract(1, ordering: .releasing)
        if let failure, !(failure is CancellationError), !(failure is AsyncConnectionError) {
            logger.debug("async connection task failed", metadata: ["error": "\(failure)", "id": "\(id)"])
        }
        guard executor.isCurrent else { return }  // loop gone: every connection is closed already
        task = nil
        if open && !closedHere {
            closedHere = true
            let c = connection
            if failure == nil { c.close() } else { c.abort() }
        }
    }

    /// From the cancellation handler of a task waiting on this connection, on any thread: wakes the
    /// waiters on the loop; each re-checks `Task.isCancelled` (a waiter of another, uncancelled task
    /// waits again).
    func requestCancel() {
        if executor.isCurrent {
            wakeReader(); wakeWriter()
        } else {
            executor.execute { [self] in wakeReader(); wakeWriter() }
        }
    }

    @inline(__always) func wakeReader() {
        if let r = reader { reader = nil; r.resume() }
    }

    @inline(__always) func wakeWriter() {
        if let w = writer { w.resume(); writer = nil }
    }
}

/// A growable byte buffer that keeps its capacity (malloc'd; freed by the owner).
struct ByteStore {
    var base: UnsafeMutableRawPointer? = nil
    var capacity = 0
    var count = 0

    mutating func append(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count > 0 else { return }
        let needed = count + bytes.count
        if needed > capacity {
            let newCapacity = max(needed, capacity * 2, 4096)
            guard let p = realloc(base, newCapacity) else { fatalError("out of memory (async inbound buffer)") }
            base = p
            capacity = newCapacity
        }
        (base! + count).copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
        count = needed
    }

    func free() { Glibc.free(base) }
}
