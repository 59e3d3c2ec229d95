import Glibc

/// Which I/O backend a server uses.
public enum BackendKind: String, Sendable, CaseIterable, CustomStringConvertible {
    /// io_uring; fails with a clear error if the kernel refuses it.
    case uring
    /// epoll; works everywhere.
    case epoll
    /// io_uring when the kernel allows it, otherwise epoll (the reason is logged).
    case auto

    public var description: String { rawValue }
}

/// Everything a server needs to know. Defaults suit a single loop on a small machine and fit an
/// 8 MiB RLIMIT_MEMLOCK (the registered slab is 4 MiB by default).
public struct ServerConfiguration: Sendable {
    /// Address to bind (numeric IPv4 or IPv6).
    public var host: String = "127.0.0.1"
    /// Port; 0 picks a free one (see `RunningServer.port`).
    public var port: Int = 0
    public var backend: BackendKind = .auto
    /// listen(2) backlog.
    public var backlog: Int32 = 4096
    /// Maximum simultaneous connections; above it new connections are closed at once and counted.
    public var maxConnections: Int = 16384

    /// Size of one receive chunk (the most one receive completion delivers).
    public var bufferSize: Int = 16 * 1024
    /// Chunks that receive (the provided-buffer ring size on io_uring; a power of two).
    public var receiveBuffers: Int = 128
    /// Size of one send chunk (copied writes are packed into these).
    public var sendBufferSize: Int = 4 * 1024
    /// Chunks for copied writes.
    public var sendBuffers: Int = 512

    /// Above this many queued outbound bytes the engine stops reading from the connection...
    public var highWatermark: Int = 256 * 1024
    /// ...and resumes below this many.
    public var lowWatermark: Int = 64 * 1024

    /// SQ entries of the ring (power of two).
    public var ringEntries: UInt32 = 1024
    /// CQ entries; 0 means 8x the SQ (multishot operations post many completions per submission).
    public var completionEntries: UInt32 = 0
    /// io_uring: accept connections as registered (direct) descriptors, saving a file lookup per
    /// operation (falls back to ordinary descriptors when the kernel refuses the file table).
    public var directDescriptors: Bool = true
    /// Register the send chunks as fixed buffers (IORING_REGISTER_BUFFERS), charged to RLIMIT_MEMLOCK
    /// per loop (`sendBufferSize` x `sendBuffers`). File sends (``Connection/sendFile(_:at:count:prefix:_:)``)
    /// then read into them with READ_FIXED, one operation per chunk; without, one READV per piece. Off by
    /// default: with 4 KiB send chunks the 16 READ_FIXED per piece measured 1.30x the server CPU of one
    /// READV per piece (1 MiB static files, bench/http-wrk.sh), and registration costs locked memory.
    public var registerBuffers: Bool = false
    /// io_uring: sends of at least this many bytes that lie in one stretch of the registered send chunks
    /// (one chunk, or neighbouring chunks queued in order) go as IORING_OP_SEND_ZC from the fixed buffer
    /// (zero-copy: the NIC reads the chunk; it returns to the pool only once the kernel's notification
    /// says it is done with it). nil: off (the default). Needs ``registerBuffers`` and Linux 6.2+
    /// (SEND_ZC with fixed buffers and IORING_SEND_ZC_REPORT_USAGE); otherwise the start log says why and
    /// plain sends are used. Off by default: over loopback the kernel copies anyway (a local receiver),
    /// so the gain can only be measured on a real NIC; see ``ServerStats/zeroCopySendsCopied``.
    public var zeroCopySendThreshold: Int? = nil
    /// Disable TCP Nagle on accepted sockets (request/response latency).
    public var noDelay: Bool = true
    /// How long a graceful stop waits for queued output to drain before aborting connections.
    public var drainTimeout: Duration = .seconds(5)

