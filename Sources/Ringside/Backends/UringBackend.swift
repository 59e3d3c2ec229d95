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
final class UringBackend: EventLoopBackend {
    let name = "uring"
    let config: ServerConfiguration
    let control: LoopControl
    /// The loop's executor, unretained: `control` (held for the backend's life) owns it. Borrowed at +0
    /// on every wait (loading it through `control` cost a retain/release pair per wait; as in EpollBackend).
    let executorRef: Unmanaged<LoopExecutor>
    let ring: Ring
    let core: LoopCore
    let handlers: HandlerTable
    let pool: BufferPool
    let provided: ProvidedBufferRing
    let listenFD: Int32  // -1 when not listening
    /// The outbound target (the kernel copies it when the connect SQE is submitted).
    let outbound: UnsafeMutablePointer<Socket.Address>?
    let logger: Logger
    let registeredBuffers: Bool
    /// Accepted connections are registered (direct) descriptors: no fget/fput per operation, and they
    /// do not count against RLIMIT_NOFILE. Falls back to ordinary descriptors if registration fails.
    let directFiles: Bool

    /// Ring-level operations in flight (accept, wake read, timers, listener cancel/close).
    @exclusivity(unchecked) var ringInflight = 0
    /// Accept operations: one multishot, or (with a per-address cap or the PROXY protocol, which need each peer's
    /// address) `acceptSlots` single-shot accepts, each with its own address buffer.
    let acceptSlots: Int
    let acceptArmed: UnsafeMutablePointer<Bool>
    @exclusivity(unchecked) var acceptsArmed = 0
    /// Stable memory the kernel writes peer addresses into (single-shot accepts only).
    let acceptAddresses: UnsafeMutablePointer<sockaddr_storage>
    let acceptAddressLengths: UnsafeMutablePointer<socklen_t>
    /// Per-arming byte limit of multishot receives (0: none; set to 0 if the kernel refuses it).
    @exclusivity(unchecked) var receiveLimit: Int
    /// Multishot receives ask for bundles (probed; see `ServerConfiguration.receiveBundles`).
    let receiveBundles: Bool
    /// What the kernel supports, probed once at start.
    let probe: UringProbe
    /// A receive cancel was prepared during a completion batch: submit once the batch is consumed.
    @exclusivity(unchecked) var submitSoon = false
    /// Whether aborts set SO_LINGER 0 through the ring (socket uring_cmd, Linux 6.7+).
    @exclusivity(unchecked) var lingerSupported = true
    /// The previous accept failed with ENFILE: a second one in a row is the system's file limit, not
    /// our full direct table, and backs off like any accept error.
    @exclusivity(unchecked) var lastAcceptENFILE = false
    @exclusivity(unchecked) var listenerClosed: Bool

    /// Operations that found no free SQE even after a submit; drained first on every iteration.
    @exclusivity(unchecked) var deferred: [UserData] = []
    /// Slots whose receive ended on -ENOBUFS, re-armed once the ring has buffers again.
    @exclusivity(unchecked) var starved: [Int32] = []
    let wakeBuffer: UnsafeMutablePointer<UInt64>
    /// Stable memory: the kernel reads the timespec when the SQE is submitted, after `fill` returns.
    let acceptRetryTimespec: UnsafeMutablePointer<__kernel_timespec>
    let cqes: UnsafeMutablePointer<UnsafeMutablePointer<io_uring_cqe>?>
    /// The loop timer (see UringWait.swift): the absolute CLOCK_MONOTONIC millisecond an armed
    /// IORING_OP_TIMEOUT fires at (0: none armed), and its stable timespec.
    @exclusivity(unchecked) var loopTimerDue: UInt64 = 0
    let loopTimerSpec: UnsafeMutablePointer<__kernel_timespec>
    /// Completion batching: the most completions one wait asks for (1: off) and how long it may hold a
    /// ready one back (the kernel's minimum-wait timeout, probed); completions the last reap found.
    let batchLimit: UInt32
    let batchWaitMicros: UInt32
    @exclusivity(unchecked) var lastReaped: UInt32 = 0
    /// The send wait (UringWait.swift): its bound (`ServerConfiguration.sendCompletionWait`; 0: off)
    /// as the stable timespec of its relative IORING_OP_TIMEOUT, whether that timeout is in flight,
    /// the single-chunk sends prepared since the last wait, and whether a multi-chunk send was.
    let sendWaitMicros: UInt32
    let sendWaitSpec: UnsafeMutablePointer<__kernel_timespec>
    @exclusivity(unchecked) var sendWaitTimerArmed = false
    @exclusivity(unchecked) var sendsPrepared: UInt32 = 0
    @exclusivity(unchecked) var bulkSendPrepared = false
    /// File operations through the ring (set at the end of init; see UringFiles.swift).
    var files: UringFiles!
    /// File sends by splice (nil: off, masked, or no pipe could be made).
    var splice: SplicePipes?
    var spliceNote = ""
    let sendVectors: SendVectors
    /// Zero-copy sends in flight (threshold 0: off; see UringZeroCopy.swift).
    let zeroCopy: UringZeroCopySends
    let cqeBatch = 256

