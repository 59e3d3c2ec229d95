import CLiburing
import Glibc

/// Why io_uring could not be set up, classified so `auto` can explain its fallback.
public struct RingSetupError: Error, Sendable, CustomStringConvertible {
    public let errno: Errno
    public let detail: String

    public var description: String {
        switch errno.rawValue {
        case ELIBACC:
            "io_uring not used: liburing could not be loaded (\(detail)); install liburing2 (Debian/Ubuntu) to use the io_uring backend"
        case ENOSYS:
            "io_uring refused: io_uring_setup returned ENOSYS (no io_uring in this kernel, or a seccomp filter blocks it, as container runtimes often do)"
        case EPERM:
            "io_uring refused: io_uring_setup returned EPERM (the kernel.io_uring_disabled sysctl is \(Self.sysctlValue()), or the process lacks permission)"
        case ENOMEM:
            "io_uring refused: ENOMEM while \(detail) (locked-memory limit RLIMIT_MEMLOCK is \(Self.memlockDescription()); raise it with `ulimit -l` or use smaller buffers)"
        default:
            "io_uring refused: \(detail): \(errno)"
        }
    }

    static func sysctlValue() -> String {
        guard let f = fopen("/proc/sys/kernel/io_uring_disabled", "r") else { return "unknown" }
        defer { fclose(f) }
        var v: Int32 = -1
        return withUnsafeMutablePointer(to: &v) { p in fscanf_int(f, p) } ? "\(v)" : "unknown"
    }

    static func memlockDescription() -> String {
        let v = rs_memlock_limit()
        return v == UInt64.max ? "unlimited" : "\(v / 1024) KiB"
    }
}

private func fscanf_int(_ f: UnsafeMutablePointer<FILE>, _ p: UnsafeMutablePointer<Int32>) -> Bool {
    var buf = [CChar](repeating: 0, count: 32)
    guard fgets(&buf, 32, f) != nil else { return false }
    p.pointee = atoi(buf)
    return true
}

/// One io_uring instance, owned by one event-loop thread.
///
/// Set up with SINGLE_ISSUER + DEFER_TASKRUN + SUBMIT_ALL where the kernel accepts them, dropping one
/// flag at a time on EINVAL (per-flag fallback), with a CQ larger than the SQ because multishot
/// operations post many completions per submission.
///
/// Must be created and used on the same thread (SINGLE_ISSUER, DEFER_TASKRUN).
final class Ring {
    let ring: UnsafeMutablePointer<io_uring>
    let setupFlags: UInt32
    let features: UInt32
    let sqEntries: UInt32
    let cqEntries: UInt32
    private let probe: UnsafeMutablePointer<io_uring_probe>?

    init(entries: UInt32, completionEntries: UInt32, inject: Errno?, disabled: KernelFeatures = []) throws(RingSetupError) {
        if let inject { throw RingSetupError(errno: inject, detail: "io_uring_setup (injected)") }
        ring = .allocate(capacity: 1)
        let cq = completionEntries == 0 ? entries * 8 : completionEntries
        let wanted: [UInt32] = [
            IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_SUBMIT_ALL,
            IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN,
            IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN,
            IORING_SETUP_SUBMIT_ALL,
            0,
        ]
        var masked: UInt32 = 0
        if disabled.contains(.deferTaskrun) { masked |= IORING_SETUP_DEFER_TASKRUN }
        if disabled.contains(.singleIssuer) { masked |= IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN }
        if disabled.contains(.coopTaskrun) { masked |= IORING_SETUP_COOP_TASKRUN }
        var lastError: Int32 = 0
        var chosen: UInt32? = nil
        var params = io_uring_params()
        for flags in wanted where flags & masked == 0 {
            params = io_uring_params()
            params.flags = flags | IORING_SETUP_CQSIZE | IORING_SETUP_CLAMP
            params.cq_entries = cq
            let r = rs_io_uring_queue_init_params(entries, ring, &params)
            if r == 0 { chosen = flags; break }
            lastError = -r
            if lastError != EINVAL { break }  // only EINVAL means "this flag is unknown": try fewer
        }
        guard let chosen else {
            ring.deallocate()
            let detail = lastError == ELIBACC ? String(cString: rs_liburing_error()) : "io_uring_setup(\(entries) entries)"
            throw RingSetupError(errno: Errno(rawValue: lastError), detail: detail)
        }
        setupFlags = chosen
        features = params.features
        sqEntries = params.sq_entries
        cqEntries = params.cq_entries
        probe = rs_io_uring_get_probe_ring(ring)
        // Registering the ring fd saves an fget/fput on every io_uring_enter.
        _ = rs_io_uring_register_ring_fd(ring)
    }

