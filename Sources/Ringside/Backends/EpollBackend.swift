import CLiburing
import Glibc
import Logging

/// The epoll backend: a readiness loop behind the same `ConnectionHandler` interface and the same
/// buffer pool as the io_uring backend. Level-triggered, non-blocking sockets; receives go into pool
/// chunks taken from the receive free list; writes are queued and flushed with sendmsg(2) over up to
/// 64 chunks at once, with EPOLLOUT registered only while a queue waits on EAGAIN.
///
/// It needs nothing from io_uring, so it builds and runs where io_uring is refused.
final class EpollBackend<H: ConnectionHandler>: EventLoopBackend {
    let name = "epoll"
    private let config: ServerConfiguration
    private let control: LoopControl
    private let core: LoopCore
    private let handlers: HandlerTable<H>
    private let pool: BufferPool
    private let epfd: Int32
    private var listenFD: Int32
    private let logger: Logger
    private let events: UnsafeMutablePointer<epoll_event>
    private let maxEvents = 512
    private let iov: UnsafeMutablePointer<iovec>
    /// Where a lingering connection's input is read and dropped.
    private let discard = UnsafeMutableRawPointer.allocate(byteCount: 16 * 1024, alignment: 16)
    private let maxIOV = 64
    private var stopping = false
    /// Accept is paused after EMFILE/ENFILE until this instant (level-triggered would spin).
    private var acceptResume: ContinuousClock.Instant? = nil
    /// Slots that found no free receive chunk; EPOLLIN is off for them until chunks return.
    private var starved: [Int32] = []

    private static var listenerTag: UInt64 { UInt64.max }
    private static var wakeTag: UInt64 { UInt64.max - 1 }
    let port: Int

    init(config: ServerConfiguration, control: LoopControl, logger: Logger,
         factory: @escaping @Sendable () -> H) throws {
        self.config = config
        self.control = control
        self.logger = logger
        pool = try BufferPool(receiveChunkSize: config.bufferSize, receiveChunks: config.receiveBuffers,
                              sendChunkSize: config.sendBufferSize, sendChunks: config.sendBuffers)
        core = LoopCore(pool: pool, capacity: config.maxConnections,
                        highWatermark: config.highWatermark, lowWatermark: config.lowWatermark,
                        limits: .init(config, requiresAuthentication: H.requiresAuthentication))
        handlers = HandlerTable(core: core, factory: factory)
        epfd = try syscall("epoll_create1") { epoll_create1(Int32(EPOLL_CLOEXEC)) }
        var lfd: Int32 = -1
        do {
            if config.listen {
                lfd = try Socket.listen(host: config.host, port: config.port, backlog: config.backlog, nonBlocking: true,
                                        reusePort: config.threads > 1)
                try Socket.configureListener(lfd, keepAlive: config.keepAlive, userTimeout: config.writeStallTimeout)
            }
        } catch {
            if lfd >= 0 { closeDescriptor(lfd) }
            closeDescriptor(epfd)
            throw error
        }
        listenFD = lfd
        port = listenFD >= 0 ? (try? Socket.localPort(listenFD)) ?? config.port : 0
        events = .allocate(capacity: maxEvents)
        iov = .allocate(capacity: maxIOV)
        starved.reserveCapacity(config.maxConnections)
        if listenFD >= 0 { try ctl(EPOLL_CTL_ADD, listenFD, EPOLLIN.rawValue, Self.listenerTag) }
        try ctl(EPOLL_CTL_ADD, control.wakeFD, EPOLLIN.rawValue, Self.wakeTag)
    }

