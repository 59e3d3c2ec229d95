import Glibc

/// The backend-independent state of one event loop: the buffer pool, the connection slab, the dirty
/// list and the counters. Both backends drive it; handlers reach it through `Connection`.
///
/// Loop-thread confined. `Connection` holds it unretained and borrows it at +0 (no ARC per call); the
/// backend keeps the only strong reference and outlives every handler call.
///
/// Its mutable state, like the backends', is marked `@exclusivity(unchecked)`: only the loop thread
/// touches it and no access to one of these properties is held across a call that reaches the same
/// property again, so the runtime's dynamic exclusivity check (a thread-local lookup and a call per
/// access, per message) proves nothing here. The debug suite ran with the checks on before they were
/// switched off.
@usableFromInline
final class LoopCore {
    let pool: BufferPool
    /// Slab of per-connection state machines, `capacity` entries, indexed by slot.
    let states: UnsafeMutablePointer<ConnectionState>
    let capacity: Int
    private let freeSlots: UnsafeMutablePointer<Int32>
    @exclusivity(unchecked) private var freeSlotCount: Int
    @exclusivity(unchecked) private(set) var openCount = 0

    let highWatermark: Int
    let lowWatermark: Int

    /// Head of the intrusive list of slots that need backend attention after handler calls.
    @exclusivity(unchecked) private var dirtyHead: Int32 = -1

    /// The receive chunk lent to the handler call in progress, and whether the handler kept it.
    @exclusivity(unchecked) var lentChunk: Int32 = -1
    @exclusivity(unchecked) var lentChunkKept = false

    /// The loop's counters. Kept behind a pointer and reached through `_read`/`_modify`, so the hot
    /// path's `counters.x += 1` (and the state machine's `&counters`) costs no dynamic exclusivity check,
    /// as a stored class property would (loop-thread confined: no other access can overlap).
    private let countersStorage: UnsafeMutablePointer<ServerStats>
    var counters: ServerStats {
        _read { yield countersStorage.pointee }
        _modify { yield &countersStorage.pointee }
    }
    /// Publishes the counters for `ServerStats` readers (see `publishStats`).
    func publishCounters(_ control: LoopControl) { control.publish(from: countersStorage) }

    /// One timer per connection slot (the handler's: `Connection.setTimer`).
    @exclusivity(unchecked) var timers: TimerWheel
    let dueTimers: UnsafeMutablePointer<Int32>

    /// The engine's deadlines (authentication, idle, read, write stall): one entry per inbound slot,
    /// armed at the earliest of them and re-checked lazily when it fires.
    @exclusivity(unchecked) var deadlines: TimerWheel
    let limits: Limits
    /// Open connections per remote address (only with `maxConnectionsPerAddress`).
    @exclusivity(unchecked) var addresses: AddressTable
    /// The loop's clock (CLOCK_MONOTONIC ms), refreshed once per loop iteration by `tick()`.
    @exclusivity(unchecked) @usableFromInline var now: UInt64
    /// The server is stopping (no new receives, connections draining).
    @exclusivity(unchecked) var stopping = false
    /// The loop millisecond of the last stats publish, and whether counters changed after it
    /// (`publishStats`).
    @exclusivity(unchecked) var statsPublishedAt: UInt64 = 0
    @exclusivity(unchecked) var statsUnpublished = false
    /// The backend's file operations (unretained: the backend owns them and outlives every call).
    var files: Unmanaged<AnyObject>? = nil
    /// The backend's splice path for file sends, if it has one (unretained, like `files`).
    unowned(unsafe) var splicer: (any FileSplicer)? = nil
    /// When a graceful stop gives up on draining and aborts what is left.
    @exclusivity(unchecked) var drainDeadline: ContinuousClock.Instant? = nil

