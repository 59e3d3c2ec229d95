import Glibc
import Ringside

/// Kernel TLS (kTLS): whether this kernel can take a connection's keys after the handshake
/// (`TCP_ULP` "tls").
///
/// Detected once per process: a scratch TCP socket is asked for the "tls" upper-layer protocol.
/// ENOENT means the kernel has no `tls` module (kernels built without CONFIG_TLS, or a module that
/// cannot be loaded); ENOTCONN means the module is there (the socket is merely not connected). Where
/// it is available, each TLS connection's transmit side is handed to the kernel after its handshake
/// (`KernelTLSHandoff`, ``TLSConfiguration/kernelTLS``); receiving stays in user space.
public enum KernelTLS: Sendable, Equatable, CustomStringConvertible {
    /// The kernel has the `tls` upper-layer protocol.
    case available
    /// No kTLS here; the reason (the errno of the probe).
    case unavailable(String)

    /// The probe's result (run once).
    public static let status: KernelTLS = {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return .unavailable("socket: errno \(errno)") }
        defer { close(fd) }
        let r = "tls".withCString { setsockopt(fd, Int32(IPPROTO_TCP), KernelTLSHandoff.tcpULP, $0, 4) }
        if r == 0 { return .available }
        let e = errno
        switch e {
        case ENOTCONN: return .available
        case ENOENT: return .unavailable("the kernel has no tls module (TCP_ULP \"tls\": ENOENT)")
        default: return .unavailable("TCP_ULP \"tls\" probe failed: \(String(cString: strerror(e)))")
        }
    }()

    /// Whether every TLS connection encrypts in user space: true where the kernel has no kTLS.
    public static var userSpace: Bool { status != .available }

    public var description: String {
        switch self {
        case .available: "kTLS=available (sending handed to the kernel after each handshake where the backend allows)"
        case .unavailable(let why): "kTLS=unavailable: \(why); using user-space TLS"
        }
    }
}

/// The handoff of a connection's transmit keys to the kernel, driven by OpenSSL's own kTLS support
/// (`SSL_OP_ENABLE_KTLS`) through the custom BIO (`OpenSSLSession.bioControl`):
///
/// 1. When a write key changes (TLS 1.3: the application key, right after the server's Finished;
///    TLS 1.2: at its ChangeCipherSpec), OpenSSL flushes what it wrote under the old key, then offers
///    the new one (control 72) as a `tls12_crypto_info_*` block: key, IV, salt and the record
///    sequence number.
/// 2. `start` queues two socket directives behind the ciphertext already queued: `TCP_ULP` "tls",
///    then `SOL_TLS`/`TLS_TX` with that block (`LayerIO.setSocketOption`). The engine runs them once
///    every byte before them has been sent and before any byte after them, so the ciphertext OpenSSL
///    wrote under the handshake keys leaves as it is and the first plaintext is the kernel's to encrypt.
/// 3. From then on OpenSSL writes plaintext through the BIO; a non-data record (a session ticket, an
///    alert such as close_notify, TLS 1.2's Finished) is announced by control 74 with its type and
///    goes as one `sendmsg` with a `TLS_SET_RECORD_TYPE` control message (`sendControlRecord`).
enum KernelTLSHandoff {
    // OpenSSL 3.0's internal BIO controls (include/internal/bio.h; not in the public headers).
    static let setKTLS: Int32 = 72
    static let setControlMessage: Int32 = 74
    static let clearControlMessage: Int32 = 75
    // <linux/tcp.h>, <linux/tls.h>.
    static let tcpULP: Int32 = 31
    static let solTLS: Int32 = 282
    static let tlsTX: Int32 = 1
    static let setRecordType: Int32 = 1

    /// The length of the `tls12_crypto_info_*` struct for its cipher type (the u16 after the version),
    /// nil for a cipher the handoff does not know (the key then stays in user space).
    static func cryptoInfoLength(cipherType: UInt16) -> Int? {
        switch cipherType {
        case 51: 40  // TLS_CIPHER_AES_GCM_128: info 4, iv 8, key 16, salt 4, rec_seq 8
        case 52: 56  // TLS_CIPHER_AES_GCM_256: key 32
        case 53: 40  // TLS_CIPHER_AES_CCM_128
        case 54: 56  // TLS_CIPHER_CHACHA20_POLY1305: iv 12, key 32, no salt
        default: nil
        }
    }

    /// Queues the switch to kernel encryption (step 2). False (nothing queued) for an unknown cipher
    /// or a connection that no longer sends.
    static func start(cryptoInfo: UnsafeMutableRawPointer, _ io: LayerIO) -> Bool {
        let cipherType = cryptoInfo.loadUnaligned(fromByteOffset: 2, as: UInt16.self)
        guard let length = cryptoInfoLength(cipherType: cipherType) else { return false }
        // "tls" and its NUL, as OpenSSL's own socket BIO passes it.
        var ulp: (UInt8, UInt8, UInt8, UInt8) = (0x74, 0x6C, 0x73, 0)
        let queued: Result<Void, WriteError> = withUnsafeBytes(of: &ulp) { v in
            Result { () throws(WriteError) in
                try io.setSocketOption(level: Int32(IPPROTO_TCP), name: tcpULP, value: v)
                try io.setSocketOption(level: solTLS, name: tlsTX, value: UnsafeRawBufferPointer(start: cryptoInfo, count: length))
            }
        }
        if case .failure = queued { return false }
        return true
    }

    /// Queues a non-data record's plaintext for the kernel to frame as `type` (step 3).
    static func sendControlRecord(type: UInt8, _ bytes: UnsafeRawBufferPointer, _ io: LayerIO) throws(WriteError) {
        var t = type
        let queued: Result<Void, WriteError> = withUnsafeBytes(of: &t) { d in
            Result { () throws(WriteError) in try io.sendWithControlMessage(level: solTLS, type: setRecordType, data: d, bytes) }
        }
        try queued.get()
    }
}
