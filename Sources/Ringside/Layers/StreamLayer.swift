/// A transform between the socket and a handler, for both directions: TLS, compression, a test
/// cipher. Layers compose into a stack, socket side first — handler <- layer n-1 <- ... <- layer 0 <-
/// socket — and the same ``ConnectionHandler`` runs unchanged over any stack (``LayeredHandler``).
///
/// One layer object per connection, made by its ``StreamLayerFactory`` on the loop thread when the
/// connection opens; every call comes on that loop thread, never concurrently. A layer is a class
/// because the two directions re-enter each other (TLS answers inbound handshake bytes with outbound
/// records while the layer below is still delivering).
///
/// Bytes given to a layer are borrowed for the call only. A layer passes bytes on with
/// ``LayerIO/send(_:)`` (towards the socket: through the layers below, then copied into the
/// connection's send chunks) and with the `deliver` closure of ``inbound(_:_:deliver:)`` (towards the
/// handler, through the layers above).
public protocol StreamLayer: AnyObject {
    /// Whether application bytes pass (TLS: once the handshake is complete). The wrapped handler is
    /// opened once every layer of its stack is established.
    var isEstablished: Bool { get }

    /// The connection opened. A client-side layer may start its handshake here. Default: nothing.
    func opened(_ io: LayerIO)

    /// Bytes from below (the socket, or the layer under this one). Pass what is for the handler to
    /// `deliver` (borrowed by the callee for its call only); answer the peer with `io.send`.
    func inbound(_ bytes: UnsafeRawBufferPointer, _ io: LayerIO, deliver: (UnsafeRawBufferPointer) -> Void)

    /// Bytes from above (the handler, or the layer over this one), to transform and `io.send`. Either
    /// every byte is accepted or the call throws and nothing was queued (``WriteError``).
    func outbound(_ bytes: UnsafeRawBufferPointer, _ io: LayerIO) throws(WriteError)

    /// A graceful close is starting (``Connection/close()``, ``Connection/shutdownOutput()``, a server
    /// stop): the last chance to send (TLS: close_notify). Called top layer first. Default: nothing.
    func closing(_ io: LayerIO)

    /// The peer's end-of-file reached this layer. Return true to pass it up (to the layers above, then
    /// the handler's ``ConnectionHandler/inputClosed(on:)``); false when the layer dealt with it (for
    /// example by closing: a handshake cut short). Default: true.
    func inputEnded(_ io: LayerIO) -> Bool

    /// The connection's timer (``Connection/setTimer(after:)``) came due while the wrapped handler is
    /// not open yet: until then the timer is the layers' (a handshake deadline). Default: nothing.
    func timerFired(_ io: LayerIO)

    /// The connection is gone: release what the layer holds. Called exactly once. Default: nothing.
    func closed(_ io: LayerIO)
}

extension StreamLayer {
    public var isEstablished: Bool { true }
    public func opened(_ io: LayerIO) {}
    public func closing(_ io: LayerIO) {}
    public func inputEnded(_ io: LayerIO) -> Bool { true }
    public func timerFired(_ io: LayerIO) {}
    public func closed(_ io: LayerIO) {}
}

/// Makes one layer per connection (on the connection's loop thread). Shared by every loop.
public protocol StreamLayerFactory: Sendable {
    func makeLayer() -> any StreamLayer
}

/// What a layer counts in ``ServerStats`` (``LayerIO/record(_:)``).
public enum LayerEvent: Sendable {
    /// A handshake completed (`resumed`: a session was resumed).
    case handshakeCompleted(resumed: Bool)
    /// A handshake failed (garbage, no shared version or cipher, a bad record).
    case handshakeFailed
    /// The peer closed before the handshake completed.
    case handshakeTruncated
    /// The handshake was not complete within its deadline.
    case handshakeTimedOut
    /// The loop's cap of handshakes in progress was reached and no handshake could be evicted; the
    /// connection was refused.
    case handshakeOverCap
    /// At the cap, a handshake idle for longest was closed to admit a new one (counted by
    /// ``LayerIO/beginHandshake(limit:evictingIdleFor:)`` itself; for rate-limited logging).
    case handshakeEvicted
    /// The transmit side was handed to the kernel (kTLS): the kernel encrypts what is sent from now on.
    case kernelTransmit
    /// An error after the handshake (a bad or truncated record, an alert).
    case error
}

