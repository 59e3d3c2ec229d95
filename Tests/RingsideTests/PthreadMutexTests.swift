@testable import Ringside
import Glibc
import Testing

/// PthreadMutex, the project's lock: mutual exclusion from two threads, a noncopyable value, a throwing
/// body (the lock is released on the way out), and results handed out of the lock. Under
/// `--sanitize=thread` (make sanitize) the contended case is what TSan must see without suppressions.
@Suite(.timeLimit(.minutes(1)))
struct PthreadMutexTests {
    private struct Pair: ~Copyable {
        var a = 0
        var b = 0
    }

    private struct Boom: Error, Equatable { let n: Int }

    @Test func twoThreadsKeepTheValueWhole() throws {
        let lock = PthreadMutex(Pair())
        let torn = PthreadMutex(0)
        let threads = (0..<2).map { t in
            LoopThread(name: "pthread-mutex-\(t)") {
                for _ in 0..<50_000 {
                    let whole = lock.withLock { p -> Bool in
                        let ok = p.a == p.b
                        p.a += 1
                        p.b += 1
                        return ok
                    }
                    if !whole { torn.withLock { $0 += 1 } }
                }
            }
        }
        for t in threads { try t.start() }
        for t in threads { t.join() }
        #expect(lock.withLock { $0.a } == 100_000)
        #expect(lock.withLock { $0.b } == 100_000)
        #expect(torn.withLock { $0 } == 0)
    }

    @Test func aThrowingBodyReleasesTheLock() {
        let lock = PthreadMutex(1)
        #expect(throws: Boom(n: 1)) {
            try lock.withLock { (v: inout Int) throws(Boom) -> Void in
                v = 2
                throw Boom(n: 1)
            }
        }
        // Taken again on the same thread: had the throw left it locked, this would deadlock (the test's
        // time limit reports it).
        #expect(lock.withLock { $0 } == 2)
    }

    @Test func heldExactlyWhileTheBodyRuns() throws {
        let lock = PthreadMutex(0)
        let ran = PthreadMutex(false)
        let probe = LoopThread(name: "pthread-mutex-probe") {
            lock.withLock { $0 += 1 }
            ran.withLock { $0 = true }
        }
        // Another thread asking for the lock while the body runs must wait until the body returns.
        let ranWhileHeld = try lock.withLock { (_: inout Int) throws(SyscallError) -> Bool in
            try probe.start()
            usleep(50_000)
            return ran.withLock { $0 }
        }
        probe.join()
        #expect(!ranWhileHeld)
        #expect(ran.withLock { $0 })
        #expect(lock.withLock { $0 } == 1)
    }
}
