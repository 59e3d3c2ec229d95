import COpenSSL
import Ringside

// The only file family that speaks OpenSSL (OpenSSL.swift, OpenSSLContext.swift): `TLSLayer` and
// `TLSContext` see `OpenSSLSession` and `OpenSSLContextSet` only, so another TLS library can replace
// them behind the same face.

/// The OpenSSL error queue of this thread as one line (and emptied), or `fallback` when it is empty.
func drainOpenSSLErrors(_ fallback: String = "no OpenSSL error recorded") -> String {
    var parts: [String] = []
    while true {
        let e = ERR_get_error()
        if e == 0 { break }
        let line = withUnsafeTemporaryAllocation(of: CChar.self, capacity: 256) { buf in
            ERR_error_string_n(e, buf.baseAddress, 256)
            return String(cString: buf.baseAddress!)
        }
        parts.append(line)
    }
    return parts.isEmpty ? fallback : parts.joined(separator: "; ")
}

/// What a `RingsideBIO` reads ciphertext from and writes records to: the server's `OpenSSLSession`
/// and the client's `TLSClientLayer`. A class rather than a protocol: OpenSSL's C callbacks get only a
/// raw pointer, which `Unmanaged` turns back into this class, and the subclass is reached through its
/// vtable.
class BIOEndpoint {
    init() {}
    /// Copies up to `max` bytes of the input lent for the current call; 0 when it is used up.
    func bioRead(_ into: UnsafeMutableRawPointer, _ max: Int) -> Int { 0 }
    /// Queues a record; false when it could not be queued (the call then fails).
    func bioWrite(_ bytes: UnsafeRawBufferPointer) -> Bool { false }
    /// A kTLS control of OpenSSL's (72, 74, 75; see `KernelTLSHandoff`): the server session's. 0: declined.
    func bioControl(_ bio: OpaquePointer, _ cmd: Int32, _ num: Int, _ ptr: UnsafeMutableRawPointer?) -> Int { 0 }
}

/// The custom BIO of both roles: OpenSSL reads ciphertext straight from the receive chunk the engine
/// lent the layer (`bioRead`), and writes records straight into the connection's send chunks
/// (`bioWrite`: `LayerIO.send`, a copy into pooled chunks; no BIO pair, no intermediate buffer).
///
/// Invariant: a BIO's data pointer is its `BIOEndpoint` (session or client layer), unretained. The
/// endpoint owns the `SSL` that owns the BIO and frees it in `deinit`, so the pointer is valid whenever
/// OpenSSL calls back, and OpenSSL only calls back inside one of the endpoint's own calls (handshake,
/// read, write, shutdown), on the loop thread, while its `io` is set.
enum RingsideBIO {
    nonisolated(unsafe) static let method: OpaquePointer = {
        let m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "ringside")!
        BIO_meth_set_write(m) { bio, data, len in
            rs_bio_clear_retry(bio)
            guard let bio, let data, len > 0 else { return 0 }
            let ok = Unmanaged<BIOEndpoint>.fromOpaque(BIO_get_data(bio)!)._withUnsafeGuaranteedRef {
                $0.bioWrite(UnsafeRawBufferPointer(start: data, count: Int(len)))
            }
            return ok ? len : -1
        }
        BIO_meth_set_read(m) { bio, data, len in
            rs_bio_clear_retry(bio)
            guard let bio, let data, len > 0 else { return 0 }
            let n = Unmanaged<BIOEndpoint>.fromOpaque(BIO_get_data(bio)!)._withUnsafeGuaranteedRef {
                $0.bioRead(UnsafeMutableRawPointer(data), Int(len))
            }
            if n == 0 { rs_bio_set_retry_read(bio); return -1 }
            return Int32(n)
        }
        BIO_meth_set_ctrl(m) { bio, cmd, num, ptr in
            // OpenSSL asks GET_KTLS_SEND/RECV around every record: answered here from the BIO's flags
            // (as its socket BIO does), without a call into Swift. FLUSH: records are queued as written.
            switch cmd {
            case BIO_CTRL_FLUSH: return 1
            case BIO_CTRL_GET_KTLS_SEND: return bio.map { BIO_test_flags($0, RingsideBIO.kernelTransmitFlag) != 0 ? 1 : 0 } ?? 0
            case KernelTLSHandoff.setKTLS, KernelTLSHandoff.setControlMessage, KernelTLSHandoff.clearControlMessage:
                guard let bio, let data = BIO_get_data(bio) else { return 0 }
                return Unmanaged<BIOEndpoint>.fromOpaque(data)._withUnsafeGuaranteedRef { $0.bioControl(bio, cmd, Int(num), ptr) }
            default: return 0  // push/pop, pending, GET_KTLS_RECV (receiving stays in user space)
            }
        }
        return m
    }()

    /// The BIO flag that says the kernel encrypts what this BIO sends: OpenSSL's own BIO_FLAGS_KTLS_TX
    /// (include/internal/bio.h), in the range 0x1000-0x4000 that bio.h reserves for the kTLS flags.
    static let kernelTransmitFlag: Int32 = 0x4000
}

