import Logging

/// The layers of one connection, socket side first, and the two directions through them.
///
/// Owned by `LoopCore.layerStacks[slot]` (the one strong reference) from `LayeredHandler.opened` to
/// `LayeredHandler.closed`; while it is there the slot's traits contain `.layered`, so the handler's
/// `Connection.write`/`send` reach `writeFromHandler` instead of the send queue. Loop-thread confined.
final class LayerStack {
    let layers: [any StreamLayer]
    let connection: Connection
    private var closingDone = false
    private(set) var isClosed = false

    /// Write batching: while the wrapped handler runs (`LayeredHandler` brackets its calls with
    /// `beginBatch`/`endBatch`, nesting counted), small writes gather here and go through the layers
    /// once when the outermost call ends, so a response written as head + body becomes one TLS record,
    /// not two. Allocated on the first batched write (`batchCapacity` bytes, freed in `deinit`).
    private var batchDepth = 0
    private var pending: UnsafeMutableRawPointer? = nil
    private var pendingCount = 0
    static let batchCapacity = 4096
    /// Room kept per batch for what the layers add (TLS: record header, tag, padding).
    static let batchOverhead = 256

    /// The loop's list of handshakes in progress (`LoopCore.handshakes`): whether this connection is in
    /// it, its neighbours (slots, -1 at the ends) and when its handshake last made progress (the loop's
    /// clock, ms). Loop-thread confined, like the list.
    var handshakeLinked = false
    var handshakePrevious: Int32 = -1
    var handshakeNext: Int32 = -1
    var handshakeProgressAt: UInt64 = 0

    /// Socket directives queued behind the connection's bytes, oldest first (SocketDirectives.swift).
    var directives: [SocketDirective] = []

    deinit { pending?.deallocate() }

    init(layers: [any StreamLayer], connection: Connection) {
        self.layers = layers; self.connection = connection
    }

    @inline(__always) private func io(_ level: Int) -> LayerIO {
        LayerIO(connection: connection, stack: Unmanaged.passUnretained(self), level: level)
    }

    /// Whether every layer passes application bytes.
    var isEstablished: Bool {
        for l in layers where !l.isEstablished { return false }
        return true
    }

    func opened() { for (i, l) in layers.enumerated() { l.opened(io(i)) } }

    /// Bytes from the socket: through every layer, bottom up; what comes out on top goes to `deliver`.
    func inbound(_ bytes: UnsafeRawBufferPointer, _ deliver: (UnsafeRawBufferPointer) -> Void) {
        inbound(0, bytes, deliver)
    }

    private func inbound(_ level: Int, _ bytes: UnsafeRawBufferPointer, _ deliver: (UnsafeRawBufferPointer) -> Void) {
        if level == layers.count { deliver(bytes); return }
        layers[level].inbound(bytes, io(level)) { up in self.inbound(level + 1, up, deliver) }
    }

    /// The handler's plaintext: through every layer, top down, then into the send queue.
    ///
    /// While batching, a write that fits the batch buffer is copied there, once the send pool is known
    /// to have room for the whole batch after the layers' transform: the write is then as good as
    /// queued (all or nothing, as ever), since nothing else runs on the loop before `endBatch`.
    func writeFromHandler(_ bytes: UnsafeRawBufferPointer) throws(WriteError) {
        if batchDepth > 0 && bytes.count <= Self.batchCapacity {
            if pendingCount + bytes.count > Self.batchCapacity { try flushBatch() }
            let room = connection.withCore { c in c.queueableBytes(slot: connection.slot) }
            guard room >= pendingCount + bytes.count + Self.batchOverhead else { throw .bufferPoolExhausted }
            if pending == nil { pending = .allocate(byteCount: Self.batchCapacity, alignment: 16) }
            (pending! + pendingCount).copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
            pendingCount += bytes.count
            return
        }
        try flushBatch()
        try write(below: layers.count, bytes)
    }

    @inline(__always) func beginBatch() { batchDepth += 1 }

    /// Ends a handler call: at the outermost, the gathered writes go through the layers. A failure
    /// here (the layers refused what was checked to fit, or the connection closed) cannot be reported
    /// to the handler, which was told its bytes were queued: counted (`layerErrors`) unless the
    /// connection was closing anyway, and the connection aborted.
    @inline(__always) func endBatch() {
        batchDepth -= 1
        guard batchDepth == 0, pendingCount > 0 else { return }
        do { try flushBatch() } catch {
            if error != .closed { LayerIO(connection: connection, stack: Unmanaged.passUnretained(self), level: 0).record(.error) }
            connection.abort()
        }
    }

