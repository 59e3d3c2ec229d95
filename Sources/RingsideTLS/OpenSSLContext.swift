import COpenSSL
import Ringside

/// The `SSL_CTX`s of one generation of certificates: one per certificate (the first is the default,
/// the one every connection starts with and every loop shares), chosen among by SNI. Immutable once
/// built; a reload builds a new set, and connections made from an old one keep it alive until they end.
///
/// `@unchecked Sendable`: OpenSSL's `SSL_CTX` is safe to share between threads for `SSL_new` once
/// configured, and nothing here is mutated after `init`.
final class OpenSSLContextSet: @unchecked Sendable {
    let defaultContext: OpaquePointer
    private let contexts: [OpaquePointer]
    /// Lower-cased server names (exact, or `*.suffix`) to an index in `contexts`.
    private let byName: [String: Int]
    /// ALPN protocols in wire format (length-prefixed), the server's preference first.
    private let alpn: UnsafeMutableBufferPointer<UInt8>
    let summary: String

    init(_ config: TLSConfiguration) throws(TLSError) {
        guard !config.certificates.isEmpty else { throw TLSError("no certificate configured") }
        var wire: [UInt8] = []
        for p in config.alpn {
            guard (1...255).contains(p.utf8.count) else { throw TLSError("ALPN protocol \"\(p)\" must be 1...255 bytes") }
            wire.append(UInt8(p.utf8.count)); wire.append(contentsOf: p.utf8)
        }
        alpn = .allocate(capacity: max(wire.count, 1))
        _ = alpn.initialize(from: wire)
        let alpnCount = wire.count
        var built: [OpaquePointer] = []
        var names: [String: Int] = [:]
        do {
            for (i, cert) in config.certificates.enumerated() {
                built.append(try Self.makeContext(cert, config))
                for n in cert.serverNames { names[n.lowercased()] = i }
            }
        } catch {
            for c in built { SSL_CTX_free(c) }
            alpn.deallocate()
            throw error
        }
        contexts = built
        defaultContext = built[0]
        byName = names
        summary = "certificates=\(config.certificates.count) alpn=\(config.alpn.joined(separator: ",")) versions=\(config.minimumVersion)+ tickets=\(config.sessionTickets ? "on" : "off")"
        let me = Unmanaged.passUnretained(self).toOpaque()
        for c in built {
            // SNI: switch the connection to the certificate its name asks for (the default otherwise).
            _ = rs_ssl_ctx_set_servername_callback(c, { ssl, _, arg in
                guard let ssl, let arg, let name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name) else { return rs_ssl_tlsext_err_ok() }
                let set = Unmanaged<OpenSSLContextSet>.fromOpaque(arg).takeUnretainedValue()
                if let ctx = set.context(for: String(cString: name)) { _ = SSL_set_SSL_CTX(ssl, ctx) }
                return rs_ssl_tlsext_err_ok()
            }, me)
            if alpnCount > 0 {
                // ALPN: the server's preference among what the client offers; no overlap: no ALPN.
                SSL_CTX_set_alpn_select_cb(c, { _, out, outlen, client, clientLength, arg in
                    guard let arg, let out, let outlen, let client else { return rs_ssl_tlsext_err_noack() }
                    let set = Unmanaged<OpenSSLContextSet>.fromOpaque(arg).takeUnretainedValue()
                    return set.selectALPN(out, outlen, client, clientLength)
                }, me)
            }
        }
    }

    deinit {
        for c in contexts { SSL_CTX_free(c) }
        alpn.deallocate()
    }

    private func context(for name: String) -> OpaquePointer? {
        let n = name.lowercased()
        if let i = byName[n] { return contexts[i] }
        if let dot = n.firstIndex(of: "."), let i = byName["*" + n[dot...]] { return contexts[i] }
        return nil
    }

    private func selectALPN(_ out: UnsafeMutablePointer<UnsafePointer<UInt8>?>, _ outlen: UnsafeMutablePointer<UInt8>,
                            _ client: UnsafePointer<UInt8>, _ clientLength: UInt32) -> Int32 {
        // The server's order wins: the first of ours that the client lists.
        var i = 0
        while i < alpn.count {
            let n = Int(alpn[i])
            var j = 0
            while j < Int(clientLength) {
                let m = Int(client[j])
                if m == n && j + 1 + m <= Int(clientLength) && memcmp(client + j + 1, alpn.baseAddress! + i + 1, n) == 0 {
                    out.pointee = client + j + 1
                    outlen.pointee = UInt8(m)
                    return rs_ssl_tlsext_err_ok()
                }
                j += 1 + m
            }
            i += 1 + n
        }
        return rs_ssl_tlsext_err_noack()
    }

    private static func makeContext(_ cert: TLSCertificate, _ config: TLSConfiguration) throws(TLSError) -> OpaquePointer {
        ERR_clear_error()
        guard let c = SSL_CTX_new(TLS_server_method()) else { throw TLSError("SSL_CTX_new: \(drainOpenSSLErrors())") }
        let minimum = config.minimumVersion == .tls13 ? TLS1_3_VERSION : TLS1_2_VERSION
        guard rs_ssl_ctx_set_protocols(c, minimum, TLS1_3_VERSION) == 1 else {
            SSL_CTX_free(c)
            throw TLSError("setting the protocol versions: \(drainOpenSSLErrors())")
        }
        rs_ssl_ctx_harden(c, config.sessionTickets ? 1 : 0)
        let sid: [UInt8] = Array("ringside".utf8)
        _ = SSL_CTX_set_session_id_context(c, sid, UInt32(sid.count))
        guard SSL_CTX_use_certificate_chain_file(c, cert.certificateFile) == 1 else {
            SSL_CTX_free(c)
            throw TLSError("loading the certificate chain \(cert.certificateFile): \(drainOpenSSLErrors())")
        }
        guard SSL_CTX_use_PrivateKey_file(c, cert.keyFile, SSL_FILETYPE_PEM) == 1 else {
            SSL_CTX_free(c)
            throw TLSError("loading the private key \(cert.keyFile): \(drainOpenSSLErrors())")
        }
        guard SSL_CTX_check_private_key(c) == 1 else {
            SSL_CTX_free(c)
            throw TLSError("the private key \(cert.keyFile) does not match \(cert.certificateFile): \(drainOpenSSLErrors())")
        }
        return c
    }
}
