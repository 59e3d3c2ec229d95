// The engine around one `ConnectionState`, played by the harness: the chunk pool and the connection's
// chunk lists (LoopCore's OutboundQueue: enqueueCopy, enqueueReceived, consumeSent, hold, popHeld,
// discardHeld, discardQueue), the driver (HandlerTable.service and deliverHeld), one backend's
// operations (UringBackend / EpollIO as ConnectionIO, and their completion handlers), and a handler
// whose reactions the input picks. Each piece follows the engine function named beside it; the state
// machine itself is the engine's own file (ConnectionState.swift, a symlink).
//
// What the harness checks (propertyFailed on any violation):
// - chunks: every chunk has one owner (pool, queue, held, lent to the handler, another connection);
//   a release of a chunk the pool already has, or a chunk lost (not in the pool once the slot is
//   finalized), fails; the machine's list heads and byte counts match the harness's lists;
// - no action after closed: after `.teardown` only `.none` and `.finalize`; after `.finalize` the
//   slot is free and `nextAction` says `.none`; the driver settles (`.none`) within 64 actions;
// - named states only: at every settle, the combination of phase, receive, output and input is one
//   the enums' documentation names (e.g. lingering implies output shut and nothing held; the
//   machine's receive state matches the operation the backend really has in flight);
// - counters: readPauses counts each pause once, recvRearms each re-arm, maxQueuedBytes never
//   falls and covers the queue at every settle;
// - liveness: once the peer and the kernel finish everything, the connection finalizes.
import FuzzSupport
import Glibc

enum Owner: Equatable { case pool, queued, held, lent, other }

struct Chunk {
    var owner: Owner = .pool
    /// The byte range in use (OutboundQueue's `pool.range`).
    var start = 0
    var end = 0
}

/// Reads event bytes from the input; zeros once it runs out.
struct ByteReader {
    let bytes: UnsafeRawBufferPointer
    var at = 0
    var isAtEnd: Bool { at >= bytes.count }
    mutating func next() -> UInt8 {
        guard at < bytes.count else { return 0 }
        defer { at += 1 }
        return bytes[at]
    }
}

struct Harness {
    var s = ConnectionState()
    var counters = ServerStats()
    var env: ConnectionState.Environment
    /// EpollIO's semantics (synchronous operations) instead of UringBackend's.
    let epoll: Bool
    let chunkSize: Int
    var chunks: [Chunk]
    var queue: [Int32] = []
    var held: [Int32] = []
    /// Chunks taken by "other connections" (pool pressure).
    var others: [Int32] = []

    // Operations the kernel has (io_uring), or the readiness registered (epoll).
    var recvLive = false
    /// A cancel was submitted while the receive was live: it may end with ECANCELED.
    var recvCancelAsked = false
    var cancelRecvOps = 0
    var sendOp = false
    var shutdownOps = 0
    var cancelOps = 0
    var closeOps = 0

    var tornDown = false
    var finalized = false
    var handlerCalls = 0
    var log: [String] = []

    init(config: [UInt8]) {
        epoll = config[0] & 1 != 0
        let high = [16, 40, 100, 1000][Int(config[0] >> 1 & 3)]
        let low = [0, high / 4, high / 2, high][Int(config[0] >> 3 & 3)]
        env = .init(highWatermark: high, lowWatermark: low, stopping: false,
                    lingerEnabled: config[0] & 0x20 != 0, cancelsUnwantedReceive: epoll)
        chunkSize = [8, 16, 32, 64][Int(config[1] & 3)]
        chunks = Array(repeating: Chunk(), count: 4 + Int(config[1] >> 2 & 15))
        s.phase = .open
        s.fd = 5
    }

    /// FUZZ_TRACE=1 prints every event and action (for replaying a reproducer).
    static let trace = getenv("FUZZ_TRACE") != nil

    mutating func note(_ what: String) {
        if Self.trace { print("  \(what)    [\(s.phase) recv \(s.receive) ops: recv \(recvLive) cancelRecv \(cancelRecvOps)]") }
        log.append(what)
        if log.count > 40 { log.removeFirst() }
    }

    func fail(_ what: String) -> Never {
        propertyFailed("\(what)\n  state: \(describe())\n  recent: \(log.joined(separator: " | "))")
    }

    func describe() -> String {
        "phase \(s.phase) receive \(s.receive) output \(s.output) input \(s.input) readPaused \(s.readPaused) "
            + "handlerPaused \(s.handlerPaused) owesWritable \(s.owesWritable) sendInFlight \(s.sendInFlight) "
            + "inflight \(s.inflight) fdClosed \(s.fdClosed) queued \(s.queuedBytes) in \(queue.count) chunks "
            + "(head \(s.sendHead)) held \(held.count) (head \(s.heldHead)) inflightChunks \(s.inflightChunks) "
            + "ops: recv \(recvLive) cancelRecv \(cancelRecvOps) send \(sendOp) shutdown \(shutdownOps) "
            + "cancel \(cancelOps) close \(closeOps) epoll \(epoll)"
    }