    private func flushBatch() throws(WriteError) {
        guard pendingCount > 0, let p = pending else { return }
        let n = pendingCount
        pendingCount = 0
        try write(below: layers.count, UnsafeRawBufferPointer(start: p, count: n))
    }

    /// Output of layer `level` (or the handler, at `layers.count`): to the layer below, or at the
    /// bottom copied into send chunks.
    func write(below level: Int, _ bytes: UnsafeRawBufferPointer) throws(WriteError) {
        if level == 0 {
            let slot = connection.slot
            let r: Result<Void, WriteError> = connection.withCore { c in
                Result { () throws(WriteError) in try c.enqueueUnlayered(slot: slot, bytes) }
            }
            try r.get()
        } else {
            try layers[level - 1].outbound(bytes, io(level - 1))
        }
    }

    /// A graceful close starts: each layer, top first, may send its last bytes. Once.
    func closing() {
        guard !closingDone else { return }
        closingDone = true
        // What the handler wrote before closing leaves before the layers' goodbye (a failure: the
        // connection is going anyway).
        do { try flushBatch() } catch { pendingCount = 0 }
        for i in layers.indices.reversed() { layers[i].closing(io(i)) }
    }

    /// End of input, bottom up; false when a layer dealt with it.
    func inputEnded() -> Bool {
        for (i, l) in layers.enumerated() where !l.inputEnded(io(i)) { return false }
        return true
    }

    func timerFired() { for (i, l) in layers.enumerated() { l.timerFired(io(i)) } }

    func closed() {
        guard !isClosed else { return }
        isClosed = true
        for (i, l) in layers.enumerated() { l.closed(io(i)) }
    }
}

/// Factories of a layer stack, socket side first.
public struct LayerStackFactory: Sendable {
    let factories: [any StreamLayerFactory]
    /// A stack of the layers `factories` make, the first next to the socket.
    public init(_ factories: [any StreamLayerFactory]) { self.factories = factories }
}

/// A handler behind a stack of ``StreamLayer``s: what arrives is transformed bottom up before the
/// wrapped handler sees it, and what the wrapped handler writes (``Connection/write(_:)-(UnsafeRawBufferPointer)``,
/// ``Connection/send(_:)``) goes through the layers top down. The wrapped handler is opened once every
/// layer is established (TLS: after the handshake), and never when the connection ends before.
///
/// Authentication: a layered handler always requires authentication, so the
/// ``ServerConfiguration/authenticationTimeout`` deadline runs from the accept and a handshake counts
/// against it (a client that trickles its ClientHello is closed at the deadline). Once the layers are
/// established, a wrapped handler that needs no authentication (`requiresAuthentication == false`) is
/// marked authenticated; one that does keeps the deadline running until it calls
/// ``Connection/markAuthenticated()`` itself (the handshake authenticates the server, not the client).
///
/// Plaintext handed to the wrapped handler is lent as ``ReceivedBytes`` for the call only; a
/// ``Connection/send(_:)`` of it goes back through the layers (a copy, as any transform is).
public struct LayeredHandler<H: ConnectionHandler>: ConnectionHandler {
    public static var requiresAuthentication: Bool { true }

    private var inner: H
    private let stackFactory: LayerStackFactory
    private var innerOpened = false
    // The stack, unretained. Invariant: `LoopCore.layerStacks[slot]` holds its strong reference from
    // `opened` (which installs it) to `closed` (which removes it), and the engine calls `opened` first
    // and `closed` last, so every use in between is valid; nil before `opened` and after `closed`.
    private var stack: Unmanaged<LayerStack>? = nil

    public init(_ inner: H, layers: LayerStackFactory) {
        self.inner = inner; self.stackFactory = layers
    }

    /// Brackets one call into the wrapped handler: its writes are batched (`LayerStack.writeFromHandler`).
    @inline(__always) private func beginBatch() { stack?._withUnsafeGuaranteedRef { $0.beginBatch() } }
    @inline(__always) private func endBatch() { stack?._withUnsafeGuaranteedRef { $0.endBatch() } }

