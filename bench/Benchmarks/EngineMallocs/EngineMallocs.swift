// EngineMallocs: heap allocations per echoed message and per HTTP/1.1 keep-alive request through the
// Ringside engine.
//
// Each benchmark starts an in-process Ringside echo server (`EchoHandler`, the zero-copy echo) on
// the given backend, connects ONE plain blocking client socket and, per benchmark iteration, does
// `roundTripsPerIteration` ping-pongs of 64 bytes (send 64, receive exactly 64). The client uses only
// Glibc calls on preallocated buffers, so every malloc counted (the interposer counts all threads of
// the process, the server's loop thread included) comes from the engine — or from the benchmark
// framework's own per-iteration bookkeeping, which is a small constant.
//
// `http-async-plaintext-keepalive-*` does the same through an async route (`GET /async/plaintext`):
// its mallocCountTotal / 10,000 is what one async request allocates.
//
// swift-http-types (issue 14): `http-httptypes-plaintext-keepalive-*` is the synchronous `/plaintext`
// answered from a prebuilt `HTTPTypes.HTTPResponse` (`res.apply`): it must stay at 0 per request like
// `http-plaintext-keepalive-*`. `http-async-httptypes-plaintext-keepalive-*` is the async route that
// reads the request as an `HTTPTypes.HTTPRequest` (`request.httpRequest`) and answers
// `HTTPServerResponse(HTTPTypes.HTTPResponse, body:)`: the difference to `http-async-plaintext-*` is
// what the types cost per request. `http-openapi-getitem-keepalive-*` is `GET /items/1` of the
// OpenAPI example (generated code on RingsideOpenAPI): what a generated operation costs.
//
// Target: 0 mallocs per echoed message, i.e. mallocCountTotal per iteration (10,000 round trips)
// stays a small constant. `Thresholds/EngineMallocs.<name>.p90.json` stores the p90 measured when the
// thresholds were last updated; `swift package benchmark thresholds check` fails (exit 2) if the
// p90 grows by more than `mallocTolerance` (far below one malloc per message). Wall clock and
// throughput are reported but deliberately not checked (they depend on the machine and its load).
//
//   swift package benchmark --target EngineMallocs
//   swift package benchmark thresholds check --target EngineMallocs
//   swift package --allow-writing-to-package-directory benchmark thresholds update --target EngineMallocs

import Benchmark
import Glibc
import HTTPTypes
import OpenAPIItemsService
import OpenAPIRuntime
import Ringside
import RingsideHTTP
import RingsideOpenAPI
import RingsideProtocols

/// Round trips per measured benchmark iteration: mallocCountTotal is "mallocs per 10k messages".
let roundTripsPerIteration = 10_000
/// Round trips before measurement starts (connection setup, first buffer-ring use, lazy init).
let warmUpRoundTrips = 2_000
/// Message size.
let messageSize = 64
/// Allowed growth of the p90 mallocs per iteration over the stored threshold: constant noise is
/// fine, one allocation per message (>= 10,000 per iteration) is not.
let mallocTolerance = 200

/// Round trips per second of the measured loop (the built-in throughput counts iterations, i.e.
/// batches of 10,000). Recorded after `stopMeasurement()`, so recording it is not counted as mallocs.
let roundTripsPerSecond = BenchmarkMetric.custom("Round trips / s", polarity: .prefersLarger, useScalingFactor: false)

