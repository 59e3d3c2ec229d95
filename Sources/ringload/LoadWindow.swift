import Ringside

/// The send/complete bookkeeping both load handlers share: a ring of send times for outstanding
/// requests, open-loop pacing, and the per-connection watchdog.
struct LoadWindow {
    private let stamps: UnsafeMutablePointer<UInt64>
    let capacity: Int
    private(set) var sent: UInt64 = 0
    private(set) var done: UInt64 = 0
    private var nextIntended: UInt64 = 0

    /// `connectionIndex` spreads open-loop schedules over one interval.
    init(state: LoadState, connectionIndex: Int) {
        capacity = state.intervalNanos > 0 ? 4096 : state.pipeline
        stamps = .allocate(capacity: capacity)
        if state.intervalNanos > 0 {
            nextIntended = nowNanos() + state.intervalNanos * UInt64(connectionIndex) / UInt64(max(1, state.connections))
        }
    }

    func deallocate() { stamps.deallocate() }

    var outstanding: Int { Int(sent &- done) }
    var isFull: Bool { outstanding >= capacity }
    /// The index of the next request to send.
    var nextIndex: UInt64 { sent }
    /// The index of the oldest outstanding request.
    var oldestIndex: UInt64 { done }

    private mutating func didSend(stamp: UInt64) {
        stamps[Int(sent % UInt64(capacity))] = stamp
        sent += 1
    }

    /// Marks the oldest outstanding request complete; returns its send (or intended) time.
    mutating func didComplete() -> UInt64 {
        let s = stamps[Int(done % UInt64(capacity))]
        done += 1
        return s
    }

    func timedOut(now: UInt64, timeout: UInt64) -> Bool {
        outstanding > 0 && now &- stamps[Int(done % UInt64(capacity))] >= timeout
    }

    /// Sends request `nextIndex` through `write` (which must not touch this window) if the window has
    /// room, recording `stamp` as its send time. Returns whether it was sent.
    @inline(__always) mutating func send(stamp: UInt64, _ write: (UInt64) -> Bool) -> Bool {
        guard !isFull, write(sent) else { return false }
        didSend(stamp: stamp)
        return true
    }

    /// Open loop: sends for every intended time that has come (stamped with the intended time; one that
    /// cannot be sent is counted as backlogged), then arms the connection's timer for the next one or
    /// the watchdog, whichever is sooner.
    mutating func pace(_ connection: Connection, state: LoadState, _ write: (UInt64) -> Bool) {
        guard !state.isStopping else { return }
        let now = nowNanos()
        while nextIntended <= now {
            if !send(stamp: nextIntended, write) { state.backlogged += 1 }
            nextIntended += state.intervalNanos
        }
        var wait = nextIntended - now
        if outstanding > 0 {
            let due = stamps[Int(done % UInt64(capacity))] &+ state.timeoutNanos
            wait = min(wait, due > now ? due - now : 0)
        }
        connection.setTimer(after: .nanoseconds(Int64(wait)))
    }

    /// Closed loop: re-arms the watchdog while something is outstanding.
    func armWatchdog(_ connection: Connection, state: LoadState) {
        if outstanding > 0 { connection.setTimer(after: .nanoseconds(Int64(state.timeoutNanos))) }
    }

    /// Shared timer handling: a timeout aborts the connection (counted unless stopping); otherwise
    /// the open loop paces and the closed loop re-arms its watchdog.
    mutating func timerFired(_ connection: Connection, state: LoadState, _ write: (UInt64) -> Bool) {
        if timedOut(now: nowNanos(), timeout: state.timeoutNanos) {
            if !state.isStopping { state.timeouts += 1 }
            connection.abort()
            return
        }
        if state.intervalNanos > 0 { pace(connection, state: state, write) } else { armWatchdog(connection, state: state) }
    }
}

extension LoadState {
    /// Counts an unexpected end of a connection (not during the final stop).
    func noteClosed(_ reason: CloseReason) {
        guard !isStopping else { return }
        switch reason {
        case .error, .peerClosed: resets += 1
        default: break
        }
    }
}
