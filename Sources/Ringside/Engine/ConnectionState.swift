/// The lifecycle of one connection: a sans-I/O state machine, one per slot in `LoopCore.states` (a
/// preallocated slab of structs mutated in place through the slot index: no class per connection, no
/// ARC on the hot path).
///
/// Events come in as mutating methods (`received`, `sendStarted`/`sendEnded`, `inputEnded`,
/// `requestClose`, `receiveEnded`, ...). What to do next comes out of `nextAction(_:)`, one action at a
/// time; taking an action also records its transition (a `.send` marks the send in flight). Both backends
/// run the same loop over it (`HandlerTable.service`) and only turn I/O actions into SQEs (io_uring) or
/// syscalls (epoll): the lifecycle is written once.
///
/// It never touches a socket, so `ConnectionStateTests` drives it through every transition without one.
struct ConnectionState {
    var fd: Int32 = -1
    /// Bumped each time the slot is freed; io_uring user_data and `Connection` carry it, so a completion
    /// or a handle for an earlier occupant of the slot is recognised as stale.
    var generation: UInt32 = 0
    var phase: Phase = .free
    var receive: Receive = .idle
    var output: Output = .open
    var input: Input = .open
    /// Reading is stopped (backpressure or the handler's pause); counted once per pause.
    var readPaused = false
    /// The handler paused reading (`Connection.pauseReading`).
    var handlerPaused = false
    /// The queue went above the high watermark: the handler is owed `writable` once it drains.
    var owesWritable = false
    /// A send is in flight (io_uring: until its CQE; epoll: blocked on EAGAIN until EPOLLOUT).
    var sendInFlight = false
    /// io_uring operations in flight for this slot (recv, send, cancel, close, shutdown, linger).
    var inflight: Int32 = 0
    /// The descriptor is closed (the close completed).
    var fdClosed = false
    /// io_uring: operations on the socket that run on an io-wq worker (shutdown, a splice). The kernel
    /// looks their descriptor up only when the worker starts them, and a cancel by descriptor cannot
    /// see them before that; so the socket's close waits for them (`deferredClose`): closed earlier,
    /// its (direct) descriptor could be reused by the next accept and the operation hit that connection.
    var socketWorkerOps: UInt8 = 0
    /// io_uring: a close held back until `socketWorkerOps` is 0 (1: graceful, 2: abort).
    var deferredClose: UInt8 = 0
    /// A receive was armed before (re-arm counting).
    var armedOnce = false
    /// Closed by a deadline: only the write stall still applies.
    var timedOut = false
    /// The linger time is up: close now.
    var lingerDone = false
    /// In the loop's dirty list.
    var dirty = false
    var traits: Traits = []
    /// The peer's port (with `.peerKnown`; beside the other small fields, in what was padding, so the
    /// struct stays 128 bytes).
    var peerPort: UInt16 = 0

    /// Outbound queue: an intrusive list of pool chunks (`BufferPool.next`), head is sent first.
    var sendHead: Int32 = -1
    var sendTail: Int32 = -1
    /// Bytes queued (including those of a send in flight).
    var queuedBytes: Int = 0
    /// Bytes and chunks (from the head) handed to the send in flight: the kernel may read those chunks
    /// until the send's final completion, so they are never released before it.
    var inflightBytes: Int32 = 0
    var inflightChunks: Int32 = 0
    /// Queued bytes (from the head) before the first socket directive of a layered connection, -1 when
    /// none is queued (Layers/SocketDirectives.swift): a send covers at most these, and at 0 the
    /// directive runs as the send in flight.
    var directiveBytes: Int32 = -1
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
    /// Read deadline set by the handler (or the linger end); 0: none.
    var readDue: UInt64 = 0
    /// Remote address key (IPv4 mapped into IPv6): the peer's once known (`.peerKnown`; with the PROXY
    /// protocol, the client's), counted against `maxConnectionsPerAddress` when `.addressCounted`.
    var addressHigh: UInt64 = 0
    var addressLow: UInt64 = 0

