import Glibc
import Ringside

/// HTTP/1.1 server settings.
public struct HTTPServerConfiguration: Sendable {
    /// Parser limits: request line (414), header bytes and count (431), body size (413).
    public var limits = HTTPLimits()
    /// Bodies larger than this go to a temporary file instead of memory.
    public var spoolThreshold = 1 << 20
    /// Where spooled bodies are written (the files are unlinked at once).
    public var spoolDirectory = "/tmp"
    /// A request head must be complete this long after its first byte (slowloris), else 408 and close.
    public var headerTimeout: Duration = .seconds(10)
    public init() {}
}

/// Builds the per-connection handlers of an HTTP/1.1 server.
///
/// ```swift
/// let server = try RingsideServer.start(configuration: config,
///                                       handler: HTTPServer.handler(router: router))
/// ```
public enum HTTPServer {
    /// A handler factory serving `router`.
    public static func handler(router: HTTPRouter, configuration: HTTPServerConfiguration = HTTPServerConfiguration())
        -> @Sendable () -> HTTPHandler
    {
        { HTTPHandler(HTTPConnection(router: router, configuration: configuration)) }
    }
}

/// The engine-facing handler: a thin value around the per-connection HTTP state.
public struct HTTPHandler: ConnectionHandler {
    let c: HTTPConnection
    init(_ c: HTTPConnection) { self.c = c }

    /// HTTP/1.1 authenticates per request (if at all), not per connection; the header deadline and
    /// the idle timeout bound clients that send nothing useful.
    public static var requiresAuthentication: Bool { false }

    public mutating func received(_ bytes: ReceivedBytes, on connection: Connection) { c.received(bytes.bytes, connection) }
    public mutating func inputClosed(on connection: Connection) { c.inputClosed(connection) }
    public mutating func writable(on connection: Connection) { c.pump(connection) }
    public mutating func timerFired(on connection: Connection) { c.timerFired(connection) }
    public mutating func closed(reason: CloseReason) { c.closed() }
}

/// Per-connection HTTP state (one allocation per connection; buffers keep their capacity).
final class HTTPConnection {
    private var parser: HTTPRequestParser
    private let router: HTTPRouter
    private let config: HTTPServerConfiguration
    private let head: HeadStore
    private let bodyBuffer: ByteBuffer
    private let userHeaders: ByteBuffer   // header lines the route handler set
    private let responseHead: ByteBuffer  // the composed head
    private let responseBody: ByteBuffer
    /// Input that arrived while a file response was still streaming (kept in order).
    private let stash: ByteBuffer

    // Current request.
    private var route = HTTPRouter.Match.notFound
    private var version = HTTPVersion.http11
    private var keepAlive = true
    private var isHead = false
    private var streaming: (any HTTPStreamingHandler)? = nil
    private var spoolFD: Int32 = -1
    private var spoolSize = 0
    private var headComplete = false

    // A file body being streamed out.
    private var fileFD: Int32 = -1
    private var fileOffset = 0
    private var fileEnd = 0
    private var closeAfterFile = false
    private var readBuffer: UnsafeMutableRawPointer? = nil
    private let readChunk = 64 * 1024

    private var closing = false

    init(router: HTTPRouter, configuration: HTTPServerConfiguration) {
        self.router = router
        config = configuration
        parser = HTTPRequestParser(limits: configuration.limits)
        head = HeadStore(maxFields: configuration.limits.maxHeaderCount, capacity: 1024)
        bodyBuffer = ByteBuffer(capacity: 1024)
        userHeaders = ByteBuffer(capacity: 256)
        responseHead = ByteBuffer(capacity: 512)
        responseBody = ByteBuffer(capacity: 1024)
        stash = ByteBuffer(capacity: 64)
    }

    deinit {
        readBuffer?.deallocate()
    }

    // MARK: input

    func received(_ bytes: UnsafeRawBufferPointer, _ connection: Connection) {
        guard !closing else { return }
        if fileFD >= 0 {
            // A file response is still streaming: later pipelined requests wait their turn.
            guard stash.count + bytes.count <= config.limits.maxHeaderBytes + config.spoolThreshold else {
                return fail(HTTPParseError(status: 503, reason: "pipelined input while streaming"), connection)
            }
            stash.append(bytes)
            return
        }
        let wasIdle = parser.isIdle
        var sink = Sink(c: self, connection: connection)
        do throws(HTTPParseError) {
            try parser.feed(bytes, into: &sink)
        } catch {
            return fail(error, connection)
        }
        if wasIdle && !parser.isIdle && !headComplete {
            connection.setTimer(after: config.headerTimeout)  // header deadline (slow clients)
        }
    }

