import CLiburing
import Glibc

/// Kernel features decided once, at start, before any traffic, on the loop's own ring and scratch
/// sockets: an operation the probe found supported that later fails with EINVAL is an engine bug, never
/// a reason to change course mid-traffic.
struct UringProbe {
    /// The multishot receive byte limit (IORING_RECV_MSHOT_LIM, 6.16) and, when refused, why.
    var receiveLimit: Bool = false
    var receiveLimitNote = ""
    /// Receive bundles (IORING_RECVSEND_BUNDLE, 6.10): from the ring's feature bits.
    var receiveBundles: Bool = false
    var receiveBundlesNote = ""
    /// Socket options through the ring (SOCKET_URING_OP_SETSOCKOPT, 6.7): aborts can reset.
    var socketCommands: Bool = false
    var socketCommandsNote = ""

    /// Direct descriptors are usable: the table is registered, multishot accept straight into it works
    /// (6.0) and a cancel can name a direct descriptor (IORING_ASYNC_CANCEL_FD_FIXED, 6.0).
    var directDescriptors: Bool = false
    var directDescriptorsNote = ""

    /// Zero-copy sends from the registered send chunks (SEND_ZC with a fixed buffer and usage reports,
    /// 6.2), when asked for (`zeroCopySendThreshold`), and if not, why.
    var zeroCopySend: Bool = false
    var zeroCopySendNote = ""

    private static let probeData: UInt64 = 0xFFFF_FFFF_FFFF_FF00

    /// What the io_uring backend cannot run without, probed on the loop's own ring before traffic:
    /// multishot receive into provided buffers (6.0) and multishot accept (5.19). A kernel without them
    /// is answered like a refused io_uring_setup (`auto` serves on epoll and logs this reason).
    static func requireMinimum(ring: Ring, provided: ProvidedBufferRing, pool: BufferPool) throws(RingSetupError) {
        let (recvOK, recvNote) = probeReceive(ring: ring, provided: provided, pool: pool, limit: false, refuse: false)
        guard recvOK else {
            throw RingSetupError(errno: Errno(rawValue: EOPNOTSUPP),
                                 detail: "multishot receive into provided buffers refused (\(recvNote)); the io_uring backend needs Linux 6.0+")
        }
        let (acceptOK, acceptNote) = probeAccept(ring: ring, direct: false)
        guard acceptOK else {
            throw RingSetupError(errno: Errno(rawValue: EOPNOTSUPP),
                                 detail: "multishot accept refused (\(acceptNote)); the io_uring backend needs Linux 6.0+")
        }
    }

    /// Runs the probes the configuration needs. `provided` must already hold buffers (group 0);
    /// `fileTable` says whether a direct-descriptor table was registered.
    init(ring: Ring, provided: ProvidedBufferRing, pool: BufferPool, config: ServerConfiguration, fileTable: Bool,
         registeredBuffers: Bool) {
        if !fileTable {
            directDescriptorsNote = config.disabledFeatures.contains(.directDescriptors) ? "masked" : "no table"
        } else {
            let (acceptOK, acceptNote) = Self.probeAccept(ring: ring, direct: true)
            let (cancelOK, cancelNote) = Self.probeCancelFixed(ring: ring)
            directDescriptors = acceptOK && cancelOK
            directDescriptorsNote = !acceptOK ? "accept direct: \(acceptNote)" : cancelNote
        }
        if config.receiveBurstLimit > 0 {
            // Masked, the kernel is made to refuse the limit the way kernels before 6.16 do (EINVAL), so
            // the probe itself and the fallback run.
            let refuse = config.disabledFeatures.contains(.receiveLimit)
            (receiveLimit, receiveLimitNote) = Self.probeReceive(ring: ring, provided: provided, pool: pool, limit: true, refuse: refuse)
        } else {
            receiveLimitNote = "not asked for"
        }
        if config.disabledFeatures.contains(.receiveBundles) {
            receiveBundlesNote = "masked"
        } else if !config.receiveBundles {
            receiveBundlesNote = "not asked for"
        } else if ring.features & UInt32(RS_IORING_FEAT_RECVSEND_BUNDLE) == 0 {
            receiveBundlesNote = "kernel before 6.10"
        } else if !receiveLimit {
            // Without the per-arming byte limit (kernels before 6.16, or `receiveBurstLimit` 0) a
            // multishot bundle takes as many buffers as the socket holds input in one completion, up to
            // the whole ring: a client that then stops reading holds every receive buffer, and the
            // other connections starve until its write-stall timeout (the conformance suite with
            // recv-limit masked failed 3 times in 26 runs so). Without bundles a completion is one
            // buffer, and the loop's pause cancels the receive after fewer of them.
            receiveBundlesNote = "needs recv-limit"
        } else {
            receiveBundles = true
        }
        if config.disabledFeatures.contains(.socketCommands) {
            socketCommandsNote = "masked"
        } else {
            (socketCommands, socketCommandsNote) = Self.probeSocketCommands(ring: ring)
        }
        if config.zeroCopySendThreshold == nil {
            zeroCopySendNote = "not asked for"
        } else if config.disabledFeatures.contains(.zeroCopySend) {
            zeroCopySendNote = "masked"
        } else if !registeredBuffers {
            zeroCopySendNote = "needs registered send buffers (--register-buffers; off, refused or masked)"
        } else if !ring.supports(IORING_OP_SEND_ZC) {
            zeroCopySendNote = "IORING_OP_SEND_ZC unsupported: kernel before 6.0"
        } else {
            (zeroCopySend, zeroCopySendNote) = Self.probeZeroCopySend(ring: ring, pool: pool)
        }
    }