    /// Starts the configured outbound connections (non-blocking connect, completion seen as EPOLLOUT).
    private func startOutbound() throws {
        guard let c = config.connect else { return }
        var addr = try Socket.address(host: c.host, port: c.port)
        for _ in 0..<c.count {
            let fd = try Socket.stream(family: addr.family, nonBlocking: true)
            guard let slot = core.allocateSlot(fd: fd, outbound: true) else {
                closeDescriptor(fd)
                core.counters.connectFailures += 1
                continue
            }
            let len = addr.length
            let r = withUnsafePointer(to: &addr.storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, len) }
            }
            if r != 0 && Errno.current.rawValue != EINPROGRESS {
                core.counters.connectFailures += 1
                core.states[Int(slot)].flags.insert(.connectFailed)
                core.markDirty(slot)
                continue
            }
            var ev = epoll_event()
            ev.events = EPOLLOUT.rawValue
            ev.data.u64 = tag(slot)
            if epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) != 0 {
                core.counters.connectFailures += 1
                core.states[Int(slot)].flags.insert(.connectFailed)
                core.markDirty(slot)
            }
        }
    }

    /// A connect finished (EPOLLOUT/EPOLLERR on a connecting socket).
    private func connectReady(_ slot: Int32) {
        let i = Int(slot)
        var err: Int32 = 0
        var len = socklen_t(MemoryLayout<Int32>.size)
        if getsockopt(core.states[i].fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 { err = Errno.current.rawValue }
        if err != 0 {
            core.counters.connectFailures += 1
            core.states[i].flags.insert(.connectFailed)
            core.markDirty(slot)
            return
        }
        core.counters.connectionsConnected += 1
        core.states[i].flags.remove(.connecting)
        core.states[i].flags.insert(.epollOut)  // EPOLLOUT is what is registered now
        _ = Socket.configureAccepted(core.states[i].fd, noDelay: config.noDelay)
        handlers.open(slot)
    }

    deinit {
        if listenFD >= 0 { closeDescriptor(listenFD) }
        closeDescriptor(epfd)
        events.deallocate()
        iov.deallocate()
        discard.deallocate()
    }

    var summary: String {
        "epoll level-triggered \(pool.summary)"
    }

    private func ctl(_ op: Int32, _ fd: Int32, _ mask: UInt32, _ tag: UInt64) throws(SyscallError) {
        var ev = epoll_event()
        ev.events = mask
        ev.data.u64 = tag
        _ = try syscall("epoll_ctl") { epoll_ctl(epfd, op, fd, &ev) }
    }

    // MARK: the loop

    func run() throws {
        control.executor.bindToCurrentThread()
        try startOutbound()
        processDirty()
        while true {
            var timeoutMS: Int32 = -1
            let now = ContinuousClock.now
            timeoutMS = Self.tighten(timeoutMS, core.drainDeadline, now: now)
            timeoutMS = Self.tighten(timeoutMS, acceptResume, now: now)
            if let ms = core.millisUntilNextTimer() {
                let t = Int32(min(ms, 60_000))
                timeoutMS = timeoutMS < 0 ? t : min(timeoutMS, t)
            }
            if let t = control.executor.waitLimitMillis(stopping: stopping) { timeoutMS = timeoutMS < 0 ? t : min(timeoutMS, t) }
            let n = try syscall("epoll_wait") { () -> Int32 in
                let r = epoll_wait(epfd, events, Int32(maxEvents), timeoutMS)
                return (r < 0 && Errno.current == .interrupted) ? 0 : r
            }
            core.tick()
            for k in 0..<Int(n) {
                let tag = events[k].data.u64
                let mask = events[k].events
                if tag == Self.listenerTag { acceptReady() }
                else if tag == Self.wakeTag {
                    control.drainWake()
                    if control.stopRequested { beginStop() }
                } else { connectionReady(UserData(raw: tag), mask: mask) }
            }
            core.expireTimers { handlers.timerFired($0) }
            processDirty()
            if control.executor.runPending() { processDirty() }  // async connection tasks
            if !starved.isEmpty && pool.freeRecvCount > 0 { rearmStarved(); processDirty() }
            if let r = acceptResume, ContinuousClock.now >= r, !stopping, listenFD >= 0 {
                acceptResume = nil
                try ctl(EPOLL_CTL_ADD, listenFD, EPOLLIN.rawValue, Self.listenerTag)
            }
            if stopping { checkDrainDeadline() }
            core.refreshGauges()
            control.publish(core.counters)
            if stopping && core.openCount == 0 && control.executor.shutDownIfIdle(force: core.drainDeadline == nil) { break }
        }
        logger.debug("epoll loop finished", metadata: ["stats": "\(core.counters)"])
    }

    @inline(__always) private static func tighten(_ timeoutMS: Int32, _ deadline: ContinuousClock.Instant?, now: ContinuousClock.Instant) -> Int32 {
        guard let d = deadline else { return timeoutMS }
        let left = now.duration(to: d)
        let ms = Int32(clamping: max(1, left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000 + 1))
        return timeoutMS < 0 ? ms : min(timeoutMS, ms)
    }

    private func acceptReady() {
        for _ in 0..<64 {
            var peer = sockaddr_storage()
            var peerLength = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let fd = withUnsafeMutablePointer(to: &peer) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    rs_accept4_addr(listenFD, $0, &peerLength, Int32(SOCK_NONBLOCK.rawValue | SOCK_CLOEXEC.rawValue))
                }
            }
            if fd < 0 {
                let e = Errno.current
                if e == .interrupted { continue }
                if e.rawValue == EAGAIN || e.rawValue == ECONNABORTED { return }
                core.counters.acceptErrors += 1
                if core.counters.acceptErrors == 1 || core.counters.acceptErrors % 1000 == 0 {
                    logger.warning("accept failed: \(e) (count \(core.counters.acceptErrors)); retrying in 50 ms")
                }
                // EMFILE/ENFILE/ENOMEM: stop watching the listener for a while instead of spinning.
                _ = epoll_ctl(epfd, EPOLL_CTL_DEL, listenFD, nil)
                acceptResume = ContinuousClock.now.advanced(by: .milliseconds(50))
                return
            }
            // Per-address cap: `.some(key)` admitted (key nil when no cap applies), nil refused (counted).
            guard let key = withUnsafePointer(to: &peer, { core.admitAddress(UnsafeRawPointer($0)) }) else {
                closeDescriptor(fd)
                continue
            }
            guard let slot = core.allocateSlot(fd: fd) else {
                core.forgetAddress(key)
                core.counters.connectionsRefused += 1
                closeDescriptor(fd)
                continue
            }
            core.noteAddress(slot, key)
            _ = Socket.configureAccepted(fd, noDelay: config.noDelay)
            var ev = epoll_event()
            ev.events = EPOLLIN.rawValue | EPOLLRDHUP.rawValue
            ev.data.u64 = tag(slot)
            if epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) != 0 {
                // Cannot watch it: refuse it like a capped connection.
                core.counters.connectionsRefused += 1
                closeDescriptor(fd)
                core.states[Int(slot)].flags.remove(.open)
                core.freeSlot(slot)
                continue
            }
            core.states[Int(slot)].flags.insert(.recvArmed)  // here: EPOLLIN registered
            handlers.open(slot)
        }
    }

    @inline(__always) private func tag(_ slot: Int32) -> UInt64 {
        UserData(.recv, slot: slot, generation: core.states[Int(slot)].generation).raw
    }

    @inline(__always) private func connectionReady(_ ud: UserData, mask: UInt32) {
        let i = Int(ud.slot)
        guard ud.matches(generation: core.states[i].generation), core.states[i].flags.contains(.open) else {
            core.counters.staleCompletions += 1
            return
        }
        if core.states[i].flags.contains(.connecting) {
            if !core.states[i].flags.contains(.connectFailed) { connectReady(ud.slot) }
            return
        }
        if mask & (EPOLLIN.rawValue | EPOLLHUP.rawValue | EPOLLERR.rawValue | EPOLLRDHUP.rawValue) != 0 {
            readReady(ud.slot)
        }
        // EPOLLHUP/EPOLLERR are reported whatever the interest set: once input is closed too, the peer
        // is gone both ways; close rather than wake on the same level-triggered event forever.
        // (Not when we shut our own side first, as a lingering close does: then HUP is the orderly end of
        // both directions, and the graceful close already under way must not become a reset.)
        if mask & (EPOLLHUP.rawValue | EPOLLERR.rawValue) != 0 && core.states[i].flags.contains(.inputClosed) {
            if mask & EPOLLERR.rawValue == 0 && core.states[i].flags.contains(.writeShutDown) {
                core.markDirty(ud.slot)  // our FIN was sent, theirs arrived: close gracefully in `service`
            } else {
                core.requestClose(slot: ud.slot, abort: true, reason: .peerClosed)
            }
        }
        if mask & EPOLLOUT.rawValue != 0 { core.markDirty(ud.slot) }
    }

    private func readReady(_ slot: Int32) {
        let i = Int(slot)
        let fd = core.states[i].fd
        if core.states[i].flags.contains(.lingering) { discardInput(slot); return }
        let size = pool.receiveChunkSize
        for _ in 0..<16 {  // bounded per wake, for fairness between connections
            guard core.states[i].flags.isDisjoint(with: [.readPaused, .inputPaused, .inputClosed, .wantClose, .wantAbort, .closing]),
                  core.states[i].queuedBytes <= core.highWatermark  // backpressure: at most one chunk over
            else { break }
            guard let chunk = pool.takeReceiveChunk() else {
                core.counters.noBufferEvents += 1
                if !core.states[i].flags.contains(.starved) {
                    core.states[i].flags.insert(.starved)
                    starved.append(slot)
                }
                break
            }
            let n = recv(fd, pool.pointer(chunk), size, 0)
            if n > 0 {
                core.counters.bytesIn += n
                core.noteReceived(slot)
                if !handlers.received(slot, chunk: chunk, offset: 0, count: n) { pool.release(chunk) }
                if n < size { break }
                continue
            }
            pool.release(chunk)
            if n == 0 {
                core.states[i].flags.insert(.inputClosed)
                if core.states[i].closeReason == .closedByHandler { core.states[i].closeReason = .peerClosed }
                handlers.inputClosed(slot)
                break
            }
            let e = Errno.current
            if e == .interrupted { continue }
            if e.rawValue == EAGAIN { break }
            core.requestClose(slot: slot, abort: true, reason: .error(e))
            break
        }
        // Flush now rather than at the end of the batch: a zero-copy reply holds its receive chunk
        // until sent, and with many connections ready at once the later ones would find none left.
        if core.states[i].sendHead >= 0 && core.states[i].flags.isDisjoint(with: [.writeShutDown, .closing, .wantAbort]) {
            flush(slot)
        }
        core.markDirty(slot)
    }

    /// A lingering connection: read and drop what arrives, until EAGAIN or end-of-file (bounded per wake).
    private func discardInput(_ slot: Int32) {
        let i = Int(slot)
        for _ in 0..<16 {
            let n = recv(core.states[i].fd, discard, 16 * 1024, 0)
            if n > 0 { core.counters.bytesIn += n; continue }
            if n == 0 { core.states[i].flags.insert(.inputClosed); break }
            if Errno.current == .interrupted { continue }
            if Errno.current.rawValue != EAGAIN { core.states[i].flags.insert(.lingerDone) }
            break
        }
        core.markDirty(slot)
    }

    // MARK: per-connection state machine

    private func processDirty() { core.drainDirty { service($0) } }

    private func service(_ slot: Int32) {
        let i = Int(slot)
        guard core.states[i].flags.contains(.open) else { return }
        if core.states[i].flags.contains(.connecting) {
            if core.states[i].flags.contains(.connectFailed) {
                closeDescriptor(core.states[i].fd)
                core.freeSlot(slot)
            }
            return  // no handler until connected
        }
        if core.states[i].flags.contains(.closing) { finishTeardown(slot); return }
        if core.states[i].flags.contains(.wantAbort) { teardown(slot); return }
        if core.states[i].sendHead >= 0 && !core.states[i].flags.contains(.writeShutDown) { flush(slot) }
        if core.states[i].flags.contains(.wantAbort) { teardown(slot); return }
        if core.watermark(slot).contains(.writable) { handlers.writable(slot); flush(slot) }
        let flushed = core.states[i].sendHead < 0
        if core.states[i].flags.contains(.wantClose) && flushed {
            guard core.shouldLinger(slot) else { teardown(slot); return }
            // Lingering close: FIN now, keep reading (and dropping) until EOF or the linger time.
            if !core.states[i].flags.contains(.writeShutDown) {
                core.states[i].flags.insert(.writeShutDown)
                if Glibc.shutdown(core.states[i].fd, Int32(SHUT_WR)) != 0 { teardown(slot); return }
            }
            core.beginLinger(slot)
        }
        if core.states[i].flags.contains(.wantShutdownWrite) && !core.states[i].flags.contains(.writeShutDown) && flushed {
            core.states[i].flags.insert(.writeShutDown)
            if Glibc.shutdown(core.states[i].fd, Int32(SHUT_WR)) != 0 && Errno.current.rawValue != ENOTCONN {
                core.requestClose(slot: slot, abort: true, reason: .error(.current))
                teardown(slot)
                return
            }
        }
        updateInterest(slot)
    }

    /// Writes as much of the queue as the socket takes.
    private func flush(_ slot: Int32) {
        let i = Int(slot)
        let fd = core.states[i].fd
        while core.states[i].sendHead >= 0 {
            var c = core.states[i].sendHead
            var count = 0
            while c >= 0 && count < maxIOV {
                let (s, e) = pool.range(c)
                iov[count] = iovec(iov_base: pool.pointer(c) + s, iov_len: e - s)
                count += 1
                c = pool.next(c)
            }
            var msg = msghdr()
            msg.msg_iov = iov
            msg.msg_iovlen = count
            let n = sendmsg(fd, &msg, Int32(MSG_NOSIGNAL))
            if n > 0 {
                core.consumeSent(slot: slot, n)
                continue
            }
            let e = Errno.current
            if e == .interrupted { continue }
            if e.rawValue == EAGAIN { return }  // EPOLLOUT gets registered in updateInterest
            core.requestClose(slot: slot, abort: true, reason: .error(e))
            return
        }
    }

    /// Registers exactly the readiness this slot needs now (EPOLL_CTL_MOD only on change).
    private func updateInterest(_ slot: Int32) {
        let i = Int(slot)
        let f = core.states[i].flags
        let wantIn = (f.isDisjoint(with: [.readPaused, .inputClosed, .wantClose, .starved, .closing]) && !stopping)
            || (f.contains(.lingering) && f.isDisjoint(with: [.inputClosed, .closing]))
        let wantOut = core.states[i].sendHead >= 0 && !f.contains(.writeShutDown)
        guard wantIn != f.contains(.recvArmed) || wantOut != f.contains(.epollOut) else { return }
        var mask: UInt32 = 0
        if wantIn { mask |= EPOLLIN.rawValue | EPOLLRDHUP.rawValue }
        if wantOut { mask |= EPOLLOUT.rawValue }
        var ev = epoll_event()
        ev.events = mask
        ev.data.u64 = tag(slot)
        if epoll_ctl(epfd, EPOLL_CTL_MOD, core.states[i].fd, &ev) != 0 {
            core.requestClose(slot: slot, abort: true, reason: .error(.current))
            return
        }
        if wantIn { core.states[i].flags.insert(.recvArmed) } else { core.states[i].flags.remove(.recvArmed) }
        if wantOut { core.states[i].flags.insert(.epollOut) } else { core.states[i].flags.remove(.epollOut) }
    }

    private func teardown(_ slot: Int32) {
        let i = Int(slot)
        core.states[i].flags.insert(.closing)
        core.discardQueue(slot: slot, keepHead: false)
        if core.states[i].flags.contains(.wantAbort) {
            // An abort resets the connection (RST) and drops unsent data, instead of leaving it to a
            // peer that may never take it.
            Socket.setLingerZero(core.states[i].fd)
        }
        closeDescriptor(core.states[i].fd)  // also removes it from the epoll set
        core.states[i].flags.insert(.fdClosed)
        finishTeardown(slot)
    }

    /// Destroys the handler and frees the slot, unless the slot was marked dirty again during this
    /// service pass (a failed flush, `writable`): then it is still linked in the dirty list and is
    /// finished when popped.
    private func finishTeardown(_ slot: Int32) {
        guard !core.states[Int(slot)].flags.contains(.dirty) else { return }
        handlers.finalize(slot, reason: core.states[Int(slot)].closeReason)
        core.freeSlot(slot)
    }

    /// Serves connections that found no free receive chunk, oldest first, straight away (not through
    /// the epoll ready list, where newly readable connections would overtake them again and again).
    private func rearmStarved() {
        var k = 0
        while k < starved.count && pool.freeRecvCount > 0 {
            let s = starved[k]
            k += 1
            core.states[Int(s)].flags.remove(.starved)
            core.counters.recvRearms += 1
            guard core.states[Int(s)].flags.contains(.open) else { continue }
            readReady(s)  // may park it again (at the end) if the chunks ran out once more
        }
        starved.removeFirst(k)
    }

    // MARK: stopping

    private func beginStop() {
        guard !stopping else { return }
        stopping = true
        core.drainDeadline = ContinuousClock.now.advanced(by: config.drainTimeout)
        if listenFD >= 0 {
            closeDescriptor(listenFD)
            listenFD = -1
        }
        core.requestCloseAll(abort: false)
        starved.removeAll(keepingCapacity: true)
    }

    private func checkDrainDeadline() {
        if core.abortAllIfDrainDeadlinePassed() { processDirty() }
    }
}
