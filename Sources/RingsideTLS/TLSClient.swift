import COpenSSL
import Glibc
import Logging
import Ringside
import Synchronization

// The client role of RingsideTLS (what `ringload --tls` speaks): a shared client context, a client
// stream layer for the engine's outbound connections, and a session over a plain non-blocking socket
// for connect-handshake-close loops. OpenSSL stays behind this module, as for the server.

/// How a client speaks TLS.
public struct TLSClientConfiguration: Sendable {
    /// CA certificates (PEM) the server's chain must verify against; nil: no verification at all (any
    /// certificate is accepted: for load tests against a throwaway certificate only).
    public var caFile: String?
    /// The name sent with SNI and, when verifying, checked against the certificate; nil: no SNI.
    public var serverName: String?
    /// The address connected to: when verifying without a ``serverName``, checked against the
    /// certificate's IP addresses (subjectAltName IP entries).
    public var host: String?
    /// Pin one version (nil: TLS 1.2 or 1.3, whichever the server prefers).
    public var version: TLSVersion?
    /// Resume sessions: a new connection presents the ticket of an earlier one (see
    /// ``TLSClientContext/latestTicket`` and ``TLSClientSession/ticket``). On by default.
    public var resumption = true
    /// ALPN protocols offered (empty: no ALPN extension).
    public var alpn: [String] = []

    /// A configuration verifying against `caFile` (nil: no verification), sending `serverName` with
    /// SNI, connecting to `host`; TLS 1.2 or 1.3, resumption on, no ALPN.
    public init(caFile: String? = nil, serverName: String? = nil, host: String? = nil) {
        self.caFile = caFile; self.serverName = serverName; self.host = host
    }

    /// Whether the server's certificate is verified (a CA file was given).
    public var verifiesPeer: Bool { caFile != nil }
}

/// A resumable session (TLS 1.2 session ticket, or TLS 1.3 `NewSessionTicket`) from an earlier
/// connection, to present on a new one. Immutable once received.
///
/// `@unchecked Sendable`: an `SSL_SESSION` that is resumable is not modified by OpenSSL any more, and
/// `SSL_set_session` only takes a reference (OpenSSL's reference counting is thread-safe).
public final class TLSSessionTicket: @unchecked Sendable {
    let session: OpaquePointer
    /// Takes over one reference to `session`.
    init(owning session: OpaquePointer) { self.session = session }
    deinit { SSL_SESSION_free(session) }
}

/// The outcome of a ``TLSClientSession`` call.
public enum TLSClientStep: Equatable, Sendable {
    /// Complete: the handshake finished, or this many bytes were read or written.
    case done(Int)
    /// Call again once the socket is readable.
    case wantRead
    /// Call again once the socket is writable.
    case wantWrite
    /// The peer sent close_notify, or closed the connection.
    case closed
    /// The connection is unusable; why.
    case failed(String)
}

/// A client's shared TLS context: one `SSL_CTX` for every connection (and loop), the factory of
/// client ``StreamLayer``s for the engine's outbound connections (``makeLayer()``) and of
/// ``TLSClientSession``s over plain sockets (``session(socket:resuming:)``).
///
/// ```swift
/// let tls = try TLSClientContext(TLSClientConfiguration(caFile: "ca.pem", serverName: "localhost"))
/// var config = ServerConfiguration(host: "127.0.0.1", port: 0)
/// config.listen = false
/// config.connect = OutboundConnections(host: "127.0.0.1", port: 8443, count: 10)
/// let client = try RingsideServer.start(configuration: config, layers: LayerStackFactory([tls])) { MyClient() }
/// ```
///
/// `@unchecked Sendable`: the `SSL_CTX` is configured in `init` and only used for `SSL_new` afterwards
/// (thread-safe in OpenSSL 3); the latest ticket is behind a mutex.
public final class TLSClientContext: StreamLayerFactory, @unchecked Sendable {
    /// The configuration this context was made from.
    public let configuration: TLSClientConfiguration
    let context: OpaquePointer
    let logger: Logger
    private let latest = Mutex<TLSSessionTicket?>(nil)
    /// ALPN in wire format (kept for SSL_CTX_set_alpn_protos's copy; empty: none).
    private let alpnWire: [UInt8]

