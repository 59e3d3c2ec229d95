import Ringside

/// A request as a route handler sees it: borrowed views, valid during the handler call only.
/// (Copyable on purpose: with ~Copyable, Swift 6.3 -O emitted a trapping copy when passing it to a route.)
public struct HTTPRequest {
    public let method: HTTPBytes
    /// The request-target as sent (path and query).
    public let target: HTTPBytes
    /// The target up to `?`.
    public let path: HTTPBytes
    public let version: HTTPVersion
    public let keepAlive: Bool
    // The connection's head store, unretained. Invariant: a request is made by its HTTPConnection from
    // that connection's own store (a `let`, freed only with it) and lent to the route for one call
    // (the views above point into the same store), so the store outlives it and is borrowed at +0
    // (`_withUnsafeGuaranteedRef`): making and passing a request costs no retain/release.
    let storeRef: Unmanaged<HeadStore>
    @inline(__always) func withStore<R>(_ body: (HeadStore) -> R) -> R { storeRef._withUnsafeGuaranteedRef(body) }
    /// The body: none, in memory, or spooled to an (unlinked) temporary file above the configured
    /// threshold, so a large upload never sits in memory.
    public let body: HTTPBody

    /// The value of the route's path parameter `name` (`{name}` in the template, `**` for a
    /// catch-all), as sent: still percent-encoded (see ``percentDecode(_:plusIsSpace:)``). No allocation.
    public func parameter(_ name: String) -> HTTPBytes? { withStore { $0.capture(name) } }

    /// The query string (after `?`), as sent; empty when there is none.
    public var query: HTTPBytes {
        let t = target.buffer
        guard let q = t.firstIndex(of: UInt8(ascii: "?")) else { return HTTPBytes(UnsafeRawBufferPointer(start: nil, count: 0)) }
        return HTTPBytes(UnsafeRawBufferPointer(rebasing: t[(q + 1)...]))
    }

    /// The first header with this name (case-insensitive).
    public func header(_ name: StaticString) -> HTTPBytes? { withStore { $0.value(forName: name) } }
    /// Number of header fields and positional access.
    public var headerCount: Int { withStore { $0.fieldCount } }
    public func headerName(at i: Int) -> HTTPBytes { withStore { $0.name(at: i) } }
    public func headerValue(at i: Int) -> HTTPBytes { withStore { $0.value(at: i) } }
}

/// A request body.
public enum HTTPBody {
    case none
    /// In memory (at most `HTTPServerConfiguration.spoolThreshold` bytes).
    case bytes(UnsafeRawBufferPointer)
    /// In an unlinked temporary file: read it with pread; to send it back, set
    /// `HTTPResponse.bodyFile` to it (the engine then streams it with backpressure and closes it).
    case file(fd: Int32, size: Int)

    public var count: Int {
        switch self {
        case .none: 0
        case .bytes(let b): b.count
        case .file(_, let n): n
        }
    }
}

/// A route handler: reads the request, fills the response. Runs on the connection's loop thread.
public typealias HTTPRouteHandler = @Sendable (borrowing HTTPRequest, inout HTTPResponse) -> Void

/// A route that takes the request body as it arrives (push), never buffering or spooling it:
/// `head` first (its `body` is `.none`), then `body` for every piece, then `end` to answer.
/// One value per request, created by the route's factory, used on the connection's loop thread.
public protocol HTTPStreamingHandler {
    mutating func head(_ request: borrowing HTTPRequest)
    mutating func body(_ bytes: UnsafeRawBufferPointer)
    mutating func end(_ response: inout HTTPResponse)
}

