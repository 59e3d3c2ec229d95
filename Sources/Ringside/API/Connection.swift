import Glibc

/// A handle to one connection, passed to every ``ConnectionHandler`` call.
///
/// Use it during the call it was passed to, on the loop thread. Everything it does is recorded and
/// carried out by the engine after the handler returns, so several writes in one call leave in one
/// send. The handle carries its connection's generation: once that connection has closed, a kept
/// handle is stale, and it can never reach the next connection that takes the same slot — its writes
/// throw ``WriteError/closed`` and its other operations do nothing.
public struct Connection {
    @usableFromInline unowned(unsafe) let core: LoopCore
    @usableFromInline let slot: Int32
    @usableFromInline let generation: UInt32

    @usableFromInline init(core: LoopCore, slot: Int32, generation: UInt32) {
        self.core = core; self.slot = slot; self.generation = generation
    }

    /// Whether this handle still names an open connection (false once it closed, and for a handle kept
    /// past its connection).
    public var isOpen: Bool { current && core.states[Int(slot)].phase == .open }

    var current: Bool { core.isCurrent(slot, generation) }

    /// An identifier unique among the connections open on this loop (slot and generation).
    public var id: UInt64 { UInt64(generation) << 32 | UInt64(UInt32(bitPattern: slot)) }

    /// The remote address: the client's as a trusted proxy's PROXY header gave it
    /// (``ServerConfiguration/proxyProtocol``), else the socket's peer. Nil for outbound connections,
    /// for a stale handle, and on io_uring when the accept did not ask the kernel for addresses (a
    /// multishot accept: used when neither a per-address cap nor the PROXY protocol is configured).
    public var peerAddress: PeerAddress? {
        guard current, core.states[Int(slot)].traits.contains(.peerKnown) else { return nil }
        let i = Int(slot)
        return PeerAddress(ip: IPAddress(high: core.states[i].addressHigh, low: core.states[i].addressLow),
                           port: core.states[i].peerPort)
    }

    /// Bytes queued for sending and not yet acknowledged by the kernel (0 for a stale handle).
    public var queuedOutboundBytes: Int { current ? core.states[Int(slot)].queuedBytes : 0 }

    /// Whether the queue is above the high watermark (the engine has stopped reading this client).
    public var isBackpressured: Bool { queuedOutboundBytes > core.highWatermark }

    /// Copies `bytes` into pooled send buffers and queues them. Either all bytes are queued or none.
    /// - Throws: ``WriteError/bufferPoolExhausted`` when the pool has too few free send chunks,
    ///   ``WriteError/closed`` after close/abort/shutdownOutput, or on a stale handle.
    public func write(_ bytes: UnsafeRawBufferPointer) throws(WriteError) {
        guard current else { throw .closed }
        try core.enqueueCopy(slot: slot, bytes)
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
        guard current else { throw .closed }
        try core.enqueueReceived(slot: slot, received)
    }

    /// Arms this connection's timer (one per connection; re-arming replaces it). When it comes due,
    /// the handler's ``ConnectionHandler/timerFired(on:)`` is called. Resolution is 1 ms.
    public func setTimer(after delay: Duration) {
        guard current else { return }
        core.timers.arm(slot, at: monotonicMillis() + delay.wholeMilliseconds)
    }

    /// Disarms this connection's timer, if armed.
    public func cancelTimer() { if current { core.timers.cancel(slot) } }

    /// Stops receiving from this connection until ``resumeReading()``, through the same machinery as
    /// backpressure (io_uring: the multishot receive is cancelled and input the kernel completes before
    /// the cancel lands is held; epoll: EPOLLIN is dropped). Held input is delivered after the resume.
    public func pauseReading() { if current { core.setInputPaused(slot, true) } }

    /// Undoes ``pauseReading()``. Reading restarts once the outbound queue is also at or below the low
    /// watermark.
    public func resumeReading() { if current { core.setInputPaused(slot, false) } }

    /// Marks the connection authenticated: the authentication deadline
    /// (``ServerConfiguration/authenticationTimeout``) no longer applies to it.
    public func markAuthenticated() { if current { core.states[Int(slot)].authDue = 0 } }

    /// Whether the connection has been marked authenticated (or needs no authentication).
    public var isAuthenticated: Bool { current && core.states[Int(slot)].authDue == 0 }

    /// Closes the connection (``CloseReason/timedOut(_:)``, `.read`) unless ``clearReadDeadline()`` is
    /// called within `delay`, for example once a complete message has been read. Re-setting replaces
    /// it. Independent of the handler's timer (``setTimer(after:)``).
    public func setReadDeadline(after delay: Duration) {
        guard current else { return }
        core.setReadDeadline(slot, at: core.now + max(delay.wholeMilliseconds, 1))
    }

    /// Removes the read deadline, if any.
    public func clearReadDeadline() { if current { core.states[Int(slot)].readDue = 0 } }

    /// Flushes what is queued, then closes the connection. Further input is ignored.
    public func close() { if current { core.requestClose(slot: slot, abort: false, reason: .closedByHandler) } }

    /// Closes the connection now, discarding queued output; the peer gets a reset (RST), not an orderly
    /// end-of-file (io_uring: on Linux 6.7+, where socket options can be set through the ring).
    public func abort() { if current { core.requestClose(slot: slot, abort: true, reason: .abortedByHandler) } }

    /// Flushes what is queued, then shuts down the sending side (the peer reads end-of-file); receiving
    /// continues.
    public func shutdownOutput() { if current { core.requestShutdownWrite(slot: slot) } }
}

/// Why a write was refused.
public enum WriteError: Error, Equatable, Sendable {
    /// The pool's send chunks are all in use; nothing was queued. Back off until `writable`.
    case bufferPoolExhausted
    /// The connection is closing, its output was shut down, or the handle is stale; nothing was queued.
    case closed
}