    let port: Int

    init(config: ServerConfiguration, control: LoopControl, logger: Logger,
         handlers makeHandlers: (LoopCore) -> HandlerTable, requiresAuthentication: Bool) throws {
        self.config = config
        self.control = control
        executorRef = Unmanaged.passUnretained(control.executor)
        self.logger = logger
        // Every step that can throw comes before the raw allocations at the end: a class init that
        // throws before all stored properties are set does not run deinit, so memory allocated earlier
        // leaked on every failed start (LeakSanitizer found it).
        ring = try Ring(entries: config.ringEntries, completionEntries: config.completionEntries,
                        inject: config.injectRingSetupFailure, disabled: config.disabledFeatures)
        pool = try BufferPool(config)
        provided = try Self.providedRing(ring, config)
        registeredBuffers = try Self.registerFixedBuffers(ring, pool, provided, config)
        pool.providedRing = provided
        let fileTable = Self.registerFileTable(ring, config, logger)
        for c in 0..<Int32(config.receiveBuffers) { provided.give(chunk: c, address: pool.pointer(c), length: pool.receiveChunkSize) }
        provided.publish()
        try UringProbe.requireMinimum(ring: ring, provided: provided, pool: pool)
        probe = UringProbe(ring: ring, provided: provided, pool: pool, config: config, fileTable: fileTable,
                           registeredBuffers: registeredBuffers)
        if let t = config.zeroCopySendThreshold, !probe.zeroCopySend {
            logger.notice("zero-copy sends (threshold \(t) B) off: \(probe.zeroCopySendNote); sending with plain SEND")
        }
        zeroCopy = UringZeroCopySends(threshold: probe.zeroCopySend ? (config.zeroCopySendThreshold ?? 0) : 0,
                                      sendChunks: config.sendBuffers)
        // Blocks of slab neighbours for large writes and file pieces, so runs above the threshold form.
        if zeroCopy.threshold > 0 && config.zeroCopySendThreshold! > pool.sendChunkSize { pool.useContiguousAllocation() }
        directFiles = probe.directDescriptors
        core = LoopCore(config, pool: pool, requiresAuthentication: requiresAuthentication)
        handlers = makeHandlers(core)
        receiveLimit = probe.receiveLimit ? max(0, config.receiveBurstLimit) : 0
        receiveBundles = probe.receiveBundles
        lingerSupported = probe.socketCommands
        // Socket directives (kernel TLS): a registered descriptor's options are reachable only
        // through socket commands.
        core.orderedSocketOperations = !config.disabledFeatures.contains(.kernelTLS) && (!directFiles || probe.socketCommands)
        let outboundAddress = try config.connect.map { c in try Socket.address(host: c.host, port: c.port) }
        sendVectors = try SendVectors(capacity: config.maxConnections)
        (listenFD, port) = try Self.listener(config)
        listenerClosed = listenFD < 0
        // No throw from here to the end (deinit frees all of these).
        acceptSlots = (config.maxConnectionsPerAddress ?? 0) > 0 || config.proxyProtocol != nil ? 8 : 1
        acceptArmed = .allocate(capacity: acceptSlots)
        acceptArmed.initialize(repeating: false, count: acceptSlots)
        acceptAddresses = .allocate(capacity: acceptSlots)
        acceptAddresses.initialize(repeating: sockaddr_storage(), count: acceptSlots)
        acceptAddressLengths = .allocate(capacity: acceptSlots)
        acceptAddressLengths.initialize(repeating: 0, count: acceptSlots)
        if let outboundAddress {
            outbound = .allocate(capacity: 1)
            outbound!.initialize(to: outboundAddress)
        } else {
            outbound = nil
        }
        deferred.reserveCapacity(1024)
        starved.reserveCapacity(config.maxConnections)
        cqes = .allocate(capacity: cqeBatch)
        acceptRetryTimespec = .allocate(capacity: 1)
        acceptRetryTimespec.initialize(to: __kernel_timespec(tv_sec: 0, tv_nsec: 50_000_000))
        loopTimerSpec = .allocate(capacity: 1)
        loopTimerSpec.initialize(to: __kernel_timespec())
        let minWait = ring.features & UInt32(RS_IORING_FEAT_MIN_TIMEOUT) != 0 && !config.disabledFeatures.contains(.minWait)
        batchLimit = minWait ? UInt32(config.completionBatchLimit) : 1
        batchWaitMicros = max(1, config.completionBatchWait.wholeMicroseconds)
        sendWaitMicros = config.sendCompletionWait.wholeMicroseconds
        sendWaitSpec = .allocate(capacity: 1)
        sendWaitSpec.initialize(to: __kernel_timespec(tv_sec: Int64(sendWaitMicros / 1_000_000), tv_nsec: Int64(sendWaitMicros % 1_000_000) * 1000))
        wakeBuffer = .allocate(capacity: 1)
        files = UringFiles(backend: self, fixed: registeredBuffers ? (UnsafeRawPointer(pool.sendRegion.base), pool.sendRegion.bytes) : nil,
                           prepare: { [unowned self] ud in self.prepare(ud) })
        core.files = Unmanaged.passUnretained(files)
        if config.disabledFeatures.contains(.splice) {
            spliceNote = "off(masked)"
        } else if let t = config.fileSpliceThreshold, config.splicePipes > 0 {
            splice = SplicePipes(threshold: t, limit: config.splicePipes, size: config.splicePipeSize)
            if let splice {
                spliceNote = "on(\(config.splicePipes)x\(splice.capacity / 1024)KiB from \(t / 1024)KiB\(splice.note.isEmpty ? "" : "; \(splice.note)"))"
                core.splicer = self
            } else {
                spliceNote = "off(no pipe)"
            }
        } else {
            spliceNote = "off"
        }
    }

