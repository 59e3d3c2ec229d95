import Glibc
import Ringside

/// What a response head depends on besides the response: the request's version, keep-alive, HEAD.
struct RequestMeta {
    var version: HTTPVersion
    var keepAlive: Bool
    var isHead: Bool
    /// The response coding the request accepts (compression on only).
    var coding = HTTPContentCoding.identity
}

/// One response slot, in request order, while an async route's answer is outstanding on the
/// connection. Loop thread only (like its `HTTPConnection`).
final class PendingResponse {
    enum Payload {
        case waiting
        /// From an async handler.
        case async(HTTPServerResponse)
        /// A synchronous answer (route, 404/405, error) composed while an earlier async one was still
        /// outstanding: a copy of the header lines and body (the connection's buffers are reused).
        case copied(status: Int, headerLines: [UInt8], body: [UInt8], file: (fd: Int32, size: Int)?, fileOffset: Int, chunked: Bool)
    }
    let meta: RequestMeta
    var payload = Payload.waiting
    var task: Task<Void, Never>? = nil
    var cancelled = false
    // Streamed responses (HTTPResponseWriter): `live` while it is the response being sent; its task
    // waits in `waiter` for its turn.
    var streaming = false
    var live = false
    var headSent = false
    var headWritten = false
    var chunked = false
    var closeAfter = false
    /// Body bytes still owed after a head sent with a `Content-Length` (nil: chunked or close-delimited).
    var remaining: Int? = nil
    var waiter: UnsafeContinuation<Void, Never>? = nil
    /// The request body being streamed to this response's handler, if any.
    var body: BodyStream? = nil
    /// The compressor of a streamed response sent with a content coding (HTTPCompression.swift).
    var encoder: PooledCompressor? = nil

    init(meta: RequestMeta) { self.meta = meta }

    var isReady: Bool { if case .waiting = payload { false } else { true } }
}

/// Carries loop-thread-only values into a task that runs on the same loop thread.
///
/// `@unchecked Sendable`: the values are used only where `executor.isCurrent` holds (the task checks
/// before touching them); once the loop has stopped, the task drops them unused.
struct LoopBound<T>: @unchecked Sendable {
    let value: T
}

extension HTTPConnection {
    /// Starts async route `i` for the current request: copies the request out of the connection's
    /// buffers, queues a response slot and starts the handler as a task on this loop's executor.
    func startAsync(route i: Int, _ connection: Connection) {
        guard let executor = executor ?? LoopExecutor.current else {
            preconditionFailure("HTTP async route dispatched outside a loop thread")
        }
        self.executor = executor
        let request = serverRequest(route: i)
        let entry = PendingResponse(meta: meta)
        pending.append(entry)
        let handler = router.routes[i].asyncHandler!
        let bound = LoopBound(value: (self, entry))
        // The task's first job is queued on the loop (this is the loop thread): it runs after this
        // batch of handler calls, and every resumption after an await comes back to this thread.
        entry.task = Task(executorPreference: executor) {
            let response: HTTPServerResponse
            do {
                response = try await handler(request)
            } catch let e as HTTPError {
                response = e.response
            } catch {
                response = HTTPError(500, "internal error").response
            }
            guard executor.isCurrent else { return }  // the loop has stopped: the connection is gone
            let (c, entry) = bound.value
            c.complete(entry, response)
        }
    }

    /// The task answered: fill its slot and send what is ready in order.
    func complete(_ entry: PendingResponse, _ response: HTTPServerResponse) {
        entry.task = nil
        guard !entry.cancelled else { return }
        entry.payload = .async(response)
        guard let connection, !closing else { return }
        if flushPending(connection) { return }
    }

    /// A synchronous answer while async ones are outstanding: copied into a ready slot.
    func enqueueReady(_ res: borrowing HTTPResponse, _ meta: RequestMeta) {
        let entry = PendingResponse(meta: meta)
        entry.payload = .copied(status: res.status, headerLines: Array(userHeaders.bytes), body: Array(responseBody.bytes),
                                file: res.bodyFile, fileOffset: res.bodyFileOffset, chunked: res.chunked)
        pending.append(entry)
    }

