import Logging
import Ringside
import Synchronization

/// A certificate chain and its private key (PEM files), and the server names (SNI) it answers for.
public struct TLSCertificate: Sendable, Equatable {
    /// The certificate chain, leaf first (PEM).
    public var certificateFile: String
    /// The private key (PEM, unencrypted).
    public var keyFile: String
    /// Names this certificate is chosen for when a client asks for them with SNI: exact names, or
    /// `*.example.com` for any one label under `example.com`. The first certificate of a
    /// ``TLSConfiguration`` is also the default for every other name and for clients without SNI.
    public var serverNames: [String]

    public init(certificateFile: String, keyFile: String, serverNames: [String] = []) {
        self.certificateFile = certificateFile; self.keyFile = keyFile; self.serverNames = serverNames
    }
}

/// The oldest TLS version accepted (1.2 or 1.3; nothing older is ever offered).
public enum TLSVersion: String, Sendable, CustomStringConvertible {
    case tls12 = "TLSv1.2"
    case tls13 = "TLSv1.3"
    public var description: String { rawValue }
}

/// How a server speaks TLS.
public struct TLSConfiguration: Sendable {
    /// The certificates; the first is the default (see ``TLSCertificate/serverNames``). At least one.
    public var certificates: [TLSCertificate]
    /// ALPN protocols offered, the server's preference first (`http/1.1` by default; empty: no ALPN).
    public var alpn: [String] = ["http/1.1"]
    /// The oldest version accepted: TLS 1.2 (default) or 1.3.
    public var minimumVersion: TLSVersion = .tls12
    /// Session tickets (stateless resumption, TLS 1.2 and 1.3). On by default. Tickets are bound to the
    /// context: after ``TLSContext/reload()`` older tickets give a full handshake.
    public var sessionTickets = true
    /// Handshakes in progress allowed per event loop. A handshake counts from the connection's first
    /// byte (before it, a connection holds no TLS state and costs no CPU) to its completion or the
    /// connection's end. At the cap, a new handshake evicts the one that has made no progress for
    /// longest, if that one has been idle for at least ``handshakeEvictionGrace`` (its connection is
    /// aborted, counted in ``ServerStats/tlsHandshakesEvicted``); otherwise the new connection is
    /// closed before any cryptography (counted in ``ServerStats/tlsHandshakesOverCap``). Handshakes
    /// are the expensive part of TLS: the cap bounds the CPU and memory (OpenSSL's state: tens of KiB
    /// per handshake waiting for the rest of a ClientHello) that handshakes take at any moment, and the
    /// eviction keeps a flood of idle half-open handshakes from locking good clients out.
    public var maximumHandshakesPerLoop = 512
    /// How long a handshake must have made no progress before a new one may evict it at the cap (see
    /// ``maximumHandshakesPerLoop``). Progress: the server answered a flight of the client's, or the
    /// first bytes arrived; bytes that do not complete a handshake message do not count, so a client
    /// that trickles its ClientHello is as idle as one that sent half of it and stopped.
    ///
    /// A legitimate handshake is idle for about one round trip (the client's answer to the server's
    /// flight), so it is never evicted when its round trip is shorter than the grace; and an attack
    /// must open more than `maximumHandshakesPerLoop / grace` handshakes a second per loop (1,024 with
    /// the defaults) to keep every one too young to evict, and so newcomers refused. 500 ms by
    /// default; nil: never evict (a connection beyond the cap is always refused).
    public var handshakeEvictionGrace: Duration? = .milliseconds(500)
    /// How long a handshake may take from the accept, then the connection is closed (counted in
    /// ``ServerStats/tlsHandshakeTimeouts``). Independent of, and usually shorter than,
    /// ``ServerConfiguration/authenticationTimeout``, which also runs through the handshake. Nil: only
    /// the authentication deadline applies.
    public var handshakeTimeout: Duration? = .seconds(10)
    /// Kernel TLS for sending: after the handshake the keys go to the kernel (`TCP_ULP` "tls",
    /// `SOL_TLS`/`TLS_TX`), which then encrypts what the connection sends; receiving stays in user
    /// space. Used where the kernel has the `tls` module and the backend can set socket options in
    /// order with its sends (epoll; io_uring with socket commands, 6.7+, or ordinary descriptors), for
    /// AES-GCM and ChaCha20-Poly1305 suites; each connection counts in ``ServerStats/tlsKernelTransmits``.
    /// On by default; `RINGSIDE_DISABLE=ktls` (``KernelFeatures/kernelTLS``) masks it too.
    public var kernelTLS = true

