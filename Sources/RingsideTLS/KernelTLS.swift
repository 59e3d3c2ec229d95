import Glibc

/// Kernel TLS (kTLS): whether this kernel can take the keys after the handshake (`TCP_ULP` "tls").
///
/// Only detected, once per process: a scratch TCP socket is asked for the "tls" upper-layer protocol.
/// ENOENT means the kernel has no `tls` module (this is the case on kernels built without
/// CONFIG_TLS); ENOTCONN means the module is there (the socket is merely not connected). Either way
/// Ringside encrypts in user space today: handing the keys to the kernel (`SOL_TLS` `TLS_TX`/`TLS_RX`
/// through `IORING_OP_URING_CMD` setsockopt on direct descriptors) is a documented follow-up.
public enum KernelTLS: Sendable, Equatable, CustomStringConvertible {
    /// The kernel has the `tls` upper-layer protocol (not used yet: user-space TLS).
    case available
    /// No kTLS here; the reason (the errno of the probe).
    case unavailable(String)

    /// The probe's result (run once).
    public static let status: KernelTLS = {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return .unavailable("socket: errno \(errno)") }
        defer { close(fd) }
        let r = "tls".withCString { setsockopt(fd, Int32(IPPROTO_TCP), 31 /* TCP_ULP */, $0, 3) }
        if r == 0 { return .available }
        let e = errno
        switch e {
        case ENOTCONN: return .available
        case ENOENT: return .unavailable("the kernel has no tls module (TCP_ULP \"tls\": ENOENT)")
        default: return .unavailable("TCP_ULP \"tls\" probe failed: \(String(cString: strerror(e)))")
        }
    }()

    /// Whether the user-space path is in use: always, for now (see the type's documentation).
    public static var userSpace: Bool { true }

    public var description: String {
        switch self {
        case .available: "kTLS=available (not used yet: user-space TLS)"
        case .unavailable(let why): "kTLS=unavailable: \(why); using user-space TLS"
        }
    }
}
