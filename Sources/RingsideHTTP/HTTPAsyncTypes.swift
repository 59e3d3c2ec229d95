#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// Header fields kept as one byte blob plus offsets (two allocations for a whole head, whatever the
/// number of fields). Names compare ASCII case-insensitively; order and duplicates are kept.
public struct HTTPHeaderFields: Sendable, Sequence {
    var bytes: [UInt8] = []
    /// Per field: name start, name end, value end (the value starts at name end).
    var fields: [(Int32, Int32, Int32)] = []

    /// No fields.
    public init() {}

    /// Fields from `(name, value)` pairs.
    public init(_ pairs: [(String, String)]) {
        for (n, v) in pairs { add(n, v) }
    }

    /// Appends a field. Names and values containing CR or LF are dropped (they would split the head).
    public mutating func add(_ name: String, _ value: String) {
        guard !containsLineBreak(name), !containsLineBreak(value) else { return }
        let start = Int32(bytes.count)
        bytes.append(contentsOf: name.utf8)
        let mid = Int32(bytes.count)
        bytes.append(contentsOf: value.utf8)
        fields.append((start, mid, Int32(bytes.count)))
    }

    mutating func add(_ name: UnsafeRawBufferPointer, _ value: UnsafeRawBufferPointer) {
        let start = Int32(bytes.count)
        bytes.append(contentsOf: name)
        let mid = Int32(bytes.count)
        bytes.append(contentsOf: value)
        fields.append((start, mid, Int32(bytes.count)))
    }

    /// Replaces every field named `name` by one with `value`.
    public mutating func set(_ name: String, _ value: String) {
        remove(name)
        add(name, value)
    }

    /// Removes every field named `name`.
    public mutating func remove(_ name: String) {
        guard contains(name) else { return }
        var kept = HTTPHeaderFields()
        for (n, v) in self where !Self.same(n, name) { kept.add(n, v) }
        self = kept
    }

    /// Whether a field named `name` is present.
    public func contains(_ name: String) -> Bool { index(of: name) != nil }

    /// The value of the first field named `name` (ASCII case-insensitive).
    public subscript(_ name: String) -> String? {
        guard let i = index(of: name) else { return nil }
        let f = fields[i]
        return String(decoding: bytes[Int(f.1)..<Int(f.2)], as: UTF8.self)
    }

    /// The number of fields.
    public var count: Int { fields.count }

    /// The fields in order, as (name, value) copies.
    public func makeIterator() -> AnyIterator<(name: String, value: String)> {
        var k = 0
        return AnyIterator {
            guard k < fields.count else { return nil }
            let f = fields[k]; k += 1
            return (String(decoding: bytes[Int(f.0)..<Int(f.1)], as: UTF8.self),
                    String(decoding: bytes[Int(f.1)..<Int(f.2)], as: UTF8.self))
        }
    }

    /// Calls `body` with the raw name and value of every field.
    func forEachRaw(_ body: (UnsafeRawBufferPointer, UnsafeRawBufferPointer) -> Void) {
        bytes.withUnsafeBytes { b in
            for f in fields {
                body(UnsafeRawBufferPointer(rebasing: b[Int(f.0)..<Int(f.1)]),
                     UnsafeRawBufferPointer(rebasing: b[Int(f.1)..<Int(f.2)]))
            }
        }
    }

    private func index(of name: String) -> Int? {
        let key = Array(name.utf8)
        for (i, f) in fields.enumerated() where Int(f.1 - f.0) == key.count {
            var same = true
            for k in 0..<key.count where asciiLower(bytes[Int(f.0) + k]) != asciiLower(key[k]) { same = false; break }
            if same { return i }
        }
        return nil
    }

    private static func same(_ a: String, _ b: String) -> Bool {
        a.utf8.count == b.utf8.count && zip(a.utf8, b.utf8).allSatisfy { asciiLower($0) == asciiLower($1) }
    }
}

