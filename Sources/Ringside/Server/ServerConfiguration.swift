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

    /// Whether to listen for inbound connections (false for a pure client loop, as in the load generator).
    public var listen: Bool = true
    /// Outbound connections the loop opens when it starts (the engine's client path: connect, send,
    /// multishot receive). Each gets a handler from the same factory once connected.
    public var connect: OutboundConnections? = nil

    /// Fault injection for tests: pretend io_uring setup failed with this errno.
    public var injectRingSetupFailure: Errno? = nil

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