    /// One line for the start log.
    var summary: String {
        "multishot-recv=on multishot-accept=on direct-fds=\(directDescriptors ? "on" : "off(\(directDescriptorsNote))") send-zc=\(zeroCopySend ? "on" : "off(\(zeroCopySendNote))") recv-limit=\(receiveLimit ? "on" : "off(\(receiveLimitNote))") socket-commands=\(socketCommands ? "on" : "off(\(socketCommandsNote))") bundles=\(receiveBundles ? "on" : "off(\(receiveBundlesNote))")"
    }

    /// A multishot receive into the provided buffers on a socketpair holding one byte, then EOF. Without
    /// `limit`: a kernel with multishot receive delivers the byte (more to come) and ends at EOF. With a
    /// 1-byte `limit`: a kernel with the limit delivers the byte and ends the receive; one without
    /// rejects the SQE with EINVAL.
    private static func probeReceive(ring: Ring, provided: ProvidedBufferRing, pool: BufferPool,
                                     limit: Bool, refuse: Bool) -> (Bool, String) {
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
        if limit { rs_sqe_set_recv_total_limit(s, 1) }
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
            else if limit && res == 1 && !more { result = (true, "") }
            else if !limit && res == 1 && more { result = (true, "") }
        }
        return result
    }

    /// A multishot accept (into the direct-descriptor table when `direct`) on a scratch loopback
    /// listener, one connection made to it, then the accept cancelled: a kernel with it completes the
    /// connection with more to come.
    private static func probeAccept(ring: Ring, direct: Bool) -> (Bool, String) {
        let pair: ScratchPair
        do { pair = try ScratchPair() } catch { return (false, error.note) }
        defer { pair.close() }
        let lfd = pair.listener
        guard let s = ring.getSQE() else { return (false, "no SQE") }
        if direct {
            io_uring_prep_multishot_accept_direct(s, lfd, nil, nil, 0)
        } else {
            io_uring_prep_multishot_accept(s, lfd, nil, nil, Int32(SOCK_CLOEXEC.rawValue))
        }
        io_uring_sqe_set_data64(s, probeData)
        guard let (res, flags) = waitProbe(ring) else { return (false, "no completion within 1 s") }
        var result: (Bool, String)
        if res >= 0 {
            result = flags & IORING_CQE_F_MORE != 0 ? (true, "") : (false, "accepted once, not multishot")
            if direct, let c = ring.getSQE() {
                io_uring_prep_close_direct(c, UInt32(res))
                io_uring_sqe_set_data64(c, probeData)
                _ = waitProbe(ring)
            } else if !direct {
                Glibc.close(res)
            }
        } else {
            result = (false, "\(Errno(rawValue: -res))")
        }
        if flags & IORING_CQE_F_MORE != 0 {
            // End the armed accept: the cancel's completion and the accept's -ECANCELED, in either order.
            guard let c = ring.getSQE() else { return (false, "no SQE") }
            io_uring_prep_cancel_fd(c, lfd, UInt32(IORING_ASYNC_CANCEL_ALL))
            io_uring_sqe_set_data64(c, probeData)
            for _ in 0..<2 where waitProbe(ring) == nil { return (false, "accept not cancelled within 1 s") }
        }
        return result
    }

    /// A cancel naming an empty slot of the direct-descriptor table: a kernel that understands
    /// IORING_ASYNC_CANCEL_FD_FIXED looks the slot up and answers EBADF (empty slot; ENOENT would mean
    /// nothing to cancel), an older one rejects the unknown flag with EINVAL.
    private static func probeCancelFixed(ring: Ring) -> (Bool, String) {
        guard let s = ring.getSQE() else { return (false, "no SQE") }
        io_uring_prep_cancel_fd(s, 0, UInt32(IORING_ASYNC_CANCEL_ALL | IORING_ASYNC_CANCEL_FD_FIXED))
        io_uring_sqe_set_data64(s, probeData)
        guard let (res, _) = waitProbe(ring) else { return (false, "cancel: no completion within 1 s") }
        if res == -EBADF || res == -ENOENT || res >= 0 { return (true, "") }
        return (false, "cancel by direct descriptor: \(Errno(rawValue: -res))")
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

    /// One byte sent with SEND_ZC from the registered send chunks (fixed buffer 0) with usage reports, over
    /// a scratch loopback TCP connection: a kernel with all of it completes the byte with a notification
    /// to follow, then posts the notification; 6.0 and 6.1 reject the usage flag with EINVAL.
    private static func probeZeroCopySend(ring: Ring, pool: BufferPool) -> (Bool, String) {
        let pair: ScratchPair
        do { pair = try ScratchPair() } catch { return (false, error.note) }
        defer { pair.close() }
        let afd = rs_accept4(pair.listener, Int32(SOCK_CLOEXEC.rawValue))  // in the backlog already: no wait
        guard afd >= 0 else { return (false, "accept: \(Errno.current)") }
        defer { Glibc.close(afd) }
        guard let s = ring.getSQE() else { return (false, "no SQE") }
        rs_prep_send_zc_fixed(s, afd, pool.sendRegion.base, 1, Int32(MSG_NOSIGNAL), 0)
        io_uring_sqe_set_data64(s, probeData)
        guard let (res, flags) = waitProbe(ring) else { return (false, "no completion within 1 s") }
        if res < 0 {
            let e = Errno(rawValue: -res)
            return (false, res == -EINVAL ? "EINVAL: fixed-buffer SEND_ZC with usage reports needs Linux 6.2+" : "\(e)")
        }
        guard flags & IORING_CQE_F_MORE != 0 else { return (false, "no notification announced") }
        guard let (_, nflags) = waitProbe(ring) else { return (false, "no notification within 1 s") }
        guard nflags & IORING_CQE_F_NOTIF != 0 else { return (false, "second completion is not a notification") }
        return res == 1 ? (true, "") : (false, "sent \(res) of 1 byte")
    }

    struct ScratchFailure: Error { let note: String }

    /// A scratch loopback listener with one client connected to it: loopback connects complete at
    /// once into the backlog (blocking sockets, no accept needed). `close()` closes both.
    struct ScratchPair {
        let listener: Int32
        let client: Int32

        init() throws(ScratchFailure) {
            let lfd = socket(AF_INET, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue), 0)
            guard lfd >= 0 else { throw ScratchFailure(note: "socket: \(Errno.current)") }
            var addr = sockaddr_in()
            addr.sin_family = sa_family_t(AF_INET)
            addr.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
            var len = socklen_t(MemoryLayout<sockaddr_in>.size)
            let bound = withUnsafeMutablePointer(to: &addr) { p in
                p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in
                    bind(lfd, sa, len) == 0 && listen(lfd, 4) == 0 && getsockname(lfd, sa, &len) == 0
                }
            }
            guard bound else {
                let note = "listen: \(Errno.current)"
                Glibc.close(lfd)
                throw ScratchFailure(note: note)
            }
            let cfd = socket(AF_INET, Int32(SOCK_STREAM.rawValue | SOCK_CLOEXEC.rawValue), 0)
            guard cfd >= 0 else {
                let note = "socket: \(Errno.current)"
                Glibc.close(lfd)
                throw ScratchFailure(note: note)
            }
            let connected = withUnsafePointer(to: &addr) { p in
                p.withMemoryRebound(to: sockaddr.self, capacity: 1) { sa in connect(cfd, sa, len) == 0 }
            }
            guard connected else {
                let note = "connect: \(Errno.current)"
                Glibc.close(cfd)
                Glibc.close(lfd)
                throw ScratchFailure(note: note)
            }
            listener = lfd
            client = cfd
        }

        func close() {
            Glibc.close(client)
            Glibc.close(listener)
        }
    }

    /// Submits and waits (1 s at most) for the probe's next completion.
    private static func waitProbe(_ ring: Ring) -> (Int32, UInt32)? {
        var ts = __kernel_timespec(tv_sec: 1, tv_nsec: 0)
        var cqe: UnsafeMutablePointer<io_uring_cqe>? = nil
        let r = rs_io_uring_submit_and_wait_timeout(ring.ring, &cqe, 1, &ts, nil)
        guard r >= 0, let c = cqe else { return nil }
        precondition(c.pointee.user_data == probeData, "a completion other than the probe's at start")
        let out = (c.pointee.res, c.pointee.flags)
        io_uring_cqe_seen(ring.ring, c)
        return out
    }
}
