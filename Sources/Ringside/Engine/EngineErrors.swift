import Glibc
import Logging
import Synchronization

/// How a failed operation's errno is treated. Peers and networks fail in expected ways (a reset, a
/// broken pipe, a timeout): the connection closes with that errno as its reason. Some errnos can only
/// mean the engine itself is wrong — a bad address, a descriptor it does not own, arguments the kernel
/// rejects for an operation it supports — and those must never pass as an ordinary reset.
enum EngineErrors {
    /// Whether engine bugs trap in debug builds (tests that force one turn this off).
    static let trapInDebug = Atomic<Bool>(true)

    /// Whether `errno` from a socket operation means a bug in the engine rather than the peer.
    @inline(__always) static func isEngineBug(_ errno: Int32) -> Bool {
        switch errno {
        case EFAULT, EBADF, EINVAL, ENOTSOCK, EOPNOTSUPP: return true
        default: return false
        }
    }

    /// The close reason for a failed `op` on `slot`; an engine bug is counted, logged at error level
    /// with the operation and slot, and traps in debug builds. Never inlined: it is the failure path,
    /// and inlined into a loop function the logger's level check (a read of swift-log's storage class,
    /// with a dynamic exclusivity check) was hoisted onto the path every message takes.
    @inline(never)
    static func reason(_ errno: Int32, op: StaticString, slot: Int32, counters: inout ServerStats,
                       logger: Logger) -> CloseReason {
        let e = Errno(rawValue: errno)
        if isEngineBug(errno) {
            counters.engineErrors += 1
            logger.error("engine bug: \(op) on slot \(slot) failed with \(e)")
            if _isDebugAssertConfiguration() && trapInDebug.load(ordering: .relaxed) {
                fatalError("engine bug: \(op) on slot \(slot) failed with \(e)")
            }
        }
        return .error(e)
    }
}