    // Protection. Deadlines apply to inbound connections only; nil disables one.
    /// An inbound connection whose handler requires authentication
    /// (``ConnectionHandler/requiresAuthentication``) and has not called
    /// ``Connection/markAuthenticated()`` within this time is closed.
    public var authenticationTimeout: Duration? = .seconds(30)
    /// A connection with no byte received and no send progress for this long is closed.
    public var idleTimeout: Duration? = .seconds(60)
    /// A connection whose queued output makes no progress for this long (the peer stopped reading) is
    /// aborted, releasing its buffers. Also set as TCP_USER_TIMEOUT on accepted sockets, so output
    /// already handed to the kernel that the peer never takes (a zero window) ends the connection too.
    public var writeStallTimeout: Duration? = .seconds(30)
    /// At most this many simultaneous connections from one remote address (nil: no per-address cap).
    /// Off by default: behind NAT or a proxy many clients share an address.
    public var maxConnectionsPerAddress: Int? = nil
    /// Lingering close: after a graceful close has flushed its output, the engine half-closes (FIN),
    /// then reads and discards input until the peer's end-of-file or this long, before closing. A peer
    /// that is still sending then gets an orderly end instead of a reset, which on a real network could
    /// destroy a response it had been sent but not yet received (the kernel resets a connection closed
    /// with unread input). nil: close at once.
    public var lingerTimeout: Duration? = .seconds(2)
    /// TCP keepalive on accepted sockets, so peers that vanished without a FIN are found (nil: off).
    public var keepAlive: TCPKeepAlive? = TCPKeepAlive()
    /// io_uring: the most bytes one multishot receive may deliver before it ends and is re-armed
    /// (IORING_RECV_MSHOT_LIM, Linux 6.16+; ignored where unsupported). It bounds how much input a
    /// connection can take from the shared receive pool after it was paused (the kernel keeps
    /// completing receives until the pause's cancel lands), so one client cannot drain the pool.
    /// 0: no limit.
    public var receiveBurstLimit: Int = 256 * 1024
    /// io_uring: let one receive completion carry several provided buffers when a socket holds more than
    /// one buffer of input (IORING_RECVSEND_BUNDLE, Linux 6.10+; ignored where unsupported, and masked by
    /// `RINGSIDE_DISABLE=bundles`). A connection asks once a receive of its has filled a whole buffer
    /// (message-sized input never does: a bundle costs it). Handlers still see one call per buffer, in order.
    /// Used only with the per-arming receive limit (``receiveBurstLimit`` above zero, Linux 6.16+): without
    /// it one bundle can take the whole receive ring for a client that then stops reading.
    public var receiveBundles: Bool = true
    /// Accept PROXY protocol headers (v1 and v2) from trusted proxies, so handlers, logs and
    /// ``maxConnectionsPerAddress`` see the client's address rather than the proxy's (nil: off). See
    /// ``ProxyProtocolConfiguration``.
    public var proxyProtocol: ProxyProtocolConfiguration? = nil

    public var listen: Bool = true
    /// Outbound connections the loop opens when it starts (the engine's client path: connect, send,
    /// multishot receive). Each gets a handler from the same factory once connected.
    public var connect: OutboundConnections? = nil

    /// Fault injection for tests: pretend io_uring setup failed with this errno.
    public var injectRingSetupFailure: Errno? = nil