    /// Where the connection is in its life.
    enum Phase: UInt8 {
        /// The slot holds no connection.
        case free
        /// Outbound connect in flight: no handler yet.
        case connecting
        /// Outbound connect failed: the slot is released without a handler.
        case connectFailed
        /// Open: the handler gets input and may write.
        case open
        /// A graceful close was asked for: the queue flushes, then the connection lingers or closes.
        case draining
        /// Graceful close, queue flushed, FIN sent: input is read and dropped until EOF or the linger time.
        case lingering
        /// An abort was asked for: torn down at the next step, the queue discarded.
        case aborting
        /// Close under way: no more handler calls but `closed`, once every operation has completed.
        case tearingDown
    }

    /// The receive operation (io_uring: the multishot receive; epoll: EPOLLIN interest).
    enum Receive: UInt8 {
        case idle
        case armed
        /// A cancel was sent; the receive has not ended yet.
        case cancelling
        /// The receive ended; the cancel's own completion is still outstanding.
        case awaitingCancel
        /// Ended on buffer exhaustion; re-armed once buffers return.
        case starved
    }

    enum Output: UInt8 { case open, shutdownRequested, shutDown }

    enum Input: UInt8 {
        case open
        /// End-of-file arrived behind held chunks: the handler learns it after them.
        case endPending
        case ended
    }

    /// Fixed per connection, set when it opens.
    struct Traits: OptionSet {
        let rawValue: UInt8
        /// io_uring: `fd` is a registered (direct) descriptor index.
        static let direct = Traits(rawValue: 1 << 0)
        /// Inbound: the engine's deadlines apply.
        static let deadlines = Traits(rawValue: 1 << 1)
        /// Counted in the per-address table.
        static let addressCounted = Traits(rawValue: 1 << 2)
        /// `addressHigh`/`addressLow`/`peerPort` hold the peer's address (`Connection.peerAddress`).
        static let peerKnown = Traits(rawValue: 1 << 3)
        /// A stream layer stack (TLS, ...) sits between the handler and the socket: the handler's
        /// writes go through `LoopCore.layerStacks[slot]` (see Layers/LayerStack.swift).
        static let layered = Traits(rawValue: 1 << 4)
        /// io_uring: a receive filled a whole buffer, so input arrives faster than one buffer per
        /// completion: the next arming of the multishot receive asks for bundles (see `UringBackend.fill`).
        static let bulkInput = Traits(rawValue: 1 << 5)
    }

    /// What the connection needs next.
    enum Action: Equatable {
        /// Nothing until the next event.
        case none
        /// Connect failed: close the descriptor and free the slot (there is no handler).
        case releaseUnconnected
        /// Torn down and every operation completed: tell the handler and free the slot.
        case finalize
        /// Close now: discard what is not in flight, cancel operations in flight, close (a reset when
        /// `abort`).
        case teardown(abort: Bool)
        /// Send the queue (the send is now in flight).
        case send
        /// Stop the receive (pause, or a receive nobody wants any more).
        case cancelReceive
        /// Hand held input (and a pending end-of-file) to the handler.
        case deliverHeld
        /// Tell the handler the queue drained below the low watermark.
        case notifyWritable
        /// Send FIN (queue flushed).
        case shutdownWrite
        /// Graceful close, queue flushed: start lingering (drop held input, arm the linger deadline)
        /// and send FIN unless output was already shut.
        case beginLinger(sendFIN: Bool)
        /// Arm the receive.
        case armReceive
    }

    /// What `nextAction` needs from outside the connection.
    struct Environment {
        var highWatermark: Int
        var lowWatermark: Int
        /// The server is stopping: no new receives except to drain a lingering close.
        var stopping: Bool
        /// Graceful closes linger (lingerTimeout > 0).
        var lingerEnabled: Bool
        /// The backend stops any receive that is not wanted (epoll: a level-triggered EPOLLIN nobody
        /// reads would spin). io_uring stops only paused receives and, when stopping, all of them; a
        /// receive completing after a close is simply dropped.
        var cancelsUnwantedReceive: Bool
    }
}

// MARK: events

extension ConnectionState {
    /// Whether the connection is open to the handler (writes accepted, input delivered).
    @inline(__always) var isLive: Bool { phase == .open }