/// One connection's TLS state: an `SSL` reading and writing through `RingsideBIO`.
final class OpenSSLSession: BIOEndpoint {
    private let ssl: OpaquePointer
    /// The context set this connection was made from: kept alive while the connection lives (the SNI
    /// callback's argument points into it).
    let contexts: OpenSSLContextSet
    /// The ciphertext being consumed (set for the duration of an inbound call).
    private var input: UnsafeRawBufferPointer = UnsafeRawBufferPointer(start: nil, count: 0)
    private var inputPosition = 0
    /// Where records go (set for the duration of any session call).
    private var io: LayerIO? = nil
    /// The first write failure of the current call (the pool was exhausted, or the connection closed).
    private(set) var writeFailure: WriteError? = nil

    /// Kernel TLS (see `KernelTLSHandoff`): whether this connection may hand its transmit keys to the
    /// kernel, and whether it did.
    private let kernelTLSAllowed: Bool
    /// The kernel encrypts what this connection sends (OpenSSL writes plaintext through the BIO).
    private(set) var kernelTransmit = false
    /// The record type of the next BIO write, a non-data record under kTLS (OpenSSL's control 74).
    private var controlRecordType: UInt8? = nil

    init?(contexts: OpenSSLContextSet, kernelTLS: Bool) {
        guard let ssl = SSL_new(contexts.defaultContext) else { return nil }
        kernelTLSAllowed = kernelTLS
        // SSL_OP_ENABLE_KTLS (a macro Swift does not import): OpenSSL offers each new write key to the
        // BIO (control 72) instead of keeping it.
        if kernelTLS { _ = SSL_set_options(ssl, UInt64(1) << 3) }
        guard let bio = BIO_new(RingsideBIO.method) else { SSL_free(ssl); return nil }
        self.ssl = ssl
        self.contexts = contexts
        super.init()
        BIO_set_data(bio, Unmanaged.passUnretained(self).toOpaque())
        BIO_set_init(bio, 1)
        SSL_set_bio(ssl, bio, bio)  // the SSL owns the BIO from here
        // Read-ahead: OpenSSL asks the BIO for as much as it can hold, not a record header and then its
        // body (two BIO reads per record): the input is in memory already, so this only saves calls.
        SSL_set_read_ahead(ssl, 1)
        SSL_set_accept_state(ssl)
    }

    deinit { SSL_free(ssl) }

    override func bioRead(_ into: UnsafeMutableRawPointer, _ max: Int) -> Int {
        let n = min(max, input.count - inputPosition)
        guard n > 0 else { return 0 }
        into.copyMemory(from: input.baseAddress! + inputPosition, byteCount: n)
        inputPosition += n
        return n
    }

    override func bioWrite(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard writeFailure == nil, let io else { return false }
        do {
            if let type = controlRecordType {
                // kTLS: a non-data record's plaintext, for the kernel to frame with this type.
                controlRecordType = nil
                try KernelTLSHandoff.sendControlRecord(type: type, bytes, io)
            } else {
                try io.send(bytes)
            }
        } catch { writeFailure = error; return false }
        bytesWritten += bytes.count
        return true
    }

    override func bioControl(_ bio: OpaquePointer, _ cmd: Int32, _ num: Int, _ ptr: UnsafeMutableRawPointer?) -> Int {
        switch cmd {
        case KernelTLSHandoff.setKTLS:
            // A new write key, offered after the records under the old one were written (and flushed):
            // taken when allowed (transmit only; receive stays in user space).
            // `num`: OpenSSL's `which & SSL3_CC_WRITE` (2 for the write key), 0 for a read key.
            guard kernelTLSAllowed, !kernelTransmit, num != 0, let ptr, let io else { return 0 }
            guard KernelTLSHandoff.start(cryptoInfo: ptr, io) else { return 0 }
            kernelTransmit = true
            BIO_set_flags(bio, RingsideBIO.kernelTransmitFlag)  // GET_KTLS_SEND answers 1 from now on
            return 1
        case KernelTLSHandoff.setControlMessage: controlRecordType = UInt8(truncatingIfNeeded: num); return 1
        case KernelTLSHandoff.clearControlMessage: controlRecordType = nil; return 1
        default: return 0
        }
    }

