import Glibc

/// The backend-independent state of one event loop: the buffer pool, the connection slab, the dirty
/// list and the counters. Both backends drive it; handlers reach it through `Connection`.
///
/// Loop-thread confined. `Connection` holds it `unowned(unsafe)` (no ARC per call); the backend keeps
/// the only strong reference and outlives every handler call.
@usableFromInline
final class LoopCore {
    let pool: BufferPool
    /// Slab of per-connection state, `capacity` entries, indexed by slot.
    let states: UnsafeMutablePointer<ConnectionState>
    let capacity: Int
    private let freeSlots: UnsafeMutablePointer<Int32>
    private var freeSlotCount: Int
    private(set) var openCount = 0

    let highWatermark: Int
    let lowWatermark: Int

    /// Head of the intrusive list of slots that need backend attention after handler calls.
    private var dirtyHead: Int32 = -1

    /// The receive chunk lent to the handler call in progress, and whether the handler kept it.
    var lentChunk: Int32 = -1
    var lentChunkKept = false

    var counters = ServerStats()

    /// One timer per connection slot (the handler's: `Connection.setTimer`).
    var timers: TimerWheel
    private let dueTimers: UnsafeMutablePointer<Int32>

    /// The engine's deadlines (authentication, idle, read, write stall): one entry per inbound slot,
    /// armed at the earliest of them and re-checked lazily when it fires.
    var deadlines: TimerWheel
    let limits: Limits
    /// Open connections per remote address (only with `maxConnectionsPerAddress`).
    var addresses: AddressTable
    /// The loop's clock (CLOCK_MONOTONIC ms), refreshed once per loop iteration by `tick()`.
    @usableFromInline var now: UInt64

    /// Deadlines and caps, in milliseconds (0: off).
    struct Limits {
        var authenticationMillis: UInt64 = 0
        var idleMillis: UInt64 = 0
        var writeStallMillis: UInt64 = 0
        var lingerMillis: UInt64 = 0
        var maxPerAddress = 0

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
    }

    deinit {
        states.deinitialize(count: capacity)
        states.deallocate()
        freeSlots.deallocate()
        dueTimers.deallocate()
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
        states[Int(s)].flags = outbound ? [.open, .connecting] : [.open]
        openCount += 1
        if !outbound {
            counters.connectionsAccepted += 1
            startDeadlines(s)
        }
        counters.connectionsOpen = openCount
        return s
    }

    /// Whether a new connection from `address` (a sockaddr) stays within `maxConnectionsPerAddress`;
    /// counts it if so. Call `noteAddress` with the slot once one is allocated, or `forgetAddress`.
    func admitAddress(_ address: UnsafeRawPointer) -> (UInt64, UInt64)?? {
        guard limits.maxPerAddress > 0, let k = AddressTable.key(address) else { return .some(nil) }
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
        states[Int(slot)].flags.insert(.addressCounted)
    }

    /// Releases an admitted address that got no slot.
    func forgetAddress(_ k: (UInt64, UInt64)?) {
        if let k { addresses.release(k.0, k.1) }
    }

    /// Frees a slot whose connection is fully torn down; bumps its generation.
    func freeSlot(_ s: Int32) {
        let i = Int(s)
        precondition(states[i].sendHead == -1 && states[i].heldHead == -1 && states[i].inflight == 0, "freeing a busy slot")
        // Only from `service` (after popDirty): a slot still linked in the dirty list must not be reused.
        precondition(!states[i].flags.contains(.dirty), "freeing a slot that is in the dirty list")
        timers.cancel(s)
        deadlines.cancel(s)
        if states[i].flags.contains(.addressCounted) { addresses.release(states[i].addressHigh, states[i].addressLow) }
        if !states[i].flags.contains(.connecting) { counters.connectionsClosed += 1 }
        states[i].generation &+= 1
        states[i].flags = []
        states[i].fd = -1
        freeSlots[freeSlotCount] = s
        freeSlotCount += 1
        openCount -= 1
        counters.connectionsOpen = openCount
    }

    // MARK: dirty list