/// Decodes `%XX` escapes (and, with `plusIsSpace`, `+` as a space, as in query strings). Invalid
/// escapes are kept as they are; the result is UTF-8 decoded with replacement of invalid sequences.
public func percentDecode<C: Collection>(_ bytes: C, plusIsSpace: Bool = false) -> String where C.Element == UInt8 {
    var out: [UInt8] = []
    out.reserveCapacity(bytes.count)
    var i = bytes.startIndex
    func hex(_ b: UInt8) -> UInt8? {
        switch b {
        case 48...57: b - 48
        case 65...70: b - 55
        case 97...102: b - 87
        default: nil
        }
    }
    while i != bytes.endIndex {
        let b = bytes[i]
        if b == UInt8(ascii: "%") {
            let j = bytes.index(after: i)
            if j != bytes.endIndex, bytes.index(after: j) != bytes.endIndex,
               let hi = hex(bytes[j]), let lo = hex(bytes[bytes.index(after: j)]) {
                out.append(hi << 4 | lo)
                i = bytes.index(j, offsetBy: 2)
                continue
            }
        }
        out.append(plusIsSpace && b == UInt8(ascii: "+") ? 0x20 : b)
        i = bytes.index(after: i)
    }
    return String(decoding: out, as: UTF8.self)
}

/// Name/value pairs (path parameters or query items), decoded, in order, duplicates kept.
public struct HTTPParameters: Sendable, Sequence {
    var pairs: [(String, String)] = []

    /// No pairs.
    public init() {}
    init(pairs: [(String, String)]) { self.pairs = pairs }

    /// The first value for `name`.
    public subscript(_ name: String) -> String? { pairs.first { $0.0 == name }?.1 }
    /// Every value for `name` (query strings may repeat a key).
    public func all(_ name: String) -> [String] { pairs.filter { $0.0 == name }.map(\.1) }
    /// The first value for `name` converted (e.g. `Int`), or nil when absent or not convertible.
    public func get<T: LosslessStringConvertible>(_ name: String, as: T.Type = T.self) -> T? { self[name].flatMap(T.init) }
    /// The number of pairs.
    public var count: Int { pairs.count }
    /// Whether there are no pairs.
    public var isEmpty: Bool { pairs.isEmpty }
    /// The pairs in order.
    public func makeIterator() -> IndexingIterator<[(String, String)]> { pairs.makeIterator() }

    /// Parses a query string (`a=1&b=x%20y&c`): `+` is a space, escapes are decoded, a key without
    /// `=` has an empty value, empty items are skipped.
    public static func parseQuery<C: Collection>(_ query: C) -> HTTPParameters where C.Element == UInt8, C.SubSequence: Collection {
        var out = HTTPParameters()
        for item in query.split(separator: UInt8(ascii: "&"), omittingEmptySubsequences: true) {
            if let eq = item.firstIndex(of: UInt8(ascii: "=")) {
                out.pairs.append((percentDecode(item[item.startIndex..<eq], plusIsSpace: true),
                                  percentDecode(item[item.index(after: eq)...], plusIsSpace: true)))
            } else {
                out.pairs.append((percentDecode(item, plusIsSpace: true), ""))
            }
        }
        return out
    }
}

/// A key for a value that middleware stores in ``HTTPRequestContext`` and handlers read.
///
/// ```swift
/// enum UserKey: HTTPContextKey { typealias Value = String }
/// request.context[UserKey.self] = "alice"      // in middleware
/// let user = request.context[UserKey.self]     // in the handler
/// ```
public protocol HTTPContextKey: Sendable {
    associatedtype Value: Sendable
}

/// Per-request values filled by middleware and read by later middleware and the handler (empty and
/// allocation-free until something is stored).
public struct HTTPRequestContext: Sendable {
    private var values: [ObjectIdentifier: any Sendable] = [:]
    /// An empty context.
    public init() {}
    /// The value stored under `key`, if any.
    public subscript<K: HTTPContextKey>(_ key: K.Type) -> K.Value? {
        get { values[ObjectIdentifier(key)] as? K.Value }
        set { values[ObjectIdentifier(key)] = newValue }
    }
}