    // Multi-core
    /// Event loops to run, each on its own thread with its own ring (or epoll instance), buffer pool
    /// and listening socket; the listeners share the port through SO_REUSEPORT, so the kernel spreads
    /// new connections across loops and a connection stays on the loop that accepted it. Sizes
    /// (`maxConnections`, buffers, ring entries) apply per loop. Outbound `connect.count` is split
    /// across loops.
    public var threads: Int = 1
    /// CPUs to pin the loops to: loop i runs on `cpuAffinity[i % count]`. nil leaves placement to the
    /// scheduler.
    public var cpuAffinity: [Int]? = nil
    /// SO_SNDBUF for accepted connections (set on the listener, inherited); nil: the kernel's
    /// auto-tuning. A small one makes the kernel hold back sends sooner (tests use it to keep sends in
    /// flight).
    public var socketSendBuffer: Int? = nil
    /// Kernel features to treat as missing, as if the kernel lacked them, so every fallback path can
    /// run on a new kernel (tests, and the `RINGSIDE_DISABLE` environment variable, added to this).
    public var disabledFeatures: KernelFeatures = []
    /// io_uring: how many completions a busy loop may wait for in one kernel entry (1: every wait
    /// returns at the first completion). Above 1, a loop that reaped n > 1 completions last time waits
    /// for up to min(n, this) next time, but never longer than ``completionBatchWait`` for more than the
    /// first (the kernel's minimum-wait timeout, Linux 6.12+; older kernels always wait for one).
    /// `RINGSIDE_COMPLETION_BATCH=LIMIT,MICROSECONDS` overrides both. Measure before turning it on: it
    /// saves kernel entries for a loop serving many busy connections, but a loop answering a few clients
    /// then waits on the minimum-wait timer every round (measured at 1, 4 and 8 connections: 1.5-2.4x the
    /// CPU per message, p50 latency up to 2.8x).
    public var completionBatchLimit: Int = 1
    /// The longest a batching wait holds a ready completion back waiting for more.
    public var completionBatchWait: Duration = .microseconds(20)
    /// io_uring: a loop answering one client at a time (its last reap found at most two completions)
    /// that submits one message-sized send (one send buffer) of an open connection, with no completion
    /// ready, asks for two completions, so the send's completion, posted during the submission, does
    /// not end the wait by itself: the loop sleeps on until the next completion (typically the
    /// client's next request) and handles both in one kernel entry instead of two. A relative timeout
    /// on the ring bounds it: the send's completion is handled at most this long after it, and if the
    /// send could not complete at once, the first completion to come waits at most this long for a
    /// second. Never for a send that a close or shutdown waits on, nor for a multi-buffer send. Zero
    /// turns it off. `RINGSIDE_SEND_WAIT=MICROSECONDS` overrides it.
    public var sendCompletionWait: Duration = .milliseconds(1)
    /// io_uring, plaintext connections: a file send of at least this many bytes (``Connection/sendFile(_:at:count:prefix:_:)``)
    /// moves the file's pages through a pipe into the socket with IORING_OP_SPLICE instead of reading
    /// them into send chunks: no copy through user space (measured at a quarter of the CPU per GB of
    /// the read path on 1 MiB files). Nil: always read. Smaller sends read, since each splice costs a
    /// kernel worker hand-off. Masked by ``KernelFeatures/splice``.
    public var fileSpliceThreshold: Int? = 64 * 1024
    /// Pipes each loop may hold for splices: one per file send in flight, made when first needed; a
    /// send finding none free reads instead (counted in ``ServerStats/fileSpliceFallbacks``). Each is
    /// sized to ``splicePipeSize`` with F_SETPIPE_SZ. A pipe holds page references, not copies, but
    /// its capacity counts against the per-user pipe budget (`/proc/sys/fs/pipe-user-pages-soft`,
    /// 64 MiB by default, without CAP_SYS_RESOURCE): past it the kernel grants smaller pipes, and the
    /// loop stops making them.
    public var splicePipes: Int = 64
    /// The capacity asked of each splice pipe, and so the most one splice moves.
    public var splicePipeSize: Int = 1 << 20
    /// Debugging: fill every pool chunk with ``poisonByte`` when it returns to the pool, so bytes read
    /// after release (a use-after-release) show up as the pattern. Costs a memset per released chunk.
    public var poisonReleasedChunks: Bool = false
    /// The byte released chunks are filled with under ``poisonReleasedChunks``.
    public static let poisonByte: UInt8 = 0xDB

    public init() {}
    public init(host: String = "127.0.0.1", port: Int = 0, backend: BackendKind = .auto) {
        self.host = host; self.port = port; self.backend = backend
    }
}

/// Outbound connections for a loop to open at start.
public struct OutboundConnections: Sendable {
    /// Numeric IPv4/IPv6 address.
    public var host: String
    public var port: Int
    /// How many connections to open.
    public var count: Int
    public init(host: String, port: Int, count: Int) { self.host = host; self.port = port; self.count = count }
}

