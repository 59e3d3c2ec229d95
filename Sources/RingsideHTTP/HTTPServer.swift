import Glibc
import Ringside

/// HTTP/1.1 server settings.
public struct HTTPServerConfiguration: Sendable {
    /// Parser limits: request line (414), header bytes and count (431), body size (413).
    public var limits = HTTPLimits()
    /// Bodies larger than this go to a temporary file instead of memory.
    public var spoolThreshold = 1 << 20
    /// Where spooled bodies are written (the files are unlinked at once). A body that cannot be
    /// stored there (no space, no such directory) is answered 507 (ENOSPC, EDQUOT) or 500, with
    /// `Connection: close`; the route handler never sees a truncated body.
    public var spoolDirectory = "/tmp"
    /// A request head must be complete this long after its first byte (slowloris), else 408 and close.
    public var headerTimeout: Duration = .seconds(10)
    /// Async routes: the largest request body read (in memory) for them; a larger one is answered 413
    /// before the handler runs (and before any decoding).
    public var asyncBodyLimit = 1 << 20
    /// Async routes: requests of one connection parsed ahead while earlier ones are still being
    /// answered (their handlers run concurrently; responses leave in request order). At this many,
    /// reading pauses until the oldest is answered.
    public var maxPipelinedRequests = 16
    /// Streaming async routes: request body bytes buffered for the handler; at this many, reading
    /// pauses until it has taken half of them.
    public var streamedBodyBuffer = 64 * 1024
    /// Failure counters, shared by every connection (and every copy of this configuration).
    public var stats = HTTPServerStats()
    /// Response compression (off by default) and request body decoding (on); see
    /// ``HTTPCompressionConfiguration``.
    public var compression = HTTPCompressionConfiguration()
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

    public mutating func received(_ bytes: ReceivedBytes, on connection: Connection) {
        if c.connection == nil { c.connection = connection }  // for async completions (same handle throughout)
        c.received(bytes.bytes, connection)
    }
    public mutating func inputClosed(on connection: Connection) { c.inputClosed(connection) }
    public mutating func writable(on connection: Connection) {
        c.wakeStreamWriter()
        c.pumpOutput(connection)
    }
    public mutating func timerFired(on connection: Connection) { c.timerFired(connection) }
    public mutating func closed(reason: CloseReason) { c.closed() }
}

/// Per-connection HTTP state (one allocation per connection; buffers keep their capacity).
///
/// Input is parsed until a response cannot be sent at once (the send pool is short, or the queue is
/// above the high watermark); the rest of the input then waits in `stash` (reading paused) until that
/// response has been queued whole (see HTTPConnection+Output.swift).
///
/// Loop-thread confined, like the engine's `LoopCore`: handler calls, file-operation completions and
/// the async routes' tasks (which run on the loop's executor and check `executor.isCurrent` before
/// touching it) all run on the connection's loop thread. Its mutable state is therefore marked
/// `@exclusivity(unchecked)`: only the loop thread touches it, so the runtime's dynamic exclusivity
/// check (a call per access, per request) proves nothing here. The test suites ran with the checks on
/// before they were switched off.
final class HTTPConnection {
    @exclusivity(unchecked) var parser: HTTPRequestParser
    let router: HTTPRouter
    let config: HTTPServerConfiguration
    let head: HeadStore
    let bodyBuffer: ByteBuffer
    let userHeaders: ByteBuffer   // header lines the route handler set
    let responseHead: ByteBuffer  // the composed head
    let responseBody: ByteBuffer
    /// Input that arrived while a response was still being sent (kept in order).
    let stash: ByteBuffer
    @exclusivity(unchecked) var readingPaused = false

    // Current request.
    @exclusivity(unchecked) var route = HTTPRouter.Match.notFound
    @exclusivity(unchecked) var version = HTTPVersion.http11
    @exclusivity(unchecked) var keepAlive = true
    @exclusivity(unchecked) var isHead = false
    @exclusivity(unchecked) var streaming: (any HTTPStreamingHandler)? = nil
    /// Whether `streaming` holds a handler (tested per request and per body piece instead of
    /// `streaming != nil`, which copies the existential). Set and cleared with it.
    @exclusivity(unchecked) var isStreaming = false
    /// The current request's body file, when it is spooled (HTTPSpool.swift).
    @exclusivity(unchecked) var spool: SpoolFile? = nil
    /// The current request's response waits for the loop's file operations (its spooled body being
    /// stored, a static file being opened): parsing stops and input is stashed meanwhile.
    @exclusivity(unchecked) var deferred = false
    @exclusivity(unchecked) var headComplete = false
    @exclusivity(unchecked) var isAsync = false
    /// Response coding negotiated, request body decoder (HTTPCompression.swift).
    @exclusivity(unchecked) var coding = ConnectionCoding()