/// A request as an async route handler sees it: owned values (copied out of the connection's buffers
/// when the route is dispatched), safe to keep across `await`.
public struct HTTPServerRequest: Sendable {
    /// The method (e.g. "GET").
    public let method: String
    /// The request-target as sent (path and query).
    public let target: String
    /// The path as sent (still percent-encoded), up to `?`.
    public let path: String
    /// The HTTP version of the request.
    public let version: HTTPVersion
    /// The header fields as received (order and duplicates kept).
    public let headers: HTTPHeaderFields
    /// The route's `{name}` parameters (and `**`), percent-decoded.
    public let parameters: HTTPParameters
    /// The query string's items, percent-decoded (`+` as space).
    public let query: HTTPParameters
    /// The body: read whole before the handler starts (at most
    /// ``HTTPServerConfiguration/asyncBodyLimit`` bytes, else 413 without calling the handler), or
    /// streamed as it arrives for streaming routes.
    public let body: HTTPRequestBody
    /// Values set by middleware for later middleware and the handler.
    public var context = HTTPRequestContext()

    /// Creates a request (for tests of handlers and middleware without a server).
    public init(method: String, target: String, version: HTTPVersion = .http11, headers: HTTPHeaderFields = .init(),
                parameters: HTTPParameters = .init(), body: [UInt8] = []) {
        self.method = method
        self.target = target
        let t = Array(target.utf8)
        let q = t.firstIndex(of: UInt8(ascii: "?"))
        path = String(decoding: t[..<(q ?? t.endIndex)], as: UTF8.self)
        query = q.map { HTTPParameters.parseQuery(t[($0 + 1)...]) } ?? HTTPParameters()
        self.version = version
        self.headers = headers
        self.parameters = parameters
        self.body = HTTPRequestBody(bytes: body)
    }

    init(method: String, target: String, path: String, query: HTTPParameters, version: HTTPVersion,
         headers: HTTPHeaderFields, parameters: HTTPParameters, body: HTTPRequestBody) {
        self.method = method; self.target = target; self.path = path; self.query = query
        self.version = version; self.headers = headers; self.parameters = parameters
        self.body = body
    }

    /// Decodes the body as JSON.
    /// - Throws: ``HTTPError`` 400 with a short reason when it does not decode.
    public func decode<T: Decodable>(_ type: T.Type = T.self) throws(HTTPError) -> T {
        do {
            return try JSONDecoder().decode(T.self, from: Data(body.bytes))
        } catch let DecodingError.keyNotFound(key, _) {
            throw HTTPError(400, "invalid JSON body: missing key \(key.stringValue)")
        } catch let DecodingError.typeMismatch(_, ctx) {
            throw HTTPError(400, "invalid JSON body: wrong type at \(Self.pathText(ctx.codingPath))")
        } catch let DecodingError.valueNotFound(_, ctx) {
            throw HTTPError(400, "invalid JSON body: null at \(Self.pathText(ctx.codingPath))")
        } catch {
            throw HTTPError(400, "invalid JSON body")
        }
    }

    private static func pathText(_ path: [any CodingKey]) -> String {
        path.isEmpty ? "top level" : path.map(\.stringValue).joined(separator: ".")
    }
}

/// A request body: read whole before the handler ran (``HTTPRouter/on(_:_:_:)-(_,_,HTTPAsyncHandler)``),
/// or, for streaming routes (``HTTPRouter/onStreaming(_:_:_:)``), delivered as it arrives: iterate it
/// (`for try await chunk in request.body`). A streamed body is buffered up to
/// ``HTTPServerConfiguration/streamedBodyBuffer`` bytes; beyond that the connection stops reading until
/// the handler takes what is buffered (backpressure). Iterate it from the route's task, once.
public struct HTTPRequestBody: Sendable, AsyncSequence {
    /// A piece of the body.
    public typealias Element = [UInt8]
    let whole: [UInt8]
    let stream: LoopBound<BodyStream>?

