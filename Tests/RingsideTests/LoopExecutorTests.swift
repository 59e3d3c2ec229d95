@testable import Ringside
import Glibc
import Testing

/// LoopExecutor's foreign queue under contention: calls handed over from other threads while the loop
/// drains them. Besides checking that every call runs exactly once and on the loop thread, this is the
/// case behind issue 16's ThreadSanitizer report on `wakeWritten`: a false report, from TSan not seeing
/// a contended `Synchronization.Mutex`. The queue's lock is now a `PthreadMutex`, which TSan sees, so
/// under `--sanitize=thread` this test contends it thousands of times with no suppression to hide a
/// real race.
@Suite(.timeLimit(.minutes(1)))
struct LoopExecutorTests {
    /// Loop-thread-only state (written only by calls the executor runs on the loop thread).
    final class LoopState: @unchecked Sendable {
        var ran = 0
        var offLoop = 0
        var loopThread = pthread_t()
    }

    @Test func foreignCallsRunOnceEachOnTheLoopThread() throws {
        let control = try LoopControl()
        let executor = control.executor
        let senders = 2, perSender = 10_000, total = senders * perSender
        let state = LoopState()
        let stopped = LockedFlag()
        // pthreads joined below (LoopThread), so reading the results afterwards is ordered for TSan too.
        let loop = LoopThread(name: "executor-test-loop") {
            state.loopThread = pthread_self()
            executor.bindToCurrentThread()
            let deadline = ContinuousClock.now + .seconds(40)
            while state.ran < total && ContinuousClock.now < deadline {
                if !executor.runPending() {
                    control.drainWake()
                    sched_yield()
                }
            }
            stopped.set(executor.shutDownIfIdle(force: false))
        }
        try loop.start()
        let refused = LockedCount()
        let senderThreads = (0..<senders).map { i in
            LoopThread(name: "executor-test-sender-\(i)") {
                for _ in 0..<perSender {
                    let accepted = executor.execute {
                        state.ran += 1
                        if pthread_equal(pthread_self(), state.loopThread) == 0 { state.offLoop += 1 }
                    }
                    if !accepted { refused.add() }
                }
            }
        }
        for t in senderThreads { try t.start() }
        for t in senderThreads { t.join() }
        loop.join()
        #expect(refused.value == 0, "execute refused calls while the loop ran")
        #expect(state.ran == total, "ran \(state.ran) of \(total) calls")
        #expect(state.offLoop == 0, "\(state.offLoop) calls ran off the loop thread")
        #expect(stopped.value, "the executor did not stop once idle")
        // After the stop, calls are refused (the caller must not wait for them).
        #expect(!executor.execute {})
    }
}

private final class LockedFlag: Sendable {
    private let flag = Locked(false)
    func set(_ v: Bool) { flag.withLock { $0 = v } }
    var value: Bool { flag.value }
}

private final class LockedCount: Sendable {
    private let count = Locked(0)
    func add() { count.withLock { $0 += 1 } }
    var value: Int { count.value }
}