    /// Builds the context: versions, verification (CA file), ALPN.
    /// - Throws: ``TLSError`` when the CA file cannot be read or a setting is invalid.
    public init(_ configuration: TLSClientConfiguration, logger: Logger = Logger(label: "ringside.tls.client")) throws(TLSError) {
        self.configuration = configuration
        self.logger = logger
        var wire: [UInt8] = []
        for p in configuration.alpn {
            guard (1...255).contains(p.utf8.count) else { throw TLSError("ALPN protocol \"\(p)\" must be 1...255 bytes") }
            wire.append(UInt8(p.utf8.count)); wire.append(contentsOf: p.utf8)
        }
        alpnWire = wire
        ERR_clear_error()
        guard let c = SSL_CTX_new(TLS_client_method()) else { throw TLSError("SSL_CTX_new: \(drainOpenSSLErrors())") }
        let minimum = configuration.version == .tls13 ? TLS1_3_VERSION : TLS1_2_VERSION
        let maximum = configuration.version == .tls12 ? TLS1_2_VERSION : TLS1_3_VERSION
        guard rs_ssl_ctx_set_protocols(c, minimum, maximum) == 1 else {
            SSL_CTX_free(c)
            throw TLSError("setting the protocol versions: \(drainOpenSSLErrors())")
        }
        // No renegotiation, no TLS-level compression (the server's hardening, shared); then the client
        // cache mode: sessions are kept by the caller (tickets), not in OpenSSL's internal cache.
        rs_ssl_ctx_harden(c, configuration.resumption ? 1 : 0)
        _ = SSL_CTX_ctrl(c, SSL_CTRL_SET_SESS_CACHE_MODE, Int(SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE), nil)
        if let ca = configuration.caFile {
            guard SSL_CTX_load_verify_locations(c, ca, nil) == 1 else {
                SSL_CTX_free(c)
                throw TLSError("loading the CA certificates \(ca): \(drainOpenSSLErrors())")
            }
            SSL_CTX_set_verify(c, SSL_VERIFY_PEER, nil)
        } else {
            SSL_CTX_set_verify(c, SSL_VERIFY_NONE, nil)
        }
        if !wire.isEmpty {
            let r = wire.withUnsafeBufferPointer { SSL_CTX_set_alpn_protos(c, $0.baseAddress, UInt32($0.count)) }
            guard r == 0 else {
                SSL_CTX_free(c)
                throw TLSError("setting ALPN: \(drainOpenSSLErrors())")
            }
        }
        context = c
    }

    deinit { SSL_CTX_free(context) }

    /// The most recent resumable session any connection of this context received (nil before the
    /// first, or with resumption off). New client layers present it.
    public var latestTicket: TLSSessionTicket? { latest.withLock { $0 } }

    func remember(_ ticket: TLSSessionTicket) { latest.withLock { $0 = ticket } }

    /// A new `SSL` in the connect state: SNI, the hostname or IP check when verifying, the ticket.
    func newSSL(resuming ticket: TLSSessionTicket?) throws(TLSError) -> OpaquePointer {
        ERR_clear_error()
        guard let ssl = SSL_new(context) else { throw TLSError("SSL_new: \(drainOpenSSLErrors())") }
        if let name = configuration.serverName {
            let ok = name.withCString { SSL_ctrl(ssl, SSL_CTRL_SET_TLSEXT_HOSTNAME, Int(TLSEXT_NAMETYPE_host_name), UnsafeMutableRawPointer(mutating: $0)) }
            guard ok == 1 else { SSL_free(ssl); throw TLSError("setting SNI \(name): \(drainOpenSSLErrors())") }
        }
        if configuration.verifiesPeer {
            if let name = configuration.serverName {
                guard SSL_set1_host(ssl, name) == 1 else { SSL_free(ssl); throw TLSError("setting the expected host \(name): \(drainOpenSSLErrors())") }
            } else if let host = configuration.host {
                guard X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), host) == 1 else {
                    SSL_free(ssl); throw TLSError("setting the expected address \(host): \(drainOpenSSLErrors())")
                }
            }
        }
        if configuration.resumption, let ticket {
            guard SSL_set_session(ssl, ticket.session) == 1 else { SSL_free(ssl); throw TLSError("SSL_set_session: \(drainOpenSSLErrors())") }
        }
        SSL_set_connect_state(ssl)
        return ssl
    }

    /// A client TLS layer for one new outbound connection (loop thread): the handshake starts when the
    /// connection opens, presenting ``latestTicket`` when resumption is on.
    public func makeLayer() -> any StreamLayer {
        TLSClientLayer(context: self, ticket: configuration.resumption ? latestTicket : nil)
    }

    /// A client session over `socket`, a connected (or connecting) non-blocking TCP socket the caller
    /// keeps owning (and closes after the session is done). Presents `ticket` when resumption is on.
    /// - Throws: ``TLSError`` when OpenSSL cannot make the session.
    public func session(socket: Int32, resuming ticket: TLSSessionTicket?) throws(TLSError) -> TLSClientSession {
        let ssl = try newSSL(resuming: ticket)
        guard SSL_set_fd(ssl, socket) == 1 else { SSL_free(ssl); throw TLSError("SSL_set_fd: \(drainOpenSSLErrors())") }
        return TLSClientSession(ssl: ssl, resumption: configuration.resumption)
    }

    /// A client session over memory: the caller moves the ciphertext itself, feeding what the socket
    /// received with ``TLSClientSession/feed(_:)`` and sending what ``TLSClientSession/takeOutput(_:)``
    /// hands out after each call (for I/O that is not a plain socket read or write, such as
    /// io_uring). Presents `ticket` when resumption is on.
    /// - Throws: ``TLSError`` when OpenSSL cannot make the session.
    public func memorySession(resuming ticket: TLSSessionTicket?) throws(TLSError) -> TLSClientSession {
        let ssl = try newSSL(resuming: ticket)
        guard let rbio = BIO_new(BIO_s_mem()), let wbio = BIO_new(BIO_s_mem()) else {
            SSL_free(ssl); throw TLSError("BIO_new: \(drainOpenSSLErrors())")
        }
        SSL_set_bio(ssl, rbio, wbio)  // the SSL owns both from here
        return TLSClientSession(ssl: ssl, resumption: configuration.resumption, memory: (rbio, wbio))
    }
}

