import CLiburing
import Glibc
import Logging

/// The io_uring backend: a completion loop. Multishot accept, multishot receive from a provided-buffer
/// ring, sends from pooled buffers (one in flight per connection), close/cancel/shutdown through the
/// ring, and one `io_uring_submit_and_wait` per iteration (batched submission).
///
/// Rare paths, each deliberate and counted in `ServerStats`:
/// - -ENOBUFS: the provided ring ran dry; the receive ended. The slot is parked as starved and re-armed
///   once buffers are published back (`noBufferEvents`, `recvRearms`).
/// - a multishot CQE without IORING_CQE_F_MORE: the operation ended; re-armed if still wanted.
/// - -ECANCELED: our own cancel (pause or teardown); counted, nothing else.
/// - CQ overflow: the kernel parks completions in a backlog (IORING_FEAT_NODROP) and flags it; the next
///   peek flushes it. Counted (`cqOverflowEvents`), and drops without NODROP are counted too.
/// - SQ full: submit what is prepared and retry; if still full, park the operation in a FIFO drained
///   before new work (`sqFullEvents`, `sqDeferredOps`). Nothing is dropped.
/// - stale completion (generation mismatch): counted; a buffer it carries is returned to the ring.
final class UringBackend<H: ConnectionHandler>: EventLoopBackend {
    let name = "uring"
    private let config: ServerConfiguration
    private let control: LoopControl
    private let ring: Ring
    private let core: LoopCore
    private let handlers: HandlerTable<H>
    private let pool: BufferPool
    private let provided: ProvidedBufferRing
    private let listenFD: Int32  // -1 when not listening
    /// The outbound target (the kernel copies it when the connect SQE is submitted).
    private let outbound: UnsafeMutablePointer<Socket.Address>?
    private let logger: Logger
    private var registeredBuffers = false
    /// Accepted connections are registered (direct) descriptors: no fget/fput per operation, and they
    /// do not count against RLIMIT_NOFILE. Falls back to ordinary descriptors if registration fails.
    private var directFiles = false

    /// Ring-level operations in flight (accept, wake read, timers, listener cancel/close).
    private var ringInflight = 0
    /// Accept operations: one multishot, or (with a per-address cap, which needs each peer's
    /// address) `acceptSlots` single-shot accepts, each with its own address buffer.
    private let acceptSlots: Int
    private let acceptArmed: UnsafeMutablePointer<Bool>
    private var acceptsArmed = 0
    /// Stable memory the kernel writes peer addresses into (single-shot accepts only).
    private let acceptAddresses: UnsafeMutablePointer<sockaddr_storage>
    private let acceptAddressLengths: UnsafeMutablePointer<socklen_t>
    /// Per-arming byte limit of multishot receives (0: none; set to 0 if the kernel refuses it).
    private var receiveLimit: Int
    /// Whether aborts set SO_LINGER 0 through the ring (socket uring_cmd, Linux 6.7+).
    private var lingerSupported = true
    /// The previous accept failed with ENFILE: a second one in a row is the system's file limit, not
    /// our full direct table, and backs off like any accept error.
    private var lastAcceptENFILE = false
    private var listenerClosed = false
    private var stopping = false

    /// Operations that found no free SQE even after a submit; drained first on every iteration.
    private var deferred: [UserData] = []
    /// Slots whose receive ended on -ENOBUFS, re-armed once the ring has buffers again.
    private var starved: [Int32] = []
    private let wakeBuffer = UnsafeMutablePointer<UInt64>.allocate(capacity: 1)
    /// Stable memory: the kernel reads the timespec when the SQE is submitted, after `fill` returns.
    private let acceptRetryTimespec: UnsafeMutablePointer<__kernel_timespec>
    private let cqes: UnsafeMutablePointer<UnsafeMutablePointer<io_uring_cqe>?>
    private let sendVectors: SendVectors
    private let cqeBatch = 256

    let port: Int

