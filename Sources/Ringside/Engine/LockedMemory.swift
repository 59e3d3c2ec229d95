import CLiburing
import Glibc
import Logging

/// The locked memory (RLIMIT_MEMLOCK) a whole server needs, decided once before any loop starts: the
/// limit is per user, so N loops need N times one loop's share, and a server must not start some loops
/// on io_uring and find the limit exhausted for the next.
///
/// What counts, per loop: the ring's own memory (SQEs, the CQ and SQ rings: an unprivileged user's
/// io_uring_setup fails with ENOMEM when they do not fit), the provided-buffer ring (its pages are
/// pinned) and, when registered, the fixed buffers (the send chunks: what file sends read into and
/// zero-copy sends send from; pages covering them, plus one for an unaligned start). A zero-copy send
/// (`zeroCopySendThreshold`) reads only those registered pages, already pinned and charged here, so it
/// adds nothing; it is never used without registration.
struct LockedMemoryPlan {
    let needed: UInt64
    let limit: UInt64

    static func page() -> UInt64 { UInt64(sysconf(Int32(_SC_PAGESIZE))) }

    /// One loop's share with or without fixed buffers.
    static func perLoop(_ c: ServerConfiguration, fixedBuffers: Bool) -> UInt64 {
        let p = page()
        func pages(_ b: UInt64) -> UInt64 { (b + p - 1) / p * p }
        let sq = UInt64(c.ringEntries).nextPowerOfTwo
        let cq = c.completionEntries == 0 ? sq * 8 : UInt64(c.completionEntries).nextPowerOfTwo
        let rings = pages(sq * 64) + pages(cq * 16 + sq * 4 + 64 * 4)  // SQEs; CQEs + SQ array + headers
        let provided = pages(UInt64(c.receiveBuffers) * 16)
        let send = UInt64(c.sendBufferSize * c.sendBuffers)
        return rings + provided + (fixedBuffers ? pages(send) + p : 0)
    }

    /// Fits the configuration to the limit (raising the soft limit towards the hard one where allowed):
    /// `auto` first registers no fixed buffers, then serves every loop on epoll, and logs the decision once;
    /// `uring` throws before anything starts, with the numbers.
    static func fit(_ config: inout ServerConfiguration, logger: Logger) throws(RingSetupError) {
        guard config.backend != .epoll, config.injectRingSetupFailure == nil else { return }
        let loops = UInt64(config.threads)
        let fixed = config.registerBuffers && !config.disabledFeatures.contains(.registeredBuffers)
        let need = loops * perLoop(config, fixedBuffers: fixed)
        let limit = rs_raise_memlock_limit(need)
        if limit == UInt64.max || need <= limit { return }
        let kib = { (b: UInt64) in "\(b / 1024) KiB" }
        let withoutFixed = loops * perLoop(config, fixedBuffers: false)
        let what = "\(config.threads) loop\(config.threads == 1 ? "" : "s") need \(kib(need)) of locked memory; RLIMIT_MEMLOCK is \(kib(limit))"
        guard config.backend == .auto else {
            throw RingSetupError(errno: .noMemory, detail: "planning locked memory: \(what) (`ulimit -l \((need + 1023) / 1024)` would fit)")
        }
        if fixed && withoutFixed <= limit {
            config.registerBuffers = false
            logger.notice("locked memory: \(what): registering no fixed buffers (\(kib(withoutFixed)) needed)")
            return
        }
        config.backend = .epoll
        logger.warning("locked memory: \(what) even without fixed buffers (\(kib(withoutFixed))): serving every loop on epoll (`ulimit -l \((withoutFixed + 1023) / 1024)` would fit io_uring)")
    }
}

private extension UInt64 {
    var nextPowerOfTwo: UInt64 { self <= 1 ? 1 : 1 << (64 - (self - 1).leadingZeroBitCount) }
}
