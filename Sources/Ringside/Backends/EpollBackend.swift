import CLiburing
import Glibc
import Logging

/// The epoll backend: a readiness loop behind the same `ConnectionHandler` interface and the same
/// buffer pool as the io_uring backend. Level-triggered, non-blocking sockets; receives go into pool
/// chunks taken from the receive free list; writes are queued and flushed with sendmsg(2) over up to
/// 64 chunks at once, with EPOLLOUT registered only while a queue waits on EAGAIN.
///
/// It needs nothing from io_uring, so it builds and runs where io_uring is refused.
final class EpollBackend: EventLoopBackend {
    let name = "epoll"
    let config: ServerConfiguration
    let control: LoopControl
    let core: LoopCore
    let handlers: HandlerTable
    /// The loop's executor, unretained: `control` (held for the backend's life) owns it. Borrowed at +0
    /// on every wake-up (loading it through `control` cost a retain/release pair per wait).
    let executorRef: Unmanaged<LoopExecutor>
    /// File operations on helper threads (see FileOperations.swift).
    let filePool: BlockingFilePool
    let pool: BufferPool
    let epfd: Int32
    var listenFD: Int32
    let logger: Logger
    let events: UnsafeMutablePointer<epoll_event>
    let maxEvents = 512
    let iov: UnsafeMutablePointer<iovec>
    /// Where a lingering connection's input is read and dropped.
    /// (Allocated last in `init`, after every throwing step: a class init that throws before all stored
    /// properties are set does not run deinit, so a block allocated earlier leaked on failed starts.)
    let discard: UnsafeMutableRawPointer
    let maxIOV = 64
    // Loop-confined mutable state (the backend runs on its loop thread only, and no access overlaps
    // another): no dynamic exclusivity checks, as in the io_uring backend.
    /// Accept is paused after EMFILE/ENFILE until this CLOCK_MONOTONIC millisecond (level-triggered
    /// would spin); 0: not paused. (A plain integer: an optional `ContinuousClock.Instant`, a resilient
    /// type, cost value-witness copies on every wait.)
    @exclusivity(unchecked) var acceptResume: UInt64 = 0
    /// Slots that found no free receive chunk; EPOLLIN is off for them until chunks return.
    @exclusivity(unchecked) var starved: [Int32] = []
    /// The epoll interest registered per slot (EPOLLIN|EPOLLRDHUP and/or EPOLLOUT, or 0).
    let registered: UnsafeMutablePointer<UInt32>

    private static var listenerTag: UInt64 { UInt64.max }
    private static var wakeTag: UInt64 { UInt64.max - 1 }
    let port: Int

