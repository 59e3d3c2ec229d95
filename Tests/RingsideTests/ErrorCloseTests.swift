import Foundation
import Glibc
import Ringside
import RingsideHTTP
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