    // MARK: pool and lists (BufferPool, OutboundQueue)

    mutating func take(_ owner: Owner) -> Int32? {
        guard let i = chunks.firstIndex(where: { $0.owner == .pool }) else { return nil }
        chunks[i] = Chunk(owner: owner, start: 0, end: 0)
        return Int32(i)
    }

    mutating func release(_ c: Int32) {
        guard c >= 0 && Int(c) < chunks.count else { fail("release of chunk \(c), not a chunk") }
        if chunks[Int(c)].owner == .pool { fail("chunk \(c) released twice") }
        chunks[Int(c)] = Chunk()
    }

    var freeCount: Int { chunks.reduce(0) { $0 + ($1.owner == .pool ? 1 : 0) } }

    /// The machine's list heads follow the harness's lists (the engine keeps them in the chunk table).
    mutating func syncLists() {
        s.sendHead = queue.first ?? -1
        s.sendTail = queue.last ?? -1
        s.heldHead = held.first ?? -1
        s.heldTail = held.last ?? -1
    }

    mutating func syncInflight() {
        if epoll { return }
        s.inflight = Int32((recvLive ? 1 : 0) + cancelRecvOps + (sendOp ? 1 : 0) + shutdownOps + cancelOps + closeOps)
    }

    /// OutboundQueue.noteQueued.
    mutating func noteQueued(_ n: Int) {
        s.queuedBytes += n
        if s.queuedBytes > env.highWatermark { s.owesWritable = true }
    }

    /// OutboundQueue.enqueueCopy; returns whether the bytes were queued.
    mutating func enqueueCopy(_ count: Int) -> Bool {
        guard s.acceptsWrites else { return false }
        var remaining = count
        guard remaining > 0 else { return true }
        let tail = s.sendTail
        var room = 0
        if tail >= 0 { room = chunkSize - chunks[Int(tail)].end }
        let needed = remaining > room ? (remaining - room + chunkSize - 1) / chunkSize : 0
        guard needed <= freeCount else { counters.writesRefused += 1; return false }
        if room > 0 {
            let n = min(room, remaining)
            chunks[Int(tail)].end += n
            remaining -= n
        }
        while remaining > 0 {
            let c = take(.queued)!
            let n = min(chunkSize, remaining)
            chunks[Int(c)].end = n
            queue.append(c)
            remaining -= n
        }
        syncLists()
        noteQueued(count)
        return true
    }

    /// OutboundQueue.consumeSent.
    mutating func consumeSent(_ n: Int) {
        var left = n
        s.queuedBytes -= n
        while left > 0 {
            guard let h = queue.first else { fail("sent \(n) bytes, more than was queued") }
            let take = min(left, chunks[Int(h)].end - chunks[Int(h)].start)
            left -= take
            if chunks[Int(h)].start + take == chunks[Int(h)].end {
                queue.removeFirst()
                release(h)
            } else {
                chunks[Int(h)].start += take
            }
        }
        syncLists()
    }

    /// OutboundQueue.hold.
    mutating func hold(_ c: Int32, _ count: Int) {
        chunks[Int(c)] = Chunk(owner: .held, start: 0, end: count)
        held.append(c)
        counters.receivesHeld += 1
        syncLists()
    }

    /// OutboundQueue.discardHeld.
    mutating func discardHeld() {
        for c in held { release(c) }
        held.removeAll()
        syncLists()
    }

    /// OutboundQueue.discardQueue: keeps the first `inflightChunks` while a send is in flight.
    mutating func discardQueue() {
        let keep = s.sendInFlight ? Int(s.inflightChunks) : 0
        let kept = Array(queue.prefix(keep))
        for c in queue.dropFirst(keep) { release(c) }
        queue = kept
        s.queuedBytes = kept.reduce(0) { $0 + chunks[Int($1)].end - chunks[Int($1)].start }
        syncLists()
    }

    // MARK: the handler

