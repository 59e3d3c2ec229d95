import Foundation
import Glibc
import Ringside
import RingsideHTTP
import Testing

private func withHTTPServer(_ backend: BackendKind, configure: (inout HTTPServerConfiguration) -> Void = { _ in },
                            _ body: (RunningServer) throws -> Void) throws {
    var http = HTTPServerConfiguration()
    configure(&http)
    try withServer(backend, handler: HTTPServer.handler(router: .benchmarkRoutes, configuration: http), body)
}

/// Runs a command; returns exit status and stdout.
@discardableResult
private func run(_ path: String, _ args: [String], stdin: Data? = nil) throws -> (Int32, String) {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: path)
    p.arguments = args
    let out = Pipe()
    p.standardOutput = out
    p.standardError = FileHandle.nullDevice
    if stdin != nil { p.standardInput = Pipe() }
    try p.run()
    if let stdin, let w = p.standardInput as? Pipe { w.fileHandleForWriting.write(stdin); try w.fileHandleForWriting.close() }
    let data = out.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return (p.terminationStatus, String(decoding: data, as: UTF8.self))
}

/// Splits a byte stream of HTTP/1.1 responses (Content-Length framed) into status, head and body.
private func splitResponses(_ bytes: [UInt8]) -> [(status: Int, head: String, body: String)] {
    var out: [(Int, String, String)] = []
    var rest = bytes[...]
    while let end = rest.firstRange(of: Array("\r\n\r\n".utf8)) {
        let head = String(decoding: rest[rest.startIndex..<end.lowerBound], as: UTF8.self)
        let status = Int(head.dropFirst(9).prefix(3)) ?? -1
        var length = 0
        for line in head.components(separatedBy: "\r\n") where line.lowercased().hasPrefix("content-length:") {
            length = Int(line.dropFirst(15).trimmingCharacters(in: .whitespaces)) ?? 0
        }
        let bodyEnd = min(rest.endIndex, end.upperBound + length)
        out.append((status, head, String(decoding: rest[end.upperBound..<bodyEnd], as: UTF8.self)))
        rest = rest[bodyEnd...]
    }
    return out
}

private func have(_ tool: String) -> Bool { FileManager.default.isExecutableFile(atPath: tool) }

/// Counts a streamed body; answers with a chunked response.
private struct CountingUpload: HTTPStreamingHandler {
    var bytes = 0
    var pieces = 0
    mutating func head(_ request: borrowing HTTPRequest) {
        if case .none = request.body {} else { bytes = -1_000_000 }  // streaming routes never get a body up front
    }
    mutating func body(_ chunk: UnsafeRawBufferPointer) { bytes += chunk.count; pieces += 1 }
    mutating func end(_ response: inout HTTPResponse) {
        response.chunked = true
        response.write("\(bytes)")
    }
}

@Suite(.serialized) struct HTTPServerTests {
    @Test(arguments: allBackends) func streamingRouteGetsTheBodyAsItArrivesAndAnswersChunked(_ backend: BackendKind) throws {
        var router = HTTPRouter()
        router.stream("POST", "/count") { CountingUpload() }
        try withServer(backend, handler: HTTPServer.handler(router: router)) { server in
            let c = try TestClient(port: server.port)
            let body = randomBytes(3 << 20, seed: 3)
            try c.send(Array("POST /count HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".utf8))
            for k in 0..<3 {
                try c.send(Array("100000\r\n".utf8))  // 1 MiB chunks
                try c.send(Array(body[(k << 20)..<((k + 1) << 20)]))
                try c.send(Array("\r\n".utf8))
            }
            try c.send(Array("0\r\n\r\nGET /count HTTP/1.0\r\n\r\n".utf8))
            let text = String(decoding: try c.receiveUntilEOF(), as: UTF8.self)
            #expect(text.hasPrefix("HTTP/1.1 200 OK\r\n"))
            #expect(text.contains("Transfer-Encoding: chunked\r\n"))
            #expect(text.contains("\r\n\r\n7\r\n3145728\r\n0\r\n\r\n"), "\(text.prefix(300))")
            // The HTTP/1.0 request that followed gets a Content-Length answer (no chunked in 1.0) and a close.
            #expect(text.contains("HTTP/1.0 405 Method Not Allowed"))
        }
    }

    @Test(arguments: allBackends) func rawPipelinedRequestsGetOrderedResponses(_ backend: BackendKind) throws {
        try withHTTPServer(backend) { server in
            let c = try TestClient(port: server.port)
            let req = "GET /plaintext HTTP/1.1\r\nHost: x\r\n\r\nGET /json HTTP/1.1\r\nHost: x\r\n\r\nPOST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            try c.send(Array(req.utf8))
            let responses = splitResponses(try c.receiveUntilEOF())
            #expect(responses.map(\.status) == [200, 200, 200, 404])
            #expect(responses.map(\.body) == ["Hello, World!", #"{"message":"Hello, World!"}"#, "hello", ""])
            let text = responses.last?.head ?? ""
            #expect(text.contains("Connection: close"))
        }
    }