/// The resumable session of `ssl`, if it has one (TLS 1.3: once a `NewSessionTicket` was read).
private func resumableTicket(_ ssl: OpaquePointer) -> TLSSessionTicket? {
    guard let s = SSL_get1_session(ssl) else { return nil }
    guard SSL_SESSION_is_resumable(s) == 1 else { SSL_SESSION_free(s); return nil }
    return TLSSessionTicket(owning: s)
}

/// One client connection's TLS, over a plain non-blocking socket (OpenSSL's socket BIO,
/// ``TLSClientContext/session(socket:resuming:)``) or over memory
/// (``TLSClientContext/memorySession(resuming:)``: the caller moves the ciphertext). Drive
/// ``handshake()`` until it is done, then ``read(into:)`` and ``write(_:)``; each returns
/// ``TLSClientStep/wantRead`` or ``TLSClientStep/wantWrite`` when the socket would block (memory: when
/// more input must be fed). Confined to one thread at a time.
public final class TLSClientSession {
    private let ssl: OpaquePointer
    private let resumption: Bool
    /// The resumable session this connection received (TLS 1.2: with the handshake; TLS 1.3: once a
    /// ticket was read, which follows the handshake: read after it). Nil with resumption off.
    public private(set) var ticket: TLSSessionTicket? = nil

    /// Memory sessions: the input and output BIOs (owned by the SSL).
    private let memory: (input: OpaquePointer, output: OpaquePointer)?

    init(ssl: OpaquePointer, resumption: Bool, memory: (OpaquePointer, OpaquePointer)? = nil) {
        self.ssl = ssl; self.resumption = resumption; self.memory = memory
    }
    deinit { SSL_free(ssl) }

    /// Memory sessions: ciphertext received from the server, for the calls that follow. All of it is
    /// taken (OpenSSL buffers what it cannot use yet).
    public func feed(_ ciphertext: UnsafeRawBufferPointer) {
        guard let memory, let p = ciphertext.baseAddress, ciphertext.count > 0 else { return }
        _ = BIO_write(memory.input, p, Int32(ciphertext.count))
    }

    /// Memory sessions: how many ciphertext bytes wait to be sent (see ``takeOutput(_:)``).
    public var outputPending: Int {
        guard let memory else { return 0 }
        return Int(BIO_ctrl_pending(memory.output))
    }

    /// Memory sessions: hands the ciphertext waiting to be sent to `body`, in pieces of up to 16 KiB
    /// (each lent for the call), and forgets it.
    public func takeOutput(_ body: (UnsafeRawBufferPointer) -> Void) {
        guard let memory else { return }
        withUnsafeTemporaryAllocation(byteCount: 16 * 1024, alignment: 16) { buf in
            while true {
                let n = BIO_read(memory.output, buf.baseAddress, Int32(buf.count))
                guard n > 0 else { return }
                body(UnsafeRawBufferPointer(rebasing: buf[0..<Int(n)]))
            }
        }
    }

