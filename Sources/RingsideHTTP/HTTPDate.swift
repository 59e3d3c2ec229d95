import Glibc
import Ringside

/// The `Date` header value (IMF-fixdate), formatted at most once per second and shared by every
/// connection: responses copy 29 cached bytes instead of formatting a date.
enum HTTPDate {
    private struct Cached: ~Copyable {
        var second: Int = -1
        var bytes: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)  // 29 bytes used
    }
    private static let cache = PthreadMutex(Cached())

    /// Calls `body` with the current date's 29 bytes.
    static func withCurrent<R>(_ body: (UnsafeRawBufferPointer) -> R) -> R {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        let now = ts.tv_sec
        let bytes = cache.withLock { c in
            if c.second != now {
                c.second = now
                var t = now
                var tmv = tm()
                gmtime_r(&t, &tmv)
                withUnsafeMutableBytes(of: &c.bytes) { out in
                    _ = strftime(out.baseAddress!.assumingMemoryBound(to: CChar.self), 32, "%a, %d %b %Y %H:%M:%S GMT", &tmv)
                }
            }
            return c.bytes
        }
        return withUnsafeBytes(of: bytes) { body(UnsafeRawBufferPointer(rebasing: $0[0..<29])) }
    }
}