    struct Sink: HTTPParserSink {
        unowned(unsafe) let c: HTTPConnection
        let connection: Connection
        mutating func requestHead(_ head: HTTPRequestHead) { c.onHead(head, connection) }
        mutating func requestBody(_ bytes: UnsafeRawBufferPointer) { c.onBody(bytes, connection) }
        mutating func requestEnd(trailers: HTTPRequestHead?) { c.onEnd(connection) }
    }

    private func onHead(_ h: HTTPRequestHead, _ connection: Connection) {
        connection.cancelTimer()
        headComplete = true
        head.load(h)
        version = h.version
        keepAlive = h.keepAlive
        isHead = h.method.equals("HEAD")
        let path = pathPart(head.slice(head.target).buffer)
        route = router.match(method: head.slice(head.method).buffer, path: path)
        bodyBuffer.clear()
        spoolSize = 0
        streaming = nil
        if case .route(let i) = route, let make = router.routes[i].streaming {
            var handler = make()
            handler.head(request(body: .none))
            streaming = handler
        } else if let n = h.contentLength, n > config.spoolThreshold {
            openSpool()
        }
        if h.expectsContinue, case .route = route {
            try? connection.write(Array("HTTP/1.1 100 Continue\r\n\r\n".utf8))
        }
    }

    private func onBody(_ bytes: UnsafeRawBufferPointer, _ connection: Connection) {
        guard case .route = route else { return }  // 404/405: the body is read and dropped
        if streaming != nil { streaming!.body(bytes); return }
        if spoolFD < 0 && bodyBuffer.count + bytes.count > config.spoolThreshold {
            openSpool()
            if spoolFD >= 0 { writeSpool(bodyBuffer.bytes); bodyBuffer.clear() }
        }
        if spoolFD >= 0 { writeSpool(bytes) } else { bodyBuffer.append(bytes) }
    }

    private func onEnd(_ connection: Connection) {
        headComplete = false
        var res = HTTPResponse(headers: userHeaders, body: responseBody)
        switch route {
        case .route(let i):
            if streaming != nil {
                streaming!.end(&res)
                streaming = nil
            } else {
                let body: HTTPBody = spoolFD >= 0 ? .file(fd: spoolFD, size: spoolSize)
                    : bodyBuffer.count > 0 ? .bytes(bodyBuffer.bytes) : .none
                router.routes[i].handler!(request(body: body), &res)
            }
        case .methodNotAllowed:
            res.status = 405
        case .notFound:
            res.status = 404
        }
        if spoolFD >= 0 && res.bodyFile?.fd != spoolFD { _ = Glibc.close(spoolFD) }
        spoolFD = -1
        send(&res, connection)
    }

    private func request(body: HTTPBody) -> HTTPRequest {
        HTTPRequest(method: head.slice(head.method), target: head.slice(head.target),
                    path: HTTPBytes(pathPart(head.slice(head.target).buffer)), version: version,
                    keepAlive: keepAlive, store: head, body: body)
    }