    /// Stream layers (Layers/): the layer stack of each slot whose traits contain `.layered`, allocated
    /// on the first layered connection (`capacity` entries). Each entry holds one strong reference
    /// (retained on install, released on removal: `LoopCore.installLayerStack`/`removeLayerStack`), so
    /// the enqueue path borrows it at +0. A stack lives from the layered handler's `opened` to its
    /// `closed` (`LayeredHandler`); `freeSlot` drops a stack left behind.
    @exclusivity(unchecked) var layerStacks: UnsafeMutablePointer<Unmanaged<LayerStack>?>? = nil
    /// Layer handshakes (TLS) in progress on this loop, least recent progress first, for the per-loop
    /// cap and its eviction (`LayerIO.beginHandshake`, Layers/LayerStack.swift).
    @exclusivity(unchecked) var handshakes = HandshakeList()
    /// Whether this loop's backend can run socket directives (Layers/SocketDirectives.swift) on its
    /// connections: epoll always; io_uring with ordinary descriptors, or direct ones with socket
    /// commands (6.7+). False when `KernelFeatures.kernelTLS` is masked. Set once by the backend.
    @exclusivity(unchecked) var orderedSocketOperations = false

    /// Deadlines and caps, in milliseconds (0: off).
    struct Limits {
        var authenticationMillis: UInt64 = 0
        var idleMillis: UInt64 = 0
        var writeStallMillis: UInt64 = 0
        var lingerMillis: UInt64 = 0
        var maxPerAddress = 0
        /// PROXY protocol: the per-address cap is applied once the client's address is known (after the
        /// header), not to the socket's peer (`ProxyProtocolHandler`).
        var deferAddressAdmission = false

        init() {}
        init(_ c: ServerConfiguration, requiresAuthentication: Bool) {
            func ms(_ d: Duration?) -> UInt64 {
                guard let d, d > .zero else { return 0 }
                return max(1, d.wholeMilliseconds)
            }
            authenticationMillis = requiresAuthentication ? ms(c.authenticationTimeout) : 0
            idleMillis = ms(c.idleTimeout)
            writeStallMillis = ms(c.writeStallTimeout)
            lingerMillis = ms(c.lingerTimeout)
            maxPerAddress = c.maxConnectionsPerAddress ?? 0
            deferAddressAdmission = c.proxyProtocol != nil
        }
    }

    init(pool: BufferPool, capacity: Int, highWatermark: Int, lowWatermark: Int, limits: Limits = Limits()) {
        self.pool = pool
        self.capacity = capacity
        self.highWatermark = highWatermark
        self.lowWatermark = lowWatermark
        self.limits = limits
        deadlines = TimerWheel(capacity: capacity)
        addresses = AddressTable(connections: limits.maxPerAddress > 0 ? capacity : 1)
        now = monotonicMillis()
        states = .allocate(capacity: capacity)
        states.initialize(repeating: ConnectionState(), count: capacity)
        freeSlots = .allocate(capacity: capacity)
        for i in 0..<capacity { freeSlots[i] = Int32(capacity - 1 - i) }
        freeSlotCount = capacity
        timers = TimerWheel(capacity: capacity)
        dueTimers = .allocate(capacity: capacity)
        countersStorage = .allocate(capacity: 1)
        countersStorage.initialize(to: ServerStats())
    }

    /// The core of a loop of `config`, serving handlers that do (or do not) require authentication.
    convenience init(_ config: ServerConfiguration, pool: BufferPool, requiresAuthentication: Bool) {
        self.init(pool: pool, capacity: config.maxConnections, highWatermark: config.highWatermark,
                  lowWatermark: config.lowWatermark, limits: Limits(config, requiresAuthentication: requiresAuthentication))
    }

    deinit {
        states.deinitialize(count: capacity)
        states.deallocate()
        freeSlots.deallocate()
        dueTimers.deallocate()
        countersStorage.deinitialize(count: 1)
        countersStorage.deallocate()
        if layerStacks != nil { for s in 0..<Int32(capacity) { removeLayerStack(slot: s) } }
        layerStacks?.deallocate()
    }

