/// Per-connection engine state, one slot per connection in `LoopCore.states` (a preallocated slab of
/// structs, mutated in place through the slot index: no class per connection, no ARC on the hot path).
struct ConnectionState {
    var fd: Int32 = -1
    /// Bumped each time the slot is freed; io_uring user_data carries it, so a completion for an
    /// earlier occupant of the slot is recognised as stale.
    var generation: UInt32 = 0
    var flags: Flags = []
    /// io_uring operations in flight for this slot (recv, send, cancel, close).
    var inflight: Int32 = 0
    /// Outbound queue: an intrusive list of pool chunks (`BufferPool.next`), head is sent first.
    var sendHead: Int32 = -1
    var sendTail: Int32 = -1
    /// Bytes queued (including those of a send in flight).
    var queuedBytes: Int = 0
    /// Bytes of the head chunk handed to the in-flight send.
    var inflightBytes: Int32 = 0
    /// Receive chunks that arrived while reading was paused (io_uring: the kernel completed them before
    /// the cancel landed), delivered in order on resume. Linked through `BufferPool.next`.
    var heldHead: Int32 = -1
    var heldTail: Int32 = -1
    /// Next slot in the loop's dirty list (-1: end).
    var nextDirty: Int32 = -1
    var closeReason: CloseReason = .closedByHandler

    // Deadlines (inbound connections; milliseconds on the loop's monotonic clock, 0 = none). Checked
    // lazily: a receive or a send only stores a timestamp; the deadline wheel re-arms on expiry.
    /// Last byte received or send progress.
    var lastActivity: UInt64 = 0
    /// Last send progress, or when the queue became non-empty.
    var lastSendProgress: UInt64 = 0
    /// Authentication deadline; 0 once authenticated or when none applies.
    var authDue: UInt64 = 0
    /// Read deadline set by the handler; 0: none.
    var readDue: UInt64 = 0
    /// Remote address key (IPv4 mapped into IPv6) counted against `maxConnectionsPerAddress`.
    var addressHigh: UInt64 = 0
    var addressLow: UInt64 = 0

    struct Flags: OptionSet {
        let rawValue: UInt32
        static let open = Flags(rawValue: 1 << 0)            // slot holds a live connection + handler
        static let recvArmed = Flags(rawValue: 1 << 1)       // a (multishot) receive is in flight / EPOLLIN on
        static let readPaused = Flags(rawValue: 1 << 2)      // backpressure: not receiving
        static let inputClosed = Flags(rawValue: 1 << 3)     // EOF seen
        static let wantClose = Flags(rawValue: 1 << 4)       // close once the queue is flushed
        static let wantAbort = Flags(rawValue: 1 << 5)       // close now, discard the queue
        static let wantShutdownWrite = Flags(rawValue: 1 << 6) // shutdown(SHUT_WR) once flushed
        static let writeShutDown = Flags(rawValue: 1 << 7)
        static let sendInFlight = Flags(rawValue: 1 << 8)
        static let dirty = Flags(rawValue: 1 << 9)           // in the dirty list
        static let closing = Flags(rawValue: 1 << 10)        // teardown started: no more handler input
        static let fdClosed = Flags(rawValue: 1 << 11)
        static let wasAboveHigh = Flags(rawValue: 1 << 12)   // tell the handler `writable` after draining
        static let cancelSent = Flags(rawValue: 1 << 13)     // an async cancel for the receive is in flight
        static let starved = Flags(rawValue: 1 << 14)        // receive ended on ENOBUFS; re-arm when buffers return
        static let epollOut = Flags(rawValue: 1 << 15)       // epoll: EPOLLOUT registered
        static let armedOnce = Flags(rawValue: 1 << 16)      // a receive was armed before (re-arm counting)
        static let connecting = Flags(rawValue: 1 << 17)     // outbound connect in flight: no handler yet
        static let connectFailed = Flags(rawValue: 1 << 18)  // outbound connect failed: free in `service`
        static let eofPending = Flags(rawValue: 1 << 19)     // EOF seen behind held chunks: tell the handler after them
        static let direct = Flags(rawValue: 1 << 20)         // io_uring: `fd` is a registered (direct) descriptor index
        static let deadlines = Flags(rawValue: 1 << 21)      // inbound: the engine's deadlines apply
        static let timedOut = Flags(rawValue: 1 << 22)       // closed by a deadline: only the write stall still applies
        static let addressCounted = Flags(rawValue: 1 << 23) // counted in the per-address table
        static let inputPaused = Flags(rawValue: 1 << 24)    // the handler paused reading (Connection.pauseReading)
        static let lingering = Flags(rawValue: 1 << 25)      // graceful close: FIN sent, discarding input until EOF
        static let lingerDone = Flags(rawValue: 1 << 26)     // the linger time is up: close now
    }
}