/// The answer of ``LayerIO/beginHandshake(limit:evictingIdleFor:)``.
public enum HandshakeAdmission: Sendable, Equatable {
    /// Counted; there was room under the cap.
    case admitted
    /// Counted in place of the handshake that had made no progress for longest (`idle`), whose
    /// connection (from `peer`, when known) was aborted.
    case evicted(peer: PeerAddress?, idle: Duration)
    /// Not counted: the cap is reached and no handshake has been idle long enough to evict.
    case refused
}

/// A layer's view of its connection during one call: where its output goes (the layers below it,
/// then the socket), the connection itself, and the loop's counters.
///
/// Use it during the call it was passed to only.
public struct LayerIO {
    /// The connection (for close, abort, markAuthenticated, the peer's address, timers).
    public let connection: Connection
    // The stack, unretained. Invariant: the loop's `LoopCore.layerStacks[slot]` holds the stack's
    // strong reference from the layered handler's `opened` to its `closed`, and a LayerIO exists only
    // during a layer call inside that span, on the loop thread.
    let stack: Unmanaged<LayerStack>
    /// This layer's index in the stack (0: next to the socket).
    let level: Int

    init(connection: Connection, stack: Unmanaged<LayerStack>, level: Int) {
        self.connection = connection; self.stack = stack; self.level = level
    }

    /// Sends `bytes` towards the peer: through the layers below this one, then copied into the
    /// connection's send chunks. Either every byte is queued or none.
    /// - Throws: ``WriteError/closed`` when the connection no longer accepts writes,
    ///   ``WriteError/bufferPoolExhausted`` when the pool is out of send chunks.
    public func send(_ bytes: UnsafeRawBufferPointer) throws(WriteError) {
        let level = level
        let r: Result<Void, WriteError> = stack._withUnsafeGuaranteedRef { s in
            Result { () throws(WriteError) in try s.write(below: level, bytes) }
        }
        try r.get()
    }

    /// How many bytes ``send(_:)`` can queue right now at the socket end without exhausting the pool
    /// (a layer that cannot undo a transform checks this first, to keep all-or-nothing writes).
    public var queueableBytes: Int {
        connection.withCore { c in c.isCurrent(connection.slot, connection.generation) ? c.queueableBytes(slot: connection.slot) : 0 }
    }

    /// Counts a handshake in progress against the loop's cap; false (nothing counted) when `limit`
    /// handshakes are already in progress on this loop. Pair a true result with ``endHandshake()``.
    /// (``beginHandshake(limit:evictingIdleFor:)`` without eviction.)
    public func beginHandshake(limit: Int) -> Bool {
        beginHandshake(limit: limit, evictingIdleFor: nil) != .refused
    }

