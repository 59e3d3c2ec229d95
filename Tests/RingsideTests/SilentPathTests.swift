import Foundation
import Glibc
import Ringside
import RingsideHTTP
import RingsideProtocols
import Synchronization
import Testing

// Every test here forces one failure that the server used to swallow (data lost, a half frame, a
// truncated body answered 200) and checks that it now reaches the client as an error, whole bytes or a
// close. Lines marked `#if !BASELINE` use API added with the fixes; compiling with -DBASELINE runs the
// rest against the code before them (where each test fails).

/// Splits a stream of HTTP/1.1 responses (Content-Length or chunked) into status, head and body bytes.
private func parseResponses(_ bytes: [UInt8]) -> [(status: Int, head: String, body: [UInt8])] {
    var out: [(Int, String, [UInt8])] = []
    var rest = bytes[...]
    let crlf = Array("\r\n".utf8)
    while let end = rest.firstRange(of: Array("\r\n\r\n".utf8)) {
        let head = String(decoding: rest[rest.startIndex..<end.lowerBound], as: UTF8.self)
        let status = Int(head.dropFirst(9).prefix(3)) ?? -1
        var length = 0
        for line in head.components(separatedBy: "\r\n") where line.lowercased().hasPrefix("content-length:") {
            length = Int(line.dropFirst(15).trimmingCharacters(in: .whitespaces)) ?? 0
        }
        var at = end.upperBound
        var body: [UInt8] = []
        if head.contains("Transfer-Encoding: chunked") {
            while let lineEnd = rest[at...].firstRange(of: crlf) {
                let size = Int(String(decoding: rest[at..<lineEnd.lowerBound], as: UTF8.self), radix: 16) ?? 0
                at = lineEnd.upperBound
                if size == 0 { at = min(rest.endIndex, at + 2); break }
                guard at + size + 2 <= rest.endIndex else { at = rest.endIndex; break }
                body += rest[at..<(at + size)]
                at += size + 2
            }
        } else {
            let bodyEnd = min(rest.endIndex, at + length)
            body = Array(rest[at..<bodyEnd])
            at = bodyEnd
        }
        out.append((status, head, body))
        rest = rest[at...]
    }
    return out
}

/// Sends `head` and `body` (send errors ignored: the server may answer and close before taking it all),
/// ends the sending side, and returns everything the server sent before its end-of-file.
private func post(_ port: Int, head: String, body: [UInt8], pieces: Int = 1 << 20) throws -> [UInt8] {
    let c = try TestClient(port: port, timeoutSeconds: 10)
    try c.send(Array(head.utf8))
    var off = 0
    while off < body.count {
        let end = min(body.count, off + pieces)
        do { try c.send(Array(body[off..<end])) } catch { break }
        off = end
    }
    c.shutdownWrite()
    return try c.receiveUntilEOF()
}

/// A 2 MiB tmpfs for the duration of `body`, or nil (with the reason printed) where mount is refused.
private func withTinyFilesystem(_ body: (String) throws -> Void) throws {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("ringside-full-\(getpid())").path
    try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: dir) }
    guard mount("tmpfs", dir, "tmpfs", 0, "size=2m") == 0 else {
        let reason = "mount -t tmpfs refused: \(Errno.current) (needs root or CAP_SYS_ADMIN)"
        print("SKIP: \(reason)")
        try Test.cancel(Comment(rawValue: reason))
    }
    defer { umount2(dir, Int32(MNT_DETACH)) }
    try body(dir)
}

private let bigBody = randomBytes((1 << 20) + 3, seed: 11)

private var bigRoutes: HTTPRouter {
    var r = HTTPRouter.benchmarkRoutes
    r.get("/big") { _, res in res.write(bigBody) }
    r.get("/bigchunked") { _, res in res.chunked = true; res.write(bigBody) }
    return r
}

