import CLiburing
import Glibc

/// Socket set-up shared by both backends.
enum Socket {
    /// A listening TCP socket bound to host:port (IPv4 or IPv6 numeric host). With `reusePort` the
    /// socket sets SO_REUSEPORT before bind, so every loop of a multi-loop server binds its own
    /// listener on the same port and the kernel spreads incoming connections across them.
    static func listen(host: String, port: Int, backlog: Int32, nonBlocking: Bool,
                       reusePort: Bool = false) throws(SyscallError) -> Int32 {
        var v4 = sockaddr_in()
        var v6 = sockaddr_in6()
        let isV6: Bool
        if inet_pton(AF_INET, host, &v4.sin_addr) == 1 {
            isV6 = false
            v4.sin_family = sa_family_t(AF_INET)
            v4.sin_port = in_port_t(UInt16(port).bigEndian)
        } else if inet_pton(AF_INET6, host, &v6.sin6_addr) == 1 {
            isV6 = true
            v6.sin6_family = sa_family_t(AF_INET6)
            v6.sin6_port = in_port_t(UInt16(port).bigEndian)
        } else {
            throw SyscallError("inet_pton(\(host)): not a numeric IPv4/IPv6 address", .invalidArgument)
        }
        var type = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
        if nonBlocking { type |= Int32(SOCK_NONBLOCK.rawValue) }
        let fd = try syscall("socket") { socket(isV6 ? AF_INET6 : AF_INET, type, 0) }
        do {
            try setOption(fd, SOL_SOCKET, SO_REUSEADDR, 1, "SO_REUSEADDR")
            if reusePort { try setOption(fd, SOL_SOCKET, SO_REUSEPORT, 1, "SO_REUSEPORT") }
            if isV6 {
                _ = try syscall("bind(\(host):\(port))") {
                    withUnsafePointer(to: &v6) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) } }
                }
            } else {
                _ = try syscall("bind(\(host):\(port))") {
                    withUnsafePointer(to: &v4) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                        bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
                }
            }
            _ = try syscall("listen") { Glibc.listen(fd, backlog) }
        } catch {
            closeDescriptor(fd)
            throw error
        }
        return fd
    }

    /// A resolved numeric address.
    struct Address {
        var storage = sockaddr_storage()
        var length: socklen_t = 0
        var family: Int32 = AF_INET
    }

    static func address(host: String, port: Int) throws(SyscallError) -> Address {
        var a = Address()
        var v4 = sockaddr_in()
        var v6 = sockaddr_in6()
        if inet_pton(AF_INET, host, &v4.sin_addr) == 1 {
            v4.sin_family = sa_family_t(AF_INET)
            v4.sin_port = in_port_t(UInt16(port).bigEndian)
            withUnsafeMutableBytes(of: &a.storage) { d in withUnsafeBytes(of: &v4) { d.copyMemory(from: $0) } }
            a.length = socklen_t(MemoryLayout<sockaddr_in>.size)
        } else if inet_pton(AF_INET6, host, &v6.sin6_addr) == 1 {
            v6.sin6_family = sa_family_t(AF_INET6)
            v6.sin6_port = in_port_t(UInt16(port).bigEndian)
            withUnsafeMutableBytes(of: &a.storage) { d in withUnsafeBytes(of: &v6) { d.copyMemory(from: $0) } }
            a.length = socklen_t(MemoryLayout<sockaddr_in6>.size)
            a.family = AF_INET6
        } else {
            throw SyscallError("inet_pton(\(host)): not a numeric IPv4/IPv6 address", .invalidArgument)
        }
        return a
    }

    /// A new TCP socket for an outbound connection.
    static func stream(family: Int32, nonBlocking: Bool) throws(SyscallError) -> Int32 {
        var type = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
        if nonBlocking { type |= Int32(SOCK_NONBLOCK.rawValue) }
        return try syscall("socket") { socket(family, type, 0) }
    }

    /// The local port a socket is bound to.
    static func localPort(_ fd: Int32) throws(SyscallError) -> Int {
        var ss = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = try syscall("getsockname") {
            withUnsafeMutablePointer(to: &ss) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                getsockname(fd, $0, &len) } }
        }
        let family = ss.ss_family
        let port: UInt16 = withUnsafePointer(to: &ss) { p in
            if family == sa_family_t(AF_INET6) {
                return p.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { $0.pointee.sin6_port }
            }
            return p.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { $0.pointee.sin_port }
        }
        return Int(UInt16(bigEndian: port))
    }

    static func setOption(_ fd: Int32, _ level: Int32, _ name: Int32, _ value: Int32, _ what: String) throws(SyscallError) {
        var v = value
        _ = try syscall("setsockopt(\(what))") {
            setsockopt(fd, level, name, &v, socklen_t(MemoryLayout<Int32>.size))
        }
    }

    /// Listener options that accepted sockets inherit (Linux copies them in the accept path; the
    /// only way to reach direct descriptors, which setsockopt(2) cannot).
    ///
    /// `userTimeout` (TCP_USER_TIMEOUT): the kernel aborts a connection whose sent data stays
    /// unacknowledged, or whose peer keeps a zero window, for this long. That catches a peer that stopped
    /// reading after the engine's own queue was flushed into the kernel's send buffer, where the
    /// engine's write-stall clock cannot see it.
    static func configureListener(_ fd: Int32, keepAlive: TCPKeepAlive?, userTimeout: Duration? = nil,
                                  sendBuffer: Int? = nil) throws(SyscallError) {
        if let b = sendBuffer { try setOption(fd, SOL_SOCKET, SO_SNDBUF, Int32(clamping: b), "SO_SNDBUF") }
        if let u = userTimeout {
            try setOption(fd, Int32(IPPROTO_TCP), TCP_USER_TIMEOUT, Int32(clamping: max(1, u.wholeMilliseconds)), "TCP_USER_TIMEOUT")
        }
        guard let k = keepAlive else { return }
        func seconds(_ d: Duration) -> Int32 { Int32(clamping: max(1, d.components.seconds)) }
        try setOption(fd, SOL_SOCKET, SO_KEEPALIVE, 1, "SO_KEEPALIVE")
        try setOption(fd, Int32(IPPROTO_TCP), TCP_KEEPIDLE, seconds(k.idle), "TCP_KEEPIDLE")
        try setOption(fd, Int32(IPPROTO_TCP), TCP_KEEPINTVL, seconds(k.interval), "TCP_KEEPINTVL")
        try setOption(fd, Int32(IPPROTO_TCP), TCP_KEEPCNT, Int32(clamping: max(1, k.count)), "TCP_KEEPCNT")
    }

    /// SO_LINGER {1, 0}: the next close resets the connection (RST) and drops unsent data, which is
    /// what an abort means. Best effort: the peer may already be gone.
    static func setLingerZero(_ fd: Int32) {
        var l = linger(l_onoff: 1, l_linger: 0)
        _ = setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, socklen_t(MemoryLayout<linger>.size))
    }

    /// Options for an accepted connection. Failures are not fatal for the connection (the peer may
    /// already have reset it); they are reported to the caller as false.
    @inline(__always) static func configureAccepted(_ fd: Int32, noDelay: Bool) -> Bool {
        guard noDelay else { return true }
        var one: Int32 = 1
        return setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size)) == 0
    }
}