    init(config: ServerConfiguration, control: LoopControl, logger: Logger,
         factory: @escaping @Sendable () -> H) throws {
        self.config = config
        self.control = control
        self.logger = logger
        ring = try Ring(entries: config.ringEntries, completionEntries: config.completionEntries,
                        inject: config.injectRingSetupFailure)
        pool = try BufferPool(receiveChunkSize: config.bufferSize, receiveChunks: config.receiveBuffers,
                              sendChunkSize: config.sendBufferSize, sendChunks: config.sendBuffers)
        do {
            provided = try ProvidedBufferRing(uring: ring.ring, groupID: 0, entries: config.receiveBuffers)
        } catch {
            if error.errno == .noMemory {
                throw RingSetupError(errno: .noMemory, detail: "registering a provided-buffer ring of \(config.receiveBuffers) entries")
            }
            throw error
        }
        if config.registerBuffers {
            // One iovec covering the whole slab: fixed buffer index 0. Counts against RLIMIT_MEMLOCK
            // for users without CAP_IPC_LOCK.
            // Raise the soft RLIMIT_MEMLOCK towards the hard one where we may (no-op with CAP_IPC_LOCK).
            _ = rs_raise_memlock_limit(UInt64(pool.slabBytes) + 1 << 20)
            var iov = iovec(iov_base: pool.base, iov_len: pool.slabBytes)
            let r = io_uring_register_buffers(ring.ring, &iov, 1)
            if r < 0 {
                provided.unregister(uring: ring.ring)
                let e = Errno(rawValue: -r)
                throw RingSetupError(errno: e, detail: "registering \(pool.slabBytes / 1024) KiB of fixed buffers (\(pool.summary))")
            }
            registeredBuffers = true
        }
        pool.providedRing = provided
        if config.directDescriptors {
            // Headroom above the connection cap: a connection over the cap must still be accepted (and
            // then closed and counted as refused); a full table would fail the accept itself (ENFILE).
            let r = io_uring_register_files_sparse(ring.ring, UInt32(config.maxConnections + Self.directHeadroom(config.maxConnections)))
            directFiles = r >= 0
            if r < 0 { logger.notice("direct descriptors unavailable (\(Errno(rawValue: -r))): using ordinary ones") }
        }
        for c in 0..<Int32(config.receiveBuffers) { provided.give(chunk: c, address: pool.pointer(c), length: pool.receiveChunkSize) }
        provided.publish()
        core = LoopCore(pool: pool, capacity: config.maxConnections,
                        highWatermark: config.highWatermark, lowWatermark: config.lowWatermark,
                        limits: .init(config, requiresAuthentication: H.requiresAuthentication))
        handlers = HandlerTable(core: core, factory: factory)
        acceptSlots = (config.maxConnectionsPerAddress ?? 0) > 0 ? 8 : 1
        acceptArmed = .allocate(capacity: acceptSlots)
        acceptArmed.initialize(repeating: false, count: acceptSlots)
        acceptAddresses = .allocate(capacity: acceptSlots)
        acceptAddresses.initialize(repeating: sockaddr_storage(), count: acceptSlots)
        acceptAddressLengths = .allocate(capacity: acceptSlots)
        acceptAddressLengths.initialize(repeating: 0, count: acceptSlots)
        receiveLimit = max(0, config.receiveBurstLimit)
        if config.listen {
            listenFD = try Socket.listen(host: config.host, port: config.port, backlog: config.backlog, nonBlocking: false,
                                         reusePort: config.threads > 1)
            // Accepted sockets inherit TCP_NODELAY from the listener (needed for direct descriptors,
            // which setsockopt(2) cannot reach).
            if config.noDelay { try? Socket.setOption(listenFD, Int32(IPPROTO_TCP), TCP_NODELAY, 1, "TCP_NODELAY") }
            do { try Socket.configureListener(listenFD, keepAlive: config.keepAlive, userTimeout: config.writeStallTimeout) } catch {
                closeDescriptor(listenFD)
                throw error
            }
            port = (try? Socket.localPort(listenFD)) ?? config.port
        } else {
            listenFD = -1
            port = 0
            listenerClosed = true
        }
        if let c = config.connect {
            outbound = .allocate(capacity: 1)
            outbound!.initialize(to: try Socket.address(host: c.host, port: c.port))
        } else {
            outbound = nil
        }
        deferred.reserveCapacity(1024)
        starved.reserveCapacity(config.maxConnections)
        cqes = .allocate(capacity: cqeBatch)
        sendVectors = try SendVectors(capacity: config.maxConnections)
        acceptRetryTimespec = .allocate(capacity: 1)
        acceptRetryTimespec.initialize(to: __kernel_timespec(tv_sec: 0, tv_nsec: 50_000_000))
    }

    /// Spare direct-descriptor entries above the connection cap, for connections accepted only to be
    /// refused.
    static func directHeadroom(_ cap: Int) -> Int { min(1024, max(64, cap / 8)) }

    deinit {
        provided.unregister(uring: ring.ring)
        if registeredBuffers { _ = io_uring_unregister_buffers(ring.ring) }
        if !listenerClosed { closeDescriptor(listenFD) }
        wakeBuffer.deallocate()
        cqes.deallocate()
        outbound?.deallocate()
        acceptRetryTimespec.deallocate()
        acceptArmed.deallocate()
        acceptAddresses.deallocate()
        acceptAddressLengths.deallocate()
    }

