import Glibc
import Synchronization

/// The `Date` header value (IMF-fixdate), formatted at most once per second and shared by every
/// connection of every loop: a response copies 29 cached bytes instead of formatting a date.
///
/// The cache is a sequence lock, so a response takes no lock: a reader loads the sequence, the
/// second and the bytes, and uses them if the sequence was even and has not moved; the loop that
/// first sees a new second formats it (after claiming the sequence: odd while it writes). A reader
/// that finds a write in progress, or loses the claim, formats the date itself for that response.
/// The clock is CLOCK_REALTIME_COARSE (a vDSO read of the last tick, no TSC read): the header turns
/// over at most one tick (≤ 4 ms) after the second does, well inside its one-second resolution.
enum HTTPDate {
    // The cache: separate statics (Atomic is noncopyable, and a class holding them would be retained
    // and released around every use). The 29 bytes are kept in four words.
    private static let sequence = Atomic<UInt64>(0)
    private static let second = Atomic<Int>(-1)
    private static let w0 = Atomic<UInt64>(0), w1 = Atomic<UInt64>(0), w2 = Atomic<UInt64>(0), w3 = Atomic<UInt64>(0)

    /// Appends the current date's 29 bytes to `h`.
    static func append(to h: ByteBuffer) {
        let bytes = current()
        withUnsafeBytes(of: bytes) { h.append(UnsafeRawBufferPointer(rebasing: $0[0..<29])) }
    }

    /// The current date, in the first 29 of 32 bytes.
    static func current() -> (UInt64, UInt64, UInt64, UInt64) {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME_COARSE, &ts)
        let now = ts.tv_sec
        let s1 = sequence.load(ordering: .acquiring)
        if s1 & 1 == 0 {
            let cached = second.load(ordering: .relaxed)
            let bytes = (w0.load(ordering: .relaxed), w1.load(ordering: .relaxed),
                         w2.load(ordering: .relaxed), w3.load(ordering: .relaxed))
            atomicMemoryFence(ordering: .acquiring)  // the loads above before the re-check below
            if sequence.load(ordering: .relaxed) == s1 && cached == now { return bytes }
        }
        let bytes = format(now)
        if s1 & 1 == 0, sequence.compareExchange(expected: s1, desired: s1 &+ 1, ordering: .acquiring).exchanged {
            atomicMemoryFence(ordering: .releasing)  // the odd sequence before the stores below
            second.store(now, ordering: .relaxed)
            w0.store(bytes.0, ordering: .relaxed)
            w1.store(bytes.1, ordering: .relaxed)
            w2.store(bytes.2, ordering: .relaxed)
            w3.store(bytes.3, ordering: .relaxed)
            sequence.store(s1 &+ 2, ordering: .releasing)
        }
        return bytes
    }

    /// `now` (seconds since the epoch) as IMF-fixdate, in the first 29 of 32 bytes.
    private static func format(_ now: Int) -> (UInt64, UInt64, UInt64, UInt64) {
        var bytes: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
        var t = now
        var tmv = tm()
        gmtime_r(&t, &tmv)
        withUnsafeMutableBytes(of: &bytes) { out in
            _ = strftime(out.baseAddress!.assumingMemoryBound(to: CChar.self), 32, "%a, %d %b %Y %H:%M:%S GMT", &tmv)
        }
        return bytes
    }
}