    /// Sends the oldest pending response if it is ready and nothing is being sent. Returns whether it
    /// started one (its completion, in `endResponse`, sends the next).
    func flushPending(_ connection: Connection) -> Bool {
        guard !out.active, let first = pending.first else { return false }
        if !first.isReady {
            guard first.streaming else { return false }
            // A streamed response's turn: its task writes from now on; `streamDone` goes on after it.
            first.live = true
            wake(first)
            return true
        }
        pending.removeFirst()
        var res = HTTPResponse(headers: userHeaders, body: responseBody)
        switch first.payload {
        case .waiting:
            preconditionFailure("unreachable")
        case .async(let r):
            res.status = r.status
            r.headers.forEachRaw { name, value in
                let n = HTTPBytes(name)
                // The engine frames the body itself.
                if n.equalsIgnoringCase("content-length") || n.equalsIgnoringCase("transfer-encoding") { return }
                userHeaders.appendHeader(name, value)
            }
            r.body.withUnsafeBytes { responseBody.append($0) }
        case .copied(let status, let lines, let body, let file, let fileOffset, let chunked):
            res.status = status
            lines.withUnsafeBytes { userHeaders.append($0) }
            body.withUnsafeBytes { responseBody.append($0) }
            res.bodyFile = file
            res.bodyFileOffset = fileOffset
            res.chunked = chunked
        }
        send(&res, first.meta, connection)
        return true
    }

    /// The connection is going away: cancel the outstanding tasks, drop the queued answers.
    func cancelPending() {
        guard !pending.isEmpty else { return }
        for e in pending {
            e.cancelled = true
            e.task?.cancel()
            e.task = nil
            wake(e)
            e.body?.fail(CancellationError())
            if case .copied(_, _, _, let file?, _, _) = e.payload { closeFile(file.fd) }
        }
        pending.removeAll()
        wakeStreamWriter()
    }

    /// The owned request an async handler gets (this is where an async route allocates).
    func serverRequest(route i: Int, body: HTTPRequestBody? = nil) -> HTTPServerRequest {
        let target = head.slice(head.target).buffer
        let path = pathPart(target)
        var headers = HTTPHeaderFields()
        headers.bytes.reserveCapacity(head.bytes.count)
        headers.fields.reserveCapacity(head.fieldCount)
        for k in 0..<head.fieldCount { headers.add(head.name(at: k).buffer, head.value(at: k).buffer) }
        var parameters = HTTPParameters()
        if head.captureCount > 0 {
            for (k, name) in router.routes[i].parameterNames.enumerated() where k < head.captureCount {
                let r = head.captures[k]
                parameters.pairs.append((name, percentDecode(head.bytes.bytes[Int(r.0)..<Int(r.1)])))
            }
        }
        let query = path.count < target.count
            ? HTTPParameters.parseQuery(UnsafeRawBufferPointer(rebasing: target[(path.count + 1)...])) : HTTPParameters()
        let targetString = String(decoding: target, as: UTF8.self)
        return HTTPServerRequest(
            method: String(decoding: head.slice(head.method).buffer, as: UTF8.self),
            target: targetString,
            path: path.count == target.count ? targetString : String(decoding: path, as: UTF8.self),
            query: query, version: version, headers: headers, parameters: parameters,
            body: body ?? HTTPRequestBody(bytes: bodyBuffer.count > 0 ? Array(bodyBuffer.bytes) : []))
    }
}

// MARK: streamed responses

