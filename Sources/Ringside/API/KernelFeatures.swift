import Glibc

/// Kernel features the io_uring backend uses where the kernel has them, each with a fallback. A
/// feature in ``ServerConfiguration/disabledFeatures`` (or named in the `RINGSIDE_DISABLE` environment
/// variable, comma-separated) is treated as missing, so its fallback runs on a kernel that has it.
public struct KernelFeatures: OptionSet, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// IORING_SETUP_DEFER_TASKRUN (6.1): completions run only when the loop waits.
    public static let deferTaskrun = KernelFeatures(rawValue: 1 << 0)
    /// IORING_SETUP_SINGLE_ISSUER (6.0).
    public static let singleIssuer = KernelFeatures(rawValue: 1 << 1)
    /// IORING_SETUP_COOP_TASKRUN (5.19).
    public static let coopTaskrun = KernelFeatures(rawValue: 1 << 2)
    /// The multishot receive byte limit, IORING_RECV_MSHOT_LIM (6.16).
    public static let receiveLimit = KernelFeatures(rawValue: 1 << 3)
    /// Registered (direct) descriptors for accepted connections (6.0).
    public static let directDescriptors = KernelFeatures(rawValue: 1 << 4)
    /// Socket options through the ring, SOCKET_URING_OP_SETSOCKOPT (6.7).
    public static let socketCommands = KernelFeatures(rawValue: 1 << 5)
    /// Registered fixed buffers.
    public static let registeredBuffers = KernelFeatures(rawValue: 1 << 6)
    /// Waits that batch completions with a minimum-wait timeout (IORING_FEAT_MIN_TIMEOUT, 6.12):
    /// without it every wait returns at the first completion.
    public static let minWait = KernelFeatures(rawValue: 1 << 7)
    /// Zero-copy sends from the registered send chunks: IORING_OP_SEND_ZC (6.0) with
    /// IORING_RECVSEND_FIXED_BUF and IORING_SEND_ZC_REPORT_USAGE (6.2). Without it (or masked) sends
    /// are plain SENDs whatever ``ServerConfiguration/zeroCopySendThreshold`` says.
    public static let zeroCopySend = KernelFeatures(rawValue: 1 << 8)
    /// File sends by IORING_OP_SPLICE through a pipe (5.7; always there on the 6.0 the backend needs,
    /// but a pipe-size limit or this mask falls back to reading into send chunks).
    public static let splice = KernelFeatures(rawValue: 1 << 9)
    /// Kernel TLS transmit (`TCP_ULP` "tls", `SOL_TLS`/`TLS_TX`, 4.13+; on io_uring's registered
    /// descriptors through socket commands, 6.7+): after the handshake the kernel encrypts what a TLS
    /// connection sends. Masked (or without the kernel's `tls` module) OpenSSL encrypts in user space.
    public static let kernelTLS = KernelFeatures(rawValue: 1 << 10)
    /// Receive bundles (IORING_RECVSEND_BUNDLE, 6.10): one receive completion carries as many provided
    /// buffers as the socket had data for, instead of one completion per buffer. Without it every
    /// buffer is its own completion.
    public static let receiveBundles = KernelFeatures(rawValue: 1 << 11)

    /// Every ring set-up flag: with all three masked the ring is set up with no task-run flags.
    public static let ringSetupFlags: KernelFeatures = [.deferTaskrun, .singleIssuer, .coopTaskrun]

    /// The names `RINGSIDE_DISABLE` accepts.
    public static let names: [(String, KernelFeatures)] = [
        ("defer-taskrun", .deferTaskrun), ("single-issuer", .singleIssuer), ("coop-taskrun", .coopTaskrun),
        ("recv-limit", .receiveLimit), ("direct-fds", .directDescriptors), ("socket-commands", .socketCommands),
        ("fixed-buffers", .registeredBuffers), ("min-wait", .minWait), ("splice", .splice),
        ("send-zc", .zeroCopySend), ("ktls", .kernelTLS), ("bundles", .receiveBundles),
    ]

    /// Parses a comma-separated list of names (`RINGSIDE_DISABLE`); throws naming an unknown one.
    public init(parsing list: String) throws(ConfigurationError) {
        self = []
        for name in list.split(separator: ",").map({ $0.trimmingCharacters(in: " ") }) where !name.isEmpty {
            guard let f = Self.names.first(where: { $0.0 == name }) else {
                throw ConfigurationError(field: "RINGSIDE_DISABLE",
                                         problem: "unknown feature '\(name)' (known: \(Self.names.map(\.0).joined(separator: ", ")))")
            }
            insert(f.1)
        }
    }

    /// The features named in the `RINGSIDE_DISABLE` environment variable.
    static func fromEnvironment() throws(ConfigurationError) -> KernelFeatures {
        guard let v = getenv("RINGSIDE_DISABLE") else { return [] }
        return try KernelFeatures(parsing: String(cString: v))
    }

    public var description: String {
        let n = Self.names.filter { contains($0.1) }.map(\.0)
        return n.isEmpty ? "none" : n.joined(separator: ",")
    }
}

private extension Substring {
    func trimmingCharacters(in set: Character) -> String {
        var s = self
        while s.first == set { s = s.dropFirst() }
        while s.last == set { s = s.dropLast() }
        return String(s)
    }
}