    deinit {
        if let probe { rs_io_uring_free_probe(probe) }
        rs_io_uring_queue_exit(ring)
        ring.deallocate()
    }

    func supports(_ op: io_uring_op) -> Bool {
        guard let probe else { return false }
        return io_uring_opcode_supported(probe, Int32(op.rawValue)) != 0
    }

    /// One line describing what this ring runs with (logged once at start).
    var summary: String {
        var f: [String] = []
        if setupFlags & IORING_SETUP_SINGLE_ISSUER != 0 { f.append("SINGLE_ISSUER") }
        if setupFlags & IORING_SETUP_DEFER_TASKRUN != 0 { f.append("DEFER_TASKRUN") }
        if setupFlags & IORING_SETUP_COOP_TASKRUN != 0 { f.append("COOP_TASKRUN") }
        if setupFlags & IORING_SETUP_SUBMIT_ALL != 0 { f.append("SUBMIT_ALL") }
        var feats: [String] = []
        if features & IORING_FEAT_NODROP != 0 { feats.append("NODROP") }
        if features & IORING_FEAT_FAST_POLL != 0 { feats.append("FAST_POLL") }
        if features & IORING_FEAT_EXT_ARG != 0 { feats.append("EXT_ARG") }
        if features & UInt32(RS_IORING_FEAT_REG_REG_RING) != 0 { feats.append("REG_REG_RING") }
        if features & UInt32(RS_IORING_FEAT_RECVSEND_BUNDLE) != 0 { feats.append("RECVSEND_BUNDLE") }
        var ops: [String] = []
        for (op, name) in [(IORING_OP_ACCEPT, "ACCEPT"), (IORING_OP_RECV, "RECV"), (IORING_OP_SEND, "SEND"),
                           (IORING_OP_CLOSE, "CLOSE"), (IORING_OP_ASYNC_CANCEL, "ASYNC_CANCEL"),
                           (IORING_OP_SHUTDOWN, "SHUTDOWN"), (IORING_OP_TIMEOUT, "TIMEOUT"),
                           (IORING_OP_SEND_ZC, "SEND_ZC"), (IORING_OP_WRITE_FIXED, "WRITE_FIXED")]
        where supports(op) { ops.append(name) }
        return "sq=\(sqEntries) cq=\(cqEntries) setup=[\(f.joined(separator: ","))] features=[\(feats.joined(separator: ","))] ops=[\(ops.joined(separator: ","))]"
    }

    // MARK: hot path

    @inline(__always) func getSQE() -> UnsafeMutablePointer<io_uring_sqe>? { io_uring_get_sqe(ring) }

    /// Submits prepared SQEs and waits for at least `waitFor` completions (io_uring_enter directly:
    /// `rs_submit_and_wait_batch`). `timeoutNanos` >= 0 bounds the wait (-1: none); `minWaitMicros` > 0
    /// (6.12+, probed) releases a batch wait once one completion is ready and that long has passed.
    /// Returns the number submitted, or -errno (ETIME on timeout, EINTR, EBUSY).
    @inline(__always) func submitAndWait(_ waitFor: UInt32, timeoutNanos: Int64 = -1, minWaitMicros: UInt32 = 0) -> Int32 {
        rs_submit_and_wait_batch(ring, waitFor, timeoutNanos, minWaitMicros)
    }

    @inline(__always) func submit() -> Int32 { rs_io_uring_submit(ring) }

    /// Free SQ entries.
    @inline(__always) var spaceLeft: UInt32 { io_uring_sq_space_left(ring) }

    /// Whether the kernel flagged a CQ overflow (completions parked in its backlog).
    @inline(__always) var cqOverflowFlagged: Bool { rs_sq_flags(ring) & IORING_SQ_CQ_OVERFLOW != 0 }
    @inline(__always) var droppedCompletions: UInt32 { rs_cq_overflow_count(ring) }
}