    @inline(__always) func markDirty(_ s: Int32) {
        let i = Int(s)
        guard !states[i].flags.contains(.dirty) else { return }
        states[i].flags.insert(.dirty)
        states[i].nextDirty = dirtyHead
        dirtyHead = s
    }

    /// Pops the next dirty slot (-1 when none).
    @inline(__always) func popDirty() -> Int32 {
        let s = dirtyHead
        if s >= 0 {
            dirtyHead = states[Int(s)].nextDirty
            states[Int(s)].nextDirty = -1
            states[Int(s)].flags.remove(.dirty)
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

    // MARK: outbound queue (called from Connection during handler calls)

    @usableFromInline func enqueueCopy(slot: Int32, _ bytes: UnsafeRawBufferPointer) throws(WriteError) {
        let i = Int(slot)
        guard states[i].flags.isDisjoint(with: [.wantClose, .wantAbort, .wantShutdownWrite, .closing, .writeShutDown])
        else { throw .closed }
        var remaining = bytes.count
        guard remaining > 0 else { return }
        let chunkSize = pool.sendChunkSize
        // Room at the end of the tail chunk (safe even while an earlier range of it is being sent:
        // the kernel only reads the range it was given).
        let tail = states[i].sendTail
        var room = 0
        if tail >= 0 { room = pool.size(tail) - pool.range(tail).end }
        let needed = remaining > room ? (remaining - room + chunkSize - 1) / chunkSize : 0
        guard needed <= pool.freeSendCount else {
            counters.writesRefused += 1
            throw .bufferPoolExhausted
        }
        var src = bytes.baseAddress!
        if room > 0 {
            let n = min(room, remaining)
            let (s, e) = pool.range(tail)
            (pool.pointer(tail) + e).copyMemory(from: src, byteCount: n)
            pool.setRange(tail, s, e + n)
            src += n; remaining -= n
        }
        while remaining > 0 {
            let c = pool.takeSendChunk()!  // capacity checked above
            let n = min(chunkSize, remaining)
            pool.pointer(c).copyMemory(from: src, byteCount: n)
            pool.setRange(c, 0, n)
            append(slot: slot, chunk: c)
            src += n; remaining -= n
        }
        if states[i].queuedBytes == 0 { startStallClock(slot) }
        states[i].queuedBytes += bytes.count
        if states[i].queuedBytes > highWatermark { states[i].flags.insert(.wasAboveHigh) }
        markDirty(slot)
    }

    @usableFromInline func enqueueReceived(slot: Int32, _ r: ReceivedBytes) {
        precondition(r.chunk == lentChunk, "ReceivedBytes used outside the handler call it was passed to")
        if lentChunkKept || r.count == 0 {
            // Already handed back once: fall back to a copy.
            try? enqueueCopy(slot: slot, r.bytes)
            return
        }
        let i = Int(slot)
        guard states[i].flags.isDisjoint(with: [.wantClose, .wantAbort, .wantShutdownWrite, .closing, .writeShutDown])
        else { return }
        lentChunkKept = true
        pool.setRange(r.chunk, Int(r.offset), Int(r.offset) + r.count)
        append(slot: slot, chunk: r.chunk)
        if states[i].queuedBytes == 0 { startStallClock(slot) }
        states[i].queuedBytes += r.count
        if states[i].queuedBytes > highWatermark { states[i].flags.insert(.wasAboveHigh) }
        markDirty(slot)
    }

    @inline(__always) private func append(slot: Int32, chunk: Int32) {
        let i = Int(slot)
        pool.setNext(chunk, -1)
        if states[i].sendTail >= 0 { pool.setNext(states[i].sendTail, chunk) } else { states[i].sendHead = chunk }
        states[i].sendTail = chunk
    }

    /// Drops `n` sent bytes from the head of the queue, releasing emptied chunks.
    func consumeSent(slot: Int32, _ n: Int) {
        let i = Int(slot)
        var left = n
        states[i].queuedBytes -= n
        counters.bytesOut += n
        if n > 0 { states[i].lastActivity = now; states[i].lastSendProgress = now }
        while left > 0 {
            let h = states[i].sendHead
            precondition(h >= 0, "sent more than was queued")
            let (s, e) = pool.range(h)
            let take = min(left, e - s)
            left -= take
            if s + take == e {
                states[i].sendHead = pool.next(h)
                if states[i].sendHead < 0 { states[i].sendTail = -1 }
                pool.release(h)
            } else {
                pool.setRange(h, s + take, e)
            }
        }
    }

    /// Holds a received chunk (bytes `0..<count`) behind any already held, for delivery on resume.
    func hold(slot: Int32, chunk: Int32, count: Int) {
        let i = Int(slot)
        pool.setRange(chunk, 0, count)
        pool.setNext(chunk, -1)
        if states[i].heldTail >= 0 { pool.setNext(states[i].heldTail, chunk) } else { states[i].heldHead = chunk }
        states[i].heldTail = chunk
        counters.receivesHeld += 1
    }

    /// Takes the oldest held chunk (-1: none).
    func popHeld(slot: Int32) -> Int32 {
        let i = Int(slot)
        let c = states[i].heldHead
        if c >= 0 {
            states[i].heldHead = pool.next(c)
            if states[i].heldHead < 0 { states[i].heldTail = -1 }
        }
        return c
    }

    /// Releases every held chunk (teardown).
    func discardHeld(slot: Int32) {
        while true {
            let c = popHeld(slot: slot)
            if c < 0 { return }
            pool.release(c)
        }
    }

    /// Releases every queued chunk except (when `keepHead`) the head, which a send in flight still reads.
    func discardQueue(slot: Int32, keepHead: Bool) {
        let i = Int(slot)
        var c = states[i].sendHead
        if keepHead && c >= 0 {
            let (s, e) = pool.range(c)
            let rest = pool.next(c)
            pool.setNext(c, -1)
            states[i].sendTail = c
            states[i].queuedBytes = e - s
            c = rest
        } else {
            states[i].sendHead = -1
            states[i].sendTail = -1
            states[i].queuedBytes = 0
        }
        while c >= 0 {
            let n = pool.next(c)
            pool.release(c)
            c = n
        }
    }

    // MARK: close requests

    @usableFromInline func requestClose(slot: Int32, abort: Bool, reason: CloseReason) {
        let i = Int(slot)
        guard states[i].flags.contains(.open) else { return }
        if !states[i].flags.contains(.closing) && !states[i].flags.contains(.wantAbort) {
            // A graceful close in answer to the peer's end-of-file keeps the reason `.peerClosed`.
            let answersPeer = reason == .closedByHandler && !abort && states[i].closeReason == .peerClosed
            if !answersPeer && (abort || !states[i].flags.contains(.wantClose)) { states[i].closeReason = reason }
        }
        states[i].flags.insert(abort ? .wantAbort : .wantClose)
        markDirty(slot)
    }

    /// The handler's own pause (`Connection.pauseReading`): reading stops through the same machinery
    /// as backpressure, and resumes once the handler resumes and the queue is at or below the low mark.
    @usableFromInline func setInputPaused(_ slot: Int32, _ paused: Bool) {
        let i = Int(slot)
        guard states[i].flags.contains(.open) else { return }
        if paused { states[i].flags.insert(.inputPaused) } else { states[i].flags.remove(.inputPaused) }
        markDirty(slot)
    }

    @usableFromInline func requestShutdownWrite(slot: Int32) {
        let i = Int(slot)
        guard states[i].flags.contains(.open) else { return }
        states[i].flags.insert(.wantShutdownWrite)
        markDirty(slot)
    }

    /// Backpressure decision after a slot's queue changed, shared by both backends: pause reading
    /// above the high watermark or while the handler paused it; resume at or below the low one; and,
    /// separately, owe the handler `writable` once a queue that went above the high mark has drained to
    /// the low one, whether or not reading resumes (a handler that paused its own reading still needs it).
    struct Watermark: OptionSet {
        let rawValue: UInt8
        static let pause = Watermark(rawValue: 1)
        static let resume = Watermark(rawValue: 2)
        static let writable = Watermark(rawValue: 4)
    }

    /// `.writable` also follows a crossing that was never seen paused: a queue that went over the high
    /// mark during a handler call (`wasAboveHigh`, set by the write) and was flushed below the low mark
    /// before this check still owes the handler its `writable`.
    @inline(__always) func watermark(_ slot: Int32) -> Watermark {
        let i = Int(slot)
        let q = states[i].queuedBytes
        if q > counters.maxQueuedBytes { counters.maxQueuedBytes = q }
        let over = q > highWatermark
        var w: Watermark = []
        if over {
            states[i].flags.insert(.wasAboveHigh)
        } else if q <= lowWatermark && states[i].flags.contains(.wasAboveHigh) {
            states[i].flags.remove(.wasAboveHigh)
            w.insert(.writable)
        }
        if over || states[i].flags.contains(.inputPaused) {
            if !states[i].flags.contains(.readPaused) {
                states[i].flags.insert(.readPaused)
                counters.readPauses += 1
                w.insert(.pause)
            }
        } else if q <= lowWatermark && states[i].flags.contains(.readPaused) {
            states[i].flags.remove(.readPaused)
            w.insert(.resume)
        }
        return w
    }

    /// Fires every due connection timer through `fire` (called with the slot), then enforces due
    /// deadlines, at the loop clock the backend refreshed (`tick()`) after its wait.
    @inline(__always) func expireTimers(_ fire: (Int32) -> Void) {
        if timers.armed > 0 {
            let n = timers.expire(now: now, into: dueTimers)
            for k in 0..<n { fire(dueTimers[k]) }
        }
        if deadlines.armed > 0 {
            let n = deadlines.expire(now: now, into: dueTimers)
            for k in 0..<n { checkDeadlines(dueTimers[k]) }
        }
    }

    /// How long the loop may sleep before a timer or deadline is due (nil: none armed).
    func millisUntilNextTimer() -> UInt64? {
        let t = monotonicMillis()
        switch (timers.millisUntilNext(now: t), deadlines.millisUntilNext(now: t)) {
        case (nil, nil): return nil
        case (let a?, nil): return a
        case (nil, let b?): return b
        case (let a?, let b?): return min(a, b)
        }
    }

    // MARK: deadlines

    /// Refreshes the loop clock (once per iteration, before completions are handled).
    @inline(__always) func tick() { now = monotonicMillis() }

    /// The queue of `slot` is becoming non-empty: the write-stall clock starts now. Arms the deadline
    /// entry if it is not armed (when armed, it is due within one stall period: see `recheck`).
    @inline(__always) func startStallClock(_ slot: Int32) {
        let i = Int(slot)
        states[i].lastSendProgress = now
        if limits.writeStallMillis > 0 && states[i].flags.contains(.deadlines) && !deadlines.isArmed(slot) {
            deadlines.arm(slot, at: now + limits.writeStallMillis)
        }
    }

    /// Records input on `slot` (idle deadline). One store per receive.
    @inline(__always) func noteReceived(_ slot: Int32) { states[Int(slot)].lastActivity = now }

    private func startDeadlines(_ s: Int32) {
        let i = Int(s)
        guard limits.authenticationMillis | limits.idleMillis | limits.writeStallMillis != 0 else { return }
        states[i].flags.insert(.deadlines)
        states[i].lastActivity = now
        states[i].lastSendProgress = now
        states[i].authDue = limits.authenticationMillis > 0 ? now + limits.authenticationMillis : 0
        if let due = nextDeadline(s)?.due { deadlines.arm(s, at: recheck(due)) }
    }

    /// When to look at a connection's deadlines again: at `due`, but never later than one write-stall
    /// period from now. That invariant lets a queue that starts stalling be caught on time without
    /// re-arming the wheel on every write (the stall clock only stores a timestamp).
    @inline(__always) private func recheck(_ due: UInt64) -> UInt64 {
        limits.writeStallMillis > 0 ? min(due, now + limits.writeStallMillis) : due
    }

    func setReadDeadline(_ s: Int32, at due: UInt64) {
        let i = Int(s)
        states[i].readDue = due
        states[i].flags.insert(.deadlines)
        let at = recheck(due)  // keep the entry due within one write-stall period (see `recheck`)
        if !deadlines.isArmed(s) || deadlines.due(s) > at { deadlines.arm(s, at: at) }
    }

    /// The earliest deadline that applies to `s` now, and which one.
    private func nextDeadline(_ s: Int32) -> (due: UInt64, kind: Deadline)? {
        let st = states[Int(s)]
        var best: (due: UInt64, kind: Deadline)? = nil
        func consider(_ due: UInt64, _ kind: Deadline) {
            if due != 0 && (best == nil || due < best!.due) { best = (due, kind) }
        }
        if st.sendHead >= 0 && limits.writeStallMillis > 0 {
            consider(st.lastSendProgress + limits.writeStallMillis, .writeStall)
        }
        if !st.flags.contains(.timedOut) {
            consider(st.authDue, .authentication)
            consider(st.readDue, .read)
            if limits.idleMillis > 0 { consider(st.lastActivity + limits.idleMillis, .idle) }
        }
        return best
    }

    // MARK: lingering close

    /// Whether a graceful close of `s`, its output flushed, should linger (half-close, discard input
    /// until EOF or `lingerTimeout`) instead of closing at once: only while the peer may still send.
    func shouldLinger(_ s: Int32) -> Bool {
        let f = states[Int(s)].flags
        return limits.lingerMillis > 0 && f.isDisjoint(with: [.inputClosed, .lingerDone, .timedOut, .wantAbort, .connecting])
    }

    /// Starts lingering on `s` (the backend has sent or is sending the FIN): input is discarded from
    /// now on, and the deadline wheel ends the linger at `lingerTimeout`.
    func beginLinger(_ s: Int32) {
        let i = Int(s)
        guard !states[i].flags.contains(.lingering) else { return }
        states[i].flags.insert(.lingering)
        // Input is only dropped from now on: a pause (the handler's or backpressure's, the queue being
        // flushed) no longer applies, and what was held back is released.
        states[i].flags.remove([.inputPaused, .readPaused, .wasAboveHigh])
        discardHeld(slot: s)
        markDirty(s)
        states[i].readDue = now + limits.lingerMillis
        deadlines.arm(s, at: states[i].readDue)
    }

    /// The deadline entry of `s` came due: close it if a deadline really passed, else re-arm for the
    /// earliest one (activity since arming moved it).
    private func checkDeadlines(_ s: Int32) {
        let i = Int(s)
        guard states[i].flags.contains(.open), !states[i].flags.contains(.closing) else { return }
        if states[i].flags.contains(.lingering) {
            // Lingering is not a timeout: when its time is up the connection just closes.
            if states[i].readDue <= now { states[i].flags.insert(.lingerDone); markDirty(s) }
            else { deadlines.arm(s, at: states[i].readDue) }
            return
        }
        guard let (due, kind) = nextDeadline(s) else { return }
        if due > now { deadlines.arm(s, at: recheck(due)); return }
        switch kind {
        case .authentication: counters.authenticationTimeouts += 1
        case .idle: counters.idleTimeouts += 1
        case .read: counters.readTimeouts += 1
        case .writeStall: counters.writeStallTimeouts += 1
        }
        // A stalled queue will never flush: abort. Otherwise close gracefully (what is queued still
        // leaves), with the write stall still watching it.
        let abort = kind == .writeStall || states[i].flags.contains(.timedOut)
        states[i].flags.insert(.timedOut)
        requestClose(slot: s, abort: abort, reason: .timedOut(kind))
        if !abort, let next = nextDeadline(s) { deadlines.arm(s, at: max(next.due, now + 1)) }
    }

    // MARK: stopping

    /// When a graceful stop gives up on draining and aborts what is left.
    var drainDeadline: ContinuousClock.Instant? = nil

    /// Asks every open connection to close (gracefully: flush first, or at once when `abort`).
    func requestCloseAll(abort: Bool) {
        for s in 0..<Int32(capacity) where states[Int(s)].flags.contains(.open) {
            requestClose(slot: s, abort: abort, reason: .serverShutdown)
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