    init(bytes: [UInt8]) { whole = bytes; stream = nil }
    init(stream: BodyStream) { whole = []; self.stream = LoopBound(value: stream) }

    /// The whole body of a non-streaming route (empty for a streamed body: iterate or ``collect(upTo:)``).
    public var bytes: [UInt8] { whole }

    /// Whether the body arrives as a stream (streaming routes).
    public var isStreamed: Bool { stream != nil }

    /// The whole body, read to its end (streamed bodies), at most `limit` bytes.
    /// - Throws: ``HTTPError`` 413 beyond `limit`; `CancellationError` when the client went away.
    public func collect(upTo limit: Int) async throws -> [UInt8] {
        guard stream != nil else {
            guard whole.count <= limit else { throw HTTPError(413, "request body larger than \(limit) bytes") }
            return whole
        }
        var out: [UInt8] = []
        for try await chunk in self {
            guard out.count + chunk.count <= limit else { throw HTTPError(413, "request body larger than \(limit) bytes") }
            out += chunk
        }
        return out
    }

    /// An iterator over the body's pieces.
    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(bytes: whole.isEmpty ? nil : whole, stream: stream)
    }

    /// Yields the body's pieces in order.
    public struct AsyncIterator: AsyncIteratorProtocol {
        var bytes: [UInt8]?
        let stream: LoopBound<BodyStream>?
        /// The next piece; nil at the end of the body.
        /// - Throws: `CancellationError` when the client went away, ``HTTPError`` when the rest of the
        ///   request was malformed.
        public mutating func next() async throws -> [UInt8]? {
            if let stream { return try await stream.value.next() }
            defer { bytes = nil }
            return bytes
        }
    }
}

/// A response from an async route: status, header fields, body.
public struct HTTPServerResponse: Sendable {
    /// The status code.
    public var status: Int
    /// Header fields to send; the engine adds `Date`, `Server`, the framing (`Content-Length` or
    /// chunked: fields of those names set here are dropped) and `Connection: close` when closing.
    public var headers: HTTPHeaderFields
    /// The body.
    public var body: [UInt8]

    /// A response with `status`, `headers` and `body`.
    public init(status: Int = 200, headers: HTTPHeaderFields = .init(), body: [UInt8] = []) {
        self.status = status; self.headers = headers; self.body = body
    }

    /// `text/plain` with `text` as the body.
    public static func text(_ text: String, status: Int = 200) -> HTTPServerResponse {
        HTTPServerResponse(status: status, headers: textPlain, body: Array(text.utf8))
    }

    /// `application/json` with `value` encoded.
    /// - Throws: ``HTTPError`` 500 when `value` does not encode.
    public static func json<T: Encodable>(_ value: T, status: Int = 200) throws(HTTPError) -> HTTPServerResponse {
        let data: Data
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.withoutEscapingSlashes]
        do { data = try encoder.encode(value) } catch { throw HTTPError(500, "response did not encode as JSON") }
        return HTTPServerResponse(status: status, headers: applicationJSON, body: Array(data))
    }

    // Shared (copy-on-write): a response that only uses them allocates no header storage.
    private static let textPlain = HTTPHeaderFields([("Content-Type", "text/plain")])
    private static let applicationJSON = HTTPHeaderFields([("Content-Type", "application/json")])
}

/// An error a handler or middleware throws to answer with `status` and a short plain-text reason.
/// Any other error thrown by an async route is answered 500 (its text is not sent).
public struct HTTPError: Error, Sendable, Equatable {
    /// The status to answer with.
    public var status: Int
    /// A short plain-text reason, sent as the body.
    public var reason: String
    /// An error answered with `status` and `reason`.
    public init(_ status: Int, _ reason: String = "") { self.status = status; self.reason = reason }

    /// The response sent for this error.
    public var response: HTTPServerResponse {
        .text(reason.isEmpty ? "\(status)\n" : reason + "\n", status: status)
    }
}

