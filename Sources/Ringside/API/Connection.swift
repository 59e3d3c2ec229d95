import Glibc

/// A handle to one connection, passed to every ``ConnectionHandler`` call.
///
/// It is valid only during the call it was passed to, on the loop thread. Everything it does is
/// recorded and carried out by the engine after the handler returns, so several writes in one call
/// leave in one send.
public struct Connection {
    @usableFromInline unowned(unsafe) let core: LoopCore
    @usableFromInline let slot: Int32

    @usableFromInline init(core: LoopCore, slot: Int32) { self.core = core; self.slot = slot }

    /// An identifier unique among the connections open on this loop (slot and generation).
    public var id: UInt64 { UInt64(core.states[Int(slot)].generation) << 32 | UInt64(UInt32(bitPattern: slot)) }

    /// Bytes queued for sending and not yet acknowledged by the kernel.
    public var queuedOutboundBytes: Int { core.states[Int(slot)].queuedBytes }

    /// Whether the queue is above the high watermark (the engine has stopped reading this client).
    public var isBackpressured: Bool { core.states[Int(slot)].queuedBytes > core.highWatermark }

    /// Copies `bytes` into pooled send buffers and queues them. Either all bytes are queued or none.
    /// - Throws: ``WriteError/bufferPoolExhausted`` when the pool has too few free send chunks,
    ///   ``WriteError/closed`` after close/abort/shutdownOutput.
    public func write(_ bytes: UnsafeRawBufferPointer) throws(WriteError) {
        try core.enqueueCopy(slot: slot, bytes)
    }

    /// Copies `bytes` into pooled send buffers and queues them.
    public func write(_ bytes: [UInt8]) throws(WriteError) {
        let r: Result<Void, WriteError> = bytes.withUnsafeBytes { p in
            Result { () throws(WriteError) in try core.enqueueCopy(slot: slot, p) }
        }
        try r.get()
    }

    /// Queues a received buffer for sending without copying it: the receive buffer becomes the send
    /// buffer and returns to the pool once the kernel has sent it. A buffer can be handed back once;
    /// a second call copies.
    public func send(_ received: ReceivedBytes) {
        core.enqueueReceived(slot: slot, received)
    }

    /// Arms this connection's timer (one per connection; re-arming replaces it). When it comes due,
    /// the handler's ``ConnectionHandler/timerFired(on:)`` is called. Resolution is 1 ms.
    public func setTimer(after delay: Duration) {
        let ms = delay.wholeMilliseconds
        core.timers.arm(slot, at: monotonicMillis() + ms)
    }

    /// Disarms this connection's timer, if armed.
    public func cancelTimer() { core.timers.cancel(slot) }

    /// Stops receiving from this connection until ``resumeReading()``, through the same machinery as
    /// backpressure (io_uring: the multishot receive is cancelled and input the kernel completes before
    /// the cancel lands is held; epoll: EPOLLIN is dropped). Held input is delivered after the resume.
    public func pauseReading() { core.setInputPaused(slot, true) }

    /// Undoes ``pauseReading()``. Reading restarts once the outbound queue is also at or below the low
    /// watermark.
    public func resumeReading() { core.setInputPaused(slot, false) }

    /// Marks the connection authenticated: the authentication deadline
    /// (``ServerConfiguration/authenticationTimeout``) no longer applies to it.
    public func markAuthenticated() { core.states[Int(slot)].authDue = 0 }

    /// Whether the connection has been marked authenticated (or needs no authentication).
    public var isAuthenticated: Bool { core.states[Int(slot)].authDue == 0 }

    /// Closes the connection (``CloseReason/timedOut(_:)``, `.read`) unless ``clearReadDeadline()`` is
    /// called within `delay`, for example once a complete message has been read. Re-setting replaces
    /// it. Independent of the handler's timer (``setTimer(after:)``).
    public func setReadDeadline(after delay: Duration) {
        let ms = delay.wholeMilliseconds
        core.setReadDeadline(slot, at: core.now + max(ms, 1))
    }

    /// Removes the read deadline, if any.
    public func clearReadDeadline() { core.states[Int(slot)].readDue = 0 }

    /// Flushes what is queued, then closes the connection. Further input is ignored.
    public func close() { core.requestClose(slot: slot, abort: false, reason: .closedByHandler) }

    /// Closes the connection now, discarding queued output; the peer gets a reset (RST), not an orderly
    /// end-of-file (io_uring: on Linux 6.7+, where socket options can be set through the ring).
    public func abort() { core.requestClose(slot: slot, abort: true, reason: .abortedByHandler) }

    /// Flushes what is queued, then shuts down the sending side (the peer reads end-of-file); receiving
    /// continues.
    public func shutdownOutput() { core.requestShutdownWrite(slot: slot) }
}

/// Why a write was refused.
public enum WriteError: Error, Equatable, Sendable {
    /// The pool's send chunks are all in use; nothing was queued. Back off until `writable`.
    case bufferPoolExhausted
    /// The connection is closing or its output was shut down; nothing was queued.
    case closed
}