/// The PROXY protocol on a listener (HAProxy's, versions 1 and 2, detected per connection).
///
/// A connection from a trusted proxy (``trustedProxies``) must start with a header; the connection's
/// peer address (``Connection/peerAddress``), the log lines and the per-address cap then use the client
/// address it carries (or the socket's own for a v2 `LOCAL` header, such as a health check, and v1
/// `UNKNOWN`). The handler is opened only once the header is complete. A connection from any other
/// address is served as it is, with its socket address, and is closed if it sends a header anyway.
/// A malformed, oversized or untrusted header, or one not complete within ``headerTimeout``, closes the
/// connection with a warning (the first 10 of each kind per loop, then every 1000th) and a counter in
/// ``ServerStats``.
public struct ProxyProtocolConfiguration: Sendable, Equatable {
    /// Proxies whose headers are believed (default: loopback, `127.0.0.0/8` and `::1`).
    public var trustedProxies: [AddressRange]
    /// How long a trusted proxy may take to send its whole header.
    public var headerTimeout: Duration
    /// The longest v2 header accepted, TLVs included (v1 lines are limited to 107 bytes).
    public var maximumHeaderLength: Int

    public init(trustedProxies: [AddressRange] = AddressRange.loopback, headerTimeout: Duration = .seconds(5),
                maximumHeaderLength: Int = ProxyHeaderParser.defaultMaximumLength) {
        self.trustedProxies = trustedProxies
        self.headerTimeout = headerTimeout
        self.maximumHeaderLength = maximumHeaderLength
    }
}

/// TCP keepalive settings for accepted sockets (set on the listener; accepted sockets inherit them).
public struct TCPKeepAlive: Sendable, Equatable {
    /// Idle time before the first probe (TCP_KEEPIDLE).
    public var idle: Duration
    /// Time between probes (TCP_KEEPINTVL).
    public var interval: Duration
    /// Unanswered probes before the connection is dropped (TCP_KEEPCNT).
    public var count: Int
    /// Defaults: a dead peer is found after about 60 + 6 x 10 = 120 seconds.
    public init(idle: Duration = .seconds(60), interval: Duration = .seconds(10), count: Int = 6) {
        self.idle = idle; self.interval = interval; self.count = count
    }
}

/// A configuration value the server cannot run with, found by ``ServerConfiguration/validate()`` before
/// anything is started.
public struct ConfigurationError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The field, as spelled in the configuration type (`port`, `keepAlive.count`, ...).
    public let field: String
    /// What is wrong, with the value given and what is allowed.
    public let problem: String

    public init(field: String, problem: String) {
        self.field = field
        self.problem = problem
    }

    public var description: String { "\(field): \(problem)" }
}

extension ServerConfiguration {
    /// The longest deadline or timeout accepted (100 years); use nil to switch one off.
    public static let maximumDuration: Duration = .seconds(100 * 365 * 86_400)
    /// The most connections one loop may be sized for.
    public static let maximumConnections = 1 << 22
    /// The most event loops one server may run.
    public static let maximumThreads = 1024