    var summary: String {
        "\(ring.summary) \(pool.summary) direct-descriptors=\(directFiles ? "on" : "off") fixed-buffers=\(registeredBuffers ? "\(pool.slabBytes / 1024)KiB" : "off")"
    }

    // MARK: the loop

    func run() throws {
        control.executor.bindToCurrentThread()
        if listenFD >= 0 {
            for k in 0..<acceptSlots { armAccept(k) }
        }
        prepare(UserData(.wake))
        if let c = config.connect, let addr = outbound {
            for _ in 0..<c.count {
                let fd = try Socket.stream(family: addr.pointee.family, nonBlocking: false)
                guard let slot = core.allocateSlot(fd: fd, outbound: true) else {
                    closeDescriptor(fd)
                    core.counters.connectFailures += 1
                    continue
                }
                prepare(UserData(.connect, slot: slot, generation: core.states[Int(slot)].generation))
            }
        }
        while true {
            drainDeferred()
            var timeout: Int64? = nil
            if let d = core.drainDeadline {
                let left = ContinuousClock.now.duration(to: d)
                timeout = max(1_000_000, left.components.seconds * 1_000_000_000 + left.components.attoseconds / 1_000_000_000)
            }
            if let ms = core.millisUntilNextTimer() {
                // The wait's own timeout (IORING_ENTER_EXT_ARG) drives every connection timer.
                let t = Int64(min(ms, 60_000)) * 1_000_000
                timeout = min(timeout ?? t, t)
            }
            if let t = control.executor.waitLimitNanos(stopping: stopping) { timeout = min(timeout ?? t, t) }
            let r = ring.submitAndWait(1, timeoutNanos: timeout)
            if r < 0 && r != -ETIME && r != -EINTR && r != -EBUSY && r != -EAGAIN {
                throw SyscallError("io_uring_submit_and_wait", Errno(rawValue: -r))
            }
            core.tick()
            if ring.cqOverflowFlagged { core.counters.cqOverflowEvents += 1 }
            reapAll()
            core.expireTimers { handlers.timerFired($0) }
            processDirty()
            if control.executor.runPending() { processDirty() }  // async connection tasks
            if provided.publish() > 0 || !starved.isEmpty { rearmStarved() }
            processDirty()
            if stopping { checkDrainDeadline() }
            core.counters.cqDropped = Int(ring.droppedCompletions)
            core.refreshGauges()
            control.publish(core.counters)
            if stopping && core.openCount == 0 && ringInflight == 0 && deferred.isEmpty
                && control.executor.shutDownIfIdle(force: core.drainDeadline == nil) { break }
        }
        logger.debug("uring loop finished", metadata: ["stats": "\(core.counters)"])
    }

    private func reapAll() {
        while true {
            let n = Int(io_uring_peek_batch_cqe(ring.ring, cqes, UInt32(cqeBatch)))
            if n == 0 { return }
            for i in 0..<n {
                let cqe = cqes[i]!
                complete(UserData(raw: cqe.pointee.user_data), res: cqe.pointee.res, flags: cqe.pointee.flags)
            }
            io_uring_cq_advance(ring.ring, UInt32(n))
        }
    }

    // MARK: submission

    /// Gets an SQE, submitting what is prepared if the SQ is full; nil if still none.
    @inline(__always) private func sqe() -> UnsafeMutablePointer<io_uring_sqe>? {
        if let s = ring.getSQE() { return s }
        core.counters.sqFullEvents += 1
        _ = ring.submit()
        return ring.getSQE()
    }

    /// Prepares the operation named by `ud`, or parks it in the FIFO when the SQ is full.
    /// In-flight accounting happens here, once, whichever path the operation takes.
    private func prepare(_ ud: UserData) {
        switch ud.kind! {
        case .recv, .send, .close, .cancel, .cancelRecv, .shutdown, .connect, .setLinger: core.states[Int(ud.slot)].inflight += 1
        default: ringInflight += 1
        }
        if !deferred.isEmpty || !fill(ud) {
            core.counters.sqDeferredOps += 1
            deferred.append(ud)
        }
    }

    private func drainDeferred() {
        guard !deferred.isEmpty else { return }
        var i = 0
        while i < deferred.count {
            // A deferred SO_LINGER and the close after it go into one submission (see `beginTeardown`).
            if deferred[i].kind == .setLinger && ring.spaceLeft < 2 { _ = ring.submit() }
            guard fill(deferred[i]) else { break }
            i += 1
        }
        deferred.removeFirst(i)
    }