    /// Bytes OpenSSL has written to the connection so far (records, alerts).
    private(set) var bytesWritten = 0

    /// The outcome of a session call.
    enum Outcome: Equatable {
        case done(Int)
        case wantRead
        /// The peer sent close_notify.
        case closed
        case failed(String)
    }

    /// The thread's OpenSSL error queue must be empty before an SSL call for `SSL_get_error` to be
    /// right. It is kept empty rather than cleared before every call (`ERR_clear_error` took 4% of the
    /// server's CPU on keep-alive HTTPS): every failure below drains it, as do context builds and
    /// `shutdown`; only the handshake, rare, clears it first as well.
    @inline(__always) private func outcome(_ r: Int32, _ what: String) -> Outcome {
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

    /// Sets the input of one inbound call (the lent receive bytes) for the `handshake` and `read`
    /// calls that follow; `end()` forgets it before the call returns. Everything fed is consumed:
    /// what does not complete a record is kept by OpenSSL's record layer.
    func feed(_ bytes: UnsafeRawBufferPointer, _ io: LayerIO) { begin(io, input: bytes) }

    /// Drives the handshake with the input fed.
    func handshake(_ io: LayerIO) -> Outcome {
        self.io = io
        writeFailure = nil
        ERR_clear_error()
        return outcome(SSL_do_handshake(ssl), "handshake")
    }

    /// Plaintext into `buffer` from the input fed (and what OpenSSL holds).
    func read(into buffer: UnsafeMutableRawBufferPointer, _ io: LayerIO) -> Outcome {
        self.io = io
        writeFailure = nil
        return outcome(SSL_read(ssl, buffer.baseAddress, Int32(buffer.count)), "read")
    }

    /// Ends an inbound call: nothing of its input may be referenced afterwards.
    func end() {
        input = UnsafeRawBufferPointer(start: nil, count: 0)
        inputPosition = 0
        io = nil
    }

    /// Encrypts `bytes` into records, queued at once. All or nothing unless it fails (then the
    /// connection is unusable).
    func write(_ bytes: UnsafeRawBufferPointer, _ io: LayerIO) -> Outcome {
        // Nested in an inbound call (the handler writes while it is delivered plaintext): keep its
        // input and its io, which is the same connection's.
        let outer = self.io
        self.io = io
        writeFailure = nil
        let r = outcome(SSL_write(ssl, bytes.baseAddress, Int32(bytes.count)), "write")
        self.io = outer
        return r
    }

    /// Sends close_notify (once).
    func shutdown(_ io: LayerIO) {
        let outer = self.io
        self.io = io
        writeFailure = nil
        ERR_clear_error()
        _ = SSL_shutdown(ssl)  // 0: our close_notify is queued, the peer's not read yet: that is all we want
        ERR_clear_error()
        self.io = outer
    }

    private func begin(_ io: LayerIO, input: UnsafeRawBufferPointer) {
        self.io = io
        self.input = input
        inputPosition = 0
        writeFailure = nil
    }

    /// Whether the input fed has been consumed entirely.
    var inputConsumed: Bool { inputPosition >= input.count }

    var resumed: Bool { SSL_session_reused(ssl) == 1 }
    /// Whether OpenSSL holds input it could not use yet (a record cut short, at end of input).
    var hasPendingInput: Bool { SSL_has_pending(ssl) == 1 }
    var isInitFinished: Bool { SSL_is_init_finished(ssl) == 1 }

    /// The negotiated protocol version ("TLSv1.3") and ALPN protocol, for logs and tests.
    var version: String { String(cString: SSL_get_version(ssl)) }
    var alpn: String? {
        var p: UnsafePointer<UInt8>? = nil
        var n: UInt32 = 0
        SSL_get0_alpn_selected(ssl, &p, &n)
        guard let p, n > 0 else { return nil }
        return String(decoding: UnsafeBufferPointer(start: p, count: Int(n)), as: UTF8.self)
    }
}