    public init(certificates: [TLSCertificate]) { self.certificates = certificates }

    /// One certificate for every name.
    public init(certificateFile: String, keyFile: String) {
        certificates = [TLSCertificate(certificateFile: certificateFile, keyFile: keyFile)]
    }
}

/// Why TLS could not be set up (a file, a key that does not match, a bad setting).
public struct TLSError: Error, CustomStringConvertible, Sendable {
    public let description: String
    init(_ d: String) { description = d }
}

/// A server's TLS: the shared OpenSSL context (one for every loop) and the factory of per-connection
/// ``StreamLayer``s. Certificates and keys can be reloaded while serving (``reload()``).
///
/// ```swift
/// let tls = try TLSContext(TLSConfiguration(certificateFile: "cert.pem", keyFile: "key.pem"))
/// let server = try RingsideServer.start(configuration: config, layers: LayerStackFactory([tls])) { MyHandler() }
/// ```
public final class TLSContext: StreamLayerFactory {
    private let state: Mutex<(TLSConfiguration, OpenSSLContextSet)>
    let logger: Logger

    /// Loads the certificates and keys of `configuration`.
    /// - Throws: ``TLSError`` when a file cannot be read, a key does not match its certificate, or a
    ///   setting is invalid.
    public init(_ configuration: TLSConfiguration, logger: Logger = Logger(label: "ringside.tls")) throws(TLSError) {
        let set = try OpenSSLContextSet(configuration)
        state = Mutex((configuration, set))
        self.logger = logger
        let grace = configuration.handshakeEvictionGrace.map { "\($0)" } ?? "off"
        logger.info("TLS ready: \(set.summary) handshakesPerLoop=\(configuration.maximumHandshakesPerLoop) evictAfter=\(grace) \(KernelTLS.status.description)")
    }

    /// Re-reads the certificate and key files (for example after a renewal); connections accepted
    /// from now on use them, connections already open keep theirs. On failure the old ones stay in use.
    /// Any thread.
    public func reload() throws(TLSError) {
        let config = state.withLock { $0.0 }
        let set = try OpenSSLContextSet(config)
        state.withLock { $0.1 = set }
        logger.info("TLS certificates reloaded: \(set.summary)")
    }

    var configuration: TLSConfiguration { state.withLock { $0.0 } }

    /// A server-side TLS layer for one new connection, on the current certificates (loop thread).
    public func makeLayer() -> any StreamLayer {
        let (config, set) = state.withLock { ($0.0, $0.1) }
        return TLSLayer(contexts: set, maximumHandshakes: config.maximumHandshakesPerLoop,
                        evictionGrace: config.handshakeEvictionGrace, handshakeTimeout: config.handshakeTimeout,
                        kernelTLS: config.kernelTLS, logger: logger)
    }
}

/// TLS for one connection, server side.
///
/// Handshake: counted against the loop's cap from the first byte to completion (evicting the loop's
/// longest-idle handshake at the cap, see ``TLSConfiguration/maximumHandshakesPerLoop``); the `SSL`
/// is made at the first byte too, so a connection that has sent nothing holds no OpenSSL state. The
/// connection's authentication deadline (``ServerConfiguration/authenticationTimeout``) runs through it (see
/// ``LayeredHandler``). A failed handshake (garbage instead of a ClientHello, no shared version)
/// queues OpenSSL's alert, then closes gracefully so the alert leaves; a peer that closes mid-handshake
/// is closed. Each failure is logged (rate-limited) and counted in ``ServerStats``.
final class TLSLayer: StreamLayer {
    private let contexts: OpenSSLContextSet
    /// Made at the first byte (`startHandshake`).
    private var session: OpenSSLSession? = nil
    private let maximumHandshakes: Int
    private let evictionGrace: Duration?
    private let handshakeTimeout: Duration?
    private let logger: Logger
    private(set) var isEstablished = false
    private var handshakeCounted = false
    private var failed = false
    private var shutdownSent = false