/// Writes a response as it is produced, from an async streaming route
/// (``HTTPRouter/onStreaming(_:_:_:)``): the head first (``writeHead(status:headers:contentLength:)``, or 200 at the
/// first ``write(_:)-([UInt8])``), then body pieces, sent with `Transfer-Encoding: chunked` (HTTP/1.1;
/// an HTTP/1.0 client gets the body delimited by the close), or as they are when the head announced a
/// `contentLength`. Each write waits its turn (responses to
/// earlier requests go first) and waits while the connection's output queue is above its high
/// watermark. Use it from the route's task only.
public struct HTTPResponseWriter: Sendable {
    let bound: LoopBound<(HTTPConnection, PendingResponse)>
    let executor: LoopExecutor

    /// Sends the head. Call at most once, before any body write. With a `contentLength` the body is
    /// sent with that `Content-Length` instead of chunked, and the writes must add up to exactly that
    /// many bytes (more, or fewer when the handler returns, aborts the connection).
    /// - Throws: `CancellationError` when the client went away.
    public func writeHead(status: Int = 200, headers: HTTPHeaderFields = .init(), contentLength: Int? = nil) async throws {
        let (c, e) = try await turn()
        precondition(!e.headSent, "response head written twice")
        try await c.streamWriteHead(e, status: status, headers: headers, contentLength: contentLength, executor: executor)
    }

    /// Sends `bytes` as the next piece of the body (a chunk; empty writes send nothing).
    public func write(_ bytes: [UInt8]) async throws {
        let (c, e) = try await turn()
        if !e.headSent { try await c.streamWriteHead(e, status: 200, headers: .init(), executor: executor) }
        guard !bytes.isEmpty else { return }
        if let left = e.remaining {
            guard bytes.count <= left else { throw HTTPError(500, "response body longer than its Content-Length") }
            e.remaining = left - bytes.count
        }
        let bytes = e.encoder.map { c.encodeStreamPiece($0, bytes, finish: false) } ?? bytes  // a sync-flushed piece
        guard !bytes.isEmpty else { return }
        var piece: [UInt8] = []
        if e.chunked {
            piece.reserveCapacity(bytes.count + 12)
            piece.append(contentsOf: Array(String(bytes.count, radix: 16).utf8))
            piece.append(contentsOf: [13, 10])
            piece.append(contentsOf: bytes)
            piece.append(contentsOf: [13, 10])
        } else {
            piece = bytes
        }
        try await c.streamWrite(e, piece, executor: executor)
    }

    /// Sends the UTF-8 bytes of `text` (see ``write(_:)-([UInt8])``).
    public func write(_ text: String) async throws { try await write(Array(text.utf8)) }

    /// Waits until this response is the one being sent on the connection.
    private func turn() async throws -> (HTTPConnection, PendingResponse) {
        let (c, e) = bound.value
        while true {
            guard executor.isCurrent, !e.cancelled else { throw CancellationError() }
            if e.live { return (c, e) }
            await withUnsafeContinuation { e.waiter = $0 }
        }
    }

    /// The handler returned: head if none yet, the last chunk, then the next response.
    func finish() async throws {
        let (c, e) = try await turn()
        if !e.headSent { try await c.streamWriteHead(e, status: 200, headers: .init(), executor: executor) }
        if let left = e.remaining, left > 0 { throw HTTPError(500, "response body shorter than its Content-Length") }
        if let encoder = e.encoder {
            // The end of the compressed stream (its trailer), as a last chunk of data.
            let tail = c.encodeStreamPiece(encoder, [], finish: true)
            e.encoder = nil
            c.config.compression.pool.put(encoder)
            if !tail.isEmpty {
                let framed = e.chunked ? Array((String(tail.count, radix: 16) + "\r\n").utf8) + tail + [13, 10] : tail
                try await c.streamWrite(e, framed, executor: executor)
            }
        }
        if e.chunked { try await c.streamWrite(e, Array("0\r\n\r\n".utf8), executor: executor) }
        c.streamDone(e)
    }
}

/// An async route that writes its response as a stream.
public typealias HTTPStreamingAsyncHandler = @Sendable (HTTPServerRequest, HTTPResponseWriter) async throws -> Void

