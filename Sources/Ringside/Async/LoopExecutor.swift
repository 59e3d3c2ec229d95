import Glibc
import Synchronization

/// A `TaskExecutor` whose jobs run on one event loop's thread, between the loop's I/O batches.
///
/// Tasks created with this executor as their preference (`Task(executorPreference:)`, which
/// ``RingsideServer/startAsync(configuration:requiresAuthentication:inboundBufferLimit:logger:_:)``
/// does for every connection) resume on the loop thread: a resumption caused by the loop itself (bytes
/// arrived, the queue drained) costs no thread hop and no lock.
///
/// - Jobs enqueued on the loop thread go to a loop-local queue (no lock, no allocation once warm).
/// - Jobs enqueued from other threads go to a `Mutex`-protected queue and wake the loop through its
///   eventfd (one write per batch of foreign jobs).
/// - The loop runs queued jobs after every batch of handler calls, until the local queue is empty,
///   and does not sleep while jobs are pending.
/// - Once the loop has stopped, jobs still arriving (a task that outlived the server) are forwarded to
///   the global concurrent executor.
public final class LoopExecutor: TaskExecutor, @unchecked Sendable {
    // @unchecked Sendable. Invariants:
    // - `jobs`, `jobHead`, `jobCount`, `jobCapacity`, `spareJobs` and `spareCalls` are touched only on
    //   the loop thread (`isCurrent`), or after the loop has ended (`deinit`, `abandon`).
    // - `foreign` is the only state shared with other threads; `owner`, `foreignPending` and
    //   `liveTasks` are atomics.
    // - `wakeFD` is written only under the `foreign` lock and only while `!shutDown`; the owning
    //   `LoopControl` shuts this executor down before it closes the descriptor.

    private let wakeFD: Int32
    /// The loop thread (`pthread_t`), 0 while unbound or after shutdown.
    private let owner = Atomic<UInt>(0)

    // Loop-local FIFO of jobs: a ring buffer that only grows (power-of-two capacity).
    @exclusivity(unchecked) private var jobs: UnsafeMutablePointer<UnownedJob>
    @exclusivity(unchecked) private var jobCapacity = 256
    @exclusivity(unchecked) private var jobHead = 0
    @exclusivity(unchecked) private var jobCount = 0

    private struct Foreign {
        var jobs: [UnownedJob] = []
        var calls: [@Sendable () -> Void] = []
        var wakeWritten = false
        var shutDown = false
    }
    private let foreign = PthreadMutex(Foreign())
    private let foreignPending = Atomic<Bool>(false)
    private var spareJobs: [UnownedJob] = []
    private var spareCalls: [@Sendable () -> Void] = []

    /// Connection tasks started on this loop and not yet finished.
    let liveTasks = Atomic<Int>(0)

    init(wakeFD: Int32) {
        self.wakeFD = wakeFD
        jobs = .allocate(capacity: jobCapacity)
        foreign.withLock { $0.jobs.reserveCapacity(64); $0.calls.reserveCapacity(16) }
        spareJobs.reserveCapacity(64)
        spareCalls.reserveCapacity(16)
    }

    deinit {
        abandon()
        jobs.deallocate()
    }

    // MARK: TaskExecutor

    public func enqueue(_ job: consuming ExecutorJob) {
        let j = UnownedJob(job)
        if isCurrent {
            pushLocal(j)
            return
        }
        let forward = foreign.withLock { f -> Bool in
            if f.shutDown { return true }
            f.jobs.append(j)
            wakeLocked(&f)
            return false
        }
        if forward { globalConcurrentExecutor.enqueue(ExecutorJob(j)) }
    }

    // MARK: loop side

    /// Whether the calling thread is this executor's loop thread (while the loop runs).
    @inline(__always) public var isCurrent: Bool {
        let o = owner.load(ordering: .relaxed)
        return o != 0 && o == UInt(pthread_self())
    }

    /// The executor of the loop running on the calling thread, if any (for handlers that start tasks
    /// on their connection's loop, such as RingsideHTTP's async routes).
    public static var current: LoopExecutor? {
        guard let p = pthread_getspecific(currentExecutorKey) else { return nil }
        return Unmanaged<LoopExecutor>.fromOpaque(p).takeUnretainedValue()
    }

    /// Binds this executor to the calling (loop) thread. Called once, at the start of the loop's `run()`.
    func bindToCurrentThread() {
        owner.store(UInt(pthread_self()), ordering: .relaxed)
        pthread_setspecific(currentExecutorKey, Unmanaged.passUnretained(self).toOpaque())
    }

    /// Whether the loop has stopped (jobs now go to the global executor).
    var isStopped: Bool { foreign.withLock { $0.shutDown } }

    /// Whether jobs are waiting (the loop must not block in its wait).
    @inline(__always) var hasPendingJobs: Bool {
        jobCount > 0 || foreignPending.load(ordering: .acquiring)
    }

    /// How long the loop may block in its wait, as far as this executor is concerned: 0 with jobs
    /// pending; 1 ms while stopping with tasks still alive (their wake-ups may come from other threads
    /// and io_uring no longer watches the eventfd then); nil: no limit.
    @inline(__always) func waitLimitMillis(stopping: Bool) -> Int32? {
        if hasPendingJobs { return 0 }
        if stopping && liveTasks.load(ordering: .relaxed) > 0 { return 1 }
        return nil
    }