    public mutating func opened(on connection: Connection) {
        let layers = stackFactory.factories.map { $0.makeLayer() }
        let s = LayerStack(layers: layers, connection: connection)
        connection.withCore { c in c.installLayerStack(s, slot: connection.slot) }
        stack = Unmanaged.passUnretained(s)
        s.opened()
        openInnerIfEstablished(connection)
    }

    public mutating func received(_ bytes: ReceivedBytes, on connection: Connection) {
        guard let stack else { return }
        stack._withUnsafeGuaranteedRef { s in
            s.beginBatch()
            s.inbound(bytes.bytes) { plain in deliver(plain, connection) }
            s.endBatch()
        }
        openInnerIfEstablished(connection)
    }

    private mutating func deliver(_ plain: UnsafeRawBufferPointer, _ connection: Connection) {
        if !innerOpened { openInnerIfEstablished(connection) }
        guard innerOpened, connection.isOpen, plain.count > 0 else { return }
        // `plain` is the top layer's output, valid for this call only (TLS: a buffer on the loop
        // thread's stack), not a pool chunk: chunk -1. Its `send` never reaches the chunk path: on a
        // layered slot `LoopCore.enqueueReceived` goes through the layers before looking at the chunk.
        inner.received(ReceivedBytes(bytes: plain, chunk: -1, offset: 0), on: connection)
    }

    private mutating func openInnerIfEstablished(_ connection: Connection) {
        guard !innerOpened, let stack, connection.isOpen,
              stack._withUnsafeGuaranteedRef({ $0.isEstablished }) else { return }
        innerOpened = true
        if !H.requiresAuthentication { connection.markAuthenticated() }
        beginBatch()
        inner.opened(on: connection)
        endBatch()
    }

    public mutating func inputClosed(on connection: Connection) {
        guard let stack, stack._withUnsafeGuaranteedRef({ $0.inputEnded() }) else { return }
        if innerOpened { beginBatch(); inner.inputClosed(on: connection); endBatch() } else { connection.close() }
    }

    public mutating func writable(on connection: Connection) {
        guard innerOpened else { return }
        beginBatch(); inner.writable(on: connection); endBatch()
    }

    /// The timer belongs to the layers until the wrapped handler is open (a handshake deadline), then to
    /// the wrapped handler (its own `setTimer`; the layers cancel theirs once established).
    public mutating func timerFired(on connection: Connection) {
        if innerOpened { beginBatch(); inner.timerFired(on: connection); endBatch(); return }
        stack?._withUnsafeGuaranteedRef { $0.timerFired() }
    }

    public mutating func closed(reason: CloseReason) {
        if innerOpened { inner.closed(reason: reason) }
        guard let stack else { return }
        self.stack = nil
        let s = stack.takeUnretainedValue()
        s.closed()
        s.connection.withCore { c in c.removeLayerStack(slot: s.connection.slot) }
    }
}

/// The loop's layer handshakes in progress (`LoopCore.handshakes`): a doubly linked list of slots
/// through their `LayerStack`s, least recent progress first (head), so the cap's eviction candidate
/// and every update are O(1) and allocate nothing. Loop-thread confined.
struct HandshakeList {
    var count = 0
    var head: Int32 = -1
    var tail: Int32 = -1
}

extension LoopCore {
    /// Installs `stack` as `slot`'s layers (one strong reference, held by the table) and marks the
    /// slot `.layered`. Allocates the table on the first layered connection of the loop.
    func installLayerStack(_ stack: LayerStack, slot: Int32) {
        if layerStacks == nil {
            let p = UnsafeMutablePointer<Unmanaged<LayerStack>?>.allocate(capacity: capacity)
            p.initialize(repeating: nil, count: capacity)
            layerStacks = p
        }
        removeLayerStack(slot: slot)
        layerStacks![Int(slot)] = Unmanaged.passRetained(stack)
        states[Int(slot)].traits.insert(.layered)
    }

    /// Drops `slot`'s layer stack, if any (its strong reference is released), and its handshake from
    /// the loop's list if it is still there.
    func removeLayerStack(slot: Int32) {
        guard let t = layerStacks, let s = t[Int(slot)] else { return }
        s._withUnsafeGuaranteedRef { if $0.handshakeLinked { unlinkHandshake(slot, $0) } }
        t[Int(slot)] = nil
        s.release()
    }