    private let kernelTLSEnabled: Bool

    init(contexts: OpenSSLContextSet, maximumHandshakes: Int, evictionGrace: Duration?, handshakeTimeout: Duration?,
         kernelTLS: Bool, logger: Logger) {
        self.contexts = contexts
        self.kernelTLSEnabled = kernelTLS
        self.maximumHandshakes = maximumHandshakes
        self.evictionGrace = evictionGrace
        self.handshakeTimeout = handshakeTimeout
        self.logger = logger
    }

    func opened(_ io: LayerIO) {
        if let handshakeTimeout { io.connection.setTimer(after: handshakeTimeout) }
    }

    /// The first bytes: the handshake counts against the loop's cap (evicting an idle one, or refused),
    /// then gets its `SSL`. False when the connection is closing instead.
    private func startHandshake(_ io: LayerIO) -> Bool {
        switch io.beginHandshake(limit: maximumHandshakes, evictingIdleFor: evictionGrace) {
        case .admitted: break
        case .evicted(let peer, let idle):
            warn(io, .handshakeEvicted, "admitted at the cap of \(maximumHandshakes) handshakes in progress by evicting the one from \(peer.map { "\($0)" } ?? "?") (no progress for \(idle))")
        case .refused:
            let grace = evictionGrace.map { "none idle for \($0) yet" } ?? "eviction off"
            fail(io, .handshakeOverCap, "\(maximumHandshakes) handshakes already in progress on this loop (\(grace))", abort: true)
            return false
        }
        handshakeCounted = true
        let kernelTLS = kernelTLSEnabled && KernelTLS.status == .available && io.supportsOrderedSocketOperations
        guard let s = OpenSSLSession(contexts: contexts, kernelTLS: kernelTLS) else {
            fail(io, .handshakeFailed, "SSL_new failed: \(drainOpenSSLErrors())", abort: true)
            return false
        }
        session = s
        return true
    }

    func timerFired(_ io: LayerIO) {
        guard !isEstablished, !failed, let handshakeTimeout else { return }
        fail(io, .handshakeTimedOut, "the handshake was not complete within \(handshakeTimeout)", abort: false)
    }

    func inbound(_ bytes: UnsafeRawBufferPointer, _ io: LayerIO, deliver: (UnsafeRawBufferPointer) -> Void) {
        guard !failed, bytes.count > 0 else { return }
        if session == nil && !startHandshake(io) { return }
        guard let session else { return }
        session.feed(bytes, io)
        defer { session.end() }
        if !isEstablished {
            let written = session.bytesWritten
            switch session.handshake(io) {
            case .done:
                isEstablished = true
                if handshakeTimeout != nil { io.connection.cancelTimer() }
                endHandshake(io)
                io.record(.handshakeCompleted(resumed: session.resumed))
                if session.kernelTransmit { io.record(.kernelTransmit) }
            case .wantRead:
                // Every byte is with OpenSSL's record layer now. A flight answered is progress (the
                // handshake becomes the loop's last to evict); a partial message is not.
                if session.bytesWritten != written { io.handshakeProgressed() }
                return
            case .closed:
                fail(io, .handshakeTruncated, "close_notify during the handshake", abort: false)
                return
            case .failed(let why):
                // OpenSSL answers a malformed handshake with an alert, but not bytes that are no TLS
                // record at all (an HTTP request, say): those get a fatal decode_error alert here.
                if session.bytesWritten == written { Self.sendAlert(50, io) }
                fail(io, .handshakeFailed, why, abort: false)
                return
            }
        }
        // Application data: this input, or what followed the handshake's last record in it.
        withUnsafeTemporaryAllocation(byteCount: 16 * 1024, alignment: 16) { plain in
            while io.connection.isOpen {
                switch session.read(into: plain, io) {
                case .done(let n): deliver(UnsafeRawBufferPointer(rebasing: plain[0..<n]))
                case .wantRead: return
                case .closed: return  // the peer's close_notify: its end-of-file follows
                case .failed(let why):
                    fail(io, .error, why, abort: false)
                    return
                }
            }
        }
    }