/// An async route handler: runs as a task on the connection's loop thread.
public typealias HTTPAsyncHandler = @Sendable (HTTPServerRequest) async throws -> HTTPServerResponse

/// Middleware around async routes: may answer by itself (short-circuit, e.g. 401), change the
/// request (e.g. fill ``HTTPServerRequest/context``) before calling `next`, and change the response
/// `next` returned.
///
/// ```swift
/// struct RequireToken: HTTPMiddleware {
///     func handle(_ request: HTTPServerRequest, next: HTTPAsyncHandler) async throws -> HTTPServerResponse {
///         guard request.headers["Authorization"] == "Bearer secret" else { return .text("no\n", status: 401) }
///         return try await next(request)
///     }
/// }
/// ```
public protocol HTTPMiddleware: Sendable {
    func handle(_ request: HTTPServerRequest, next: HTTPAsyncHandler) async throws -> HTTPServerResponse
}

/// Middleware from a closure.
public struct HTTPMiddlewareFunction: HTTPMiddleware {
    let body: @Sendable (HTTPServerRequest, HTTPAsyncHandler) async throws -> HTTPServerResponse
    /// Middleware that runs `body` (the request and the next handler).
    public init(_ body: @escaping @Sendable (HTTPServerRequest, HTTPAsyncHandler) async throws -> HTTPServerResponse) {
        self.body = body
    }
    /// Runs the closure.
    public func handle(_ request: HTTPServerRequest, next: HTTPAsyncHandler) async throws -> HTTPServerResponse {
        try await body(request, next)
    }
}

/// CORS: answers preflight `OPTIONS` requests carrying `Access-Control-Request-Method` with 204 and the
/// allowed methods and headers; adds `Access-Control-Allow-Origin` to every response of a request
/// with an `Origin` the policy allows. Middleware runs for matched routes only: give preflights a
/// route, e.g. `group.on("OPTIONS", "/**") { _ in HTTPServerResponse(status: 404) }` in the group
/// that uses this middleware.
public struct CORSMiddleware: HTTPMiddleware {
    /// Allowed origins; empty: any (`*`).
    public var allowedOrigins: [String]
    /// `Access-Control-Allow-Methods` of preflight answers.
    public var allowedMethods: String
    /// `Access-Control-Allow-Headers` of preflight answers.
    public var allowedHeaders: String
    /// `Access-Control-Max-Age` of preflight answers.
    public var maxAgeSeconds: Int

    /// A policy; the defaults allow any origin.
    public init(allowedOrigins: [String] = [], allowedMethods: String = "GET, POST, PUT, DELETE, OPTIONS",
                allowedHeaders: String = "Content-Type, Authorization", maxAgeSeconds: Int = 600) {
        self.allowedOrigins = allowedOrigins; self.allowedMethods = allowedMethods
        self.allowedHeaders = allowedHeaders; self.maxAgeSeconds = maxAgeSeconds
    }

    /// Answers preflights; adds the allow-origin header to other answers.
    public func handle(_ request: HTTPServerRequest, next: HTTPAsyncHandler) async throws -> HTTPServerResponse {
        guard let origin = request.headers["Origin"] else { return try await next(request) }
        let allow: String? = allowedOrigins.isEmpty ? "*" : (allowedOrigins.contains(origin) ? origin : nil)
        guard let allow else { return try await next(request) }
        if request.method == "OPTIONS" && request.headers.contains("Access-Control-Request-Method") {
            var h = HTTPHeaderFields()
            h.add("Access-Control-Allow-Origin", allow)
            h.add("Access-Control-Allow-Methods", allowedMethods)
            h.add("Access-Control-Allow-Headers", allowedHeaders)
            h.add("Access-Control-Max-Age", String(maxAgeSeconds))
            if allow != "*" { h.add("Vary", "Origin") }
            return HTTPServerResponse(status: 204, headers: h)
        }
        var res = try await next(request)
        res.headers.set("Access-Control-Allow-Origin", allow)
        if allow != "*" { res.headers.add("Vary", "Origin") }
        return res
    }
}
