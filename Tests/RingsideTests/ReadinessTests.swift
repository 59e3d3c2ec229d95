import Foundation
import Glibc
import Ringside
import RingsideHTTP
import Testing

extension TestClient {
    /// Sends `GET path` on this (keep-alive) connection; returns the status and the body.
    func get(_ path: String) throws -> (status: Int, body: String) {
        try send(Array("GET \(path) HTTP/1.1\r\nHost: test\r\n\r\n".utf8))
        var head: [UInt8] = []
        while !head.suffix(4).elementsEqual("\r\n\r\n".utf8) { head += try receive(exactly: 1) }
        let text = String(decoding: head, as: UTF8.self)
        let status = Int(text.dropFirst(9).prefix(3)) ?? -1
        var length = 0
        for line in text.components(separatedBy: "\r\n") where line.lowercased().hasPrefix("content-length:") {
            length = Int(line.dropFirst(15).trimmingCharacters(in: .whitespaces)) ?? 0
        }
        return (status, String(decoding: try receive(exactly: length), as: UTF8.self))
    }
}

@Suite(.serialized, .timeLimit(.minutes(2))) struct ReadinessTests {
    @Test(arguments: allBackends) func readinessRouteFollowsTheFlag(_ backend: BackendKind) throws {
        let readiness = Readiness()
        var router = HTTPRouter.benchmarkRoutes
        router.readiness("/ready", readiness)
        try withServer(backend, handler: HTTPServer.handler(router: router)) { server in
            let c = try TestClient(port: server.port)
            #expect(try c.get("/ready") == (200, "ready\n"))
            readiness.markUnready()
            #expect(try c.get("/ready") == (503, "draining\n"))
            // Unready is not closed: other routes are still served on the same connection.
            #expect(try c.get("/plaintext") == (200, "Hello, World!"))
            readiness.markReady()
            #expect(try c.get("/ready") == (200, "ready\n"))
        }
    }

    /// HTTP behind the PROXY protocol: the header, then a request in the same segment, then more on the
    /// same connection (the part of the first receive after the header reaches the HTTP parser).
    @Test(arguments: allBackends) func httpBehindProxyProtocol(_ backend: BackendKind) throws {
        try withServer(backend, configure: { $0.proxyProtocol = ProxyProtocolConfiguration() },
                       handler: HTTPServer.handler(router: .benchmarkRoutes)) { server in
            let c = try TestClient(port: server.port)
            let header = ProxyHeader.proxied(source: PeerAddress(ip: IPAddress("192.0.2.1")!, port: 5000),
                                             destination: PeerAddress(ip: IPAddress("127.0.0.1")!, port: 80))
            try c.send(header.v2Bytes())
            #expect(try c.get("/plaintext") == (200, "Hello, World!"))
            let d = try TestClient(port: server.port)
            try d.send(header.v1Bytes + Array("GET /json HTTP/1.1\r\nHost: a\r\n\r\n".utf8))
            var head: [UInt8] = []
            while !head.suffix(4).elementsEqual("\r\n\r\n".utf8) { head += try d.receive(exactly: 1) }
            #expect(String(decoding: head, as: UTF8.self).hasPrefix("HTTP/1.1 200"))
            #expect(eventually { server.stats.proxyHeadersAccepted == 2 })
        }
    }

    /// `ringside serve --shutdown-delay`: after SIGTERM the readiness route answers 503 at once while
    /// requests are still served, then the server stops and exits 0.
    @Test func shutdownDelayKeepsServingWhileUnready() throws {
        let p = Process()
        p.executableURL = builtBinary("ringside")
        p.arguments = ["serve", "--protocol", "http", "--backend", "epoll", "--port", "0", "--shutdown-delay", "1500ms"]
        let out = Pipe()
        p.standardOutput = out
        p.standardError = FileHandle.nullDevice
        try p.run()
        defer { if p.isRunning { kill(p.processIdentifier, SIGKILL) }; p.waitUntilExit() }
        var text = ""
        let deadline = Date().addingTimeInterval(10)
        while !text.contains("\n") && Date() < deadline && p.isRunning {
            text += String(decoding: out.fileHandleForReading.availableData, as: UTF8.self)
        }
        guard let port = text.split(separator: " ").first(where: { $0.hasPrefix("127.0.0.1:") })
            .flatMap({ Int($0.split(separator: ":")[1]) }) else {
            Issue.record("no listening line: \(text)")
            return
        }
        let c = try TestClient(port: port)
        #expect(try c.get("/ready") == (200, "ready\n"))
        let signalled = ContinuousClock.now
        kill(p.processIdentifier, SIGTERM)
        #expect(eventually(1) { (try? c.get("/ready").status) == 503 })
        // Still serving, on this connection and on a new one.
        #expect(try c.get("/plaintext") == (200, "Hello, World!"))
        #expect(try TestClient(port: port).get("/plaintext") == (200, "Hello, World!"))
        #expect(signalled.duration(to: .now) < .milliseconds(1500), "the checks ran within the delay")
        c.shutdownWrite()  // done: the server closes this connection now, not with a lingering close at the stop
        p.waitUntilExit()
        #expect(p.terminationStatus == 0)
        #expect(signalled.duration(to: .now) >= .milliseconds(1400), "stopped before the delay was over")
    }
}
