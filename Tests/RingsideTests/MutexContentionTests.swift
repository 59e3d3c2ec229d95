@testable import Ringside
@testable import RingsideHTTP
import MetricsTestKit
import RingsideService
import Glibc
import Synchronization
import Testing

/// Every lock of the engine (each a `PthreadMutex` since issue 16; they were `Synchronization.Mutex`),
/// taken from two threads at once: the values stay consistent (the lock works), and under
/// `--sanitize=thread` each site's contended path runs on every sanitizer run. With
/// `Synchronization.Mutex`, Locked and HTTPDate's cache produced false TSan reports here (its contended
/// path is invisible to TSan); with `PthreadMutex` there are none and scripts/sanitizers/tsan.supp is
/// empty, so a report here would be a real race.
@Suite(.timeLimit(.minutes(1)))
struct MutexContentionTests {
    /// Runs `body(thread, iteration)` on two pthreads, `count` times each, and joins them.
    private func onTwoThreads(_ count: Int, _ body: @escaping @Sendable (Int, Int) -> Void) throws {
        let threads = (0..<2).map { t in
            LoopThread(name: "contention-\(t)") { for i in 0..<count { body(t, i) } }
        }
        for t in threads { try t.start() }
        for t in threads { t.join() }
    }

    @Test func lockedCounts() throws {
        let counter = Locked(0)
        try onTwoThreads(20_000) { _, _ in counter.withLock { $0 += 1 } }
        #expect(counter.value == 40_000)
    }

    @Test func loopControlPublishesWholeStats() throws {
        let control = try LoopControl()
        let torn = Locked(0)
        try onTwoThreads(200_000) { t, i in
            if t == 0 {
                var s = ServerStats()
                s.connectionsAccepted = i
                s.connectionsClosed = i
                withUnsafePointer(to: s) { control.publish(from: $0) }
            } else {
                let s = control.stats
                if s.connectionsAccepted != s.connectionsClosed { torn.withLock { $0 += 1 } }
            }
        }
        #expect(torn.value == 0, "stats read half-published")
        #expect(control.stats.connectionsAccepted == 199_999)
    }

    @Test func httpDateFromTwoThreads() throws {
        let bad = Locked(0)
        try onTwoThreads(100_000) { _, _ in
            // Lock-free (a sequence lock): every read is one whole date, of this second or the two before.
            let got = withUnsafeBytes(of: HTTPDate.current()) { Array($0[0..<30]) }
            var ts = timespec()
            clock_gettime(CLOCK_REALTIME, &ts)
            let ok = got[29] == 0 && (0...2).contains { back in
                var t = ts.tv_sec - back
                var parts = tm()
                gmtime_r(&t, &parts)
                var text = [CChar](repeating: 0, count: 32)
                _ = strftime(&text, 32, "%a, %d %b %Y %H:%M:%S GMT", &parts)
                return text[0..<29].map { UInt8(bitPattern: $0) } == Array(got[0..<29])
            }
            if !ok { bad.withLock { $0 += 1 } }
        }
        #expect(bad.value == 0)
    }

    @Test func metricsReportFromTwoThreads() throws {
        let test = TestMetrics()
        let box = AtomicBox()
        let metrics = RingsideMetrics(backend: .epoll, options: .init(factory: test)) {
            var s = ServerStats()
            s.connectionsAccepted = box.next()
            return s
        }
        try onTwoThreads(20_000) { _, _ in metrics.report() }
        // Each sample is taken under the lock, so the increments add up to the last sample exactly.
        let total = test.counterTotal(label: "ringside_connections_accepted_total", dimensions: [("backend", "epoll")])
        #expect(total == Int64(box.current))
    }
}

/// A shared increasing counter (the stats source of the metrics test).
private final class AtomicBox: Sendable {
    private let value = Atomic<Int>(0)
    func next() -> Int { value.wrappingAdd(1, ordering: .relaxed).newValue }
    var current: Int { value.load(ordering: .relaxed) }
}
