import Ringside

/// One closed-loop load connection on the engine's client path: keeps `pipeline` requests outstanding
/// and sends the next as each response completes. What is sent and how responses are checked is the
/// `LoadStream` (echo: every byte; HTTP: status and body length). The open loop does not run here but
/// in `OpenLoop`, which paces sends to the microsecond.
struct ClosedLoopHandler<S: LoadStream>: ConnectionHandler {
    unowned(unsafe) let state: LoadState
    // Allocated when the connection opens, freed when it closes: behind a TLS layer, a connection whose
    // handshake fails is never opened (nor closed) here, so nothing may be allocated before `opened`.
    private var stream: S?
    private var window: LoadWindow?
    private let index: Int

    init(state: LoadState) {
        self.state = state
        let index = state.nextConnectionIndex
        state.nextConnectionIndex += 1
        self.index = index
    }

    /// Sends one request if the window has room; false when the window is full or the write failed.
    private mutating func sendOne(_ connection: Connection, stamp: UInt64) -> Bool {
        guard !window!.isFull else { return false }
        let bytes = stream!.request(window!.nextIndex)
        do { try connection.write(bytes) } catch { return false }
        window!.didSend(stamp: stamp)
        return true
    }

    mutating func opened(on connection: Connection) {
        stream = S(state: state, index: index)
        window = LoadWindow(capacity: state.pipeline)
        let now = nowNanos()
        for _ in 0..<state.pipeline where !sendOne(connection, stamp: now) { break }
        window!.armWatchdog(connection, state: state)
    }

    mutating func received(_ bytes: ReceivedBytes, on connection: Connection) {
        let now = nowNanos()
        guard let completed = stream!.consume(UnsafeRawBufferPointer(bytes.bytes), window: &window!, state: state, now: now) else {
            connection.abort()
            return
        }
        if !state.isStopping {
            for _ in 0..<completed where !sendOne(connection, stamp: now) { break }
        }
        window!.armWatchdog(connection, state: state)
    }

    mutating func timerFired(on connection: Connection) {
        window?.timerFired(connection, state: state)
    }

    mutating func closed(reason: CloseReason) {
        state.noteClosed(reason)
        stream?.deallocate()
        window?.deallocate()
    }
}

typealias EchoLoadHandler = ClosedLoopHandler<EchoStream>
typealias HTTPLoadHandler = ClosedLoopHandler<HTTPStream>