    private static func providedRing(_ ring: Ring, _ config: ServerConfiguration) throws -> ProvidedBufferRing {
        do {
            return try ProvidedBufferRing(uring: ring.ring, groupID: 0, entries: config.receiveBuffers)
        } catch {
            // Any refusal (ENOMEM: locked memory; EINVAL: a kernel before 5.19) is a set-up failure that
            // `auto` answers by serving on epoll, like a refused io_uring_setup.
            throw RingSetupError(errno: error.errno, detail: "registering a provided-buffer ring of \(config.receiveBuffers) entries")
        }
    }

    /// One iovec covering the send chunks (fixed buffer index 0: what file sends read into with
    /// READ_FIXED; receive chunks are never a fixed-buffer target, so they are not registered), when
    /// asked for; counts against RLIMIT_MEMLOCK for users without CAP_IPC_LOCK (planned for all loops
    /// by `LockedMemoryPlan`).
    private static func registerFixedBuffers(_ ring: Ring, _ pool: BufferPool, _ provided: ProvidedBufferRing,
                                             _ config: ServerConfiguration) throws -> Bool {
        guard config.registerBuffers && !config.disabledFeatures.contains(.registeredBuffers) else { return false }
        var iov = iovec(iov_base: pool.sendRegion.base, iov_len: pool.sendRegion.bytes)
        let r = rs_io_uring_register_buffers(ring.ring, &iov, 1)
        guard r < 0 else { return true }
        provided.unregister(uring: ring.ring)
        throw RingSetupError(errno: Errno(rawValue: -r), detail: "registering \(pool.sendRegion.bytes / 1024) KiB of fixed buffers (the send chunks of \(pool.summary))")
    }

    /// The direct-descriptor table, with headroom above the connection cap: a connection over the cap
    /// must still be accepted (and then closed and counted as refused); a full table would fail the
    /// accept itself (ENFILE). Falls back to ordinary descriptors.
    private static func registerFileTable(_ ring: Ring, _ config: ServerConfiguration, _ logger: Logger) -> Bool {
        guard config.directDescriptors && !config.disabledFeatures.contains(.directDescriptors) else { return false }
        let r = rs_io_uring_register_files_sparse(ring.ring, UInt32(config.maxConnections + directHeadroom(config.maxConnections)))
        if r < 0 { logger.notice("direct descriptors unavailable (\(Errno(rawValue: -r))): using ordinary ones") }
        return r >= 0
    }

