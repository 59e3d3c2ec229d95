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
    let store: HeadStore
    /// The body: none, in memory, or spooled to an (unlinked) temporary file above the configured
    /// threshold, so a large upload never sits in memory.
    public let body: HTTPBody

    /// The first header with this name (case-insensitive).
    public func header(_ name: StaticString) -> HTTPBytes? { store.value(forName: name) }
    /// Number of header fields and positional access.
    public var headerCount: Int { store.fieldCount }
    public func headerName(at i: Int) -> HTTPBytes { store.name(at: i) }
    public func headerValue(at i: Int) -> HTTPBytes { store.value(at: i) }
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

/// Routes by method and exact path.
///
/// ```swift
/// var router = HTTPRouter()
/// router.get("/plaintext") { _, res in
///     res.setHeader("Content-Type", "text/plain")
///     res.write("Hello, World!")
/// }
/// router.post("/echo") { req, res in
///     switch req.body {
///     case .bytes(let b): res.write(b)
///     case .file(let fd, let size): res.bodyFile = (fd, size)
///     case .none: break
///     }
/// }
/// ```
public struct HTTPRouter: Sendable {
    struct Route: Sendable {
        let method: [UInt8]
        let path: [UInt8]
        let handler: HTTPRouteHandler?
        let streaming: (@Sendable () -> any HTTPStreamingHandler)?
    }
    var routes: [Route] = []

    public init() {}

    /// Registers `handler` for `method` (e.g. "GET") and the exact `path` (e.g. "/json").
    public mutating func on(_ method: String, _ path: String, _ handler: @escaping HTTPRouteHandler) {
        routes.append(Route(method: Array(method.utf8), path: Array(path.utf8), handler: handler, streaming: nil))
    }

    /// Registers a streaming route: `make` creates one handler per request, which gets the body as it
    /// arrives. (The handler value is boxed per request, unlike buffered routes.)
    public mutating func stream(_ method: String, _ path: String, _ make: @escaping @Sendable () -> any HTTPStreamingHandler) {
        routes.append(Route(method: Array(method.utf8), path: Array(path.utf8), handler: nil, streaming: make))
    }
    public mutating func get(_ path: String, _ handler: @escaping HTTPRouteHandler) { on("GET", path, handler) }
    public mutating func post(_ path: String, _ handler: @escaping HTTPRouteHandler) { on("POST", path, handler) }
    public mutating func put(_ path: String, _ handler: @escaping HTTPRouteHandler) { on("PUT", path, handler) }
    public mutating func delete(_ path: String, _ handler: @escaping HTTPRouteHandler) { on("DELETE", path, handler) }

    enum Match { case route(Int), methodNotAllowed, notFound }

    /// Finds the route (no allocation: byte comparisons).
    func match(method: UnsafeRawBufferPointer, path: UnsafeRawBufferPointer) -> Match {
        var pathSeen = false
        for (i, r) in routes.enumerated() where r.path.count == path.count {
            let samePath = r.path.withUnsafeBytes { memcmpBytes(path.baseAddress, $0.baseAddress!, path.count) }
            guard samePath else { continue }
            pathSeen = true
            let sameMethod = r.method.count == method.count
                && r.method.withUnsafeBytes { memcmpBytes(method.baseAddress, $0.baseAddress!, method.count) }
            if sameMethod { return .route(i) }
            // HEAD is served by the GET route (the body is dropped).
            if method.count == 4 && memcmpBytes(method.baseAddress, "HEAD", 4) && r.method == Array("GET".utf8) { return .route(i) }
        }
        return pathSeen ? .methodNotAllowed : .notFound
    }
}

/// A copy of the current request's head (method, target, header fields) in per-connection storage
/// that keeps its capacity, so a route handler can read headers after the body arrived.
final class HeadStore {
    let bytes: ByteBuffer
    /// Per field: name offset, name length, value offset, value length.
    private var fields: UnsafeMutablePointer<(Int32, Int32, Int32, Int32)>
    private let maxFields: Int
    private(set) var fieldCount = 0
    private(set) var method = 0..<0
    private(set) var target = 0..<0

    init(maxFields: Int, capacity: Int) {
        self.maxFields = maxFields
        fields = .allocate(capacity: maxFields)
        bytes = ByteBuffer(capacity: capacity)
    }
    deinit { fields.deallocate() }

    func load(_ head: HTTPRequestHead) {
        bytes.clear()
        fieldCount = 0
        method = add(head.method)
        target = add(head.target)
        for i in 0..<min(head.headerCount, maxFields) {
            let n = add(head.name(at: i))
            let v = add(head.value(at: i))
            fields[i] = (Int32(n.lowerBound), Int32(n.count), Int32(v.lowerBound), Int32(v.count))
            fieldCount += 1
        }
    }

    private func add(_ b: HTTPBytes) -> Range<Int> {
        let start = bytes.count
        bytes.append(b.buffer)
        return start..<bytes.count
    }

    func slice(_ r: Range<Int>) -> HTTPBytes { HTTPBytes(UnsafeRawBufferPointer(rebasing: bytes.bytes[r])) }
    func name(at i: Int) -> HTTPBytes { let f = fields[i]; return slice(Int(f.0)..<Int(f.0 + f.1)) }
    func value(at i: Int) -> HTTPBytes { let f = fields[i]; return slice(Int(f.2)..<Int(f.2 + f.3)) }
    func value(forName name: StaticString) -> HTTPBytes? {
        for i in 0..<fieldCount where self.name(at: i).equalsIgnoringCase(name) { return value(at: i) }
        return nil
    }
}