    /// What the connection state machines need from the loop.
    @inline(__always) func environment(cancelsUnwantedReceive: Bool) -> ConnectionState.Environment {
        .init(highWatermark: highWatermark, lowWatermark: lowWatermark, stopping: stopping,
              lingerEnabled: limits.lingerMillis > 0, cancelsUnwantedReceive: cancelsUnwantedReceive)
    }

    // MARK: slots

    /// Takes a free slot for a new connection on `fd`, or nil at the connection cap.
    func allocateSlot(fd: Int32, outbound: Bool = false) -> Int32? {
        guard freeSlotCount > 0 else { return nil }
        freeSlotCount -= 1
        let s = freeSlots[freeSlotCount]
        let gen = states[Int(s)].generation
        states[Int(s)] = ConnectionState()
        states[Int(s)].generation = gen
        states[Int(s)].fd = fd
        states[Int(s)].phase = outbound ? .connecting : .open
        openCount += 1
        if !outbound {
            counters.connectionsAccepted += 1
            startDeadlines(s)
        }
        counters.connectionsOpen = openCount
        return s
    }

    /// Whether `slot` still holds the connection of `generation` (a handle or completion is current).
    @inline(__always) func isCurrent(_ slot: Int32, _ generation: UInt32) -> Bool {
        states[Int(slot)].generation == generation && states[Int(slot)].phase != .free
    }

    /// Whether a new connection from `address` (a sockaddr) stays within `maxConnectionsPerAddress`;
    /// counts it if so. Call `noteAddress` with the slot once one is allocated, or `forgetAddress`.
    func admitAddress(_ address: UnsafeRawPointer) -> (UInt64, UInt64)?? {
        guard !limits.deferAddressAdmission, let k = AddressTable.key(address) else { return .some(nil) }
        return admitAddressKey(k)
    }

    /// `admitAddress` for an address key (IPv4 mapped into IPv6).
    func admitAddressKey(_ k: (UInt64, UInt64)) -> (UInt64, UInt64)?? {
        guard limits.maxPerAddress > 0 else { return .some(nil) }
        guard addresses.admit(k.0, k.1, limit: limits.maxPerAddress) else {
            counters.connectionsRefused += 1
            counters.connectionsRefusedPerAddress += 1
            return nil
        }
        return .some(k)
    }

    /// Ties an admitted address to its slot (released when the slot is freed).
    func noteAddress(_ slot: Int32, _ k: (UInt64, UInt64)?) {
        guard let k else { return }
        states[Int(slot)].addressHigh = k.0
        states[Int(slot)].addressLow = k.1
        states[Int(slot)].traits.insert(.addressCounted)
    }

    /// Records the socket's peer address (a sockaddr) for `Connection.peerAddress`.
    func notePeer(_ slot: Int32, _ address: UnsafeRawPointer) {
        guard let p = PeerAddress(sockaddr: address) else { return }
        setPeer(slot, p)
    }

    /// Sets the connection's peer address (the socket's, or the client's from a PROXY header).
    func setPeer(_ slot: Int32, _ p: PeerAddress) {
        states[Int(slot)].addressHigh = p.ip.high
        states[Int(slot)].addressLow = p.ip.low
        states[Int(slot)].peerPort = p.port
        states[Int(slot)].traits.insert(.peerKnown)
    }

    /// Releases an admitted address that got no slot.
    func forgetAddress(_ k: (UInt64, UInt64)?) {
        if let k { addresses.release(k.0, k.1) }
    }

