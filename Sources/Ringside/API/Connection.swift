import Glibc

/// A handle to one connection, passed to every ``ConnectionHandler`` call.
///
/// Use it during the call it was passed to, on the loop thread. Everything it does is recorded and
/// carried out by the engine after the handler returns, so several writes in one call leave in one
/// send. The handle carries its connection's generation: once that connection has closed, a kept
/// handle is stale, and it can never reach the next connection that takes the same slot — its writes
/// throw ``WriteError/closed`` and its other operations do nothing.
public struct Connection {
    // The loop's core, unretained. Invariant: a Connection is used on its loop thread while the loop
    // runs, and the backend holds the core's only strong reference for the loop's whole life, so every
    // access goes through `withCore`, a +0 borrow (`_withUnsafeGuaranteedRef`): no retain/release per
    // call. (An `unowned(unsafe)` stored reference still cost a retain/release pair per access: the
    // compiler copies it into a strong reference before each use.)
    @usableFromInline let coreRef: Unmanaged<LoopCore>
    @usableFromInline let slot: Int32
    @usableFromInline let generation: UInt32

    @usableFromInline init(core: LoopCore, slot: Int32, generation: UInt32) {
        self.coreRef = Unmanaged.passUnretained(core); self.slot = slot; self.generation = generation
    }

    @usableFromInline init(coreRef: Unmanaged<LoopCore>, slot: Int32, generation: UInt32) {
        self.coreRef = coreRef; self.slot = slot; self.generation = generation
    }

    /// Runs `body` with the core borrowed at +0 (see `coreRef`).
    @inline(__always) func withCore<R>(_ body: (LoopCore) -> R) -> R { coreRef._withUnsafeGuaranteedRef(body) }

    /// The core as a strong reference (retains; for the async bridge, off the per-message path).
    var core: LoopCore { coreRef.takeUnretainedValue() }

    /// Whether this handle still names an open connection (false once it closed, and for a handle kept
    /// past its connection).
    public var isOpen: Bool { withCore { c in c.isCurrent(slot, generation) && c.states[Int(slot)].phase == .open } }

    var current: Bool { withCore { c in c.isCurrent(slot, generation) } }

    /// An identifier unique among the connections open on this loop (slot and generation).
    public var id: UInt64 { UInt64(generation) << 32 | UInt64(UInt32(bitPattern: slot)) }

    /// The remote address: the client's as a trusted proxy's PROXY header gave it
    /// (``ServerConfiguration/proxyProtocol``), else the socket's peer. Nil for outbound connections,
    /// for a stale handle, and on io_uring when the accept did not ask the kernel for addresses (a
    /// multishot accept: used when neither a per-address cap nor the PROXY protocol is configured).
    public var peerAddress: PeerAddress? {
        withCore { c in
            let i = Int(slot)
            guard c.isCurrent(slot, generation), c.states[i].traits.contains(.peerKnown) else { return nil }
            return PeerAddress(ip: IPAddress(high: c.states[i].addressHigh, low: c.states[i].addressLow),
                               port: c.states[i].peerPort)
        }
    }

    /// Bytes queued for sending and not yet acknowledged by the kernel (0 for a stale handle).
    public var queuedOutboundBytes: Int { withCore { c in c.isCurrent(slot, generation) ? c.states[Int(slot)].queuedBytes : 0 } }

    /// Whether the queue is above the high watermark (the engine has stopped reading this client).
    public var isBackpressured: Bool { withCore { c in c.isCurrent(slot, generation) && c.states[Int(slot)].queuedBytes > c.highWatermark } }

    /// Copies `bytes` into pooled send buffers and queues them. Either all bytes are queued or none.
    /// - Throws: ``WriteError/bufferPoolExhausted`` when the pool has too few free send chunks,
    ///   ``WriteError/closed`` after close/abort/shutdownOutput, or on a stale handle.
    public func write(_ bytes: UnsafeRawBufferPointer) throws(WriteError) {
        let r: Result<Void, WriteError> = withCore { c in
            guard c.isCurrent(slot, generation) else { return .failure(.closed) }
            return Result { () throws(WriteError) in try c.enqueueCopy(slot: slot, bytes) }
        }
        try r.get()
    }

    /// Copies `bytes` into pooled send buffers and queues them. Either all bytes are queued or none.
    public func write(_ bytes: [UInt8]) throws(WriteError) {
        let r: Result<Void, WriteError> = bytes.withUnsafeBytes { p in
            Result { () throws(WriteError) in try write(p) }
        }
        try r.get()
    }