    func outbound(_ bytes: UnsafeRawBufferPointer, _ io: LayerIO) throws(WriteError) {
        guard let session, isEstablished, !failed, !shutdownSent else { throw .closed }
        // Room for every record first, so a write is all or nothing (a refused SSL_write must be
        // retried with the same bytes, which a handler that got an error would not do): up to 16 KiB
        // of plaintext per record, plus at most 64 bytes of header, tag and padding.
        let needed = bytes.count + (bytes.count / 16384 + 1) * 64
        guard io.queueableBytes >= needed else { throw .bufferPoolExhausted }
        switch session.write(bytes, io) {
        case .done: return
        case .failed(let why):
            fail(io, .error, why, abort: true)
            throw .closed
        case .wantRead, .closed:
            fail(io, .error, "write: unexpected renegotiation or close", abort: true)
            throw .closed
        }
    }

    /// A fatal alert record in the clear (before any keys): type 21, version 1.2, length 2, level 2.
    private static func sendAlert(_ description: UInt8, _ io: LayerIO) {
        let record: [UInt8] = [21, 3, 3, 0, 2, 2, description]
        let r: Result<Void, WriteError> = record.withUnsafeBytes { p in Result { () throws(WriteError) in try io.send(p) } }
        // Refused (pool exhausted, connection closing): the close that follows is the answer then; the
        // handshake failure is counted and logged by the caller either way.
        _ = r
    }

    func closing(_ io: LayerIO) {
        guard let session, isEstablished, !failed, !shutdownSent else { return }
        shutdownSent = true
        session.shutdown(io)
    }

    func inputEnded(_ io: LayerIO) -> Bool {
        if isEstablished {
            // A record cut short by the end of input: counted and logged; the handler still hears of
            // the end of input (it decides, as for plain TCP, whether to answer before closing).
            if let session, !failed, session.hasPendingInput {
                io.record(.error)
                warn(io, .error, "the input ended inside a record (truncated record)")
            }
            return true
        }
        if !failed && handshakeCounted {
            fail(io, .handshakeTruncated, "the peer closed before the handshake completed", abort: false)
        } else if !failed {
            // Not a byte before the end (a port probe, a health check): nothing began, nothing to count.
            io.connection.close()
        }
        return false
    }

    func closed(_ io: LayerIO) { endHandshake(io) }

    private func endHandshake(_ io: LayerIO) {
        if handshakeCounted { handshakeCounted = false; io.endHandshake() }
    }

    /// Logs `why` (the first 10 of a kind per loop, then every 1000th: a flood cannot flood the log).
    private func warn(_ io: LayerIO, _ event: LayerEvent, _ why: String) {
        let n = io.count(of: event)
        guard n <= 10 || n % 1000 == 0 else { return }
        let peer = io.connection.peerAddress.map { "\($0)" } ?? "?"
        logger.warning("TLS: connection from \(peer): \(why) (\(event) count \(n) on this loop)")
    }

    /// Counts and logs a failure (the first 10 of a kind per loop, then every 1000th), then closes:
    /// gracefully, so an alert OpenSSL queued leaves first, or at once.
    private func fail(_ io: LayerIO, _ event: LayerEvent, _ why: String, abort: Bool) {
        failed = true
        endHandshake(io)
        io.record(event)
        warn(io, event, why)
        if abort { io.connection.abort() } else { io.connection.close() }
    }
}
