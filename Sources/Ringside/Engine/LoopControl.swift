import CLiburing
import Glibc
import Synchronization

/// What the owning thread and a loop share: a stop request, an eventfd that wakes the loop, the
/// published counters, and the loop's task executor (async connections). Everything else in a loop is
/// confined to its thread.
final class LoopControl: Sendable {
    let wakeFD: Int32
    private let stopFlag = Atomic<Bool>(false)
    private let published = PthreadMutex(ServerStats())
    /// Runs async connection tasks on the loop thread; the backends run its jobs after every batch of
    /// handler calls (`runPending`), never block while it has jobs (`waitLimit…`), and stop it before
    /// leaving `run()` (`shutDownIfIdle`).
    let executor: LoopExecutor

    init() throws(SyscallError) {
        wakeFD = try syscall("eventfd") { eventfd(0, Int32(EFD_CLOEXEC | EFD_NONBLOCK)) }
        executor = LoopExecutor(wakeFD: wakeFD)
    }

    deinit {
        executor.abandon()  // before the eventfd it writes is closed (it may outlive us, held by tasks)
        closeDescriptor(wakeFD)
    }

    var stopRequested: Bool { stopFlag.load(ordering: .acquiring) }

    /// Asks the loop to stop gracefully; safe from any thread, idempotent.
    func requestStop() {
        stopFlag.store(true, ordering: .releasing)
        var one: UInt64 = 1
        _ = withUnsafeBytes(of: &one) { Glibc.write(wakeFD, $0.baseAddress, 8) }
    }

    /// Drains the eventfd counter (epoll wakes, and io_uring after its read completes).
    func drainWake() {
        var v: UInt64 = 0
        _ = withUnsafeMutableBytes(of: &v) { Glibc.read(wakeFD, $0.baseAddress, 8) }
    }

    /// Copies the loop's counters straight into the shared figures under the lock (one copy, not a
    /// copy into a temporary and another under the lock, as passing the struct by value compiles to).
    func publish(from counters: UnsafePointer<ServerStats>) { published.withLock { $0 = counters.pointee } }
    var stats: ServerStats { published.withLock { $0 } }
}

/// The event-loop backend interface: both backends drive the same `LoopCore` and `HandlerTable`.
protocol EventLoopBackend: AnyObject {
    /// The name logged and printed (`uring` or `epoll`).
    var name: String { get }
    /// A one-line description of the kernel features and sizes in use.
    var summary: String { get }
    /// Runs until a stop was requested and every connection and operation has finished.
    func run() throws
}