    /// The blocking listener (io_uring accepts on it) and its port, or (-1, 0) for a client-only loop.
    private static func listener(_ config: ServerConfiguration) throws -> (Int32, Int) {
        guard config.listen else { return (-1, 0) }
        let fd = try Socket.listen(host: config.host, port: config.port, backlog: config.backlog, nonBlocking: false,
                                   reusePort: config.threads > 1)
        do {
            // Accepted sockets inherit TCP_NODELAY from the listener (needed for direct descriptors,
            // which setsockopt(2) cannot reach).
            if config.noDelay { try Socket.setOption(fd, Int32(IPPROTO_TCP), TCP_NODELAY, 1, "TCP_NODELAY") }
            try Socket.configureListener(fd, keepAlive: config.keepAlive, userTimeout: config.writeStallTimeout,
                                         sendBuffer: config.socketSendBuffer)
            return (fd, try Socket.localPort(fd))
        } catch {
            closeDescriptor(fd)
            throw error
        }
    }

    /// Spare direct-descriptor entries above the connection cap, for connections accepted only to be
    /// refused.
    static func directHeadroom(_ cap: Int) -> Int { min(1024, max(64, cap / 8)) }

    deinit {
        provided.unregister(uring: ring.ring)
        if registeredBuffers { _ = rs_io_uring_unregister_buffers(ring.ring) }
        if !listenerClosed { closeDescriptor(listenFD) }
        wakeBuffer.deallocate()
        cqes.deallocate()
        outbound?.deallocate()
        acceptRetryTimespec.deallocate()
        loopTimerSpec.deallocate()
        sendWaitSpec.deallocate()
        acceptArmed.deallocate()
        acceptAddresses.deallocate()
        acceptAddressLengths.deallocate()
    }

    var summary: String {
        "\(ring.summary) \(pool.summary) completion-batch=\(batchLimit > 1 ? "\(batchLimit)/\(batchWaitMicros)us" : (config.completionBatchLimit > 1 ? "off(no min-wait: kernel before 6.12 or masked)" : "off")) send-wait=\(sendWaitMicros > 0 ? "\(sendWaitMicros)us" : "off") \(probe.summary) fixed-buffers=\(registeredBuffers ? "\(pool.slabBytes / 1024)KiB" : "off") splice=\(spliceNote)"
    }

    // MARK: the loop

    func run() throws {
        control.executor.bindToCurrentThread()
        if listenFD >= 0 {
            for k in 0..<acceptSlots { armAccept(k) }
        }
        prepare(UserData(.wake))
        try startOutbound()
        while true {
            drainDeferred()
            let r = waitForCompletions()
            if r < 0 && r != -ETIME && r != -EINTR && r != -EBUSY && r != -EAGAIN {
                throw SyscallError("io_uring_submit_and_wait", Errno(rawValue: -r))
            }
            core.tick()
            if ring.cqOverflowFlagged { core.counters.cqOverflowEvents += 1 }
            reapAll()
            core.expireTimers { handlers.timerFired($0) }
            processDirty()
            if executorRef._withUnsafeGuaranteedRef({ $0.runPending() }) { processDirty() }  // async connection tasks
            if provided.publish() > 0 || !starved.isEmpty { rearmStarved() }
            processDirty()
            if core.stopping && core.abortAllIfDrainDeadlinePassed() { processDirty() }
            core.counters.cqDropped = Int(ring.droppedCompletions)
            core.publishStats(control)
            if core.stopping && core.openCount == 0 && files.pendingFileOperations > 0 { files.cancelAllFileOperations() }
            if core.stopping && core.openCount == 0 && ringInflight == 0 && deferred.isEmpty && files.pendingFileOperations == 0
                && control.executor.shutDownIfIdle(force: core.drainDeadline == nil) { break }
        }
        logger.debug("uring loop finished", metadata: ["stats": "\(core.counters)"])
    }

    /// Starts the configured outbound connections (IORING_OP_CONNECT).
    private func startOutbound() throws {
        guard let c = config.connect, let addr = outbound else { return }
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

    private func reapAll() {
        lastReaped = 0
        while true {
            let n = Int(rs_io_uring_peek_batch_cqe(ring.ring, cqes, UInt32(cqeBatch)))
            if n == 0 { return }
            lastReaped &+= UInt32(n)
            for i in 0..<n {
                let cqe = cqes[i]!
                complete(UserData(raw: cqe.pointee.user_data), res: cqe.pointee.res, flags: cqe.pointee.flags)
            }
            io_uring_cq_advance(ring.ring, UInt32(n))
            if submitSoon { submitSoon = false; _ = ring.submit() }
        }
    }

    func processDirty() { core.drainDirty { handlers.service($0, io: self) } }

    func rearmStarved() {
        guard provided.available > 0 else { return }
        var k = 0
        while k < starved.count && provided.available > 0 {
            let s = starved[k]
            core.states[Int(s)].unstarve()
            core.markDirty(s)
            k += 1
        }
        starved.removeFirst(k)
    }
}