    /// Checks every field; `RingsideServer.start` calls it first.
    /// - Throws: ``ConfigurationError`` naming the first field found out of range.
    public func validate() throws(ConfigurationError) {
        func check(_ ok: Bool, _ field: String, _ problem: @autoclosure () -> String) throws(ConfigurationError) {
            if !ok { throw ConfigurationError(field: field, problem: problem()) }
        }
        try check(Self.isNumericAddress(host), "host", "'\(host)' is not a numeric IPv4 or IPv6 address")
        try check((0...65535).contains(port), "port", "\(port) is outside 0...65535")
        try check(backlog >= 0, "backlog", "\(backlog) is negative")
        try check((1...Self.maximumConnections).contains(maxConnections), "maxConnections",
                  "\(maxConnections) is outside 1...\(Self.maximumConnections)")
        try validateBuffers()
        try check(highWatermark >= 1, "highWatermark", "\(highWatermark) must be at least 1")
        try check((0...highWatermark).contains(lowWatermark), "lowWatermark",
                  "\(lowWatermark) is outside 0...highWatermark (\(highWatermark))")
        try check((1...32768).contains(ringEntries), "ringEntries", "\(ringEntries) is outside 1...32768")
        try check(completionEntries == 0 || (ringEntries...65536).contains(completionEntries), "completionEntries",
                  "\(completionEntries) must be 0 (8 x ringEntries) or within ringEntries (\(ringEntries))...65536")
        try validateDurations()
        if let n = maxConnectionsPerAddress { try check(n >= 1, "maxConnectionsPerAddress", "\(n) must be at least 1 (nil: no cap)") }
        try check(receiveBurstLimit >= 0, "receiveBurstLimit", "\(receiveBurstLimit) is negative (0: no limit)")
        try check((1...256).contains(completionBatchLimit), "completionBatchLimit", "\(completionBatchLimit) is outside 1...256")
        try check(sendCompletionWait >= .zero && sendCompletionWait <= .milliseconds(10), "sendCompletionWait",
                  "\(sendCompletionWait) is outside 0...10ms")
        try check(completionBatchWait >= .zero && completionBatchWait <= .milliseconds(10), "completionBatchWait",
                  "\(completionBatchWait) is outside 0...10ms")
        if let pp = proxyProtocol {
            try check(pp.headerTimeout >= .milliseconds(1) && pp.headerTimeout <= Self.maximumDuration,
                      "proxyProtocol.headerTimeout", "\(pp.headerTimeout.compactDescription) is outside 1ms...100 years")
            try check((232...65551).contains(pp.maximumHeaderLength), "proxyProtocol.maximumHeaderLength",
                      "\(pp.maximumHeaderLength) is outside 232...65551 (16 + the largest v2 length)")
        }
        if let c = connect {
            try check(Self.isNumericAddress(c.host), "connect.host", "'\(c.host)' is not a numeric IPv4 or IPv6 address")
            try check((1...65535).contains(c.port), "connect.port", "\(c.port) is outside 1...65535")
            try check(c.count >= 0, "connect.count", "\(c.count) is negative")
        }
        try check((1...Self.maximumThreads).contains(threads), "threads", "\(threads) is outside 1...\(Self.maximumThreads)")
        if let cpus = cpuAffinity {
            try check(!cpus.isEmpty, "cpuAffinity", "is empty (nil: no pinning)")
            // CPUs that do not exist are refused by sched_setaffinity when the loop starts (an error, not a trap).
            for c in cpus { try check(c >= 0, "cpuAffinity", "CPU \(c) is negative") }
        }
        if let z = zeroCopySendThreshold {
            try check((1...Int(UInt32.max)).contains(z), "zeroCopySendThreshold", "\(z) is outside 1...\(UInt32.max) (unset: off)")
        }
        if let b = socketSendBuffer {
            try check((1...Int(Int32.max)).contains(b), "socketSendBuffer", "\(b) is outside 1...\(Int32.max)")
        }
        if let t = fileSpliceThreshold { try check(t >= 1, "fileSpliceThreshold", "\(t) must be at least 1 (nil: never splice)") }
        try check((0...1024).contains(splicePipes), "splicePipes", "\(splicePipes) is outside 0...1024")
        try check((4096...(1 << 30)).contains(splicePipeSize), "splicePipeSize", "\(splicePipeSize) is outside 4096...1073741824")
    }

