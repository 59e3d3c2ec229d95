// nio-https: the SwiftNIO HTTP/1.1 plaintext server of nio-http behind NIOSSL (swift-nio-ssl, its
// BoringSSL), on ONE event loop: the SwiftNIO peer of bench/https-wrk.sh.
//
//   nio-https --cert cert.pem --key key.pem --port 0
//   prints:  listening on 127.0.0.1:PORT backend=swiftnio-https
//
// TLS 1.2 and 1.3, ALPN http/1.1; `GET /plaintext` answers `Hello, World!` as nio-http does.

import ArgumentParser
import Dispatch
import NIOCore
import NIOPeerSupport
import NIOHTTP1
import NIOPosix
import NIOSSL

#if canImport(Glibc)
import Glibc
#endif

@main
struct NIOHTTPSPlaintext: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "nio-https",
        abstract: "SwiftNIO + NIOSSL HTTPS server on one event loop (GET /plaintext).")

    @Option(help: "PEM certificate chain.") var cert: String
    @Option(help: "PEM private key.") var key: String

    @Option(help: "Address to bind.") var host = "127.0.0.1"
    @Option(help: "Port; 0 picks a free one (printed).") var port = 0
    @Option(help: "listen(2) backlog.") var backlog: Int32 = 4096

    func run() throws {
        var tls = TLSConfiguration.makeServerConfiguration(
            certificateChain: try NIOSSLCertificate.fromPEMFile(cert).map { .certificate($0) },
            privateKey: .privateKey(try NIOSSLPrivateKey(file: key, format: .pem)))
        tls.minimumTLSVersion = .tlsv12
        tls.applicationProtocols = ["http/1.1"]
        let context = try NIOSSLContext(configuration: tls)
        try serveOnOneLoop(host: host, port: port, backlog: backlog, name: "swiftnio-https") { channel in
            try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: context))
            try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
            try channel.pipeline.syncOperations.addHandler(PlaintextHandler())
        }
    }
}