@Suite(.serialized, .timeLimit(.minutes(2))) struct SilentPathTests {
    // MARK: spooled bodies

    @Test(arguments: allBackends) func spoolOnAFullFilesystemAnswers507AndClose(_ backend: BackendKind) throws {
        try withTinyFilesystem { dir in
            var http = HTTPServerConfiguration()
            http.spoolDirectory = dir
            try withServer(backend, handler: HTTPServer.handler(router: .benchmarkRoutes, configuration: http)) { server in
                let body = randomBytes(5_000_000, seed: 5)
                // Content-Length above the threshold: spooled from the first byte.
                let fixed = parseResponses(try post(server.port, head: "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: \(body.count)\r\n\r\n", body: body))
                #expect(fixed.map(\.status) == [507], "\(fixed.map { ($0.status, $0.body.count) })")
                #expect(fixed.first?.head.contains("Connection: close") == true)
                // Chunked: held in memory, then moved to the spool once above the threshold.
                var chunked: [UInt8] = []
                for k in stride(from: 0, to: body.count, by: 1 << 16) {
                    let piece = body[k..<min(body.count, k + (1 << 16))]
                    chunked += Array((String(piece.count, radix: 16) + "\r\n").utf8) + piece + Array("\r\n".utf8)
                }
                chunked += Array("0\r\n\r\n".utf8)
                let streamed = parseResponses(try post(server.port, head: "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", body: chunked))
                #expect(streamed.map(\.status) == [507], "\(streamed.map { ($0.status, $0.body.count) })")
                #expect(streamed.first?.head.contains("Connection: close") == true)
                #if !BASELINE
                #expect(http.stats.spoolFailures == 2)
                #endif
            }
        }
    }

    @Test(arguments: allBackends) func spoolPastRLIMIT_FSIZEAnswers500AndClose(_ backend: BackendKind) throws {
        signal(SIGXFSZ, SIG_IGN)  // else the write past the limit kills the process
        var old = rlimit()
        getrlimit(Int32(RLIMIT_FSIZE.rawValue), &old)
        var small = old
        small.rlim_cur = 2 << 20
        guard setrlimit(Int32(RLIMIT_FSIZE.rawValue), &small) == 0 else {
            print("SKIP: setrlimit(RLIMIT_FSIZE): \(Errno.current)")
            try Test.cancel("setrlimit refused")
        }
        defer { setrlimit(Int32(RLIMIT_FSIZE.rawValue), &old) }
        var http = HTTPServerConfiguration()
        http.spoolDirectory = FileManager.default.temporaryDirectory.path
        try withServer(backend, handler: HTTPServer.handler(router: .benchmarkRoutes, configuration: http)) { server in
            let body = randomBytes(5_000_000, seed: 6)
            let r = parseResponses(try post(server.port, head: "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: \(body.count)\r\n\r\n", body: body))
            #expect(r.map(\.status) == [500], "\(r.map { ($0.status, $0.body.count) })")  // EFBIG
            #expect(r.first?.head.contains("Connection: close") == true)
            #if !BASELINE
            #expect(http.stats.spoolFailures == 1)
            #endif
        }
    }

    @Test(arguments: allBackends) func spoolFileThatCannotBeCreatedFailsOnceWith500(_ backend: BackendKind) throws {
        var http = HTTPServerConfiguration()
        http.spoolDirectory = "/nonexistent-ringside-spool"
        http.spoolThreshold = 64 * 1024
        try withServer(backend, handler: HTTPServer.handler(router: .benchmarkRoutes, configuration: http)) { server in
            let body = randomBytes(1 << 20, seed: 8)
            // Chunked in 16 KiB pieces: every piece past the threshold used to retry mkstemp.
            var chunked: [UInt8] = []
            for k in stride(from: 0, to: body.count, by: 1 << 14) {
                chunked += Array("4000\r\n".utf8) + body[k..<(k + (1 << 14))] + Array("\r\n".utf8)
            }
            chunked += Array("0\r\n\r\n".utf8)
            let r = parseResponses(try post(server.port, head: "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", body: chunked))
            #expect(r.map(\.status) == [500], "\(r.map { ($0.status, $0.body.count) })")
            #expect(r.first?.head.contains("Connection: close") == true)
            #if !BASELINE
            #expect(http.stats.spoolFailures == 1, "counted (and tried) once per request")
            #endif
        }
    }

    // MARK: responses larger than the send pool

    @Test(arguments: allBackends) func responseLargerThanThePoolArrivesWhole(_ backend: BackendKind) throws {
        let http = HTTPServerConfiguration()
        try withServer(backend, configure: { $0.sendBuffers = 8; $0.sendBufferSize = 4096 },
                       handler: HTTPServer.handler(router: bigRoutes, configuration: http)) { server in
            let c = try TestClient(port: server.port, timeoutSeconds: 10)
            // Pipelined: each response must come whole and in order although only 32 KiB fit the pool.
            try c.send(Array(("GET /big HTTP/1.1\r\nHost: x\r\n\r\nGET /plaintext HTTP/1.1\r\nHost: x\r\n\r\n"
                + "GET /bigchunked HTTP/1.1\r\nHost: x\r\n\r\nGET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").utf8))
            let r = parseResponses(try c.receiveUntilEOF())
            #expect(r.map(\.status) == [200, 200, 200, 200])
            #expect(r.count == 4 && r[0].body == bigBody && r[2].body == bigBody && r[3].body == bigBody)
            #expect(r.count == 4 && r[1].body == Array("Hello, World!".utf8))
            #expect(r.last?.head.contains("Connection: close") == true)
            #if !BASELINE
            #expect(http.stats.responsesDeferred >= 3)
            #expect(http.stats.responsesCutOff == 0)
            #endif
        }
    }

    @Test(arguments: allBackends) func spooledBodyEchoedThroughATinyPoolArrivesWhole(_ backend: BackendKind) throws {
        var http = HTTPServerConfiguration()
        http.spoolThreshold = 64 * 1024
        try withServer(backend, configure: { $0.sendBuffers = 4; $0.sendBufferSize = 4096 },
                       handler: HTTPServer.handler(router: bigRoutes, configuration: http)) { server in
            let body = randomBytes(3 << 20, seed: 12)
            let c = try TestClient(port: server.port, timeoutSeconds: 10)
            // A spooled upload (streamed back from its file) with a small request pipelined behind it.
            try c.send(Array("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: \(body.count)\r\n\r\n".utf8))
            try c.send(body)
            try c.send(Array("GET /plaintext HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".utf8))
            let r = parseResponses(try c.receiveUntilEOF())
            #expect(r.map(\.status) == [200, 200])
            let exact = r.first?.body == body
            #expect(exact, "\(r.first?.body.count ?? -1) of \(body.count) bytes")
            #expect(r.last?.body == Array("Hello, World!".utf8))
        }
    }

    @Test(arguments: allBackends) func continueThatCannotBeQueuedClosesTheConnection(_ backend: BackendKind) throws {
        let http = HTTPServerConfiguration()
        try withServer(backend, configure: { $0.sendBuffers = 8; $0.sendBufferSize = 4096 },
                       handler: HTTPServer.handler(router: bigRoutes, configuration: http)) { server in
            // A client that does not read holds every send chunk with a response it is not taking.
            let hog = try TestClient(port: server.port, receiveBuffer: 4096)
            try hog.send(Array(String(repeating: "GET /big HTTP/1.1\r\nHost: x\r\n\r\n", count: 16).utf8))
            #expect(eventually { server.stats.writesRefused > 10 })
            usleep(200_000)
            let c = try TestClient(port: server.port, timeoutSeconds: 3)
            try c.send(Array("POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n".utf8))
            // Before: the 100 was dropped and the server waited for a body the client never sent.
            #expect(try c.receiveUntilEOF().isEmpty)
            #if !BASELINE
            #expect(http.stats.continueWriteFailures == 1)
            #endif
            hog.setLingerZero()
        }
    }

    // MARK: frames

    @Test(arguments: allBackends) func framesAreWrittenWholeOrNotAtAll(_ backend: BackendKind) throws {
        let refused = RefusedCount()
        // 4 send chunks of 4 KiB: a frame over 16 KiB cannot be queued.
        let cases: [(kind: UInt8, size: Int, expected: [UInt8])] = [
            (UInt8(ascii: "L"), 20000, []),                                              // prefix fits, payload does not
            (UInt8(ascii: "N"), 16384, []),                                              // line fits, delimiter does not
            (UInt8(ascii: "L"), 16380, [0, 0, 0x3F, 0xFC] + Array(repeating: 0x41, count: 16380)),  // exactly fits
        ]
        try withServer(backend, configure: { $0.sendBuffers = 4; $0.sendBufferSize = 4096 },
                       handler: { FrameOnRequest(refused: refused) }) { server in
            for (kind, size, expected) in cases {
                let c = try TestClient(port: server.port)
                try c.send([kind] + Array(String(size).utf8) + [UInt8(ascii: "\n")])
                let got = try c.receiveUntilEOF()
                let exact = got == expected
                #expect(exact, "\(Character(UnicodeScalar(kind))) \(size): \(got.count) bytes on the wire, \(expected.count) expected")
            }
            #expect(refused.value.load(ordering: .relaxed) == 2)
        }
    }

    // MARK: durations

    @Test(arguments: allBackends) func hugeTimerDurationsDoNotTrap(_ backend: BackendKind) throws {
        try withServer(backend, handler: { HugeTimers() }) { server in
            let c = try TestClient(port: server.port)
            try c.send(Array("x".utf8))
            #expect(try c.receive(exactly: 2) == Array("ok".utf8))
        }
    }
}