    private func pathPart(_ target: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer {
        if let q = target.firstIndex(of: UInt8(ascii: "?")) { return UnsafeRawBufferPointer(rebasing: target[0..<q]) }
        return target
    }

    // MARK: output

    private func send(_ res: inout HTTPResponse, _ connection: Connection) {
        let close = !keepAlive || closing
        let fileSize = res.bodyFile?.size ?? 0
        let h = responseHead
        h.clear()
        h.append(version == .http10 ? "HTTP/1.0 " : "HTTP/1.1 ")
        h.append(decimal: res.status)
        h.append(" ")
        h.append(reasonPhrase(res.status))
        h.append("\r\nServer: ringside\r\nDate: ")
        HTTPDate.withCurrent { h.append($0) }
        h.append("\r\n")
        h.append(userHeaders.bytes)
        let chunked = res.chunked && res.bodyFile == nil && version == .http11
        if res.status != 204 && res.status != 304 {
            if chunked {
                h.append("Transfer-Encoding: chunked\r\n")
            } else {
                h.append("Content-Length: ")
                h.append(decimal: responseBody.count + fileSize)
                h.append("\r\n")
            }
        }
        if close { h.append("Connection: close\r\n") }
        else if version == .http10 { h.append("Connection: keep-alive\r\n") }
        h.append("\r\n")
        do {
            if chunked && !isHead {
                // One chunk with the whole body, then the last chunk.
                if responseBody.count > 0 {
                    appendHex(responseBody.count, to: h)
                    h.append("\r\n")
                    try connection.write(h.bytes)
                    try connection.write(responseBody.bytes)
                    h.clear()
                    h.append("\r\n")
                }
                h.append("0\r\n\r\n")
                try connection.write(h.bytes)
            } else {
                try connection.write(h.bytes)
                if !isHead && responseBody.count > 0 { try connection.write(responseBody.bytes) }
            }
        } catch {
            if let f = res.bodyFile { _ = Glibc.close(f.fd) }
            connection.abort()
            return
        }
        if let f = res.bodyFile {
            if isHead || f.size == 0 { _ = Glibc.close(f.fd) } else {
                fileFD = f.fd; fileOffset = 0; fileEnd = f.size; closeAfterFile = close
                pump(connection)
                return
            }
        }
        if close { closing = true; connection.close() }
    }

    /// Streams the file body with backpressure: fills the outbound queue up to the high watermark,
    /// continues when the engine reports the connection writable again.
    func pump(_ connection: Connection) {
        guard fileFD >= 0 else { return }
        if readBuffer == nil { readBuffer = .allocate(byteCount: readChunk, alignment: 4096) }
        while fileOffset < fileEnd && !connection.isBackpressured {
            let n = pread(fileFD, readBuffer, min(readChunk, fileEnd - fileOffset), off_t(fileOffset))
            if n <= 0 { connection.abort(); finishFile(); return }
            do { try connection.write(UnsafeRawBufferPointer(start: readBuffer, count: n)) } catch {
                // The pool's send chunks are all in use (many streams at once): retry shortly.
                connection.setTimer(after: .milliseconds(1))
                return
            }
            fileOffset += n
        }
        guard fileOffset >= fileEnd else { return }  // `writable` resumes us
        let close = closeAfterFile
        finishFile()
        if close { closing = true; connection.close(); return }
        if stash.count > 0 {
            // Feed what arrived meanwhile (copy out first: feeding may stash again).
            let pending = [UInt8](stash.bytes)
            stash.clear()
            pending.withUnsafeBytes { received($0, connection) }
        }
    }

    private func finishFile() {
        if fileFD >= 0 { _ = Glibc.close(fileFD) }
        fileFD = -1
    }

    private func fail(_ e: HTTPParseError, _ connection: Connection) {
        guard !closing else { return }
        closing = true
        keepAlive = false
        var res = HTTPResponse(headers: userHeaders, body: responseBody)
        res.status = e.status
        res.setHeader("Content-Type", "text/plain")
        res.write(e.reason)
        res.write("\n")
        isHead = false
        send(&res, connection)
    }

    func inputClosed(_ connection: Connection) {
        // A half-closed client may still read what is queued (and a file being streamed).
        if fileFD < 0 { closing = true; connection.close() } else { closeAfterFile = true }
    }

    func timerFired(_ connection: Connection) {
        if fileFD >= 0 { pump(connection); return }
        if !parser.isIdle && !headComplete {
            fail(HTTPParseError(status: 408, reason: "request head not complete within the header timeout"), connection)
        }
    }

    func closed() {
        if spoolFD >= 0 { _ = Glibc.close(spoolFD); spoolFD = -1 }
        finishFile()
    }

    private func appendHex(_ v: Int, to b: ByteBuffer) {
        var digits: (UInt64, UInt64) = (0, 0)
        withUnsafeMutableBytes(of: &digits) { d in
            var n = v, i = 16
            repeat { i -= 1; d[i] = hexDigit(n & 15); n >>= 4 } while n > 0 && i > 0
            b.append(UnsafeRawBufferPointer(rebasing: d[i..<16]))
        }
    }

    // MARK: spooling

    private func openSpool() {
        var template = Array("\(config.spoolDirectory)/ringside-body-XXXXXX".utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        guard fd >= 0 else { return }  // stays in memory; the body limit still bounds it
        template.withUnsafeBufferPointer { _ = unlink($0.baseAddress!) }
        spoolFD = fd
        spoolSize = 0
    }

    private func writeSpool(_ bytes: UnsafeRawBufferPointer) {
        var off = 0
        while off < bytes.count {
            let n = Glibc.write(spoolFD, bytes.baseAddress! + off, bytes.count - off)
            if n < 0 { if errno == EINTR { continue }; return }
            off += n
        }
        spoolSize += bytes.count
    }
}


@inline(__always) private func hexDigit(_ v: Int) -> UInt8 { v < 10 ? UInt8(48 + v) : UInt8(87 + v) }
