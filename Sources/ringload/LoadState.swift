import Glibc
import Histogram
import Synchronization

/// Nanoseconds on CLOCK_MONOTONIC.
@inline(__always) func nowNanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}

/// What every load connection of one run shares: the measurement window, the histogram and the
/// counters.
///
/// Confinement: everything but the atomics is touched only on the client loop's thread while the loop
/// runs, and read by the main thread only after the loop has been joined (`RunningServer.wait`), which
/// orders those accesses. That is why the class may be marked `@unchecked Sendable`.
final class LoadState: @unchecked Sendable {
    // Configuration (immutable).
    let size: Int
    let pipeline: Int
    let connections: Int
    /// Open loop: total requests per second over all connections (nil: closed loop).
    let rate: Double?
    let timeoutNanos: UInt64
    let request: [UInt8]          // HTTP: the request bytes
    let expectStatus: Int
    var expectBodyLength: Int?    // HTTP: learned from the first response unless given

    // Window: completions in [start, end) count; set by the main thread once every connection is up.
    let windowStart = Atomic<UInt64>(.max)
    let windowEnd = Atomic<UInt64>(.max)
    /// Set by the main thread when the run is over: connections stop sending.
    let stopping = Atomic<Bool>(false)
    /// Completed in the window (for the live progress line).
    let completedInWindow = Atomic<Int>(0)

    // Loop-thread state.
    var histogram: Histogram<UInt64>
    /// Open loop: how late each send left, actual minus intended send time (ns), for sends intended
    /// inside the window.
    var lateness: Histogram<UInt64>
    var bytesInWindow = 0
    var corrupt = 0
    var resets = 0
    var timeouts = 0
    var backlogged = 0
    var badStatus = 0
    var nextConnectionIndex = 0
    /// Open loop: why the pacer could not get what was asked (e.g. real-time priority refused).
    var pacerNote: String?
    /// Open loop over TLS: handshakes done, resumed, failed (handshakes or records), the first failure.
    var tlsHandshakes = 0
    var tlsResumed = 0
    var tlsFailures = 0
    var tlsNote: String?

    init(size: Int, pipeline: Int, connections: Int, rate: Double?, timeout: Double,
         request: [UInt8] = [], expectStatus: Int = 200, expectBodyLength: Int? = nil) {
        histogram = Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: 120_000_000_000,
                                      numberOfSignificantValueDigits: .three)
        lateness = Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: 120_000_000_000,
                                     numberOfSignificantValueDigits: .three)
        self.size = size
        self.pipeline = pipeline
        self.connections = connections
        self.rate = rate.flatMap { $0 > 0 ? $0 : nil }
        timeoutNanos = UInt64(timeout * 1e9)
        self.request = request
        self.expectStatus = expectStatus
        self.expectBodyLength = expectBodyLength
    }

    /// Records one completed exchange (its latency measured from its intended or actual send time).
    @inline(__always) func complete(sentAt: UInt64, now: UInt64, bytes: Int) {
        guard now >= windowStart.load(ordering: .relaxed) && now < windowEnd.load(ordering: .relaxed) else { return }
        _ = histogram.record(now > sentAt ? now - sentAt : 1)
        bytesInWindow += bytes
        completedInWindow.add(1, ordering: .relaxed)
    }

    /// Records how late a send left (open loop), if it was intended inside the window.
    @inline(__always) func sent(intended: UInt64, actual: UInt64) {
        guard intended >= windowStart.load(ordering: .relaxed) && intended < windowEnd.load(ordering: .relaxed) else { return }
        _ = lateness.record(actual > intended ? actual - intended : 0)
    }

    /// Counts an open-loop send that could not be issued (window full), if intended inside the window.
    @inline(__always) func backlog(intended: UInt64) {
        guard intended >= windowStart.load(ordering: .relaxed) && intended < windowEnd.load(ordering: .relaxed) else { return }
        backlogged += 1
    }

    var isStopping: Bool { stopping.load(ordering: .relaxed) }
}