    /// HandlerTable.received: lends the chunk; returns whether the handler kept it (zero-copy reply).
    mutating func handlerReceived(_ c: Int32, _ count: Int, _ r: inout ByteReader) -> Bool {
        if tornDown { fail("handler got input after teardown") }
        handlerCalls += 1
        chunks[Int(c)] = Chunk(owner: .lent, start: 0, end: count)
        var kept = false
        let how = r.next()
        switch how % 8 {
        case 0, 1:  // echo without a copy (OutboundQueue.enqueueReceived)
            if s.acceptsWrites {
                chunks[Int(c)].owner = .queued
                queue.append(c)
                syncLists()
                noteQueued(count)
                kept = true
            }
        case 2: _ = enqueueCopy(count * Int(1 + how >> 3 & 3))  // reply with a copy, maybe larger
        case 3: break  // consume
        case 4: s.requestClose(abort: how & 0x80 != 0, reason: how & 0x80 != 0 ? .abortedByHandler : .closedByHandler)
        case 5: if s.phase == .open { s.handlerPaused = true }  // LoopCore.setInputPaused
        case 6: s.requestShutdownWrite()
        default: _ = enqueueCopy(count); s.requestShutdownWrite()
        }
        return kept
    }

    mutating func handlerWritable(_ r: inout ByteReader) {
        if tornDown { fail("writable after teardown") }
        handlerCalls += 1
        let how = r.next()
        if how & 1 != 0 { _ = enqueueCopy(Int(how >> 1)) }
    }

    mutating func handlerInputClosed() {
        if tornDown { fail("inputClosed after teardown") }
        handlerCalls += 1
        // The default `inputClosed` closes gracefully.
        s.requestClose(abort: false, reason: .closedByHandler)
    }

    // MARK: the driver (HandlerTable.service)

    /// Fails if 64 actions in a row pass without a handler call: a handler that writes on every
    /// `writable` keeps the loop going legitimately (each such call consumes input bytes, so it ends).
    mutating func service(_ r: inout ByteReader) {
        var quiet = 0
        while quiet < 64 {
            quiet += 1
            let calls = handlerCalls
            defer { if handlerCalls != calls { quiet = 0 } }
            if finalized { return }
            let before = s
            let countersBefore = counters
            let a = s.nextAction(env, &counters)
            checkCounters(before, countersBefore, a)
            if tornDown && a != .none && a != .finalize { fail("action \(a) after teardown") }
            if a != .none { note("\(a)") }
            switch a {
            case .none:
                if epoll { epollSettle() }
                checkSettled()
                return
            case .releaseUnconnected:
                fail("releaseUnconnected for a connection that was open")
            case .finalize:
                discardQueue()
                finalize()
                return
            case .teardown(let abort):
                tornDown = true
                discardHeld()
                discardQueue()
                close(abort: abort)
            case .send:
                if queue.isEmpty { fail("send with nothing queued") }
                if sendOp { fail("a second send while one is in flight") }
                startSend(&r)
            case .armReceive:
                if !epoll {
                    if recvLive { fail("receive armed while one is live") }
                    recvLive = true
                }
            case .cancelReceive:
                cancelReceive()
            case .shutdownWrite:
                if !epoll { shutdownOps += 1 }
            case .beginLinger(let fin):
                // Deadlines.startLinger
                discardHeld()
                if s.input == .endPending { s.input = .ended }
                if fin && !epoll { shutdownOps += 1 }
            case .deliverHeld:
                deliverHeld(&r)
            case .notifyWritable:
                handlerWritable(&r)
            }
            syncInflight()
        }
        fail("the driver did not settle: 64 actions without a handler call")
    }

    /// HandlerTable.deliverHeld.
    mutating func deliverHeld(_ r: inout ByteReader) {
        while !held.isEmpty && !s.readPaused && s.phase == .open {
            let c = held.removeFirst()
            syncLists()
            let count = chunks[Int(c)].end
            if !handlerReceived(c, count, &r) { release(c) }
            if s.pauseIfNeeded(highWatermark: env.highWatermark, &counters) { cancelReceive() }
        }
        if held.isEmpty && s.input == .endPending {
            s.input = .ended
            if s.phase == .open { handlerInputClosed() }
        }
    }

    /// `io.cancelReceive` outside the driver loop (pauseIfNeeded).
    mutating func cancelReceive() {
        if !epoll { cancelRecvOps += 1; if recvLive { recvCancelAsked = true } }
        syncInflight()
    }

    mutating func startSend(_ r: inout ByteReader) {
        if epoll {
            // EpollIO.startSend: write what the socket takes; EAGAIN leaves the send in flight.
            s.sendStarted(bytes: 0, chunks: 0)
            let takes = Int(r.next())
            let n = min(s.queuedBytes, takes == 0 ? s.queuedBytes : takes)
            if n > 0 { consumeSent(n) }
            if queue.isEmpty { s.sendEnded() } else { sendOp = true }
        } else {
            // UringBackend.startSend: one SEND or SENDMSG over the queue (up to 64 chunks).
            let n = min(queue.count, 64)
            let bytes = queue.prefix(n).reduce(0) { $0 + chunks[Int($1)].end - chunks[Int($1)].start }
            s.sendStarted(bytes: bytes, chunks: n)
            sendOp = true
        }
    }