/// Routes by method and path template, synchronous and async routes in one table.
///
/// Paths are templates: `/users/{id}` captures a segment, `*` matches any one segment, `**` the rest
/// of the path (see ``HTTPServerRequest/parameters``, ``HTTPRequest/parameter(_:)``). Matching walks a
/// trie of segments (binary search among literal siblings): its cost does not grow with the number of
/// routes, and it allocates nothing. A literal segment beats `{param}`, which beats `*`, then `**`.
///
/// ```swift
/// var router = HTTPRouter()
/// router.get("/plaintext") { _, res in           // synchronous: runs inline, allocation-free
///     res.setHeader("Content-Type", "text/plain")
///     res.write("Hello, World!")
/// }
/// router.use(RequireToken())                      // middleware for the async routes added after it
/// router.get("/users/{id}") { req in              // async: a task on the connection's loop thread
///     let user = try await db.user(req.parameters["id"]!)
///     return try .json(user)
/// }
/// router.group("/v2") { v2 in v2.get("/ping") { _ in .text("pong") } }
/// ```
///
/// Middleware wraps the async routes registered after ``use(_:)-(HTTPMiddleware)`` (and in a group, the group's own);
/// synchronous routes are never wrapped (they cannot await).
public struct HTTPRouter: Sendable {
    enum Kind: Sendable {
        case sync(SyncRoute)
        case streaming(@Sendable () -> any HTTPStreamingHandler)
        case async(HTTPAsyncHandler)
        case streamingAsync(HTTPStreamingAsyncHandler)
        /// Files under a directory (HTTPStaticFiles.swift).
        case staticFiles(StaticFileRoot)
    }
    /// A synchronous route's handler, boxed so the connection can call it with the closure borrowed at
    /// +0 (see `Route.syncRef`).
    final class SyncRoute: Sendable {
        let handler: HTTPRouteHandler
        init(_ handler: @escaping HTTPRouteHandler) { self.handler = handler }
    }
    /// `Kind` without its payload: read per request without copying (and retaining) the payload.
    enum Tag: UInt8, Sendable { case sync, streaming, async, streamingAsync, staticFiles }
    struct Route: Sendable {
        let method: [UInt8]
        let path: String
        let kind: Kind
        /// Capture names, in template order (`**` for a catch-all).
        let parameterNames: [String]
        let tag: Tag
        /// The synchronous handler's box, unretained. Invariant: `kind` (`.sync`) holds the box strongly,
        /// and the route is reached through a router the caller holds for the whole call (an
        /// HTTPConnection's `let router`), so the box is alive and is borrowed at +0: calling the
        /// handler costs no retain/release of the box or of the closure's context.
        let syncRef: Unmanaged<SyncRoute>?

        init(method: [UInt8], path: String, kind: Kind, parameterNames: [String]) {
            self.method = method
            self.path = path
            self.kind = kind
            self.parameterNames = parameterNames
            switch kind {
            case .sync(let box): tag = .sync; syncRef = Unmanaged.passUnretained(box)
            case .streaming: tag = .streaming; syncRef = nil
            case .async: tag = .async; syncRef = nil
            case .streamingAsync: tag = .streamingAsync; syncRef = nil
            case .staticFiles: tag = .staticFiles; syncRef = nil
            }
        }

        var streaming: (@Sendable () -> any HTTPStreamingHandler)? { if case .streaming(let m) = kind { m } else { nil } }
        var asyncHandler: HTTPAsyncHandler? { if case .async(let h) = kind { h } else { nil } }
    }
    var routes: [Route] = []
    var trie = RouteTrie()
    /// Middleware applied to async routes registered from now on (outermost first).
    var middleware: [any HTTPMiddleware] = []
    /// The prefix of the group being built ("" at the top).
    var prefix = ""

    public init() {}

    /// The number of registered routes.
    public var routeCount: Int { routes.count }

    mutating func add(_ method: String, _ path: String, _ kind: Kind) {
        let full = prefix.isEmpty ? path : (path == "/" ? prefix : prefix + path)
        let segments = RouteSegment.parse(full)
        let names = segments.compactMap { s -> String? in
            switch s {
            case .parameter(let n): n
            case .catchAll: "**"
            default: nil
            }
        }
        trie.insert(method: Array(method.utf8), segments: segments, route: routes.count)
        routes.append(Route(method: Array(method.utf8), path: full, kind: kind, parameterNames: names))
    }

    /// Registers a synchronous `handler` for `method` (e.g. "GET") and the path template `path`.
    public mutating func on(_ method: String, _ path: String, _ handler: @escaping HTTPRouteHandler) {
        add(method, path, .sync(SyncRoute(handler)))
    }

