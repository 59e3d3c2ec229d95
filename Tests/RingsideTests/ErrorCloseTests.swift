import Foundation
import Glibc
import Ringside
import RingsideHTTP
import Synchronization
import Testing

/// An error answered while the client is still sending its body, then a close: the client must get
/// the answer (the engine lingers, reading and dropping, so unread input does not turn the close into
/// a reset that destroys the response in flight).
@Suite(.serialized, .timeLimit(.minutes(2))) struct ErrorCloseTests {
    @Test(arguments: allBackends) func errorAnsweredMidBodyArrivesBeforeTheClose(_ backend: BackendKind) throws {
        var router = HTTPRouter()
        router.post("/items") { (_: HTTPServerRequest) async throws -> HTTPServerResponse in .text("ok") }
        var http = HTTPServerConfiguration()
        http.asyncBodyLimit = 100
        try withServer(backend, handler: HTTPServer.handler(router: router, configuration: http)) { server in
            var lost: [String] = []
            for round in 0..<25 {
                var clients: [TestClient] = []
                for _ in 0..<8 {
                    let c = try TestClient(port: server.port, timeoutSeconds: 5)
                    var body: [UInt8] = []
                    for _ in 0..<3 { body += Array("400\r\n".utf8) + [UInt8](repeating: 97, count: 1024) + [13, 10] }
                    body += Array("0\r\n\r\n".utf8)
                    try? c.send(Array("POST /items HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".utf8) + body)
                    clients.append(c)
                }
                for (k, c) in clients.enumerated() {
                    let got: [UInt8]
                    do { got = try c.receiveUntilEOF() } catch { lost.append("round \(round) client \(k): \(error)"); continue }
                    if !String(decoding: got.prefix(12), as: UTF8.self).hasPrefix("HTTP/1.1 413") {
                        lost.append("round \(round) client \(k): \(got.count) bytes: \(String(decoding: got.prefix(20), as: UTF8.self))")
                    }
                }
            }
            #expect(lost.isEmpty, "\(lost.count) of 200 answers lost: \(lost.prefix(5))")
        }
    }
}

/// Clients that close as soon as their response is complete, one connection after another: the
/// server's shutdown(SHUT_WR) runs on an io-wq worker (IORING_OP_SHUTDOWN always does), and the close
/// that follows must wait for it. Closed first, the freed (direct) descriptor goes to the next accept
/// and the late shutdown cuts that connection: its response never arrives (found with TLS clients
/// that close on close_notify; 2-3% of connections on a debug build).
@Suite(.serialized, .timeLimit(.minutes(2))) struct CloseAfterShutdownTests {
    @Test(arguments: allBackends) func aLateShutdownNeverReachesTheNextConnection(_ backend: BackendKind) throws {
        try withServer(backend, handler: HTTPServer.handler(router: .benchmarkRoutes)) { server in
            let failures = Atomic<Int>(0)
            DispatchQueue.concurrentPerform(iterations: 2) { _ in
                for _ in 0..<400 {
                    do {
                        let c = try TestClient(port: server.port, timeoutSeconds: 5)
                        try c.send(Array("GET /plaintext HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".utf8))
                        var got: [UInt8] = []
                        while !(got.count >= 4 && got.suffix(13) == Array("Hello, World!".utf8)[...]) {
                            got += try c.receive(exactly: 1)
                            if got.count > 4096 { throw ClientError("no body") }
                        }
                        // Closed at once, without waiting for the server's FIN.
                    } catch {
                        failures.add(1, ordering: .relaxed)
                    }
                }
            }
            #expect(failures.load(ordering: .relaxed) == 0)
            #expect(eventually { server.stats.connectionsOpen == 0 })
            #expect(server.stats.engineErrors == 0)
        }
    }
}