extension HTTPConnection {
    /// Starts streaming route `i`: like `startAsync`, with a writer instead of a returned response.
    func startStreamingAsync(route i: Int, _ connection: Connection) {
        guard let executor = executor ?? LoopExecutor.current else {
            preconditionFailure("HTTP async route dispatched outside a loop thread")
        }
        self.executor = executor
        let stream = BodyStream(connection: self, executor: executor)
        bodyStream = stream
        let request = serverRequest(route: i, body: HTTPRequestBody(stream: stream))
        let entry = PendingResponse(meta: meta)
        entry.streaming = true
        entry.body = stream
        pending.append(entry)
        guard case .streamingAsync(let handler) = router.routes[i].kind else { preconditionFailure("not a streaming route") }
        let bound = LoopBound(value: (self, entry))
        let writer = HTTPResponseWriter(bound: bound, executor: executor)
        entry.task = Task(executorPreference: executor) {
            do {
                try await handler(request, writer)
                try await writer.finish()
            } catch {
                guard executor.isCurrent else { return }
                let (c, entry) = bound.value
                c.streamFailed(entry, error)
            }
        }
        if pending.count == 1 { _ = flushPending(connection) }  // its turn already: mark it live
    }

    func wake(_ e: PendingResponse) {
        if let w = e.waiter { e.waiter = nil; w.resume() }
    }

    /// Wakes a streamed response waiting for the output queue to drain (or for the pool-retry timer).
    func wakeStreamWriter() {
        if let w = streamWriter { streamWriter = nil; w.resume() }
    }

    func streamWriteHead(_ e: PendingResponse, status: Int, headers: HTTPHeaderFields, contentLength: Int? = nil,
                         executor: LoopExecutor) async throws {
        var res = HTTPResponse(headers: userHeaders, body: responseBody)
        res.status = status
        headers.forEachRaw { name, value in
            let n = HTTPBytes(name)
            if n.equalsIgnoringCase("content-length") || n.equalsIgnoringCase("transfer-encoding") { return }
            userHeaders.appendHeader(name, value)
        }
        // A compressed stream's length is not known: it goes chunked (HTTPCompression.swift).
        if config.compression.enabled { e.encoder = streamCoding(status: status, meta: e.meta) }
        var meta = e.meta
        if let n = contentLength, e.encoder == nil, status != 204 && status != 304 {
            userHeaders.append("Content-Length: ")
            userHeaders.append(decimal: n)
            userHeaders.append("\r\n")
            e.remaining = n
        } else {
            e.chunked = e.meta.version == .http11 && !e.meta.isHead
            if e.meta.version == .http10 { meta.keepAlive = false }  // the close delimits the body
        }
        e.closeAfter = !meta.keepAlive
        composeStreamHead(res, meta, chunked: e.chunked, close: e.closeAfter)
        e.headSent = true
        let head = Array(responseHead.bytes)
        try await streamWrite(e, head, executor: executor)
    }

    /// Queues `bytes`, waiting while the queue is above the high watermark or the pool is empty.
    func streamWrite(_ e: PendingResponse, _ bytes: [UInt8], executor: LoopExecutor) async throws {
        if e.meta.isHead && e.headSent && e.headWritten { return }  // HEAD: the head only
        var offset = 0
        while offset < bytes.count {
            guard executor.isCurrent, !e.cancelled, let connection else { throw CancellationError() }
            if connection.isBackpressured {
                await withUnsafeContinuation { streamWriter = $0 }
                continue
            }
            let n = min(bytes.count - offset, 16 * 1024)
            let o = offset
            let r: Result<Void, WriteError> = bytes.withUnsafeBytes { p in
                Result { () throws(WriteError) in try connection.write(UnsafeRawBufferPointer(rebasing: p[o..<o + n])) }
            }
            do throws(WriteError) {
                try r.get()
                offset += n
            } catch .bufferPoolExhausted {
                connection.setTimer(after: .milliseconds(1))
                await withUnsafeContinuation { streamWriter = $0 }
            } catch {
                throw CancellationError()
            }
        }
        e.headWritten = true
    }