    /// Registers a streaming route: `make` creates one handler per request, which gets the body as it
    /// arrives. (The handler value is boxed per request, unlike buffered routes.)
    public mutating func stream(_ method: String, _ path: String, _ make: @escaping @Sendable () -> any HTTPStreamingHandler) {
        add(method, path, .streaming(make))
    }
    public mutating func get(_ path: String, _ handler: @escaping HTTPRouteHandler) { on("GET", path, handler) }
    public mutating func post(_ path: String, _ handler: @escaping HTTPRouteHandler) { on("POST", path, handler) }
    public mutating func put(_ path: String, _ handler: @escaping HTTPRouteHandler) { on("PUT", path, handler) }
    public mutating func delete(_ path: String, _ handler: @escaping HTTPRouteHandler) { on("DELETE", path, handler) }

    /// Registers an async `handler`: it runs as a task on the connection's loop thread (no thread
    /// hop), wrapped in the middleware registered so far. While it awaits, other connections and the
    /// connection's later pipelined requests go on; responses still leave in request order. A client
    /// that disconnects (or half-closes) cancels the tasks of its unanswered requests.
    public mutating func on(_ method: String, _ path: String, _ handler: @escaping HTTPAsyncHandler) {
        var h = handler
        for m in middleware.reversed() {
            let inner = h
            h = { request in try await m.handle(request, next: inner) }
        }
        add(method, path, .async(h))
    }
    /// Registers an async `GET` route (see ``on(_:_:_:)-(_,_,HTTPAsyncHandler)``).
    public mutating func get(_ path: String, _ handler: @escaping HTTPAsyncHandler) { on("GET", path, handler) }

    /// Registers an async route that writes its response as a stream (`try await writer.write(...)`),
    /// chunked, with backpressure; otherwise like ``on(_:_:_:)-(_,_,HTTPAsyncHandler)`` (a task on the
    /// loop, request order kept, cancelled when the client goes away). Middleware does not wrap it.
    /// A throw before anything was written answers like an async route; after, aborts the connection.
    public mutating func onStreaming(_ method: String, _ path: String, _ handler: @escaping HTTPStreamingAsyncHandler) {
        add(method, path, .streamingAsync(handler))
    }
    /// Registers an async `POST` route (see ``on(_:_:_:)-(_,_,HTTPAsyncHandler)``).
    public mutating func post(_ path: String, _ handler: @escaping HTTPAsyncHandler) { on("POST", path, handler) }
    /// Registers an async `PUT` route.
    public mutating func put(_ path: String, _ handler: @escaping HTTPAsyncHandler) { on("PUT", path, handler) }
    /// Registers an async `DELETE` route.
    public mutating func delete(_ path: String, _ handler: @escaping HTTPAsyncHandler) { on("DELETE", path, handler) }

    /// Adds middleware around the async routes registered after this call (the first added is the
    /// outermost).
    public mutating func use(_ middleware: any HTTPMiddleware) { self.middleware.append(middleware) }

    /// Adds middleware from a closure (see ``use(_:)-(HTTPMiddleware)``).
    public mutating func use(_ body: @escaping @Sendable (HTTPServerRequest, HTTPAsyncHandler) async throws -> HTTPServerResponse) {
        use(HTTPMiddlewareFunction(body))
    }

    /// Registers routes under `prefix` (e.g. "/api"); middleware added inside the group applies to the
    /// group's async routes only, after the middleware already in place.
    public mutating func group(_ prefix: String, _ build: (inout HTTPRouter) -> Void) {
        precondition(prefix.hasPrefix("/") && !prefix.hasSuffix("/"), "group prefix \"\(prefix)\" must start and not end with /")
        let savedPrefix = self.prefix, savedMiddleware = middleware
        self.prefix += prefix
        build(&self)
        self.prefix = savedPrefix
        middleware = savedMiddleware
    }

    typealias Match = RouteTrie.Lookup

    /// Finds the route (no allocation); captures go to `captures`.
    func match(method: UnsafeRawBufferPointer, path: UnsafeRawBufferPointer,
               captures: UnsafeMutablePointer<(Int32, Int32)>, captureCount: inout Int) -> Match {
        trie.match(method: method, path: path, captures: captures, captureCount: &captureCount)
    }
}