/// Answers a request line "L<n>\n" with a length-prefixed frame of n bytes, "N<n>\n" with a line of n
/// bytes; then closes. Counts refused frames.
private struct FrameOnRequest: ConnectionHandler {
    let refused: RefusedCount
    static var requiresAuthentication: Bool { false }
    mutating func received(_ bytes: ReceivedBytes, on connection: Connection) {
        let text = String(decoding: bytes.bytes, as: UTF8.self)
        let size = Int(text.dropFirst().prefix { $0 != "\n" }) ?? 0
        let payload = [UInt8](repeating: 0x41, count: size)
        let line = text.first == "N"
        let r: Result<Void, WriteError> = payload.withUnsafeBytes { p in
            Result { () throws(WriteError) in
                if line { try FrameEncoder.writeLine(p, to: connection) } else { try FrameEncoder.writeLengthPrefixed(p, to: connection) }
            }
        }
        if case .failure(let e) = r, e == .bufferPoolExhausted { refused.value.add(1, ordering: .relaxed) }
        connection.close()
    }
}

private final class RefusedCount: Sendable { let value = Atomic<Int>(0) }

/// Arms the longest timer and read deadline a `Duration` can express, then answers "ok".
private struct HugeTimers: ConnectionHandler {
    static var requiresAuthentication: Bool { false }
    mutating func received(_ bytes: ReceivedBytes, on connection: Connection) {
        connection.setTimer(after: .seconds(Int64.max))
        connection.setReadDeadline(after: .seconds(Int64.max))
        connection.setTimer(after: Duration(secondsComponent: Int64.max, attosecondsComponent: 999_999_999_999_999_999))
        try? connection.write(Array("ok".utf8))
    }
}
