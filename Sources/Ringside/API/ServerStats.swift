/// Counters and gauges of one event loop, published once per loop iteration.
public struct ServerStats: Sendable, Equatable {
    /// Connections accepted into a slot.
    public var connectionsAccepted = 0
    /// Outbound connections established / failed (client loops).
    public var connectionsConnected = 0
    public var connectFailures = 0
    /// Connections currently open.
    public var connectionsOpen = 0
    /// Connections fully torn down.
    public var connectionsClosed = 0
    /// Connections closed at once because the connection cap was reached.
    public var connectionsRefused = 0
    /// Bytes received / sent.
    public var bytesIn = 0
    public var bytesOut = 0
    /// Pool chunks currently out of their home (queued or lent) and the peak.
    public var buffersInUse = 0
    public var peakBuffersInUse = 0
    /// Receives that failed with -ENOBUFS (the provided-buffer ring ran dry).
    public var noBufferEvents = 0
    /// Multishot receives re-armed after ending (no IORING_CQE_F_MORE).
    public var recvRearms = 0
    /// Multishot accepts re-armed after ending.
    public var acceptRearms = 0
    /// Completions with -ECANCELED.
    public var canceledCompletions = 0
    /// Loop iterations that found the CQ overflow flag set (kernel backlog flushed).
    public var cqOverflowEvents = 0
    /// Completions the kernel dropped for good (only without IORING_FEAT_NODROP).
    public var cqDropped = 0
    /// Times the SQ was full when an operation was prepared (submitted early or queued).
    public var sqFullEvents = 0
    /// Operations parked in the overflow FIFO because no SQE was free even after submitting.
    public var sqDeferredOps = 0
    /// Completions for a slot that has since been reused (generation mismatch).
    public var staleCompletions = 0
    /// Sends that completed short and were resubmitted for the rest.
    public var shortSends = 0
    /// Times reading was paused: a connection's queue went above the high watermark, or its handler
    /// called `Connection.pauseReading()`.
    public var readPauses = 0
    /// Receives held back (not delivered) because they completed while the connection was paused.
    public var receivesHeld = 0
    /// Writes refused because the pool had no free send chunk.
    public var writesRefused = 0
    /// Accept failures (EMFILE, ENFILE, ...), retried after a delay.
    public var acceptErrors = 0
    /// Highest outbound queue seen on any connection, in bytes.
    public var maxQueuedBytes = 0

    // Protection (deadlines and caps).
    /// Connections refused because their remote address already had `maxConnectionsPerAddress` open
    /// (also counted in `connectionsRefused`).
    public var connectionsRefusedPerAddress = 0
    /// Connections closed because they were not authenticated within `authenticationTimeout`.
    public var authenticationTimeouts = 0
    /// Connections closed after `idleTimeout` without a byte received or sent.
    public var idleTimeouts = 0
    /// Connections closed because a read deadline set with `Connection.setReadDeadline` passed.
    public var readTimeouts = 0
    /// Connections closed because their outbound queue made no progress for `writeStallTimeout`.
    public var writeStallTimeouts = 0
    /// Multishot receives that ended at their per-arming byte limit (`receiveBurstLimit`) and were
    /// re-armed (io_uring; kernels with IORING_RECV_MSHOT_LIM).
    public var receiveBurstLimitEnds = 0
    /// Receive completions that carried more than one buffer (io_uring receive bundles,
    /// IORING_RECVSEND_BUNDLE, 6.10+), and the buffers they carried.
    public var bundledReceives = 0
    public var bundledBuffers = 0
    /// Connections whose receive filled a whole buffer, so their receives ask for bundles from the next
    /// arming on (io_uring with the per-arming byte limit; message-sized receives never ask: a bundle's
    /// buffer-ring peek is a cost to them. Without the limit every receive asks, and this stays 0).
    public var bulkInputConnections = 0
    /// Kernel entries that waited for completions (io_uring; 0 on epoll), and those of them that asked
    /// for two because they submitted sends with no completion ready (the send wait,
    /// `ServerConfiguration.sendCompletionWait`): at one connection a request-response then costs one
    /// entry instead of two.
    public var loopWaits = 0
    public var sendWaits = 0
    /// Operations that failed with an errno that means a bug in the engine (EFAULT, EBADF on a
    /// descriptor it owns, EINVAL on an operation the kernel supports, ENOTSOCK): logged at error level
    /// with the operation and slot, the connection closed with that errno as its reason.
    public var engineErrors = 0
    /// Teardowns that found a multi-chunk send still in flight (io_uring): its chunks were kept until
    /// that send's final completion.
    public var teardownsWithSendInFlight = 0