    init(config: ServerConfiguration, control: LoopControl, logger: Logger,
         handlers makeHandlers: (LoopCore) -> HandlerTable, requiresAuthentication: Bool) throws {
        self.config = config
        self.control = control
        self.logger = logger
        executorRef = Unmanaged.passUnretained(control.executor)
        pool = try BufferPool(config)
        core = LoopCore(config, pool: pool, requiresAuthentication: requiresAuthentication)
        handlers = makeHandlers(core)
        core.orderedSocketOperations = !config.disabledFeatures.contains(.kernelTLS)
        filePool = BlockingFilePool(executor: control.executor)
        core.files = Unmanaged.passUnretained(filePool)
        epfd = try syscall("epoll_create1") { epoll_create1(Int32(EPOLL_CLOEXEC)) }
        var lfd: Int32 = -1
        do {
            if config.listen {
                lfd = try Socket.listen(host: config.host, port: config.port, backlog: config.backlog, nonBlocking: true,
                                        reusePort: config.threads > 1)
                try Socket.configureListener(lfd, keepAlive: config.keepAlive, userTimeout: config.writeStallTimeout,
                                                sendBuffer: config.socketSendBuffer)
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
        registered = .allocate(capacity: config.maxConnections)
        registered.initialize(repeating: 0, count: config.maxConnections)
        discard = .allocate(byteCount: 16 * 1024, alignment: 16)
        if listenFD >= 0 { try ctl(EPOLL_CTL_ADD, listenFD, EPOLLIN.rawValue, Self.listenerTag) }
        try ctl(EPOLL_CTL_ADD, control.wakeFD, EPOLLIN.rawValue, Self.wakeTag)
    }

    deinit {
        filePool.shutDown()  // (a no-op after a normal end of `run`)
        if listenFD >= 0 { closeDescriptor(listenFD) }
        closeDescriptor(epfd)
        events.deallocate()
        iov.deallocate()
        discard.deallocate()
        registered.deallocate()
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
            // epoll_wait cannot say beforehand whether it will sleep: changes are published before every
            // wait that follows them (the rate is bounded only on io_uring, which can look at its queue).
            core.publishStatsBeforeSleeping(control)
            let n = try syscall("epoll_wait") { () -> Int32 in
                let r = epoll_wait(epfd, events, Int32(maxEvents), waitTimeout())
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
            if executorRef._withUnsafeGuaranteedRef({ $0.runPending() }) { processDirty() }  // async connection tasks
            if !starved.isEmpty && pool.freeRecvCount > 0 { rearmStarved(); processDirty() }
            if acceptResume != 0, monotonicMillis() >= acceptResume, !core.stopping, listenFD >= 0 {
                acceptResume = 0
                try ctl(EPOLL_CTL_ADD, listenFD, EPOLLIN.rawValue, Self.listenerTag)
            }
            if core.stopping && core.abortAllIfDrainDeadlinePassed() { processDirty() }
            core.publishStats(control)
            if core.stopping && core.openCount == 0 && filePool.pendingFileOperations > 0 { filePool.cancelAllFileOperations() }
            if core.stopping && core.openCount == 0 && control.executor.shutDownIfIdle(force: core.drainDeadline == nil) { break }
        }
        filePool.shutDown()
        logger.debug("epoll loop finished", metadata: ["stats": "\(core.counters)"])
    }

    /// How long the next wait may sleep, in ms (-1: until an event).
    private func waitTimeout() -> Int32 {
        var timeoutMS: Int32 = -1
        if core.stopping {  // (drainDeadline is set only while stopping)
            timeoutMS = Self.tighten(timeoutMS, core.drainDeadline, now: ContinuousClock.now)
        }
        if acceptResume != 0 {
            let t = monotonicMillis()
            let ms = Int32(clamping: acceptResume > t ? acceptResume - t + 1 : 1)
            timeoutMS = timeoutMS < 0 ? ms : min(timeoutMS, ms)
        }
        if let ms = core.millisUntilNextTimer() {
            let t = Int32(min(ms, 60_000))
            timeoutMS = timeoutMS < 0 ? t : min(timeoutMS, t)
        }
        if let t = executorRef._withUnsafeGuaranteedRef({ $0.waitLimitMillis(stopping: core.stopping) }) { timeoutMS = timeoutMS < 0 ? t : min(timeoutMS, t) }
        return timeoutMS
    }

    @inline(__always) private static func tighten(_ timeoutMS: Int32, _ deadline: ContinuousClock.Instant?, now: ContinuousClock.Instant) -> Int32 {
        guard let d = deadline else { return timeoutMS }
        let left = now.duration(to: d)
        let ms = Int32(clamping: max(1, left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000 + 1))
        return timeoutMS < 0 ? ms : min(timeoutMS, ms)
    }

    @inline(__always) func tag(_ slot: Int32) -> UInt64 {
        UserData(.recv, slot: slot, generation: core.states[Int(slot)].generation).raw
    }

    func processDirty() { core.drainDirty { handlers.service($0, io: self) } }

    /// Serves connections that found no free receive chunk, oldest first, straight away (not through
    /// the epoll ready list, where newly readable connections would overtake them again and again).
    private func rearmStarved() {
        var k = 0
        while k < starved.count && pool.freeRecvCount > 0 {
            let s = starved[k]
            k += 1
            guard core.states[Int(s)].receive == .starved else { continue }
            core.states[Int(s)].unstarve()
            core.counters.recvRearms += 1
            core.states[Int(s)].receive = .armed
            readReady(s)  // may park it again (at the end) if the chunks ran out once more
        }
        starved.removeFirst(k)
    }

    private func beginStop() {
        guard !core.stopping else { return }
        if listenFD >= 0 {
            closeDescriptor(listenFD)
            listenFD = -1
        }
        core.beginStop(drainTimeout: config.drainTimeout)
        starved.removeAll(keepingCapacity: true)
    }
}