    /// Whether writes may be queued: open, and output not shut or being shut.
    @inline(__always) var acceptsWrites: Bool { phase == .open && output == .open }

    /// The handler (or the engine) asks for a close: graceful (flush first) or abort (discard, reset).
    /// Returns whether anything changed.
    @discardableResult
    mutating func requestClose(abort: Bool, reason: CloseReason) -> Bool {
        switch phase {
        case .open, .draining, .lingering:
            // The first reason wins, except that an abort overrides a graceful one, and a graceful close
            // in answer to the peer's end-of-file keeps `.peerClosed`.
            let answersPeer = reason == .closedByHandler && !abort && closeReason == .peerClosed
            if !answersPeer && (abort || phase == .open) { closeReason = reason }
            if abort { phase = .aborting } else if phase == .open { phase = .draining }
            return true
        case .free, .connecting, .connectFailed, .aborting, .tearingDown:
            return false
        }
    }

    /// The handler asks for FIN once the queue is flushed; receiving continues.
    mutating func requestShutdownWrite() {
        guard phase == .open, output == .open else { return }
        output = .shutdownRequested
    }

    /// End-of-file arrived. Returns whether the handler should be told now (`inputClosed`).
    mutating func inputEnded() -> Bool {
        guard input == .open else { return false }
        if closeReason == .closedByHandler && (phase == .open || phase == .draining) { closeReason = .peerClosed }
        guard phase == .open else { input = .ended; return false }
        if heldHead >= 0 { input = .endPending; return false }
        input = .ended
        return true
    }

    /// A send started; `bytes` in `chunks` chunks from the head are now read by the kernel.
    mutating func sendStarted(bytes: Int, chunks: Int) {
        sendInFlight = true
        inflightBytes = Int32(truncatingIfNeeded: bytes)
        inflightChunks = Int32(truncatingIfNeeded: chunks)
    }

    /// The send in flight ended (its final completion; epoll: the socket is writable again).
    mutating func sendEnded() {
        sendInFlight = false
        inflightBytes = 0
        inflightChunks = 0
    }

    /// The receive operation ended (its final completion).
    mutating func receiveEnded() {
        switch receive {
        case .armed: receive = .idle
        case .cancelling: receive = .awaitingCancel
        case .idle, .awaitingCancel, .starved: break
        }
    }

    /// The receive's cancel completed (whatever it found).
    mutating func cancelCompleted() {
        switch receive {
        case .awaitingCancel: receive = .idle
        case .cancelling: receive = .armed  // cancel found nothing yet; the receive's own end follows
        case .idle, .armed, .starved: break
        }
    }

    /// The receive ended for want of buffers. Returns whether the slot newly joins the starved list.
    /// A receive whose cancel is still in flight stays `awaitingCancel`: the cancel's completion makes it
    /// idle, and the next arm finds out whether buffers are back (ENOBUFS again starves it then).
    /// Marking it starved would forget that completion, so a new receive or a new cancel could start
    /// while the old cancel is still outstanding (found by Fuzz/ fuzz-connection-state).
    mutating func starve() -> Bool {
        guard receive != .starved, receive != .awaitingCancel else { return false }
        receive = .starved
        return true
    }

    /// Buffers returned: a starved receive may be armed again.
    mutating func unstarve() { if receive == .starved { receive = .idle } }

    /// Marks a send in flight if the queue has bytes, no send is in flight and output is open; returns
    /// whether it did (the caller starts the send).
    @inline(__always) mutating func startSendIfReady() -> Bool {
        guard (sendHead >= 0 || directiveBytes >= 0) && !sendInFlight && output != .shutDown else { return false }
        switch phase {
        case .open, .draining: sendInFlight = true; return true
        default: return false
        }
    }

    /// Whether the handler should get input now (else it is dropped or held).
    var deliversInput: Bool { phase == .open && input == .open }
}

// MARK: the decision

extension ConnectionState {
    /// Whether a receive is wanted now.
    @inline(__always) func wantsReceive(_ env: Environment) -> Bool {
        guard input == .open, receive != .starved, heldHead < 0 || phase == .lingering else { return false }
        switch phase {
        case .open: return !readPaused && !env.stopping
        case .lingering: return true
        default: return false
        }
    }