    /// `slot`'s layer stack (a strong reference; off the per-message path), or nil.
    func layerStackObject(_ slot: Int32) -> LayerStack? {
        guard slot >= 0, let t = layerStacks, let s = t[Int(slot)] else { return nil }
        return s.takeUnretainedValue()
    }

    /// Appends `slot` (whose stack is `s`) to the loop's handshakes as the most recent, progress now.
    func linkHandshake(_ slot: Int32, _ s: LayerStack) {
        precondition(!s.handshakeLinked, "handshake linked twice")
        s.handshakeLinked = true
        s.handshakeProgressAt = now
        s.handshakePrevious = handshakes.tail
        s.handshakeNext = -1
        if handshakes.tail >= 0 { layerStackObject(handshakes.tail)!.handshakeNext = slot } else { handshakes.head = slot }
        handshakes.tail = slot
        handshakes.count += 1
        counters.tlsHandshakesInProgress = handshakes.count
    }

    /// Takes `slot` (whose stack is `s`) out of the loop's handshakes.
    func unlinkHandshake(_ slot: Int32, _ s: LayerStack) {
        precondition(s.handshakeLinked, "unlinking a handshake that is not linked")
        // Every linked slot has its stack in the table (a stack unlinks before it leaves it).
        if s.handshakePrevious >= 0 { layerStackObject(s.handshakePrevious)!.handshakeNext = s.handshakeNext } else { handshakes.head = s.handshakeNext }
        if s.handshakeNext >= 0 { layerStackObject(s.handshakeNext)!.handshakePrevious = s.handshakePrevious } else { handshakes.tail = s.handshakePrevious }
        s.handshakeLinked = false
        s.handshakePrevious = -1
        s.handshakeNext = -1
        handshakes.count -= 1
        counters.tlsHandshakesInProgress = handshakes.count
    }

    /// Runs `body` with `slot`'s layer stack borrowed at +0 (nil: no stack). Invariant: the table's
    /// reference keeps the stack alive for the call; nothing in a layer call removes the stack of the
    /// connection it is serving (only `LayeredHandler.closed` and `freeSlot` do, outside layer calls).
    @inline(__always) func withLayerStack<R>(_ slot: Int32, _ body: (LayerStack) -> R) -> R? {
        guard let t = layerStacks, let s = t[Int(slot)] else { return nil }
        return s._withUnsafeGuaranteedRef(body)
    }
}

extension RingsideServer {
    /// Starts a server whose handlers sit behind `layers` (socket side first): each connection gets
    /// its own layer objects and a ``LayeredHandler`` around `makeHandler()`'s handler. Otherwise as
    /// ``start(configuration:logger:handler:)``.
    @inlinable
    public static func start<H: ConnectionHandler>(
        configuration: ServerConfiguration,
        logger: Logger = Logger(label: "ringside"),
        layers: LayerStackFactory,
        handler makeHandler: @escaping @Sendable () -> H
    ) throws -> RunningServer {
        try start(configuration: configuration, logger: logger) { LayeredHandler(makeHandler(), layers: layers) }
    }
}

extension RingsideServer {
    /// ``startAsync(configuration:requiresAuthentication:inboundBufferLimit:logger:_:)`` behind `layers`
    /// (socket side first): each connection's task reads the plaintext its layers produce, and its
    /// writes go through them. The handshake of a layer (TLS) runs before the task starts.
    public static func startAsync(
        configuration: ServerConfiguration,
        requiresAuthentication: Bool = true,
        inboundBufferLimit: Int = 64 * 1024,
        layers: LayerStackFactory,
        logger: Logger = Logger(label: "ringside"),
        _ body: @escaping @Sendable (AsyncConnection) async throws -> Void
    ) throws -> RunningServer {
        precondition(inboundBufferLimit > 0)
        if requiresAuthentication {
            return try start(configuration: configuration, logger: logger) {
                LayeredHandler(AsyncBridge<AuthenticationRequired>(body: body, inboundLimit: inboundBufferLimit, logger: logger), layers: layers)
            }
        }
        return try start(configuration: configuration, logger: logger) {
            LayeredHandler(AsyncBridge<NoAuthentication>(body: body, inboundLimit: inboundBufferLimit, logger: logger), layers: layers)
        }
    }
}