    private func step(_ r: Int32, _ what: String) -> TLSClientStep {
        if r > 0 { return .done(Int(r)) }
        let e = SSL_get_error(ssl, r)
        switch e {
        case SSL_ERROR_WANT_READ: return .wantRead
        case SSL_ERROR_WANT_WRITE: return .wantWrite
        case SSL_ERROR_ZERO_RETURN: return .closed
        case SSL_ERROR_SYSCALL where ERR_peek_error() == 0:
            let err = errno
            return r == 0 || err == 0 ? .closed : .failed("\(what): \(String(cString: strerror(err)))")
        default: return .failed("\(what): \(drainOpenSSLErrors("SSL_get_error \(e)"))")
        }
    }

    private func captureTicket() {
        if resumption, ticket == nil { ticket = resumableTicket(ssl) }
    }

    /// Drives the handshake.
    public func handshake() -> TLSClientStep {
        ERR_clear_error()
        let r = step(SSL_do_handshake(ssl), "handshake")
        if case .done = r { captureTicket() }
        return r
    }

    /// Decrypted bytes into `buffer` (also takes in session tickets that arrive after the handshake).
    /// (The thread's OpenSSL error queue is kept empty: failures drain it, the handshake clears it.)
    public func read(into buffer: UnsafeMutableRawBufferPointer) -> TLSClientStep {
        let r = step(SSL_read(ssl, buffer.baseAddress, Int32(buffer.count)), "read")
        captureTicket()
        return r
    }

    /// Encrypts and sends `bytes`; on ``TLSClientStep/wantWrite`` call again with the same bytes.
    public func write(_ bytes: UnsafeRawBufferPointer) -> TLSClientStep {
        return step(SSL_write(ssl, bytes.baseAddress, Int32(bytes.count)), "write")
    }

    /// Sends close_notify (best effort, without waiting for the peer's).
    public func shutdown() {
        ERR_clear_error()
        _ = SSL_shutdown(ssl)
        ERR_clear_error()
    }

    /// Whether the handshake resumed a session (`SSL_session_reused`).
    public var isResumed: Bool { SSL_session_reused(ssl) == 1 }
    /// The negotiated version ("TLSv1.3").
    public var protocolVersion: String { String(cString: SSL_get_version(ssl)) }
}

/// The client role as a stream layer on the engine's outbound connections: starts the handshake when
/// the connection opens, then encrypts what the handler writes and decrypts what arrives. Records go
/// straight into the connection's send chunks, ciphertext is read straight from the receive chunks
/// (through the same `RingsideBIO` as the server's sessions). Handshakes are counted in the client loop's ``ServerStats``
/// (``ServerStats/tlsHandshakes``, ``ServerStats/tlsResumptions``, ``ServerStats/tlsHandshakeFailures``).
final class TLSClientLayer: BIOEndpoint, StreamLayer {
    private let ssl: OpaquePointer?
    private let context: TLSClientContext
    private let setupError: String?
    private(set) var isEstablished = false
    private var failed = false
    private var shutdownSent = false
    private var ticketTaken = false
    private var input = UnsafeRawBufferPointer(start: nil, count: 0)
    private var inputPosition = 0
    private var io: LayerIO? = nil
    private var writeFailure: WriteError? = nil

    init(context: TLSClientContext, ticket: TLSSessionTicket?) {
        self.context = context
        var made: OpaquePointer? = nil
        var why: String? = nil
        do { made = try context.newSSL(resuming: ticket) } catch { why = error.description }
        let bio = made != nil ? BIO_new(RingsideBIO.method) : nil
        if let s = made, bio == nil { SSL_free(s); made = nil; why = "BIO_new: \(drainOpenSSLErrors())" }
        ssl = made
        setupError = why
        super.init()
        if let s = made, let bio {
            // Invariant: the BIO's data is this layer, unretained; the layer owns the SSL that owns the
            // BIO and frees it in deinit, and OpenSSL calls back only inside the layer's own calls.
            BIO_set_data(bio, Unmanaged.passUnretained(self).toOpaque())
            BIO_set_init(bio, 1)
            SSL_set_bio(s, bio, bio)
        }
    }

    deinit { if let ssl { SSL_free(ssl) } }

    override func bioRead(_ into: UnsafeMutableRawPointer, _ max: Int) -> Int {
        let n = min(max, input.count - inputPosition)
        guard n > 0 else { return 0 }
        into.copyMemory(from: input.baseAddress! + inputPosition, byteCount: n)
        inputPosition += n
        return n
    }

    override func bioWrite(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard writeFailure == nil, let io else { return false }
        do { try io.send(bytes) } catch { writeFailure = error; return false }
        return true
    }

