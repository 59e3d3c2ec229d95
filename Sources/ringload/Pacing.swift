import Glibc

/// A fixed schedule of instants `interval` apart on CLOCK_MONOTONIC, for work that claims a rate:
/// each wait ends at the next scheduled instant (an absolute sleep, then a short spin), so the time
/// the work itself takes does not stretch the period, and how late each instant was met is kept.
final class Schedule {
    let interval: UInt64
    private var next: UInt64
    private(set) var ticks = 0
    private(set) var lateMax: UInt64 = 0
    private var lateSum: UInt64 = 0

    init(interval: UInt64) {
        self.interval = max(1, interval)
        next = nowNanos() + self.interval
    }

    /// Waits for the next scheduled instant (returns at once if it has passed; the schedule does not
    /// shift: a late tick is followed by on-time ones).
    func waitForNext() {
        sleepUntil(next)
        let late = nowNanos() &- next
        lateMax = max(lateMax, late)
        lateSum &+= late
        ticks += 1
        next &+= interval
    }

    /// "N ticks, late mean/max µs".
    var summary: String {
        let mean = ticks > 0 ? Double(lateSum) / Double(ticks) / 1000 : 0
        return "\(ticks) ticks, " + String(format: "late mean %.0f µs, max %.0f µs", mean, Double(lateMax) / 1000)
    }
}

/// Sleeps until `deadline` (ns, CLOCK_MONOTONIC): an absolute clock_nanosleep to `spin` before it,
/// then a spin, so neither timer slack nor the sleep's own wake-up cost shows. Returns at once when
/// the deadline has passed.
func sleepUntil(_ deadline: UInt64, spin: UInt64 = 50_000) {
    if deadline > nowNanos() &+ spin {
        let wake = deadline - spin
        var ts = timespec(tv_sec: Int(wake / 1_000_000_000), tv_nsec: Int(wake % 1_000_000_000))
        while clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nil) == EINTR {}
    }
    while nowNanos() < deadline {}
}
