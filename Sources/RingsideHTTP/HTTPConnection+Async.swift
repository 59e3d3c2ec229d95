import Glibc
import Ringside

/// What a response head depends on besides the response: the request's version, keep-alive, HEAD.
struct RequestMeta {
    var version: HTTPVersion
    var keepAlive: Bool
    var isHead: Bool
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
        case copied(status: Int, headerLines: [UInt8], body: [UInt8], file: (fd: Int32, size: Int)?, chunked: Bool)
    }
    let meta: RequestMeta
    var payload = Payload.waiting
    var task: Task<Void, Never>? = nil
    var cancelled = false

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
    func enqueueReady(_ res: HTTPResponse, _ meta: RequestMeta) {
        let entry = PendingResponse(meta: meta)
        entry.payload = .copied(status: res.status, headerLines: Array(userHeaders.bytes), body: Array(responseBody.bytes),
                                file: res.bodyFile, chunked: res.chunked)
        pending.append(entry)
    }

    /// Sends the oldest pending response if it is ready and nothing is being sent. Returns whether it
    /// started one (its completion, in `endResponse`, sends the next).
    func flushPending(_ connection: Connection) -> Bool {
        guard !out.active, let first = pending.first, first.isReady else { return false }
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
        case .copied(let status, let lines, let body, let file, let chunked):
            res.status = status
            lines.withUnsafeBytes { userHeaders.append($0) }
            body.withUnsafeBytes { responseBody.append($0) }
            res.bodyFile = file
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
            if case .copied(_, _, _, let file?, _) = e.payload { _ = Glibc.close(file.fd) }
        }
        pending.removeAll()
    }

    /// The owned request an async handler gets (this is where an async route allocates).
    private func serverRequest(route i: Int) -> HTTPServerRequest {
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
        return HTTPServerRequest(
            method: String(decoding: head.slice(head.method).buffer, as: UTF8.self),
            target: String(decoding: target, as: UTF8.self),
            path: String(decoding: path, as: UTF8.self),
            query: query, version: version, headers: headers, parameters: parameters,
            body: bodyBuffer.count > 0 ? Array(bodyBuffer.bytes) : [])
    }
}
