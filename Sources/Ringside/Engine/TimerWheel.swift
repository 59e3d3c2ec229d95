import Glibc

/// Milliseconds on CLOCK_MONOTONIC (vDSO: no syscall).
@inline(__always) func monotonicMillis() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1000 + UInt64(ts.tv_nsec) / 1_000_000
}

/// A hashed timer wheel with 1 ms resolution: one timer per connection slot, stored intrusively in
/// per-slot arrays (no allocation per timer, O(1) arm and cancel). The loop waits no longer than the
/// next non-empty bucket (io_uring: the wait's own timeout, epoll: epoll_wait's), so thousands of
/// deadlines cost one timeout and no thread.
///
/// Invariants: a slot is linked into at most one bucket, `bucket(deadline)`; `armed` counts linked slots.
struct TimerWheel: ~Copyable {
    static let buckets = 1024
    private let heads: UnsafeMutablePointer<Int32>       // bucket -> first slot
    private let next: UnsafeMutablePointer<Int32>        // slot -> next slot in bucket
    private let prev: UnsafeMutablePointer<Int32>        // slot -> previous slot (-1: head)
    private let deadline: UnsafeMutablePointer<UInt64>   // slot -> due time (ms); 0: not armed
    private(set) var armed = 0
    /// All buckets before this tick have been processed.
    private var processed: UInt64
    /// A lower bound of the earliest armed deadline (exact after `expire` rescans).
    private var earliest: UInt64 = .max

    init(capacity: Int) {
        heads = .allocate(capacity: Self.buckets); heads.initialize(repeating: -1, count: Self.buckets)
        next = .allocate(capacity: capacity); next.initialize(repeating: -1, count: capacity)
        prev = .allocate(capacity: capacity); prev.initialize(repeating: -1, count: capacity)
        deadline = .allocate(capacity: capacity); deadline.initialize(repeating: 0, count: capacity)
        processed = monotonicMillis()
    }

    deinit { heads.deallocate(); next.deallocate(); prev.deallocate(); deadline.deallocate() }

    @inline(__always) func isArmed(_ slot: Int32) -> Bool { deadline[Int(slot)] != 0 }
    /// When `slot`'s timer is due (0: not armed).
    @inline(__always) func due(_ slot: Int32) -> UInt64 { deadline[Int(slot)] }

    mutating func arm(_ slot: Int32, at due: UInt64) {
        cancel(slot)
        let due = max(due, processed)  // never behind the processing cursor
        let b = Int(due % UInt64(Self.buckets))
        let i = Int(slot)
        deadline[i] = due
        prev[i] = -1
        next[i] = heads[b]
        if heads[b] >= 0 { prev[Int(heads[b])] = slot }
        heads[b] = slot
        armed += 1
        if due < earliest { earliest = due }
    }

    mutating func cancel(_ slot: Int32) {
        let i = Int(slot)
        guard deadline[i] != 0 else { return }
        let b = Int(deadline[i] % UInt64(Self.buckets))
        if prev[i] >= 0 { next[Int(prev[i])] = next[i] } else { heads[b] = next[i] }
        if next[i] >= 0 { prev[Int(next[i])] = prev[i] }
        next[i] = -1; prev[i] = -1; deadline[i] = 0
        armed -= 1
    }

    /// Unlinks every timer due at or before `now` and writes its slot into `due` (room for one entry
    /// per slot: a slot has at most one timer). Returns how many. Callers fire them afterwards, outside
    /// this mutation, so a handler may re-arm its timer.
    mutating func expire(now: UInt64, into due: UnsafeMutablePointer<Int32>) -> Int {
        guard armed > 0 else { processed = now; earliest = .max; return 0 }
        guard now >= earliest else { processed = now; return 0 }  // nothing can be due yet
        var count = 0
        let span = min(now &- processed &+ 1, UInt64(Self.buckets))
        var t = now &+ 1 &- span
        while t <= now {
            let b = Int(t % UInt64(Self.buckets))
            var s = heads[b]
            while s >= 0 {
                let n = next[Int(s)]
                if deadline[Int(s)] <= now {
                    cancel(s)
                    due[count] = s
                    count += 1
                }
                s = n
            }
            t += 1
        }
        processed = now + 1
        earliest = scanEarliest(now: now)
        return count
    }

    /// The earliest armed deadline (absolute milliseconds), or nil.
    var nextDue: UInt64? { armed > 0 ? earliest : nil }

    private func scanEarliest(now: UInt64) -> UInt64 {
        guard armed > 0 else { return .max }
        var best = UInt64.max
        for k in 0..<UInt64(Self.buckets) {
            let b = Int((now &+ k) % UInt64(Self.buckets))
            var s = heads[b]
            while s >= 0 {
                best = min(best, deadline[Int(s)])
                s = next[Int(s)]
            }
            if best <= now &+ k { break }
        }
        return best
    }
}