    private func validateBuffers() throws(ConfigurationError) {
        let chunkLimit = Int(Int32.max)
        guard (1...chunkLimit).contains(bufferSize) else {
            throw ConfigurationError(field: "bufferSize", problem: "\(bufferSize) is outside 1...\(chunkLimit)")
        }
        guard (1...32768).contains(receiveBuffers), receiveBuffers & (receiveBuffers - 1) == 0 else {
            throw ConfigurationError(field: "receiveBuffers", problem: "\(receiveBuffers) is not a power of two in 1...32768")
        }
        guard (1...chunkLimit).contains(sendBufferSize) else {
            throw ConfigurationError(field: "sendBufferSize", problem: "\(sendBufferSize) is outside 1...\(chunkLimit)")
        }
        guard (1...(chunkLimit - receiveBuffers)).contains(sendBuffers) else {
            throw ConfigurationError(field: "sendBuffers", problem: "\(sendBuffers) is outside 1...\(chunkLimit - receiveBuffers)")
        }
        let (r, o1) = bufferSize.multipliedReportingOverflow(by: receiveBuffers)
        let (s, o2) = sendBufferSize.multipliedReportingOverflow(by: sendBuffers)
        guard !o1 && !o2 && r <= 1 << 46 && s <= 1 << 46 else {
            throw ConfigurationError(field: "sendBuffers", problem: "the buffer slab (bufferSize x receiveBuffers + sendBufferSize x sendBuffers) exceeds 2^47 bytes")
        }
    }

    private func validateDurations() throws(ConfigurationError) {
        func check(_ d: Duration?, _ field: String) throws(ConfigurationError) {
            guard let d else { return }
            guard d >= .zero else { throw ConfigurationError(field: field, problem: "\(d.compactDescription) is negative") }
            guard d <= Self.maximumDuration else {
                throw ConfigurationError(field: field, problem: "\(d.compactDescription) is longer than 100 years (nil switches it off)")
            }
        }
        try check(drainTimeout, "drainTimeout")
        try check(authenticationTimeout, "authenticationTimeout")
        try check(idleTimeout, "idleTimeout")
        try check(writeStallTimeout, "writeStallTimeout")
        try check(lingerTimeout, "lingerTimeout")
        if let k = keepAlive {
            // Linux bounds: TCP_KEEPIDLE and TCP_KEEPINTVL 1...32767 s, TCP_KEEPCNT 1...127.
            let limit: Duration = .seconds(32767)
            guard k.idle >= .seconds(1), k.idle <= limit else {
                throw ConfigurationError(field: "keepAlive.idle", problem: "\(k.idle.compactDescription) is outside 1s...32767s")
            }
            guard k.interval >= .seconds(1), k.interval <= limit else {
                throw ConfigurationError(field: "keepAlive.interval", problem: "\(k.interval.compactDescription) is outside 1s...32767s")
            }
            guard (1...127).contains(k.count) else {
                throw ConfigurationError(field: "keepAlive.count", problem: "\(k.count) is outside 1...127")
            }
        }
    }

    static func isNumericAddress(_ host: String) -> Bool {
        var v4 = in_addr(), v6 = in6_addr()
        return inet_pton(AF_INET, host, &v4) == 1 || inet_pton(AF_INET6, host, &v6) == 1
    }
}

extension ServerConfiguration {
    /// `RINGSIDE_COMPLETION_BATCH=LIMIT,MICROSECONDS` (for measuring batching policies without a rebuild).
    mutating func applyCompletionBatchEnvironment() throws(ConfigurationError) {
        guard let raw = getenv("RINGSIDE_COMPLETION_BATCH") else { return }
        let parts = String(cString: raw).split(separator: ",")
        guard parts.count == 2, let limit = Int(parts[0]), let micros = Int(parts[1]) else {
            throw ConfigurationError(field: "RINGSIDE_COMPLETION_BATCH", problem: "expected LIMIT,MICROSECONDS, e.g. 16,20")
        }
        completionBatchLimit = limit
        completionBatchWait = .microseconds(micros)
    }

    /// `RINGSIDE_SEND_WAIT=MICROSECONDS` (``sendCompletionWait``; 0: off).
    mutating func applySendWaitEnvironment() throws(ConfigurationError) {
        guard let raw = getenv("RINGSIDE_SEND_WAIT") else { return }
        guard let micros = Int(String(cString: raw)), micros >= 0 else {
            throw ConfigurationError(field: "RINGSIDE_SEND_WAIT", problem: "expected MICROSECONDS, e.g. 1000 (0: off)")
        }
        sendCompletionWait = .microseconds(micros)
    }
}