    /// The stream is complete: the next response (or the close) follows.
    func streamDone(_ e: PendingResponse) {
        e.task = nil
        guard !e.cancelled, let connection, pending.first === e else { return }
        pending.removeFirst()
        e.live = false
        abandonBody(e)
        out = Outgoing(active: true, closeAfter: e.closeAfter || closing)
        endResponse(connection, cutOff: false)
    }

    /// The streaming handler threw: an error response if nothing was sent yet, else the connection is
    /// aborted (the client cannot tell a cut body from a complete one otherwise).
    func streamFailed(_ e: PendingResponse, _ error: any Error) {
        e.task = nil
        guard !e.cancelled, let connection else { return }
        if e.headSent {
            cancelPending()
            closing = true
            connection.abort()
            return
        }
        e.payload = .async((error as? HTTPError)?.response ?? HTTPError(500, "internal error").response)
        e.live = false
        abandonBody(e)
        _ = flushPending(connection)
    }

    /// The route is done but its request body has not all arrived (it did not read it, e.g. an early
    /// error answer): the rest is dropped as it arrives and reading resumes, so the connection goes on
    /// to its next request instead of staying paused at `streamedBodyBuffer`.
    func abandonBody(_ e: PendingResponse) {
        guard let s = e.body, !s.ended, s.failure == nil else { return }
        s.discard()
        bodyConsumed(buffered: 0)
    }
}

// MARK: streamed request bodies

/// The body of a request to a streaming route, pushed by the parser (loop thread) and pulled by the
/// route's task (same thread). Above `streamedBodyBuffer` buffered bytes the connection stops reading
/// until the task has taken them.
final class BodyStream {
    unowned(unsafe) let connection: HTTPConnection  // the task keeps the connection alive (LoopBound)
    let executor: LoopExecutor
    var chunks: [[UInt8]] = []
    var head = 0
    var buffered = 0
    var ended = false
    var failure: (any Error)? = nil
    var waiter: UnsafeContinuation<Void, Never>? = nil

    init(connection: HTTPConnection, executor: LoopExecutor) { self.connection = connection; self.executor = executor }

    /// Set when the route finished without reading the whole body: what arrives is dropped.
    var discarding = false

    func push(_ bytes: UnsafeRawBufferPointer) {
        guard !discarding else { return }
        chunks.append(Array(bytes))
        buffered += bytes.count
        wake()
    }

    func finish() { ended = true; wake() }

    func discard() {
        discarding = true
        chunks.removeAll()
        head = 0
        buffered = 0
    }

    func fail(_ error: any Error) {
        if !ended && failure == nil { failure = error }
        wake()
    }

    private func wake() { if let w = waiter { waiter = nil; w.resume() } }

    func next() async throws -> [UInt8]? {
        while true {
            guard executor.isCurrent else { throw CancellationError() }
            if head < chunks.count {
                let c = chunks[head]
                head += 1
                if head == chunks.count { chunks.removeAll(keepingCapacity: true); head = 0 }
                buffered -= c.count
                connection.bodyConsumed(buffered: buffered)
                return c
            }
            if let failure { throw failure }
            if ended { return nil }
            if waiter != nil { preconditionFailure("a request body iterated from two places at once") }
            await withUnsafeContinuation { waiter = $0 }
        }
    }
}

extension HTTPConnection {
    /// The parser delivered body bytes for the streaming route's request.
    func pushBody(_ bytes: UnsafeRawBufferPointer, _ connection: Connection) {
        guard let s = bodyStream else { return }
        s.push(bytes)
        if !bodyPaused && s.buffered >= config.streamedBodyBuffer {
            bodyPaused = true
            connection.pauseReading()
        }
    }

    /// The task took body bytes: read again once the buffer is half empty.
    func bodyConsumed(buffered: Int) {
        guard bodyPaused, buffered <= config.streamedBodyBuffer / 2 else { return }
        bodyPaused = false
        if !readingPaused, let connection { connection.resumeReading() }
    }
}
