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

final class PlaintextHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let helloBody: ByteBuffer
    private let notFoundBody: ByteBuffer
    private var keepAlive = true
    private var version = HTTPVersion.http1_1
    private var found = false

    init() {
        helloBody = ByteBuffer(string: "Hello, World!")
        notFoundBody = ByteBuffer(string: "Not Found")
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let request):
            keepAlive = request.isKeepAlive
            version = request.version
            found = request.method == .GET && request.uri == "/plaintext"
        case .body:
            break
        case .end:
            let body = found ? helloBody : notFoundBody
            var headers = HTTPHeaders()
            headers.reserveCapacity(3)
            headers.add(name: "content-type", value: "text/plain")
            headers.add(name: "content-length", value: String(body.readableBytes))
            if version.major == 1 && version.minor == 0 && keepAlive {
                headers.add(name: "connection", value: "keep-alive")
            } else if !keepAlive {
                headers.add(name: "connection", value: "close")
            }
            let head = HTTPResponseHead(version: version, status: found ? .ok : .notFound, headers: headers)
            context.write(wrapOutboundOut(.head(head)), promise: nil)
            context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
            if keepAlive {
                context.write(wrapOutboundOut(.end(nil)), promise: nil)
            } else {
                let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
                context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in
                    loopBound.value.close(promise: nil)
                }
            }
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.flush()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

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
