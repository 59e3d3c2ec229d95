extension Duration {
    /// The most milliseconds `wholeMilliseconds` returns: 2^53 (about 285,000 years), so a clock reading
    /// in milliseconds plus it cannot overflow a UInt64.
    static let saturatedMilliseconds: UInt64 = 1 << 53

    /// Whole milliseconds, negative durations as 0, saturating at ``saturatedMilliseconds`` (a handler may
    /// pass any `Duration` to `Connection.setTimer(after:)`; none may trap or wrap a deadline).
    @inline(__always) var wholeMilliseconds: UInt64 {
        let c = components
        guard c.seconds >= 0 else { return 0 }
        // 2^43 s x 1000 < 2^53: below it the arithmetic cannot overflow.
        guard c.seconds < 1 << 43 else { return Self.saturatedMilliseconds }
        let ms = UInt64(c.seconds) * 1000 + UInt64(max(0, c.attoseconds)) / 1_000_000_000_000_000
        return min(ms, Self.saturatedMilliseconds)
    }

    /// Whole microseconds, negative durations as 0, saturating at `UInt32.max` (about 71 minutes):
    /// the kernel's wait bounds (minimum-wait timeout, the send wait's timespec) are 32-bit there.
    @inline(__always) var wholeMicroseconds: UInt32 {
        let c = components
        guard c.seconds >= 0 else { return 0 }
        guard c.seconds < 1 << 32 else { return .max }
        return UInt32(clamping: c.seconds * 1_000_000 + max(0, c.attoseconds) / 1_000_000_000_000)
    }
}