let benchmarks: @Sendable () -> Void = {
    let notChecked = BenchmarkThresholds(relative: BenchmarkThresholds.Relative.none,
                                         absolute: BenchmarkThresholds.Absolute.none)
    let configuration = Benchmark.Configuration(
        metrics: [.mallocCountTotal, .wallClock, .throughput, roundTripsPerSecond],
        units: [.mallocCountTotal: .count, roundTripsPerSecond: .count],
        warmupIterations: 2,
        scalingFactor: .one,
        // Malloc counts per 10,000 round trips barely vary between iterations: 10 samples (p90 = the
        // 9th) decide the threshold as well as 30 did, in a third of CI's time.
        maxDuration: .milliseconds(1500),
        maxIterations: 10,
        thresholds: [
            .mallocCountTotal: BenchmarkThresholds(absolute: [.p90: mallocTolerance]),
            .wallClock: notChecked,
            .throughput: notChecked,
            roundTripsPerSecond: notChecked,
        ]
    )
    let plaintext = Array("GET /plaintext HTTP/1.1\r\nHost: bench\r\n\r\n".utf8)
    // An async route (a task per request on the loop's executor): not allocation-free; this measures
    // what it costs per request (mallocCountTotal / 10,000).
    let asyncPlaintext = Array("GET /async/plaintext HTTP/1.1\r\nHost: bench\r\n\r\n".utf8)
    let getItem = Array("GET /items/1 HTTP/1.1\r\nHost: bench\r\n\r\n".utf8)
    let fixtures = [BackendKind.uring, .epoll].flatMap { backend in [
        ("echo-64B-pingpong-\(backend)", EchoFixture(backend: backend, request: nil, handler: .echo)),
        ("async-echo-64B-pingpong-\(backend)", EchoFixture(backend: backend, request: nil, handler: .asyncEcho)),
        ("http-plaintext-keepalive-\(backend)", EchoFixture(backend: backend, request: plaintext, handler: .http)),
        ("http-async-plaintext-keepalive-\(backend)", EchoFixture(backend: backend, request: asyncPlaintext, handler: .http)),
        ("http-httptypes-plaintext-keepalive-\(backend)", EchoFixture(backend: backend, request: plaintext, handler: .httpTypes)),
        ("http-async-httptypes-plaintext-keepalive-\(backend)", EchoFixture(backend: backend, request: asyncPlaintext, handler: .httpTypes)),
        ("http-openapi-getitem-keepalive-\(backend)", EchoFixture(backend: backend, request: getItem, handler: .openAPI)),
    ] }
    for (name, fixture) in fixtures {
        Benchmark(name, configuration: configuration) { benchmark in
            let start = ContinuousClock.now
            fixture.run(roundTrips: roundTripsPerIteration)
            let elapsed = ContinuousClock.now - start
            benchmark.stopMeasurement()
            let ns = elapsed.components.seconds * 1_000_000_000 + elapsed.components.attoseconds / 1_000_000_000
            benchmark.measurement(roundTripsPerSecond, Int(Int64(roundTripsPerIteration) * 1_000_000_000 / max(1, ns)))
        } setup: {
            try fixture.start()
        } teardown: {
            try fixture.stop()
        }
    }
}