/// A copy of the current request's head (method, target, header fields) in per-connection storage
/// that keeps its capacity, so a route handler can read headers after the body arrived.
///
/// Loop-thread confined (one per HTTPConnection): its mutable state is `@exclusivity(unchecked)`, only
/// the loop thread touches it.
final class HeadStore {
    let bytes: ByteBuffer
    /// Per field: name offset, name length, value offset, value length.
    private let fields: UnsafeMutablePointer<(Int32, Int32, Int32, Int32)>
    private let maxFields: Int
    @exclusivity(unchecked) private(set) var fieldCount = 0
    @exclusivity(unchecked) private(set) var method = 0..<0
    @exclusivity(unchecked) private(set) var target = 0..<0
    /// The matched route's captures: byte ranges of `bytes` (relative to the path while matching,
    /// made absolute by `setCaptures`), and their names (the route's array: no copy). Only the first
    /// `captureCount` are meaningful: `captureNames` may still be an earlier route's (never read then).
    let captures: UnsafeMutablePointer<(Int32, Int32)>
    @exclusivity(unchecked) private(set) var captureCount = 0
    @exclusivity(unchecked) private(set) var captureNames: [String] = []

    init(maxFields: Int, capacity: Int) {
        self.maxFields = maxFields
        fields = .allocate(capacity: maxFields)
        captures = .allocate(capacity: RouteTrie.maxCaptures)
        bytes = ByteBuffer(capacity: capacity)
    }
    deinit { fields.deallocate(); captures.deallocate() }

    /// The matched route captured nothing (the names are left as they are: no release per request).
    @inline(__always) func clearCaptures() { captureCount = 0 }

    /// Records the captures the router wrote (offsets within the path, which starts at `offset`).
    func setCaptures(count: Int, offset: Int, names: [String]) {
        captureCount = count
        captureNames = names
        for k in 0..<count { captures[k] = (captures[k].0 + Int32(offset), captures[k].1 + Int32(offset)) }
    }

    /// The raw (still percent-encoded) value of capture `name`.
    func capture(_ name: String) -> HTTPBytes? {
        for k in 0..<min(captureCount, captureNames.count) where captureNames[k] == name {
            return slice(Int(captures[k].0)..<Int(captures[k].1))
        }
        return nil
    }

    /// Copies the head: one copy of the parser's head buffer up to the last offset the view names,
    /// so the parser's offsets stay valid here (every offset of the view is into that one buffer,
    /// whose bytes below the largest offset are initialized: HTTPRequestHead's invariants).
    func load(_ head: HTTPRequestHead) {
        let count = min(head.headerCount, maxFields)
        var end = max(head.methodEnd, head.targetEnd)
        for i in 0..<count {
            let f = head.fields + 4 * i
            fields[i] = (Int32(f[0]), Int32(f[1] - f[0]),
                         Int32(f[2]), Int32(f[3] - f[2]))
            end = max(end, f[1], f[3])
        }
        fieldCount = count
        method = 0..<head.methodEnd
        target = head.targetStart..<head.targetEnd
        bytes.clear()
        bytes.append(UnsafeRawBufferPointer(start: head.base, count: end))
    }

    func slice(_ r: Range<Int>) -> HTTPBytes { HTTPBytes(UnsafeRawBufferPointer(rebasing: bytes.bytes[r])) }
    func name(at i: Int) -> HTTPBytes { let f = fields[i]; return slice(Int(f.0)..<Int(f.0 + f.1)) }
    func value(at i: Int) -> HTTPBytes { let f = fields[i]; return slice(Int(f.2)..<Int(f.2 + f.3)) }
    func value(forName name: StaticString) -> HTTPBytes? {
        for i in 0..<fieldCount where self.name(at: i).equalsIgnoringCase(name) { return value(at: i) }
        return nil
    }
    /// Drops every field named `name` from the route's view (a decoded body's Content-Encoding).
    func removeFields(named name: StaticString) {
        var kept = 0
        for i in 0..<fieldCount {
            if self.name(at: i).equalsIgnoringCase(name) { continue }
            fields[kept] = fields[i]
            kept += 1
        }
        fieldCount = kept
    }
}
