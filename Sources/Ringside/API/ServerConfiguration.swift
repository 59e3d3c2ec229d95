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
    /// Register the buffer slab as fixed buffers (IORING_REGISTER_BUFFERS).
    public var registerBuffers: Bool = true
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