    /// Queues a received buffer for sending without copying it: the receive buffer becomes the send
    /// buffer and returns to the pool once the kernel has sent it. A buffer can be handed back once;
    /// a second call copies (and can then find the pool exhausted).
    /// - Throws: ``WriteError/closed`` when the connection no longer accepts writes;
    ///   ``WriteError/bufferPoolExhausted`` when a copy found too few free send chunks. Nothing was
    ///   queued either way.
    public func send(_ received: ReceivedBytes) throws(WriteError) {
        let r: Result<Void, WriteError> = withCore { c in
            guard c.isCurrent(slot, generation) else { return .failure(.closed) }
            return Result { () throws(WriteError) in try c.enqueueReceived(slot: slot, received) }
        }
        try r.get()
    }

    /// Arms this connection's timer (one per connection; re-arming replaces it). When it comes due,
    /// the handler's ``ConnectionHandler/timerFired(on:)`` is called. Resolution is 1 ms.
    public func setTimer(after delay: Duration) {
        withCore { c in if c.isCurrent(slot, generation) { c.timers.arm(slot, at: monotonicMillis() + delay.wholeMilliseconds) } }
    }

    /// Disarms this connection's timer, if armed.
    public func cancelTimer() { withCore { c in if c.isCurrent(slot, generation) { c.timers.cancel(slot) } } }

    /// Stops receiving from this connection until ``resumeReading()``, through the same machinery as
    /// backpressure (io_uring: the multishot receive is cancelled and input the kernel completes before
    /// the cancel lands is held; epoll: EPOLLIN is dropped). Held input is delivered after the resume.
    public func pauseReading() { withCore { c in if c.isCurrent(slot, generation) { c.setInputPaused(slot, true) } } }

    /// Undoes ``pauseReading()``. Reading restarts once the outbound queue is also at or below the low
    /// watermark.
    public func resumeReading() { withCore { c in if c.isCurrent(slot, generation) { c.setInputPaused(slot, false) } } }

    /// Marks the connection authenticated: the authentication deadline
    /// (``ServerConfiguration/authenticationTimeout``) no longer applies to it.
    public func markAuthenticated() { withCore { c in if c.isCurrent(slot, generation) { c.states[Int(slot)].authDue = 0 } } }

    /// Whether the connection has been marked authenticated (or needs no authentication).
    public var isAuthenticated: Bool { withCore { c in c.isCurrent(slot, generation) && c.states[Int(slot)].authDue == 0 } }

    /// Closes the connection (``CloseReason/timedOut(_:)``, `.read`) unless ``clearReadDeadline()`` is
    /// called within `delay`, for example once a complete message has been read. Re-setting replaces
    /// it. Independent of the handler's timer (``setTimer(after:)``).
    public func setReadDeadline(after delay: Duration) {
        withCore { c in if c.isCurrent(slot, generation) { c.setReadDeadline(slot, at: c.now + max(delay.wholeMilliseconds, 1)) } }
    }

    /// Removes the read deadline, if any.
    public func clearReadDeadline() { withCore { c in if c.isCurrent(slot, generation) { c.states[Int(slot)].readDue = 0 } } }

    /// Flushes what is queued, then closes the connection. Further input is ignored.
    public func close() { withCore { c in if c.isCurrent(slot, generation) { c.requestClose(slot: slot, abort: false, reason: .closedByHandler) } } }

    /// Closes the connection now, discarding queued output; the peer gets a reset (RST), not an orderly
    /// end-of-file (io_uring: on Linux 6.7+, where socket options can be set through the ring).
    public func abort() { withCore { c in if c.isCurrent(slot, generation) { c.requestClose(slot: slot, abort: true, reason: .abortedByHandler) } } }

    /// Flushes what is queued, then shuts down the sending side (the peer reads end-of-file); receiving
    /// continues.
    public func shutdownOutput() { withCore { c in if c.isCurrent(slot, generation) { c.requestShutdownWrite(slot: slot) } } }
}

/// Why a write was refused.
public enum WriteError: Error, Equatable, Sendable {
    /// The pool's send chunks are all in use; nothing was queued. Back off until `writable`.
    case bufferPoolExhausted
    /// The connection is closing, its output was shut down, or the handle is stale; nothing was queued.
    case closed
}