    /// One SSL call with `io` as the BIO's destination. The thread's error queue is kept empty rather
    /// than cleared before every call (as the server does, see `OpenSSLSession.outcome`): failures drain
    /// it, and the rare calls (handshake, shutdown) clear it first as well.
    private func call(_ io: LayerIO, _ what: String, clear: Bool = false, _ body: (OpaquePointer) -> Int32) -> TLSClientStep {
        guard let ssl else { return .failed(setupError ?? "no session") }
        let outer = self.io
        self.io = io
        writeFailure = nil
        if clear { ERR_clear_error() }
        let r = body(ssl)
        self.io = outer
        if r > 0 { return .done(Int(r)) }
        let e = SSL_get_error(ssl, r)
        switch e {
        case SSL_ERROR_WANT_READ: return .wantRead
        case SSL_ERROR_ZERO_RETURN: return .closed
        default:
            if let w = writeFailure { ERR_clear_error(); return .failed("\(what): queueing a record failed: \(w)") }
            return .failed("\(what): \(drainOpenSSLErrors("SSL_get_error \(e)"))")
        }
    }

    private func handshake(_ io: LayerIO) {
        switch call(io, "handshake", clear: true, { SSL_do_handshake($0) }) {
        case .done:
            isEstablished = true
            io.record(.handshakeCompleted(resumed: ssl.map { SSL_session_reused($0) == 1 } ?? false))
            takeTicket()
        case .wantRead, .wantWrite: return
        case .closed: fail(io, .handshakeTruncated, "close_notify during the handshake")
        case .failed(let why): fail(io, .handshakeFailed, why)
        }
    }

    private func takeTicket() {
        guard context.configuration.resumption, !ticketTaken, let ssl, let t = resumableTicket(ssl) else { return }
        ticketTaken = true
        context.remember(t)
    }

    func opened(_ io: LayerIO) {
        guard ssl != nil else { fail(io, .handshakeFailed, setupError ?? "no session"); return }
        handshake(io)  // the ClientHello
    }

    func inbound(_ bytes: UnsafeRawBufferPointer, _ io: LayerIO, deliver: (UnsafeRawBufferPointer) -> Void) {
        guard ssl != nil, !failed else { return }
        input = bytes
        inputPosition = 0
        defer { input = UnsafeRawBufferPointer(start: nil, count: 0); inputPosition = 0 }
        if !isEstablished {
            handshake(io)
            guard isEstablished else { return }
        }
        withUnsafeTemporaryAllocation(byteCount: 16 * 1024, alignment: 16) { plain in
            while io.connection.isOpen && !failed {
                switch call(io, "read", { SSL_read($0, plain.baseAddress, Int32(plain.count)) }) {
                case .done(let n): deliver(UnsafeRawBufferPointer(rebasing: plain[0..<n]))
                case .wantRead, .wantWrite, .closed:
                    if !ticketTaken { takeTicket() }
                    return
                case .failed(let why):
                    fail(io, .error, why)
                    return
                }
            }
        }
    }

    func outbound(_ bytes: UnsafeRawBufferPointer, _ io: LayerIO) throws(WriteError) {
        guard ssl != nil, isEstablished, !failed, !shutdownSent else { throw .closed }
        let needed = bytes.count + (bytes.count / 16384 + 1) * 64
        guard io.queueableBytes >= needed else { throw .bufferPoolExhausted }
        switch call(io, "write", { SSL_write($0, bytes.baseAddress, Int32(bytes.count)) }) {
        case .done: return
        case .failed(let why):
            fail(io, .error, why)
            throw .closed
        case .wantRead, .wantWrite, .closed:
            fail(io, .error, "write: unexpected renegotiation or close")
            throw .closed
        }
    }

    func closing(_ io: LayerIO) {
        guard ssl != nil, isEstablished, !failed, !shutdownSent else { return }
        shutdownSent = true
        _ = call(io, "shutdown", clear: true, { SSL_shutdown($0) })
        ERR_clear_error()
    }

    func inputEnded(_ io: LayerIO) -> Bool {
        if isEstablished { return true }
        if !failed { fail(io, .handshakeTruncated, "the server closed before the handshake completed") }
        return false
    }

    /// Counts and logs (the first 10 of a kind per loop, then every 1000th), then aborts.
    private func fail(_ io: LayerIO, _ event: LayerEvent, _ why: String) {
        failed = true
        io.record(event)
        let n = io.count(of: event)
        if n <= 10 || n % 1000 == 0 { context.logger.warning("TLS client: \(why) (\(event) count \(n) on this loop)") }
        io.connection.abort()
    }
}
