import Ringside

/// The send/complete bookkeeping every load connection shares: a ring of send (or intended send)
/// times for outstanding requests, and the per-connection watchdog of the closed loop.
struct LoadWindow {
    private let stamps: UnsafeMutablePointer<UInt64>  // owned; `capacity` entries
    let capacity: Int
    private(set) var sent: UInt64 = 0
    private(set) var done: UInt64 = 0

    /// `capacity`: the most requests outstanding at once (the pipeline depth, or the open loop's cap).
    init(capacity: Int) {
        self.capacity = max(1, capacity)
        stamps = .allocate(capacity: self.capacity)
    }

    func deallocate() { stamps.deallocate() }

    var outstanding: Int { Int(sent &- done) }
    var isFull: Bool { outstanding >= capacity }
    /// The index of the next request to send.
    var nextIndex: UInt64 { sent }
    /// The index of the oldest outstanding request.
    var oldestIndex: UInt64 { done }
    /// The send (or intended) time of the oldest outstanding request (only while `outstanding > 0`).
    var oldestStamp: UInt64 { stamps[Int(done % UInt64(capacity))] }

    /// Records request `nextIndex` as sent at `stamp`. The caller checks `isFull` first.
    mutating func didSend(stamp: UInt64) {
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
        outstanding > 0 && now &- oldestStamp >= timeout
    }

    /// Sends request `nextIndex` through `write` (which must not touch this window) if the window has
    /// room, recording `stamp` as its send time. Returns whether it was sent.
    @inline(__always) mutating func send(stamp: UInt64, _ write: (UInt64) -> Bool) -> Bool {
        guard !isFull, write(sent) else { return false }
        didSend(stamp: stamp)
        return true
    }

    /// Closed loop: re-arms the watchdog while something is outstanding.
    func armWatchdog(_ connection: Connection, state: LoadState) {
        if outstanding > 0 { connection.setTimer(after: .nanoseconds(Int64(state.timeoutNanos))) }
    }

    /// Closed loop timer: a timeout aborts the connection (counted unless stopping); otherwise the
    /// watchdog is re-armed.
    func timerFired(_ connection: Connection, state: LoadState) {
        if timedOut(now: nowNanos(), timeout: state.timeoutNanos) {
            if !state.isStopping { state.timeouts += 1 }
            connection.abort()
            return
        }
        armWatchdog(connection, state: state)
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