/// A Ringside server (the zero-copy echo, or HTTP/1.1 with the benchmark routes) plus one blocking
/// client connection with preallocated buffers, doing request/response round trips.
/// Used from the benchmark thread only (setup, iterations, teardown run sequentially).
final class EchoFixture: @unchecked Sendable {
    enum Handler { case echo, asyncEcho, http, httpTypes, openAPI }
    let backend: BackendKind
    let handler: Handler
    private var server: RunningServer?
    private var fd: Int32 = -1
    private let sendBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 16)
    private let receiveBuffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 4096, alignment: 16)
    private let requestSize: Int
    /// Bytes per response: the echo's size, or an HTTP response's (fixed: the Date header has a fixed width).
    private var responseSize: Int

    /// `request`: the bytes of one request (nil: a 64-byte echo message).
    init(backend: BackendKind, request: [UInt8]?, handler: Handler) {
        self.backend = backend
        self.handler = handler
        if let request {
            for (i, b) in request.enumerated() { sendBuffer[i] = b }
            requestSize = request.count
        } else {
            for i in 0..<messageSize { sendBuffer[i] = UInt8(truncatingIfNeeded: i &* 7 &+ 1) }
            requestSize = messageSize
        }
        responseSize = requestSize
    }

    deinit {
        sendBuffer.deallocate()
        receiveBuffer.deallocate()
    }

    func start() throws {
        let config = ServerConfiguration(host: "127.0.0.1", port: 0, backend: backend)
        let server = switch handler {
        case .echo: try RingsideServer.start(configuration: config) { EchoHandler() }
        case .asyncEcho:
            // The async API: a task per connection on the loop's executor, inbound AsyncSequence, write.
            try RingsideServer.startAsync(configuration: config, requiresAuthentication: false) { conn in
                for try await chunk in conn.inbound { try await conn.write(chunk) }
            }
        case .http: try RingsideServer.start(configuration: config, handler: HTTPServer.handler(router: .benchmarkRoutes))
        case .httpTypes: try RingsideServer.start(configuration: config, handler: HTTPServer.handler(router: httpTypesRoutes))
        case .openAPI: try RingsideServer.start(configuration: config, handler: HTTPServer.handler(router: openAPIRouter()))
        }
        self.server = server
        fd = try connectClient(port: server.port)
        if handler != .echo && handler != .asyncEcho {
            // Learn the response size from one exchange (it arrives in one segment on loopback).
            _ = Glibc.send(fd, sendBuffer.baseAddress!, requestSize, Int32(MSG_NOSIGNAL))
            let n = Glibc.recv(fd, receiveBuffer.baseAddress!, receiveBuffer.count, 0)
            let text = String(decoding: UnsafeRawBufferPointer(rebasing: receiveBuffer[0..<max(0, n)]), as: UTF8.self)
            let suffix = handler == .openAPI ? "\"apple\",\n  \"tags\" : [\n    \"fruit\"\n  ]\n}" : "Hello, World!"
            precondition(text.hasPrefix("HTTP/1.1 200 OK") && text.hasSuffix(suffix), "unexpected response: \(text)")
            responseSize = n
        }
        run(roundTrips: warmUpRoundTrips)
        // The round trip's contents are checked once here, outside the measured loop.
        if handler == .echo || handler == .asyncEcho {
            precondition(memcmp(sendBuffer.baseAddress!, receiveBuffer.baseAddress!, messageSize) == 0,
                         "echo returned different bytes")
        }
    }

    func stop() throws {
        if fd >= 0 { Glibc.close(fd); fd = -1 }
        if let server {
            self.server = nil
            try server.shutdown()
        }
    }

    /// `roundTrips` ping-pongs of `messageSize` bytes. Allocation-free: syscalls on fixed buffers.
    @inline(never)
    func run(roundTrips: Int) {
        let out = UnsafeRawPointer(sendBuffer.baseAddress!)
        let into = receiveBuffer.baseAddress!
        let requestSize = self.requestSize, responseSize = self.responseSize
        for _ in 0..<roundTrips {
            var sent = 0
            while sent < requestSize {
                let n = Glibc.send(fd, out + sent, requestSize - sent, Int32(MSG_NOSIGNAL))
                if n <= 0 { if n < 0 && errno == EINTR { continue }; fail("send", n) }
                sent += n
            }
            var got = 0
            while got < responseSize {
                let n = Glibc.recv(fd, into + got, responseSize - got, 0)
                if n <= 0 { if n < 0 && errno == EINTR { continue }; fail("recv", n) }
                got += n
            }
        }
    }

    private func fail(_ what: StaticString, _ n: Int) -> Never {
        let e = errno
        fatalError("\(what) on the echo client returned \(n) (errno \(e)); backend \(backend)")
    }

    private func connectClient(port: Int) throws -> Int32 {
        let s = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard s >= 0 else { throw ClientError(call: "socket", errno: errno) }
        var one: Int32 = 1
        _ = setsockopt(s, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        // A lost echo must fail the benchmark, not hang it.
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        _ = setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let r = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(s, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard r == 0 else {
            let e = errno
            Glibc.close(s)
            throw ClientError(call: "connect", errno: e)
        }
        return s
    }
}

struct ClientError: Error, CustomStringConvertible {
    let call: String
    let errno: Int32
    var description: String { "\(call) failed: \(String(cString: strerror(errno)))" }
}

/// `/plaintext` (synchronous) and `/async/plaintext` answered through swift-http-types: the same bytes
/// as `HTTPRouter.benchmarkRoutes`' routes of those names.
let httpTypesRoutes: HTTPRouter = {
    // Built once: applying it copies bytes into the connection's buffers (no allocation).
    let plaintext = HTTPTypes.HTTPResponse(status: .ok, headerFields: [.contentType: "text/plain"])
    let hello = Array("Hello, World!".utf8)
    var r = HTTPRouter()
    r.get("/plaintext") { _, res in
        res.apply(plaintext)
        res.write("Hello, World!")
    }
    r.get("/async/plaintext") { request in
        let head = request.httpRequest
        guard head.method == .get, head.path == "/async/plaintext" else { throw HTTPError(400) }
        return HTTPServerResponse(plaintext, body: hello)
    }
    return r
}()

/// The OpenAPI example's router: its generated operations on RingsideOpenAPI's transport.
func openAPIRouter() throws -> HTTPRouter {
    let transport = RingsideTransport()
    try ItemsHandler().registerHandlers(on: transport, middlewares: [ErrorHandlingMiddleware()])
    return transport.router
}
