import CLiburing
import Glibc

/// Kernel features decided once, at start, before any traffic, on the loop's own ring and scratch
/// sockets: an operation the probe found supported that later fails with EINVAL is an engine bug, never
/// a reason to change course mid-traffic.
struct UringProbe {
    /// The multishot receive byte limit (IORING_RECV_MSHOT_LIM, 6.16) and, when refused, why.
    var receiveLimit: Bool = false
    var receiveLimitNote = ""
    /// Socket options through the ring (SOCKET_URING_OP_SETSOCKOPT, 6.7): aborts can reset.
    var socketCommands: Bool = false
    var socketCommandsNote = ""

    private static let probeData: UInt64 = 0xFFFF_FFFF_FFFF_FF00

    /// Runs the probes the configuration needs. `provided` must already hold buffers (group 0).
    init(ring: Ring, provided: ProvidedBufferRing, pool: BufferPool, config: ServerConfiguration) {
        if config.receiveBurstLimit > 0 {
            // Masked, the kernel is made to refuse the limit the way kernels before 6.16 do (EINVAL), so
            // the probe itself and the fallback run.
            let refuse = config.disabledFeatures.contains(.receiveLimit)
            (receiveLimit, receiveLimitNote) = Self.probeReceiveLimit(ring: ring, provided: provided, pool: pool, refuse: refuse)
        } else {
            receiveLimitNote = "not asked for"
        }
        if config.disabledFeatures.contains(.socketCommands) {
            socketCommandsNote = "masked"
        } else {
            (socketCommands, socketCommandsNote) = Self.probeSocketCommands(ring: ring)
        }
    }

    /// One line for the start log.
    var summary: String {
        "recv-limit=\(receiveLimit ? "on" : "off(\(receiveLimitNote))") socket-commands=\(socketCommands ? "on" : "off(\(socketCommandsNote))")"
    }

    /// A multishot receive with a 1-byte limit on a socketpair holding one byte: a kernel with the limit
    /// delivers the byte and ends the receive; one without rejects the SQE with EINVAL.
    private static func probeReceiveLimit(ring: Ring, provided: ProvidedBufferRing, pool: BufferPool,
                                          refuse: Bool) -> (Bool, String) {
        var sv: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue), 0, &sv) == 0 else {
            return (false, "socketpair: \(Errno.current)")
        }
        defer { Glibc.close(sv[0]); Glibc.close(sv[1]) }
        var byte: UInt8 = 1
        _ = Glibc.write(sv[1], &byte, 1)
        guard let s = ring.getSQE() else { return (false, "no SQE") }
        io_uring_prep_recv_multishot(s, sv[0], nil, 0, 0)
        s.pointee.flags |= UInt8(RS_IOSQE_BUFFER_SELECT)
        rs_sqe_set_buf_group(s, provided.groupID)
        rs_sqe_set_recv_total_limit(s, 1)
        if refuse { s.pointee.ioprio |= 1 << 15 }  // an unknown receive flag: EINVAL, as before 6.16
        io_uring_sqe_set_data64(s, probeData)
        var result: (Bool, String) = (false, "no completion")
        var more = true
        Glibc.shutdown(sv[1], Int32(SHUT_WR))  // an unlimited receive ends too (EOF), so the probe always ends
        while more {
            guard let (res, flags) = waitProbe(ring) else { return (false, "no completion within 1 s") }
            more = flags & IORING_CQE_F_MORE != 0
            if flags & IORING_CQE_F_BUFFER != 0 {
                // Return the chunk the probe took to the ring.
                let c = Int32(flags >> IORING_CQE_BUFFER_SHIFT)
                provided.noteConsumed()
                provided.give(chunk: c, address: pool.pointer(c), length: pool.receiveChunkSize)
                provided.publish()
            }
            if res == -EINVAL { result = (false, refuse ? "EINVAL: masked" : "EINVAL: kernel before 6.16") }
            else if res < 0 { result = (false, "\(Errno(rawValue: -res))") }
            else if res == 1 && !more { result = (true, "") }
        }
        return result
    }

    /// SO_LINGER through IORING_OP_URING_CMD on a scratch TCP socket.
    private static func probeSocketCommands(ring: Ring) -> (Bool, String) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return (false, "socket: \(Errno.current)") }
        defer { Glibc.close(fd) }
        guard let s = ring.getSQE() else { return (false, "no SQE") }
        rs_prep_set_linger_zero(s, fd)
        io_uring_sqe_set_data64(s, probeData)
        guard let (res, _) = waitProbe(ring) else { return (false, "no completion within 1 s") }
        if res == 0 { return (true, "") }
        return (false, "\(Errno(rawValue: -res)): kernel before 6.7")
    }

    /// Submits and waits (1 s at most) for the probe's next completion.
    private static func waitProbe(_ ring: Ring) -> (Int32, UInt32)? {
        var ts = __kernel_timespec(tv_sec: 1, tv_nsec: 0)
        var cqe: UnsafeMutablePointer<io_uring_cqe>? = nil
        let r = io_uring_submit_and_wait_timeout(ring.ring, &cqe, 1, &ts, nil)
        guard r >= 0, let c = cqe else { return nil }
        precondition(c.pointee.user_data == probeData, "a completion other than the probe's at start")
        let out = (c.pointee.res, c.pointee.flags)
        io_uring_cqe_seen(ring.ring, c)
        return out
    }
}