    /// The next thing to do for this connection, with its transition applied. Call until `.none`.
    @inline(__always) mutating func nextAction(_ env: Environment, _ counters: inout ServerStats) -> Action {
        switch phase {
        case .free: return .none
        case .connecting: return .none
        case .connectFailed: return .releaseUnconnected
        case .tearingDown:
            return inflight == 0 && fdClosed && !dirty ? .finalize : .none
        case .aborting:
            phase = .tearingDown
            return .teardown(abort: true)
        case .open, .draining, .lingering:
            break
        }
        if startSendIfReady() { return .send }
        if let a = watermarkAction(env, &counters) { return a }
        let flushed = sendHead < 0 && !sendInFlight && directiveBytes < 0
        if phase == .draining && flushed {
            guard lingers(env) else {
                phase = .tearingDown
                return .teardown(abort: false)
            }
            // Input is only dropped from now on: a pause (the handler's or backpressure's, the queue
            // being flushed) no longer applies, and what was held back is released by the driver.
            phase = .lingering
            readPaused = false
            handlerPaused = false
            owesWritable = false
            let fin = output != .shutDown
            output = .shutDown
            return .beginLinger(sendFIN: fin)
        }
        if output == .shutdownRequested && flushed { output = .shutDown; return .shutdownWrite }
        if phase == .lingering && (lingerDone || input == .ended) {
            phase = .tearingDown
            return .teardown(abort: false)
        }
        let wanted = wantsReceive(env)
        if receive == .idle && wanted {
            if armedOnce { counters.recvRearms += 1 }
            receive = .armed
            armedOnce = true
            return .armReceive
        }
        if receive == .armed && !wanted
            && (env.cancelsUnwantedReceive || readPaused || (env.stopping && phase != .lingering)) {
            receive = env.cancelsUnwantedReceive ? .idle : .cancelling
            return .cancelReceive
        }
        return .none
    }

    /// Backpressure: pause reading above the high watermark or while the handler paused it; resume at
    /// or below the low one; and, separately, owe the handler `writable` once a queue that went above the
    /// high mark has drained to the low one, whether or not reading resumes (a handler that paused its
    /// own reading still needs it).
    @inline(__always) private mutating func watermarkAction(_ env: Environment, _ counters: inout ServerStats) -> Action? {
        if queuedBytes > counters.maxQueuedBytes { counters.maxQueuedBytes = queuedBytes }
        let over = queuedBytes > env.highWatermark
        if over { owesWritable = true }
        if phase == .lingering { return nil }
        if over || handlerPaused {
            if !readPaused { readPaused = true; counters.readPauses += 1 }
        } else if queuedBytes <= env.lowWatermark && readPaused {
            readPaused = false
        }
        if !readPaused && phase == .open && (heldHead >= 0 || input == .endPending) { return .deliverHeld }
        if owesWritable && queuedBytes <= env.lowWatermark && phase == .open {
            owesWritable = false
            return .notifyWritable
        }
        return nil
    }

    /// Whether a graceful close, its output flushed, lingers (half-close, discard input until EOF or the
    /// linger time) instead of closing at once: only while the peer may still send.
    @inline(__always) func lingers(_ env: Environment) -> Bool {
        env.lingerEnabled && input == .open && !lingerDone && !timedOut
    }
}

// MARK: pausing mid-batch

extension ConnectionState {
    /// Pauses reading at once when a delivery pushed the queue over the high watermark (or the handler
    /// paused), rather than at the end of the batch, so later completions of this batch are held, not
    /// delivered. Returns whether an armed receive must be cancelled now.
    @inline(__always) mutating func pauseIfNeeded(highWatermark: Int, _ counters: inout ServerStats) -> Bool {
        guard queuedBytes > highWatermark || handlerPaused, phase == .open else { return false }
        if queuedBytes > highWatermark { owesWritable = true }
        if !readPaused { readPaused = true; counters.readPauses += 1 }
        guard receive == .armed else { return false }
        receive = .cancelling
        return true
    }
}