    /// UringBackend.close / EpollIO.close.
    mutating func close(abort: Bool) {
        if epoll {
            s.sendEnded()
            sendOp = false
            recvLive = false  // closing removes the descriptor from the epoll set
            s.receive = .idle
            s.fdClosed = true
            discardQueue()
            return
        }
        switch s.receive {
        case .armed, .cancelling: cancelOps += 1
        default: if s.sendInFlight { cancelOps += 1 }
        }
        closeOps += 1
    }

    /// EpollIO.settle: readiness follows the machine (EPOLLIN while armed, EPOLLOUT while a send waits).
    mutating func epollSettle() {
        recvLive = s.receive == .armed && !s.fdClosed
    }

    /// LoopCore.freeSlot's preconditions, and every chunk back in the pool.
    mutating func finalize() {
        if s.sendHead != -1 || s.heldHead != -1 || s.inflight != 0 { fail("finalize with a busy slot") }
        if !s.fdClosed { fail("finalize before the descriptor is closed") }
        for (i, c) in chunks.enumerated() where c.owner != .pool && c.owner != .other {
            fail("chunk \(i) not returned to the pool at finalize (owner \(c.owner))")
        }
        if sendOp || recvLive || cancelRecvOps + shutdownOps + cancelOps + closeOps != 0 {
            fail("finalize with operations in flight")
        }
        finalized = true
        s.phase = .free
        s.generation &+= 1
        var c = counters
        if s.nextAction(env, &c) != .none { fail("an action for a freed slot") }
    }

    // MARK: checks

    func checkCounters(_ before: ConnectionState, _ cb: ServerStats, _ a: ConnectionState.Action) {
        let pauses = counters.readPauses - cb.readPauses
        let paused = !before.readPaused && s.readPaused
        if pauses != (paused ? 1 : 0) { fail("readPauses +\(pauses) for a pause \(paused) (action \(a))") }
        let rearms = counters.recvRearms - cb.recvRearms
        if rearms != (a == .armReceive && before.armedOnce ? 1 : 0) { fail("recvRearms +\(rearms) for \(a)") }
        if counters.maxQueuedBytes < cb.maxQueuedBytes { fail("maxQueuedBytes fell") }
    }

    /// The state at rest is one the enums name, and matches the harness's view of the world.
    func checkSettled() {
        switch s.phase {
        case .open, .draining, .lingering, .tearingDown: break
        case .free, .connecting, .connectFailed, .aborting: fail("settled in phase \(s.phase)")
        }
        if s.queuedBytes < 0 { fail("negative queuedBytes") }
        let bytes = queue.reduce(0) { $0 + chunks[Int($1)].end - chunks[Int($1)].start }
        if bytes != s.queuedBytes { fail("queuedBytes \(s.queuedBytes) but \(bytes) bytes queued") }
        for c in queue where chunks[Int(c)].owner != .queued { fail("queued chunk \(c) owned by \(chunks[Int(c)].owner)") }
        for c in held where chunks[Int(c)].owner != .held { fail("held chunk \(c) owned by \(chunks[Int(c)].owner)") }
        if s.sendHead != (queue.first ?? -1) || s.heldHead != (held.first ?? -1) { fail("list heads out of step") }
        // nextAction records the largest queue on every pass through watermarkAction (live phases).
        if s.phase != .tearingDown && counters.maxQueuedBytes < s.queuedBytes { fail("maxQueuedBytes below the queue") }
        if s.sendInFlight != sendOp { fail("sendInFlight \(s.sendInFlight) but send in flight \(sendOp)") }
        if s.phase == .lingering && (s.output != .shutDown || !held.isEmpty) { fail("lingering with output \(s.output), \(held.count) held") }
        if !held.isEmpty && s.phase != .open && s.phase != .draining { fail("chunks held in phase \(s.phase)") }
        if s.phase == .open && s.input == .endPending && held.isEmpty { fail("end-of-file pending behind nothing") }
        if s.phase == .tearingDown && !queue.isEmpty && !s.sendInFlight { fail("queue kept with no send in flight") }
        if !epoll {
            let live = s.receive == .armed || s.receive == .cancelling
            if live != recvLive { fail("receive \(s.receive) but a receive in flight: \(recvLive)") }
            // The receive's cancel is in flight exactly while the machine says so (cancelling, or
            // awaitingCancel once the receive ended): otherwise a new receive could be armed, or a new
            // cancel issued, while the old cancel's completion is still to come.
            let awaiting = s.receive == .cancelling || s.receive == .awaitingCancel
            if awaiting != (cancelRecvOps > 0) { fail("receive \(s.receive) with \(cancelRecvOps) cancels in flight") }
        }
    }
}