    /// `waitLimitMillis` in nanoseconds (io_uring).
    @inline(__always) func waitLimitNanos(stopping: Bool) -> Int64? {
        waitLimitMillis(stopping: stopping).map { Int64($0) * 1_000_000 }
    }

    /// Runs every pending job, including jobs enqueued by the jobs it runs, until none is left.
    /// Returns whether it ran anything (the caller then services the dirty list again: jobs call
    /// `Connection` methods). Loop thread only.
    @discardableResult
    func runPending() -> Bool {
        var ran = false
        if foreignPending.load(ordering: .acquiring) { ran = takeForeign() }
        guard jobCount > 0 else { return ran }
        let me = asUnownedTaskExecutor()
        while jobCount > 0 {
            let j = jobs[jobHead]
            jobHead = (jobHead + 1) & (jobCapacity - 1)
            jobCount -= 1
            j.runSynchronously(on: me)
            if jobCount == 0 && foreignPending.load(ordering: .acquiring) { _ = takeForeign() }
        }
        return true
    }

    /// Stops the executor when nothing is left to run: no queued job and no live task (or `force`,
    /// once the server's drain deadline has passed). Afterwards jobs go to the global executor.
    /// Returns whether it stopped. Loop thread only; the loop must not run jobs afterwards.
    func shutDownIfIdle(force: Bool) -> Bool {
        guard jobCount == 0 else { return false }
        guard force || liveTasks.load(ordering: .acquiring) == 0 else { return false }
        let stopped = foreign.withLock { f -> Bool in
            guard f.jobs.isEmpty && f.calls.isEmpty else { return false }
            f.shutDown = true
            return true
        }
        if stopped {
            owner.store(0, ordering: .relaxed)
            pthread_setspecific(currentExecutorKey, nil)
        }
        return stopped
    }

    /// Runs `body` on the loop thread (after the current batch), from any thread. Returns false (and
    /// does not run it) when the loop has stopped.
    @discardableResult
    func execute(_ body: @escaping @Sendable () -> Void) -> Bool {
        foreign.withLock { f -> Bool in
            if f.shutDown { return false }
            f.calls.append(body)
            wakeLocked(&f)
            return true
        }
    }

    /// The loop has ended (normally or by an error): forward whatever is left to the global executor
    /// and refuse the loop from now on. Idempotent; called by `LoopControl.deinit` before the eventfd
    /// is closed.
    func abandon() {
        let (left, _) = foreign.withLock { f -> ([UnownedJob], [@Sendable () -> Void]) in
            f.shutDown = true
            defer { f.jobs.removeAll(); f.calls.removeAll() }
            return (f.jobs, f.calls)
        }
        owner.store(0, ordering: .relaxed)
        for j in left { globalConcurrentExecutor.enqueue(ExecutorJob(j)) }
        while jobCount > 0 {
            let j = jobs[jobHead]
            jobHead = (jobHead + 1) & (jobCapacity - 1)
            jobCount -= 1
            globalConcurrentExecutor.enqueue(ExecutorJob(j))
        }
    }

    // MARK: private

    @inline(__always) private func wakeLocked(_ f: inout Foreign) {
        foreignPending.store(true, ordering: .releasing)
        guard !f.wakeWritten else { return }
        f.wakeWritten = true
        var one: UInt64 = 1
        _ = withUnsafeBytes(of: &one) { Glibc.write(wakeFD, $0.baseAddress, 8) }
    }

    /// Moves foreign jobs to the local queue and runs foreign calls. Loop thread only.
    private func takeForeign() -> Bool {
        foreign.withLock { f in
            swap(&f.jobs, &spareJobs)
            swap(&f.calls, &spareCalls)
            f.wakeWritten = false
            foreignPending.store(false, ordering: .relaxed)
        }
        let any = !spareJobs.isEmpty || !spareCalls.isEmpty
        for j in spareJobs { pushLocal(j) }
        spareJobs.removeAll(keepingCapacity: true)
        for c in spareCalls { c() }
        spareCalls.removeAll(keepingCapacity: true)
        return any
    }

    @inline(__always) private func pushLocal(_ j: UnownedJob) {
        if jobCount == jobCapacity { grow() }
        jobs[(jobHead + jobCount) & (jobCapacity - 1)] = j
        jobCount += 1
    }

    private func grow() {
        let bigger = UnsafeMutablePointer<UnownedJob>.allocate(capacity: jobCapacity * 2)
        for k in 0..<jobCount { (bigger + k).initialize(to: jobs[(jobHead + k) & (jobCapacity - 1)]) }
        jobs.deallocate()
        jobs = bigger
        jobCapacity *= 2
        jobHead = 0
    }
}

/// Thread-specific slot holding the loop executor of the loop running on a thread (unretained: the
/// loop's `LoopControl` owns it and outlives the loop).
private let currentExecutorKey: pthread_key_t = {
    var key = pthread_key_t()
    pthread_key_create(&key, nil)
    return key
}()