    @Test(arguments: allBackends) func badRequestsGetTheirStatusAndAClose(_ backend: BackendKind) throws {
        let cases: [(String, String)] = [
            ("GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", "400"),
            ("GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", "501"),
            ("GET /" + String(repeating: "a", count: 9000) + " HTTP/1.1\r\nHost: x\r\n\r\n", "414"),
            ("GET / HTTP/1.1\r\nHost: x\r\nX: " + String(repeating: "b", count: 17000) + "\r\n\r\n", "431"),
            ("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n", "413"),
            ("\u{1}\u{2}garbage\r\n\r\n", "400"),
        ]
        try withHTTPServer(backend, configure: { $0.limits.maxBodyBytes = 1 << 30 }) { server in
            for (req, status) in cases {
                let c = try TestClient(port: server.port)
                try c.send(Array(req.utf8))
                let text = String(decoding: try c.receiveUntilEOF(), as: UTF8.self)
                #expect(text.hasPrefix("HTTP/1.1 \(status) "), "\(req.prefix(40)) -> \(text.prefix(60))")
                #expect(text.contains("Connection: close"))
            }
            // The server is unharmed.
            let c = try TestClient(port: server.port)
            try c.send(Array("GET /plaintext HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".utf8))
            #expect(String(decoding: try c.receiveUntilEOF(), as: UTF8.self).hasSuffix("Hello, World!"))
        }
    }

    @Test(arguments: allBackends) func headerDeadlineCutsOffSlowClients(_ backend: BackendKind) throws {
        try withHTTPServer(backend, configure: { $0.headerTimeout = .milliseconds(200) }) { server in
            let c = try TestClient(port: server.port)
            try c.send(Array("GET /plaintext HTTP/1.1\r\nHo".utf8))
            let text = String(decoding: try c.receiveUntilEOF(), as: UTF8.self)
            #expect(text.hasPrefix("HTTP/1.1 408 "))
        }
    }

    @Test(arguments: allBackends) func curlAndPythonInteroperate(_ backend: BackendKind) throws {
        try withHTTPServer(backend) { server in
            let base = "http://127.0.0.1:\(server.port)"
            if have("/usr/bin/curl") {
                let (s1, o1) = try run("/usr/bin/curl", ["-sS", "--max-time", "10", "\(base)/plaintext", "\(base)/json"])
                #expect(s1 == 0 && o1 == #"Hello, World!{"message":"Hello, World!"}"#)
                let (s2, o2) = try run("/usr/bin/curl", ["-sS", "--max-time", "10", "--data-binary", "abc123", "\(base)/echo"])
                #expect(s2 == 0 && o2 == "abc123")
                let (s3, o3) = try run("/usr/bin/curl", ["-sS", "--max-time", "10", "-H", "Transfer-Encoding: chunked",
                                                          "--data-binary", "chunked body", "\(base)/echo"])
                #expect(s3 == 0 && o3 == "chunked body")
                let (s4, o4) = try run("/usr/bin/curl", ["-sS", "--max-time", "10", "--http1.0", "\(base)/plaintext"])
                #expect(s4 == 0 && o4 == "Hello, World!")
            } else {
                print("SKIP curl: /usr/bin/curl not installed (bash scripts/setup.sh installs it)")
            }
            let py = """
            import http.client, sys
            c = http.client.HTTPConnection('127.0.0.1', \(server.port), timeout=10)
            out = []
            for _ in range(3):
                c.request('GET', '/plaintext'); r = c.getresponse(); out.append(r.read().decode())
            c.request('POST', '/echo', body=b'x' * 100000); r = c.getresponse(); out.append(str(len(r.read())))
            print('|'.join(out))
            """
            let (s, o) = try run("/usr/bin/env", ["python3", "-c", py])
            #expect(s == 0 && o.trimmingCharacters(in: .whitespacesAndNewlines) == "Hello, World!|Hello, World!|Hello, World!|100000")
        }
    }

    @Test(arguments: allBackends) func wrkAndH2loadInteroperate(_ backend: BackendKind) throws {
        try withHTTPServer(backend) { server in
            let url = "http://127.0.0.1:\(server.port)/plaintext"
            if have("/usr/bin/wrk") {
                let (s, o) = try run("/usr/bin/wrk", ["-t1", "-c10", "-d1s", url])
                #expect(s == 0 && o.contains("Requests/sec") && !o.contains("Non-2xx") && !o.contains("Socket errors"), "\(o)")
            } else { print("SKIP wrk: not installed") }
            if have("/usr/bin/h2load") {
                let (s, o) = try run("/usr/bin/h2load", ["--h1", "-n", "2000", "-c", "10", "-m", "8", url])
                #expect(s == 0 && o.contains("2000 succeeded, 0 failed, 0 errored"), "\(o)")
            } else { print("SKIP h2load: not installed") }
        }
    }

    @Test(arguments: allBackends) func largeUploadIsSpooledAndStreamedBack(_ backend: BackendKind) throws {
        try withHTTPServer(backend, configure: { $0.spoolThreshold = 64 * 1024 }) { server in
            // 64 MiB through the server: echoed exactly while its receive buffers and memory stay flat.
            let size = 64 << 20
            let c = try TestClient(port: server.port, timeoutSeconds: 30)
            let head = "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: \(size)\r\nConnection: close\r\n\r\n"
            try c.send(Array(head.utf8))
            let chunk = randomBytes(1 << 20, seed: 7)
            for _ in 0..<64 { try c.send(chunk) }
            let reply = try c.receiveUntilEOF(limit: size + 4096)
            let split = reply.firstRange(of: Array("\r\n\r\n".utf8))!.upperBound
            #expect(reply.count - split == size)
            #expect(Array(reply[split..<(split + chunk.count)]) == chunk)
            #expect(server.stats.peakBuffersInUse < 640)
        }
    }
}