    /// Counts this connection's handshake as in progress, against the loop's cap of `limit`.
    ///
    /// At the cap, the loop's handshake that has made no progress for longest (see
    /// ``handshakeProgressed()``) is evicted, its connection aborted and counted in
    /// ``ServerStats/tlsHandshakesEvicted``, when it has been idle for at least `grace`; otherwise
    /// (or with a nil `grace`) nothing is counted and the answer is ``HandshakeAdmission/refused``.
    /// So a flood of idle half-open handshakes cannot lock newcomers out for longer than `grace`, while
    /// the cap still bounds the handshakes (their CPU and memory) in progress at any moment.
    /// O(1) (the loop keeps its handshakes in a list, least recent progress first). Pair an admission
    /// with ``endHandshake()``; a handshake already counted is admitted again as it is.
    public func beginHandshake(limit: Int, evictingIdleFor grace: Duration?) -> HandshakeAdmission {
        let slot = connection.slot
        return stack._withUnsafeGuaranteedRef { s in
            connection.withCore { c in
                if s.handshakeLinked { return .admitted }
                var answer = HandshakeAdmission.admitted
                while c.handshakes.count >= limit {
                    let victim = c.handshakes.head
                    guard let grace, victim >= 0, let v = c.layerStackObject(victim) else { return .refused }
                    let idle = c.now &- v.handshakeProgressAt
                    guard c.now >= v.handshakeProgressAt, idle >= UInt64(max(0, grace.wholeMilliseconds)) else { return .refused }
                    c.unlinkHandshake(victim, v)
                    c.counters.tlsHandshakesEvicted += 1
                    answer = .evicted(peer: v.connection.peerAddress, idle: .milliseconds(Int64(idle)))
                    // The victim's layers hear of it in their `closed` (their `endHandshake` is a no-op now).
                    v.connection.abort()
                }
                c.linkHandshake(slot, s)
                return answer
            }
        }
    }

    /// The handshake moved (TLS: the layer answered a flight): it becomes the loop's most recent, the
    /// last to be evicted. Bytes that do not complete a handshake message should not count, or a
    /// client trickling its ClientHello would never be idle. O(1); nothing when not counted.
    public func handshakeProgressed() {
        let slot = connection.slot
        stack._withUnsafeGuaranteedRef { s in
            connection.withCore { c in
                guard s.handshakeLinked else { return }
                c.unlinkHandshake(slot, s)
                c.linkHandshake(slot, s)
            }
        }
    }

    /// Ends a handshake counted by ``beginHandshake(limit:evictingIdleFor:)`` (nothing when it was
    /// evicted meanwhile, or never counted).
    public func endHandshake() {
        let slot = connection.slot
        stack._withUnsafeGuaranteedRef { s in
            connection.withCore { c in
                if s.handshakeLinked { c.unlinkHandshake(slot, s) }
            }
        }
    }

    /// Counts `event` in the loop's ``ServerStats``.
    public func record(_ event: LayerEvent) {
        connection.withCore { c in
            switch event {
            case .handshakeCompleted(let resumed):
                c.counters.tlsHandshakes += 1
                if resumed { c.counters.tlsResumptions += 1 }
            case .handshakeFailed: c.counters.tlsHandshakeFailures += 1
            case .handshakeTruncated: c.counters.tlsHandshakesTruncated += 1
            case .handshakeTimedOut: c.counters.tlsHandshakeTimeouts += 1
            case .handshakeOverCap: c.counters.tlsHandshakesOverCap += 1
            case .handshakeEvicted: c.counters.tlsHandshakesEvicted += 1
            case .kernelTransmit: c.counters.tlsKernelTransmits += 1
            case .error: c.counters.layerErrors += 1
            }
        }
    }

    /// The loop's count of `event`-like events so far (for rate-limited logging: first few, then every
    /// 1000th).
    public func count(of event: LayerEvent) -> Int {
        connection.withCore { c in
            switch event {
            case .handshakeCompleted(let resumed): resumed ? c.counters.tlsResumptions : c.counters.tlsHandshakes
            case .handshakeFailed: c.counters.tlsHandshakeFailures
            case .handshakeTruncated: c.counters.tlsHandshakesTruncated
            case .handshakeTimedOut: c.counters.tlsHandshakeTimeouts
            case .handshakeOverCap: c.counters.tlsHandshakesOverCap
            case .handshakeEvicted: c.counters.tlsHandshakesEvicted
            case .kernelTransmit: c.counters.tlsKernelTransmits
            case .error: c.counters.layerErrors
            }
        }
    }
}