    /// Frees a slot whose connection is fully torn down (or never connected); bumps its generation, so
    /// every handle and completion of the old connection is stale from now on.
    func freeSlot(_ s: Int32) {
        let i = Int(s)
        precondition(states[i].sendHead == -1 && states[i].heldHead == -1 && states[i].inflight == 0, "freeing a busy slot")
        // Only from `service` (after popDirty): a slot still linked in the dirty list must not be reused.
        precondition(!states[i].dirty, "freeing a slot that is in the dirty list")
        timers.cancel(s)
        deadlines.cancel(s)
        if states[i].traits.contains(.addressCounted) { addresses.release(states[i].addressHigh, states[i].addressLow) }
        if states[i].traits.contains(.layered) { removeLayerStack(slot: s) }
        let connected = states[i].phase != .connectFailed && states[i].phase != .connecting
        if connected { counters.connectionsClosed += 1 }
        states[i].generation &+= 1
        states[i].phase = .free
        states[i].traits = []
        states[i].fd = -1
        freeSlots[freeSlotCount] = s
        freeSlotCount += 1
        openCount -= 1
        counters.connectionsOpen = openCount
    }

    // MARK: dirty list

    @inline(__always) func markDirty(_ s: Int32) {
        let i = Int(s)
        guard !states[i].dirty else { return }
        states[i].dirty = true
        states[i].nextDirty = dirtyHead
        dirtyHead = s
    }

    /// Pops the next dirty slot (-1 when none).
    @inline(__always) func popDirty() -> Int32 {
        let s = dirtyHead
        if s >= 0 {
            dirtyHead = states[Int(s)].nextDirty
            states[Int(s)].nextDirty = -1
            states[Int(s)].dirty = false
        }
        return s
    }

    /// Services every dirty slot (and slots marked dirty while doing so) until none is left.
    @inline(__always) func drainDirty(_ service: (Int32) -> Void) {
        while true {
            let s = popDirty()
            if s < 0 { return }
            service(s)
        }
    }

    // MARK: requests (from Connection during handler calls, and from the engine)

    @usableFromInline func requestClose(slot: Int32, abort: Bool, reason: CloseReason) {
        // A graceful close of a layered connection lets its layers say goodbye first (TLS close_notify),
        // while the connection still accepts writes.
        if !abort && states[Int(slot)].traits.contains(.layered) && states[Int(slot)].acceptsWrites {
            _ = withLayerStack(slot) { $0.closing() }
        }
        if states[Int(slot)].requestClose(abort: abort, reason: reason) { markDirty(slot) }
    }

    /// The handler's own pause (`Connection.pauseReading`): reading stops through the same machinery
    /// as backpressure, and resumes once the handler resumes and the queue is at or below the low mark.
    @usableFromInline func setInputPaused(_ slot: Int32, _ paused: Bool) {
        guard states[Int(slot)].phase == .open else { return }
        states[Int(slot)].handlerPaused = paused
        markDirty(slot)
    }

    @usableFromInline func requestShutdownWrite(slot: Int32) {
        if states[Int(slot)].traits.contains(.layered) && states[Int(slot)].acceptsWrites { _ = withLayerStack(slot) { $0.closing() } }
        states[Int(slot)].requestShutdownWrite()
        markDirty(slot)
    }

    // MARK: stopping

    /// Stops the loop's connections: no new receives; each closes gracefully (flush first), or at once
    /// once the drain deadline has passed.
    func beginStop(drainTimeout: Duration) {
        stopping = true
        drainDeadline = ContinuousClock.now.advanced(by: drainTimeout)
        requestCloseAll(abort: false)
    }

    /// Asks every open connection to close (gracefully: flush first, or at once when `abort`).
    func requestCloseAll(abort: Bool) {
        for s in 0..<Int32(capacity) {
            switch states[Int(s)].phase {
            case .open, .draining, .lingering: requestClose(slot: s, abort: abort, reason: .serverShutdown)
            default: break
            }
        }
    }

    /// Aborts every remaining connection once the drain deadline has passed; returns whether it did.
    func abortAllIfDrainDeadlinePassed() -> Bool {
        guard let d = drainDeadline, ContinuousClock.now >= d else { return false }
        drainDeadline = nil
        requestCloseAll(abort: true)
        return true
    }

    /// Publishes counters that are derived from the pool.
    func refreshGauges() {
        counters.buffersInUse = pool.chunksOut
        counters.peakBuffersInUse = pool.peakChunksOut
    }
}