    // PROXY protocol (``ServerConfiguration/proxyProtocol``).
    /// Headers accepted from trusted proxies.
    public var proxyHeadersAccepted = 0
    /// Connections from trusted proxies closed for a malformed, oversized or missing header (or one cut
    /// short by the end of input).
    public var proxyHeadersRejected = 0
    /// Connections closed because an untrusted address sent a header.
    public var proxyHeadersUntrusted = 0
    /// Connections from trusted proxies closed because the header was not complete within
    /// ``ProxyProtocolConfiguration/headerTimeout``.
    public var proxyHeaderTimeouts = 0

    // Stream layers (TLS and others, ``StreamLayer``), counted by the layers through ``LayerIO/record(_:)``.
    /// Layer handshakes completed (TLS: full and resumed).
    public var tlsHandshakes = 0
    /// Of those, handshakes that resumed a session (TLS session ticket or cache).
    public var tlsResumptions = 0
    /// Handshakes that failed: not TLS, no shared version or cipher, a bad record (logged).
    public var tlsHandshakeFailures = 0
    /// Handshakes cut short: the peer closed (or reset) before the handshake completed.
    public var tlsHandshakesTruncated = 0
    /// Handshakes not complete within their layer's deadline (TLS: `TLSConfiguration.handshakeTimeout`), closed.
    public var tlsHandshakeTimeouts = 0
    /// Connections refused because the loop already had its cap of handshakes in progress.
    public var tlsHandshakesOverCap = 0
    /// Handshakes closed to admit a new one at the cap: the one that had made no progress for longest,
    /// once idle for at least the layer's grace (TLS: `TLSConfiguration.handshakeEvictionGrace`).
    public var tlsHandshakesEvicted = 0
    /// Handshakes in progress now (a gauge).
    public var tlsHandshakesInProgress = 0
    /// TLS connections whose transmit side was handed to the kernel (kTLS) after the handshake: from
    /// then on the kernel encrypts what they send.
    public var tlsKernelTransmits = 0
    /// Errors after the handshake: a bad or truncated record, an alert from the peer (logged).
    public var layerErrors = 0
    /// File sends started by splice through a pipe (io_uring, ``ServerConfiguration/fileSpliceThreshold``).
    public var fileSplices = 0
    /// File bytes sent by splice (counted when each splice completes).
    public var fileSpliceBytes = 0
    /// File sends that could have spliced but found no free pipe, and read into send chunks instead.
    public var fileSpliceFallbacks = 0
    /// Splice pipes holding bytes of a send in flight now (a gauge).
    public var splicePipesInUse = 0

    // Zero-copy sends (``ServerConfiguration/zeroCopySendThreshold``, io_uring).
    /// Sends submitted as IORING_OP_SEND_ZC from the registered send chunks.
    public var zeroCopySends = 0
    /// Their notifications (IORING_CQE_F_NOTIF: the kernel is done with the chunks, which only then
    /// return to the pool) that report the bytes went out without a copy.
    public var zeroCopySendsCompleted = 0
    /// Notifications that report the kernel copied the bytes after all (IORING_NOTIF_USAGE_ZC_COPIED):
    /// always the case over loopback, where the receiver is local.
    public var zeroCopySendsCopied = 0

    /// Every connection closed by a deadline (authentication, idle, read, write stall).
    public var deadlineClosures: Int { authenticationTimeouts + idleTimeouts + readTimeouts + writeStallTimeouts }

    public init() {}
}