    /// Fills one SQE for `ud`. Returns false when no SQE is free.
    private func fill(_ ud: UserData) -> Bool {
        guard let s = sqe() else { return false }
        let slot = Int(ud.slot)
        switch ud.kind! {
        case .accept:
            if acceptSlots == 1 {
                if directFiles {
                    io_uring_prep_multishot_accept_direct(s, listenFD, nil, nil, 0)
                } else {
                    io_uring_prep_multishot_accept(s, listenFD, nil, nil, Int32(SOCK_CLOEXEC.rawValue))
                }
            } else {
                // Single-shot, so the kernel's write of the peer address cannot be overwritten by the
                // next accept before this completion is read.
                acceptAddressLengths[slot] = socklen_t(MemoryLayout<sockaddr_storage>.size)
                (acceptAddresses + slot).withMemoryRebound(to: sockaddr.self, capacity: 1) { a in
                    if directFiles {
                        // liburing 2.3 stores index + 1, so "allocate" is passed as ALLOC - 1.
                        io_uring_prep_accept_direct(s, listenFD, a, acceptAddressLengths + slot, 0, UInt32(IORING_FILE_INDEX_ALLOC) - 1)
                    } else {
                        io_uring_prep_accept(s, listenFD, a, acceptAddressLengths + slot, Int32(SOCK_CLOEXEC.rawValue))
                    }
                }
            }
        case .recv:
            io_uring_prep_recv_multishot(s, core.states[slot].fd, nil, 0, 0)
            s.pointee.flags |= UInt8(RS_IOSQE_BUFFER_SELECT)
            rs_sqe_set_buf_group(s, provided.groupID)
            if receiveLimit > 0 { rs_sqe_set_recv_total_limit(s, UInt32(clamping: receiveLimit)) }
        case .send:
            let h = core.states[slot].sendHead
            if pool.next(h) < 0 {
                // One chunk (the common reply): a plain SEND.
                let (a, b) = pool.range(h)
                core.states[slot].inflightBytes = Int32(b - a)
                io_uring_prep_send(s, core.states[slot].fd, pool.pointer(h) + a, b - a, Int32(MSG_NOSIGNAL))
            } else {
                // Several queued chunks leave in one SENDMSG.
                let (msg, total) = sendVectors.prepare(slot: ud.slot, head: h, pool: pool)
                core.states[slot].inflightBytes = Int32(truncatingIfNeeded: total)
                io_uring_prep_sendmsg(s, core.states[slot].fd, msg, UInt32(MSG_NOSIGNAL))
            }
        case .close:
            if core.states[slot].flags.contains(.direct) {
                io_uring_prep_close_direct(s, UInt32(core.states[slot].fd))
            } else {
                io_uring_prep_close(s, core.states[slot].fd)
            }
        case .closeDirect:
            io_uring_prep_close_direct(s, UInt32(ud.slot))  // a refused direct accept: slot = its index
        case .setLinger:
            // Hard-linked to the close that follows: the close runs whether or not this succeeds.
            rs_prep_set_linger_zero(s, core.states[slot].fd)
            s.pointee.flags |= UInt8(RS_IOSQE_IO_HARDLINK)
        case .cancelRecv:
            io_uring_prep_cancel64(s, UserData(.recv, slot: ud.slot, generation: ud.generation).raw, 0)
        case .cancel:
            // Every operation on this connection's file (receive and a send stuck on a full socket).
            let fixed = core.states[slot].flags.contains(.direct) ? UInt32(IORING_ASYNC_CANCEL_FD_FIXED) : 0
            io_uring_prep_cancel_fd(s, core.states[slot].fd, UInt32(IORING_ASYNC_CANCEL_ALL) | fixed)
        case .shutdown:
            io_uring_prep_shutdown(s, core.states[slot].fd, Int32(SHUT_WR))
        case .connect:
            outbound!.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                io_uring_prep_connect(s, core.states[slot].fd, $0, outbound!.pointee.length)
            }
        case .wake:
            io_uring_prep_read(s, control.wakeFD, wakeBuffer, 8, 0)
        case .acceptRetryTimer:
            io_uring_prep_timeout(s, acceptRetryTimespec, 0, 0)
        case .cancelAccept:
            io_uring_prep_cancel_fd(s, listenFD, UInt32(IORING_ASYNC_CANCEL_ALL))
        case .closeListener:
            io_uring_prep_close(s, listenFD)
        }
        switch ud.kind! {
        case .recv, .send, .shutdown, .setLinger:
            if core.states[slot].flags.contains(.direct) { s.pointee.flags |= UInt8(RS_IOSQE_FIXED_FILE) }
        default: break
        }
        io_uring_sqe_set_data64(s, ud.raw)
        return true
    }

    // MARK: completions

    @inline(__always) private func complete(_ ud: UserData, res: Int32, flags: UInt32) {
        guard let kind = ud.kind else { preconditionFailure("unknown user_data \(ud.raw)") }
        switch kind {
        case .recv: completeRecv(ud, res: res, flags: flags)
        case .send: completeSend(ud, res: res)
        case .close, .cancel, .cancelRecv, .shutdown, .setLinger: completeSlotOp(ud, kind: kind, res: res)
        case .connect: completeConnect(ud, res: res)
        case .accept: completeAccept(ud, res: res, flags: flags)
        case .wake:
            ringInflight -= 1
            logger.trace("wake completion res=\(res) stop=\(control.stopRequested) inflight=\(ringInflight)")
            control.drainWake()
            if control.stopRequested { beginStop() }
            if !stopping { prepare(UserData(.wake)) }
        case .acceptRetryTimer:
            ringInflight -= 1
            if !stopping && !acceptArmed[Int(ud.slot)] { armAccept(Int(ud.slot)) }
        case .cancelAccept, .closeDirect:
            ringInflight -= 1
        case .closeListener:
            ringInflight -= 1
            listenerClosed = true
        }
    }

    /// Whether `ud` names the slot's current connection; counts and reports stale completions.
    @inline(__always) private func current(_ ud: UserData) -> Bool {
        let st = core.states[Int(ud.slot)]
        if ud.matches(generation: st.generation) && st.flags.contains(.open) { return true }
        core.counters.staleCompletions += 1
        return false
    }

    private func completeRecv(_ ud: UserData, res: Int32, flags: UInt32) {
        let hasBuffer = flags & IORING_CQE_F_BUFFER != 0
        let chunk = hasBuffer ? Int32(flags >> IORING_CQE_BUFFER_SHIFT) : -1
        if hasBuffer { provided.noteConsumed(); pool.noteReceivedFromRing() }
        guard current(ud) else {
            if hasBuffer { pool.release(chunk) }  // never lose a buffer to a stale completion
            return
        }
        let slot = ud.slot
        let i = Int(slot)
        if flags & IORING_CQE_F_MORE == 0 {
            // The multishot ended: this is its final CQE (with data: it reached its byte limit).
            core.states[i].flags.remove(.recvArmed)
            core.states[i].inflight -= 1
            if res > 0 && receiveLimit > 0 { core.counters.receiveBurstLimitEnds += 1 }
        }
        if res > 0 {
            core.counters.bytesIn += Int(res)
            core.noteReceived(slot)
            precondition(hasBuffer, "multishot recv completed with data but no buffer")
            let st = core.states[i].flags
            if !st.isDisjoint(with: [.closing, .wantClose, .wantAbort, .inputClosed]) {
                pool.release(chunk)  // input after close is ignored
            } else if st.contains(.readPaused) || core.states[i].heldHead >= 0 {
                // The kernel completed this before our cancel landed: keep it, in order, for the resume,
                // so the handler never sees input while its connection is over the high watermark.
                core.hold(slot: slot, chunk: chunk, count: Int(res))
            } else {
                if !handlers.received(slot, chunk: chunk, offset: 0, count: Int(res)) { pool.release(chunk) }
                pauseIfOverHighWatermark(slot)
            }
        } else if res == 0 {
            if hasBuffer { pool.release(chunk) }
            core.states[i].flags.insert(.inputClosed)
            if core.states[i].flags.isDisjoint(with: [.closing, .wantAbort, .wantClose]) {
                if core.states[i].closeReason == .closedByHandler { core.states[i].closeReason = .peerClosed }
                if core.states[i].heldHead >= 0 {
                    core.states[i].flags.insert(.eofPending)  // after the held bytes
                } else {
                    handlers.inputClosed(slot)
                }
            }
        } else {
            if hasBuffer { pool.release(chunk) }
            switch -res {
            case ENOBUFS:
                core.counters.noBufferEvents += 1
                if !core.states[i].flags.contains(.starved) {
                    core.states[i].flags.insert(.starved)
                    starved.append(slot)
                }
            case ECANCELED:
                core.counters.canceledCompletions += 1
            case EINVAL where receiveLimit > 0:
                // A kernel before 6.16 rejects the per-arming limit: receive without it (re-armed in
                // `service`; the multishot never started, so nothing was lost).
                logger.notice("multishot receive limit refused (EINVAL): receiving without it")
                receiveLimit = 0
            default:
                core.requestClose(slot: slot, abort: true, reason: .error(Errno(rawValue: -res)))
            }
        }
        core.markDirty(slot)
    }

    private func completeSend(_ ud: UserData, res: Int32) {
        guard current(ud) else { return }
        let slot = ud.slot
        let i = Int(slot)
        core.states[i].inflight -= 1
        core.states[i].flags.remove(.sendInFlight)
        if res >= 0 {
            if res < core.states[i].inflightBytes { core.counters.shortSends += 1 }
            core.consumeSent(slot: slot, Int(res))
        } else {
            if -res == ECANCELED { core.counters.canceledCompletions += 1 }
            core.requestClose(slot: slot, abort: true, reason: .error(Errno(rawValue: -res)))
        }
        if core.states[i].flags.contains(.closing) {
            core.discardQueue(slot: slot, keepHead: false)
        }
        core.markDirty(slot)
    }

    private func completeSlotOp(_ ud: UserData, kind: UserData.Kind, res: Int32) {
        guard current(ud) else { return }
        let i = Int(ud.slot)
        core.states[i].inflight -= 1
        switch kind {
        case .close: core.states[i].flags.insert(.fdClosed)
        case .cancelRecv: core.states[i].flags.remove(.cancelSent)
        case .setLinger where res == -EINVAL || res == -EOPNOTSUPP:
            // Before Linux 6.7 (no socket uring_cmd) the close is an orderly one instead of a reset.
            if lingerSupported { lingerSupported = false; logger.notice("SO_LINGER through io_uring refused (\(Errno(rawValue: -res))): aborts close without a reset") }
        case .shutdown where res < 0 && res != -ENOTCONN:
            core.requestClose(slot: ud.slot, abort: true, reason: .error(Errno(rawValue: -res)))
        default: break  // cancel: -ENOENT / -EALREADY mean the operation already finished
        }
        core.markDirty(ud.slot)
    }

    private func completeConnect(_ ud: UserData, res: Int32) {
        guard current(ud) else { return }
        let slot = ud.slot
        let i = Int(slot)
        core.states[i].inflight -= 1
        if res == 0 {
            core.counters.connectionsConnected += 1
            core.states[i].flags.remove(.connecting)
            _ = Socket.configureAccepted(core.states[i].fd, noDelay: config.noDelay)
            handlers.open(slot)
        } else {
            core.counters.connectFailures += 1
            core.states[i].flags.insert(.connectFailed)
            core.markDirty(slot)
        }
    }

    private func armAccept(_ k: Int) {
        acceptArmed[k] = true
        acceptsArmed += 1
        prepare(UserData(.accept, slot: Int32(k)))
    }

    private func completeAccept(_ ud: UserData, res: Int32, flags: UInt32) {
        let k = Int(ud.slot)
        if flags & IORING_CQE_F_MORE == 0 {
            acceptArmed[k] = false
            acceptsArmed -= 1
            ringInflight -= 1
        }
        if res >= 0 {
            // Per-address cap: `.some(key)` admitted (key nil when no cap applies), nil refused.
            let admitted = acceptSlots > 1 ? core.admitAddress(UnsafeRawPointer(acceptAddresses + k)) : .some(nil)
            if !stopping, let key = admitted, let slot = core.allocateSlot(fd: res) {
                core.noteAddress(slot, key)
                if directFiles {
                    core.states[Int(slot)].flags.insert(.direct)  // TCP_NODELAY is inherited from the listener
                } else {
                    _ = Socket.configureAccepted(res, noDelay: config.noDelay)
                }
                handlers.open(slot)
            } else {
                if let key = admitted {
                    core.forgetAddress(key)
                    if !stopping { core.counters.connectionsRefused += 1 }
                }
                if directFiles { prepare(UserData(.closeDirect, slot: res)) } else { closeDescriptor(res) }
            }
        } else if -res == ECANCELED {
            core.counters.canceledCompletions += 1
        } else if -res == ENFILE && directFiles && !lastAcceptENFILE {
            // The direct-descriptor table is full even with its headroom (a flood of refused connections
            // whose close_direct has not completed yet): the kernel closed the new connection. That is a
            // refusal, not an error to back off from.
            core.counters.connectionsRefused += 1
        } else {
            core.counters.acceptErrors += 1
            if core.counters.acceptErrors == 1 || core.counters.acceptErrors % 1000 == 0 {
                logger.warning("accept failed: \(Errno(rawValue: -res)) (count \(core.counters.acceptErrors)); retrying in 50 ms")
            }
        }
        let refusedByFullTable = -res == ENFILE && directFiles && !lastAcceptENFILE
        lastAcceptENFILE = -res == ENFILE
        if !acceptArmed[k] && !stopping {
            if res < 0 && -res != ECANCELED && !refusedByFullTable {
                // EMFILE/ENFILE and friends: retry after a pause rather than spinning.
                prepare(UserData(.acceptRetryTimer, slot: Int32(k)))
            } else {
                if acceptSlots == 1 { core.counters.acceptRearms += 1 }
                armAccept(k)
            }
        }
    }

    // MARK: per-connection state machine (after completions and handler calls)

    private func processDirty() { core.drainDirty { service($0) } }

    private func service(_ slot: Int32) {
        let i = Int(slot)
        var st = core.states[i]
        guard st.flags.contains(.open) else { return }
        if st.flags.contains(.connecting) {
            if st.flags.contains(.connectFailed) {
                closeDescriptor(st.fd)
                core.freeSlot(slot)
            }
            return  // no handler until connected
        }
        let gen = st.generation
        if st.flags.contains(.closing) { finishTeardownIfDone(slot); return }
        if st.flags.contains(.wantAbort) { beginTeardown(slot, abort: true); return }

        if st.sendHead >= 0 && !st.flags.contains(.sendInFlight) && !st.flags.contains(.writeShutDown) {
            core.states[i].flags.insert(.sendInFlight)
            prepare(UserData(.send, slot: slot, generation: gen))
        }
        let w = core.watermark(slot)
        if w.contains(.pause) { cancelPausedReceive(slot) }
        if w.contains(.resume) { deliverHeld(slot) }
        if w.contains(.writable) {
            // Unless delivering the held input filled the queue again: then it is owed once that drains.
            if core.states[i].queuedBytes <= core.lowWatermark { handlers.writable(slot) }
            else { core.states[i].flags.insert(.wasAboveHigh) }
        }
        st = core.states[i]
        let flushed = st.sendHead < 0 && !st.flags.contains(.sendInFlight)
        if st.flags.contains(.wantClose) && flushed {
            guard core.shouldLinger(slot) else { beginTeardown(slot, abort: false); return }
            // Lingering close: FIN now, keep receiving (and discarding) until EOF or the linger time.
            if !st.flags.contains(.writeShutDown) {
                core.states[i].flags.insert(.writeShutDown)
                prepare(UserData(.shutdown, slot: slot, generation: gen))
            }
            core.beginLinger(slot)
        }
        if st.flags.contains(.wantShutdownWrite) && !st.flags.contains(.writeShutDown) && flushed {
            core.states[i].flags.insert(.writeShutDown)
            prepare(UserData(.shutdown, slot: slot, generation: gen))
        }
        st = core.states[i]
        // Re-arm only once both the old receive's final CQE and a pause's cancel have completed, and
        // nothing is held back. A lingering connection keeps receiving (to discard) even while stopping.
        let lingering = st.flags.contains(.lingering)
        if st.flags.isDisjoint(with: [.recvArmed, .cancelSent, .readPaused, .inputClosed, .starved])
            && (lingering || (!st.flags.contains(.wantClose) && !stopping)) && st.heldHead < 0
        {
            armReceive(slot)
        }
    }

    /// Pauses reading at once when a delivery pushed the queue over the high watermark (rather than at
    /// the end of the batch), so later completions of this batch are held, not delivered.
    @inline(__always) private func pauseIfOverHighWatermark(_ slot: Int32) {
        let i = Int(slot)
        guard core.states[i].queuedBytes > core.highWatermark || core.states[i].flags.contains(.inputPaused) else { return }
        let w = core.watermark(slot)
        if w.contains(.pause) { cancelPausedReceive(slot) }
        if w.contains(.writable) { core.states[i].flags.insert(.wasAboveHigh); core.markDirty(slot) }  // told in `service`
    }

    private func cancelPausedReceive(_ slot: Int32) {
        let f = core.states[Int(slot)].flags
        guard f.contains(.recvArmed) && !f.contains(.cancelSent) else { return }
        cancelReceive(slot)
        // Submit now, not at the end of the batch: the kernel keeps completing receives until the
        // cancel lands, and each of those is a buffer we must hold.
        _ = ring.submit()
    }

    /// Delivers held chunks in order until none are left or the connection pauses again; then a
    /// pending end-of-file.
    private func deliverHeld(_ slot: Int32) {
        let i = Int(slot)
        while core.states[i].heldHead >= 0 && !core.states[i].flags.contains(.readPaused)
            && core.states[i].flags.isDisjoint(with: [.closing, .wantClose, .wantAbort])
        {
            let c = core.popHeld(slot: slot)
            let (s, e) = pool.range(c)
            if !handlers.received(slot, chunk: c, offset: s, count: e - s) { pool.release(c) }
            pauseIfOverHighWatermark(slot)
        }
        if core.states[i].heldHead < 0 && core.states[i].flags.contains(.eofPending) {
            core.states[i].flags.remove(.eofPending)
            if core.states[i].flags.isDisjoint(with: [.closing, .wantAbort]) { handlers.inputClosed(slot) }
        }
    }

    @inline(__always) private func armReceive(_ slot: Int32) {
        let i = Int(slot)
        // The first arm follows accept; every later one re-arms a multishot that ended (no F_MORE,
        // -ENOBUFS, or a backpressure pause).
        if core.states[i].flags.contains(.armedOnce) { core.counters.recvRearms += 1 }
        core.states[i].flags.insert([.recvArmed, .armedOnce])
        prepare(UserData(.recv, slot: slot, generation: core.states[i].generation))
    }

    /// Cancels only the receive (a backpressure pause must not cancel a send in flight).
    private func cancelReceive(_ slot: Int32) {
        core.states[Int(slot)].flags.insert(.cancelSent)
        prepare(UserData(.cancelRecv, slot: slot, generation: core.states[Int(slot)].generation))
    }

    private func beginTeardown(_ slot: Int32, abort: Bool) {
        let i = Int(slot)
        core.states[i].flags.insert(.closing)
        let inFlight = core.states[i].flags.contains(.sendInFlight)
        core.discardQueue(slot: slot, keepHead: inFlight)
        core.discardHeld(slot: slot)
        let gen = core.states[i].generation
        if core.states[i].flags.contains(.recvArmed) || inFlight {
            prepare(UserData(.cancel, slot: slot, generation: gen))
        }
        // An abort resets the connection (RST) rather than leaving unsent data to a peer that may never
        // take it. The setsockopt completes inline at submission, ahead of the close (hard-linked so the
        // close runs even if it fails; kept in order by the FIFO if the SQ is full).
        if abort && !core.states[i].flags.contains(.direct) {
            Socket.setLingerZero(core.states[i].fd)  // an ordinary descriptor: setsockopt(2) directly
        } else if abort && lingerSupported {
            // The pair must not be split at an SQ boundary (a dangling hard link goes to io-wq and could
            // run after the close, on a slot already reused): make room for both first.
            if deferred.isEmpty && ring.spaceLeft < 2 { _ = ring.submit() }
            prepare(UserData(.setLinger, slot: slot, generation: gen))
        }
        prepare(UserData(.close, slot: slot, generation: gen))
    }

    private func finishTeardownIfDone(_ slot: Int32) {
        let i = Int(slot)
        guard core.states[i].inflight == 0 && core.states[i].flags.contains(.fdClosed) else { return }
        core.discardQueue(slot: slot, keepHead: false)
        handlers.finalize(slot, reason: core.states[i].closeReason)
        core.freeSlot(slot)
    }

    private func rearmStarved() {
        guard provided.available > 0 else { return }
        var k = 0
        while k < starved.count && provided.available > 0 {
            let s = starved[k]
            core.states[Int(s)].flags.remove(.starved)
            core.markDirty(s)
            k += 1
        }
        starved.removeFirst(k)
    }

    // MARK: stopping

    private func beginStop() {
        guard !stopping else { return }
        stopping = true
        core.drainDeadline = ContinuousClock.now.advanced(by: config.drainTimeout)
        if acceptsArmed > 0 { prepare(UserData(.cancelAccept)) }
        if listenFD >= 0 { prepare(UserData(.closeListener)) }
        for s in 0..<Int32(core.capacity) where core.states[Int(s)].flags.contains(.open) {
            core.requestClose(slot: s, abort: false, reason: .serverShutdown)
            if core.states[Int(s)].flags.contains(.recvArmed) && !core.states[Int(s)].flags.contains(.cancelSent) {
                cancelReceive(s)
            }
        }
        // Starved slots will not be re-armed any more.
        starved.removeAll(keepingCapacity: true)
    }

    private func checkDrainDeadline() {
        if core.abortAllIfDrainDeadlinePassed() { processDirty() }
    }
}