    /// The response being sent (see HTTPConnection+Output.swift).
    @exclusivity(unchecked) var out = Outgoing()
    // A file body being streamed out (Connection.sendFile): bytes fileOffset..<fileEnd not queued yet;
    // at most one read in flight; a descriptor given up while its read is in flight is closed after it.
    @exclusivity(unchecked) var fileFD: Int32 = -1
    @exclusivity(unchecked) var fileOffset = 0
    @exclusivity(unchecked) var fileEnd = 0
    @exclusivity(unchecked) var fileReadInFlight = false
    @exclusivity(unchecked) var fileToCloseAfterRead: Int32 = -1
    /// The read in flight carries the response head as its prefix (`out.part` went to 3 with it).
    @exclusivity(unchecked) var fileHeadInFlight = false
    /// Cached static files that responses of this connection send (not closed by them: released).
    @exclusivity(unchecked) var heldFiles: [CachedStaticFile] = []

    @exclusivity(unchecked) var closing = false
    /// A request failed while earlier ones still await their async responses: parse nothing more.
    @exclusivity(unchecked) var stopParsing = false
    @inline(__always) var halted: Bool { closing || stopParsing }

    /// Responses not sent yet, in request order, while an async route's answer is outstanding (see
    /// HTTPConnection+Async.swift). Empty on the synchronous path.
    @exclusivity(unchecked) var pending: [PendingResponse] = []
    /// The engine handle (kept for async completions, which arrive outside handler callbacks).
    @exclusivity(unchecked) var connection: Connection? = nil
    @exclusivity(unchecked) var executor: LoopExecutor? = nil
    /// A streamed response's task waiting for the output queue to drain.
    @exclusivity(unchecked) var streamWriter: UnsafeContinuation<Void, Never>? = nil
    /// The body of the current request, when it is streamed to a streaming async route.
    @exclusivity(unchecked) var bodyStream: BodyStream? = nil
    /// Reading paused because a streamed body's buffer is full.
    @exclusivity(unchecked) var bodyPaused = false

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
    }

    // MARK: input

    func received(_ bytes: UnsafeRawBufferPointer, _ connection: Connection) {
        guard !halted else { return }
        if out.active || deferred || pending.count >= config.maxPipelinedRequests { return stashInput(bytes, connection) }
        let wasIdle = parser.isIdle
        var sink = Sink(c: Unmanaged.passUnretained(self), connection: connection)
        let consumed: Int
        do throws(HTTPParseError) {
            // Stop after a request whose response is still being sent: its buffers are in use.
            consumed = try parser.feed(bytes, into: &sink, stopAfterEnd: {
                self.out.active || self.deferred || self.halted || self.pending.count >= self.config.maxPipelinedRequests
            })
        } catch {
            return fail(status: error.status, reason: error.reason, connection)
        }
        if consumed < bytes.count && !halted {
            stashInput(UnsafeRawBufferPointer(rebasing: bytes[consumed...]), connection)
        }
        if wasIdle && !parser.isIdle && !headComplete && !out.active && !deferred && !closing {
            connection.setTimer(after: config.headerTimeout)  // header deadline (slow clients)
        }
    }

    /// Keeps input for after the response being sent, and stops reading meanwhile (bounded: the engine
    /// holds what the kernel completes before the pause lands; beyond the limit the connection is aborted,
    /// since no error status can be sent in the middle of another response).
    func stashInput(_ bytes: UnsafeRawBufferPointer, _ connection: Connection) {
        let limit = max(0, config.limits.maxHeaderBytes).addingReportingOverflow(max(0, config.spoolThreshold))
        guard limit.overflow || stash.count + bytes.count <= limit.partialValue else {
            config.stats.count(.overflow)
            closing = true
            connection.abort()
            return
        }
        stash.append(bytes)
        if !readingPaused { readingPaused = true; connection.pauseReading() }
    }

    /// The parser's sink for one `received` call. Invariant: it lives on the stack of `received`, whose
    /// `self` (the connection, held by the engine's handler slot or by an async task) is alive for the
    /// whole call, so the connection is borrowed at +0 (`_withUnsafeGuaranteedRef`): no retain/release
    /// per event. (An `unowned(unsafe)` reference cost a retain/release pair per access.)
    struct Sink: HTTPParserSink {
        let c: Unmanaged<HTTPConnection>
        let connection: Connection
        @inline(__always) mutating func requestHead(_ head: HTTPRequestHead) {
            c._withUnsafeGuaranteedRef { c in if !c.halted { c.onHead(head, connection) } }
        }
        @inline(__always) mutating func requestBody(_ bytes: UnsafeRawBufferPointer) {
            c._withUnsafeGuaranteedRef { c in if !c.halted { c.onBody(bytes, connection) } }
        }
        @inline(__always) mutating func requestEnd(trailers: HTTPRequestHead?) {
            c._withUnsafeGuaranteedRef { c in if !c.halted { c.onEnd(connection) } }
        }
    }

    private func onHead(_ h: HTTPRequestHead, _ connection: Connection) {
        connection.cancelTimer()
        headComplete = true
        head.load(h)
        version = h.version
        keepAlive = h.keepAlive
        isHead = h.method.equals("HEAD")
        let target = head.slice(head.target).buffer
        let path = pathPart(target)
        var captureCount = 0
        route = router.match(method: head.slice(head.method).buffer, path: path,
                             captures: head.captures, captureCount: &captureCount)
        if captureCount > 0 {
            head.setCaptures(count: captureCount, offset: head.target.lowerBound, names: routeNames(route))
        } else {
            head.clearCaptures()
        }
        bodyBuffer.clear()
        if isStreaming { streaming = nil; isStreaming = false }
        isAsync = false
        if config.compression.enabled { negotiateCoding(h) }
        if config.compression.decodeRequests, case .route = route, h.isChunked || (h.contentLength ?? 0) > 0 {
            guard startRequestDecoding(h, connection) else { return }  // answered 415
        }
        // The route's kind is read as a trivial tag: no copy (retain) of the route or its payload.
        let tag = routeTag
        if tag == .streaming, case .route(let i) = route, let make = router.routes[i].streaming {
            var handler = make()
            handler.head(request(body: .none))
            streaming = handler
            isStreaming = true
        } else if tag == .streamingAsync, case .route(let i) = route {
            // Started now: the handler reads the body as it arrives.
            isAsync = true
            startStreamingAsync(route: i, connection)
        } else if tag == .async {
            isAsync = true
            if let n = h.contentLength, n > config.asyncBodyLimit {
                return fail(status: 413, reason: "request body larger than \(config.asyncBodyLimit) bytes", connection)
            }
        } else if let n = h.contentLength, n > config.spoolThreshold {
            openSpool(connection)  // a failure answers 507/500
        }
        // 100 Continue goes out at once, so only when no earlier response is still owed (else the client
        // sends the body after its own wait, RFC 9110 §10.1.1).
        if h.expectsContinue, case .route = route, pending.isEmpty || (pending.count == 1 && pending[0].live) {
            sendContinue(connection)
        }
    }

    /// Queues `100 Continue`; if it cannot be queued the client would wait for it, so the connection
    /// is closed (what is queued before it still goes out) and counted.
    private func sendContinue(_ connection: Connection) {
        do throws(WriteError) {
            try connection.write(UnsafeRawBufferPointer(start: Self.continueLine.utf8Start,
                                                        count: Self.continueLine.utf8CodeUnitCount))
        } catch {
            config.stats.count(.continueWrite)
            closing = true
            if error == .bufferPoolExhausted { connection.close() }
        }
    }
    private static let continueLine: StaticString = "HTTP/1.1 100 Continue\r\n\r\n"

    private func onBody(_ bytes: UnsafeRawBufferPointer, _ connection: Connection) {
        guard case .route = route else { return }  // 404/405: the body is read and dropped
        if let d = coding.decoder { return decodeBody(d, bytes, connection) }  // -> deliverBody
        deliverBody(bytes, connection)
    }

    /// Body bytes (decoded, if they were sent with a Content-Encoding) for the current route.
    func deliverBody(_ bytes: UnsafeRawBufferPointer, _ connection: Connection) {
        if isStreaming { streaming!.body(bytes); return }
        if bodyStream != nil { return pushBody(bytes, connection) }
        if isAsync {
            guard bodyBuffer.count + bytes.count <= config.asyncBodyLimit else {
                return fail(status: 413, reason: "request body larger than \(config.asyncBodyLimit) bytes", connection)
            }
            bodyBuffer.append(bytes)
            return
        }
        if spool == nil && bodyBuffer.count + bytes.count > config.spoolThreshold {
            openSpool(connection)
            appendSpool(bodyBuffer.bytes, connection)
            bodyBuffer.clear()
        }
        if spool != nil { appendSpool(bytes, connection) } else { bodyBuffer.append(bytes) }
    }

    private func onEnd(_ connection: Connection) {
        headComplete = false
        guard finishRequestDecoding(connection) else { return }  // answered 400
        if routeTag == .staticFiles, case .route(let i) = route, case .staticFiles(let root) = router.routes[i].kind {
            return serveStatic(root, connection)
        }
        if spool != nil, let s = spool, !s.isStored {
            // The route runs once every byte is in the file (HTTPSpool.swift).
            deferred = true
            s.onStored = { [unowned self] in
                guard self.deferred, !self.halted, let connection = self.connection else { return }
                self.deferred = false
                self.respond(connection)
                self.resumeAfterDeferred(connection)
            }
            pumpSpool(s, connection)
            return
        }
        respond(connection)
    }

    /// Runs the current request's route and sends (or queues) its response.
    private func respond(_ connection: Connection) {
        var res = HTTPResponse(headers: userHeaders, body: responseBody)
        switch route {
        case .route(let i) where isAsync:
            // Nothing after a request that closes the connection is read (or started).
            if !keepAlive { stopParsing = true }
            if router.routes[i].tag == .async { return startAsync(route: i, connection) }
            bodyStream?.finish()  // started at the head
            bodyStream = nil
            return
        case .route(let i):
            if isStreaming {
                streaming!.end(&res)
                streaming = nil
                isStreaming = false
            } else {
                let body: HTTPBody = if let s = spool { .file(fd: s.fd, size: s.size) }
                    else if bodyBuffer.count > 0 { .bytes(bodyBuffer.bytes) } else { .none }
                // Only the route's trivial `syncRef` is read (calling a method on the element would copy
                // the whole route); the handler is borrowed at +0.
                let handler = router.routes[i].syncRef!
                let req = request(body: body)
                handler._withUnsafeGuaranteedRef { $0.handler(req, &res) }
            }
        case .methodNotAllowed:
            res.status = 405
        case .notFound:
            res.status = 404
        }
        if spool != nil { dropSpool(connection, keep: res.bodyFile?.fd == spool!.fd) }
        if pending.isEmpty { send(&res, meta, connection) } else {
            enqueueReady(res, meta)
            if !keepAlive { stopParsing = true }
        }
    }

    /// The kind of the current request's route (nil: 404/405), read without copying the route.
    @inline(__always) var routeTag: HTTPRouter.Tag? {
        if case .route(let i) = route { router.routes[i].tag } else { nil }
    }

    /// The current request's version, keep-alive and HEAD-ness (what its response head depends on).
    var meta: RequestMeta { RequestMeta(version: version, keepAlive: keepAlive, isHead: isHead, coding: coding.accepted) }

    private func routeNames(_ m: HTTPRouter.Match) -> [String] {
        if case .route(let i) = m { return router.routes[i].parameterNames }
        return []
    }

    func request(body: HTTPBody) -> HTTPRequest {
        HTTPRequest(method: head.slice(head.method), target: head.slice(head.target),
                    path: HTTPBytes(pathPart(head.slice(head.target).buffer)), version: version,
                    keepAlive: keepAlive, storeRef: Unmanaged.passUnretained(head), body: body)
    }

    func pathPart(_ target: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer {
        if let q = target.firstIndex(of: UInt8(ascii: "?")) { return UnsafeRawBufferPointer(rebasing: target[0..<q]) }
        return target
    }

    // MARK: errors and engine events

    /// Answers `status` with `reason` as the body, then closes (the request, if any, is abandoned).
    func fail(status: Int, reason: String, _ connection: Connection) {
        guard !halted else { return }
        dropSpool(connection)
        releaseRequestDecoder()
        streaming = nil
        isStreaming = false
        // A streaming route reading this request's body learns that the rest will not come.
        bodyStream?.fail(HTTPError(status, reason))
        bodyStream = nil
        keepAlive = false
        var res = HTTPResponse(headers: userHeaders, body: responseBody)
        res.status = status
        res.setHeader("Content-Type", "text/plain")
        res.write(reason)
        res.write("\n")
        isHead = false
        if pending.isEmpty {
            send(&res, meta, connection)
            closing = true
        } else {
            // Earlier requests still await their answers: this one goes out after them, then the close.
            enqueueReady(res, meta)
            stopParsing = true
        }
    }

    func inputClosed(_ connection: Connection) {
        if !pending.isEmpty {
            // Async answers outstanding: the client went away (or half-closed: treated alike), so
            // their tasks are cancelled; what is queued still goes out.
            cancelPending()
            closing = true
            connection.close()
            return
        }
        // A half-closed client may still read what is queued (and a response still being sent, or one
        // waiting for file operations: it goes out, then the connection closes).
        if deferred { keepAlive = false; return }
        if out.active { out.closeAfter = true } else { closing = true; connection.close() }
    }

    func timerFired(_ connection: Connection) {
        wakeStreamWriter()
        if out.active { out.retryArmed = false; pumpOutput(connection); return }
        if !parser.isIdle && !headComplete {
            fail(status: 408, reason: "request head not complete within the header timeout", connection)
        }
    }

    func closed() {
        cancelPending()
        bodyStream = nil
        dropSpool(connection)
        connection = nil
        deferred = false
        releaseRequestDecoder()
        if out.active { out.active = false; config.stats.count(.cutOff) }
        finishFile()
    }
}
