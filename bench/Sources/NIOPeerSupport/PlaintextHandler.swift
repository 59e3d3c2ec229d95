// The HTTP/1.1 `/plaintext` handler of the SwiftNIO peers (nio-http, and nio-https behind NIOSSL).
//
// `GET /plaintext` answers `Hello, World!` (text/plain, content-length 13); anything else 404.
// Keep-alive is honoured (HTTP/1.1 default, HTTP/1.0 with `Connection: keep-alive`); otherwise the
// connection is closed after the response. Responses are written on `.end` and flushed on
// channelReadComplete, so pipelined requests leave in one write.
import NIOCore
import NIOHTTP1

public final class PlaintextHandler: ChannelInboundHandler {
    public typealias InboundIn = HTTPServerRequestPart
    public typealias OutboundOut = HTTPServerResponsePart

    private let helloBody: ByteBuffer
    private let notFoundBody: ByteBuffer
    private var keepAlive = true
    private var version = HTTPVersion.http1_1
    private var found = false

    public init() {
        helloBody = ByteBuffer(string: "Hello, World!")
        notFoundBody = ByteBuffer(string: "Not Found")
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
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

    public func channelReadComplete(context: ChannelHandlerContext) {
        context.flush()
    }

    public func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
