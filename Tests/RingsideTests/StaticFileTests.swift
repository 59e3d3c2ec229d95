import Foundation
import Glibc
import Ringside
import RingsideHTTP
import Synchronization
import Testing

// Static files (`router.files`): every status and header, traversal refused, bytes exact from 0 B to
// 1 GiB, on both backends.

/// One HTTP response read from a keep-alive connection: head lines, then exactly Content-Length bytes.
private struct StaticReply {
    let status: Int
    let head: String
    let body: [UInt8]
    func header(_ name: String) -> String? {
        for line in head.components(separatedBy: "\r\n") {
            guard let colon = line.firstIndex(of: ":") else { continue }
            if line[..<colon].lowercased() == name.lowercased() {
                return line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
            }
        }
        return nil
    }
}

/// Reads one response head (up to CRLFCRLF) byte-wise, then its body (none for HEAD/304).
private func readReply(_ c: TestClient, head isHead: Bool = false) throws -> StaticReply {
    var bytes: [UInt8] = []
    while !(bytes.count >= 4 && bytes[(bytes.count - 4)...] == [13, 10, 13, 10][...]) {
        bytes += try c.receive(exactly: 1)
        if bytes.count > 16384 { throw ClientError("head too long") }
    }
    let head = String(decoding: bytes, as: UTF8.self)
    let status = Int(head.dropFirst(9).prefix(3)) ?? -1
    let r = StaticReply(status: status, head: head, body: [])
    let length = Int(r.header("Content-Length") ?? "0") ?? 0
    if isHead || status == 304 || length == 0 { return r }
    return StaticReply(status: status, head: head, body: try c.receive(exactly: length))
}

private func request(_ c: TestClient, _ target: String, method: String = "GET", headers: [String] = []) throws -> StaticReply {
    let lines = ["\(method) \(target) HTTP/1.1", "Host: x"] + headers
    try c.send(Array((lines.joined(separator: "\r\n") + "\r\n\r\n").utf8))
    return try readReply(c, head: method == "HEAD")
}

/// A file of `size` bytes whose every 1 MiB block starts with its index (so a misplaced block shows).
private let patternBase = randomBytes(1 << 20, seed: 77)

private func patternBlock(_ index: Int) -> [UInt8] {
    var b = patternBase
    withUnsafeBytes(of: UInt64(index).littleEndian) { for k in 0..<8 { b[k] = $0[k] } }
    return b
}

private func writePatternFile(_ path: String, size: Int) throws {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
    guard fd >= 0 else { throw ClientError("open \(path): \(Errno.current)") }
    defer { close(fd) }
    var off = 0, k = 0
    while off < size {
        let block = patternBlock(k)
        let n = min(block.count, size - off)
        let w = block.withUnsafeBytes { write(fd, $0.baseAddress!, n) }
        guard w == n else { throw ClientError("write \(path): \(Errno.current)") }
        off += n; k += 1
    }
}

private func patternBytes(_ range: Range<Int>) -> [UInt8] {
    var out: [UInt8] = []
    out.reserveCapacity(range.count)
    var at = range.lowerBound
    while at < range.upperBound {
        let k = at >> 20
        let block = patternBlock(k)
        let from = at - (k << 20), to = min(block.count, range.upperBound - (k << 20))
        out += block[from..<to]
        at = (k << 20) + to
    }
    return out
}

/// A scratch tree: root/ (served) with files, a sub directory with an index, an empty directory, a
/// FIFO, symlinks out; and a secret beside root that must never be served.
private final class Tree {
    let base: String
    let root: String
    init() throws {
        base = FileManager.default.temporaryDirectory.appendingPathComponent("ringside-static-\(getpid())-\(UInt32.random(in: 0...UInt32.max))").path
        root = base + "/root"
        let fm = FileManager.default
        try fm.createDirectory(atPath: root + "/sub", withIntermediateDirectories: true)
        try fm.createDirectory(atPath: root + "/empty", withIntermediateDirectories: true)
        try fm.createDirectory(atPath: base + "/outside", withIntermediateDirectories: true)
        try "hello, static\n".write(toFile: root + "/a.txt", atomically: false, encoding: .utf8)
        try "<h1>index</h1>\n".write(toFile: root + "/sub/index.html", atomically: false, encoding: .utf8)
        try "{\"k\":1}".write(toFile: root + "/data.json", atomically: false, encoding: .utf8)
        try "body{}".write(toFile: root + "/site.css", atomically: false, encoding: .utf8)
        try "x".write(toFile: root + "/blob.unknownext", atomically: false, encoding: .utf8)
        try "SECRET-OUTSIDE\n".write(toFile: base + "/secret.txt", atomically: false, encoding: .utf8)
        try "SECRET-OUTSIDE\n".write(toFile: base + "/outside/secret.txt", atomically: false, encoding: .utf8)
        try "SECRET-HIDDEN\n".write(toFile: root + "/.env", atomically: false, encoding: .utf8)
        try fm.createDirectory(atPath: root + "/.git", withIntermediateDirectories: true)
        try "SECRET-HIDDEN\n".write(toFile: root + "/.git/config", atomically: false, encoding: .utf8)
        try fm.createSymbolicLink(atPath: root + "/link-passwd", withDestinationPath: "/etc/passwd")
        try fm.createSymbolicLink(atPath: root + "/link-out", withDestinationPath: "../outside")
        try fm.createSymbolicLink(atPath: root + "/link-in", withDestinationPath: "a.txt")
        guard mkfifo(root + "/fifo", 0o644) == 0 else { throw ClientError("mkfifo: \(Errno.current)") }
    }
    deinit { try? FileManager.default.removeItem(atPath: base) }
}

private func withStaticServer(_ backend: BackendKind, _ tree: Tree, _ body: (RunningServer) throws -> Void) throws {
    var router = HTTPRouter.benchmarkRoutes
    try router.files("/static", root: tree.root)
    try withServer(backend, configure: { $0.sendBuffers = 1024 },
                   handler: HTTPServer.handler(router: router), body)
}

@Suite(.serialized, .timeLimit(.minutes(3))) struct StaticFileTests {
    @Test(arguments: allBackends) func statusesAndHeaders(_ backend: BackendKind) throws {
        let tree = try Tree()
        try withStaticServer(backend, tree) { server in
            let c = try TestClient(port: server.port)
            let ok = try request(c, "/static/a.txt")
            #expect(ok.status == 200)
            #expect(ok.body == Array("hello, static\n".utf8))
            #expect(ok.header("Content-Type") == "text/plain; charset=utf-8")
            #expect(ok.header("Content-Length") == "14")
            #expect(ok.header("Accept-Ranges") == "bytes")
            let etag = try #require(ok.header("ETag"))
            let modified = try #require(ok.header("Last-Modified"))
            #expect(etag.hasPrefix("\"") && etag.hasSuffix("\""))
            var st = stat()
            stat(tree.root + "/a.txt", &st)
            var t = st.st_mtim.tv_sec
            var tmv = tm()
            gmtime_r(&t, &tmv)
            var buf = [CChar](repeating: 0, count: 40)
            let n = strftime(&buf, 40, "%a, %d %b %Y %H:%M:%S GMT", &tmv)
            #expect(modified == String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self))

            // HEAD: the same head, no body; the connection stays usable.
            let head = try request(c, "/static/a.txt", method: "HEAD")
            #expect(head.status == 200 && head.header("Content-Length") == "14" && head.header("ETag") == etag)

            // Conditional requests.
            #expect(try request(c, "/static/a.txt", headers: ["If-None-Match: \(etag)"]).status == 304)
            #expect(try request(c, "/static/a.txt", headers: ["If-None-Match: \"other\", W/\(etag)"]).status == 304)
            #expect(try request(c, "/static/a.txt", headers: ["If-None-Match: *"]).status == 304)
            let changed = try request(c, "/static/a.txt", headers: ["If-None-Match: \"other\""])
            #expect(changed.status == 200 && changed.body.count == 14)
            let nm = try request(c, "/static/a.txt", headers: ["If-Modified-Since: \(modified)"])
            #expect(nm.status == 304 && nm.header("ETag") == etag && nm.header("Content-Length") == nil)
            #expect(try request(c, "/static/a.txt", headers: ["If-Modified-Since: Thu, 01 Jan 1998 00:00:00 GMT"]).status == 200)
            #expect(try request(c, "/static/a.txt", headers: ["If-Modified-Since: yesterday"]).status == 200)
            // If-None-Match wins over If-Modified-Since.
            #expect(try request(c, "/static/a.txt", headers: ["If-None-Match: \"other\"", "If-Modified-Since: \(modified)"]).status == 200)

            // Ranges.
            let r1 = try request(c, "/static/a.txt", headers: ["Range: bytes=0-4"])
            #expect(r1.status == 206 && r1.body == Array("hello".utf8) && r1.header("Content-Range") == "bytes 0-4/14")
            let r2 = try request(c, "/static/a.txt", headers: ["Range: bytes=-7"])
            #expect(r2.status == 206 && r2.body == Array("static\n".utf8) && r2.header("Content-Range") == "bytes 7-13/14")
            let r3 = try request(c, "/static/a.txt", headers: ["Range: bytes=7-"])
            #expect(r3.status == 206 && r3.body == Array("static\n".utf8))
            let r4 = try request(c, "/static/a.txt", headers: ["Range: bytes=10-1000"])
            #expect(r4.status == 206 && r4.body == Array("tic\n".utf8) && r4.header("Content-Range") == "bytes 10-13/14")
            let r416 = try request(c, "/static/a.txt", headers: ["Range: bytes=14-20"])
            #expect(r416.status == 416 && r416.header("Content-Range") == "bytes */14")
            #expect(try request(c, "/static/a.txt", headers: ["Range: bytes=-0"]).status == 416)
            let multi = try request(c, "/static/a.txt", headers: ["Range: bytes=0-1,3-4"])
            #expect(multi.status == 200 && multi.body.count == 14)
            #expect(try request(c, "/static/a.txt", headers: ["Range: bytes=5-2"]).status == 200)  // invalid: ignored
            #expect(try request(c, "/static/a.txt", headers: ["Range: lines=1-2"]).status == 200)
            #expect(try request(c, "/static/a.txt", headers: ["Range: bytes=0-4", "If-Range: \(etag)"]).status == 206)
            #expect(try request(c, "/static/a.txt", headers: ["Range: bytes=0-4", "If-Range: \"old\""]).status == 200)
            #expect(try request(c, "/static/a.txt", headers: ["Range: bytes=0-4", "If-Range: \(modified)"]).status == 206)

            // Types by extension.
            #expect(try request(c, "/static/data.json").header("Content-Type") == "application/json")
            #expect(try request(c, "/static/site.css").header("Content-Type") == "text/css; charset=utf-8")
            #expect(try request(c, "/static/blob.unknownext").header("Content-Type") == "application/octet-stream")

            // Directories: the index, a redirect to the slash, no listing.
            let index = try request(c, "/static/sub/")
            #expect(index.status == 200 && index.body == Array("<h1>index</h1>\n".utf8))
            #expect(index.header("Content-Type") == "text/html; charset=utf-8")
            let redirect = try request(c, "/static/sub")
            #expect(redirect.status == 301 && redirect.header("Location") == "/static/sub/")
            #expect(try request(c, "/static/empty/").status == 403)
            #expect(try request(c, "/static").status == 301)

            // Not a regular file: refused, never read (a FIFO would block a reader).
            #expect(try request(c, "/static/fifo").status == 403)
            // A symlink inside the root is followed.
            #expect(try request(c, "/static/link-in").body == Array("hello, static\n".utf8))
            // Other methods.
            #expect(try request(c, "/static/a.txt", method: "DELETE").status == 405)
            #expect(try request(c, "/static/missing.txt").status == 404)
            // Still the same connection, still serving.
            #expect(try request(c, "/static/a.txt").status == 200)
        }
    }

    @Test(arguments: allBackends) func traversalIsRefused(_ backend: BackendKind) throws {
        let tree = try Tree()
        let attempts = [
            "/static/../secret.txt", "/static/..%2fsecret.txt", "/static/%2e%2e/secret.txt",
            "/static/%2E%2E/secret.txt", "/static/.%2e/secret.txt", "/static/%2e./secret.txt",
            "/static/..%5csecret.txt", "/static/%252e%252e/secret.txt", "/static//etc/passwd",
            "/static/%2fetc%2fpasswd", "/static/sub/../../secret.txt", "/static/sub/%2e%2e/%2e%2e/secret.txt",
            "/static/%00../secret.txt", "/static/a.txt%00.png", "/static/%c0%ae%c0%ae/secret.txt",
            "/static/.%00./secret.txt", "/static/./a.txt", "/static/link-out/secret.txt", "/static/link-passwd",
            "/static/sub/..", "/static/..", "/static/%2e%2e", "/static/....//secret.txt", "/static/..;/secret.txt",
            "/static/%u002e%u002e/secret.txt", "/static/.git/config", "/static/.env", "/static/%2eenv",
            "/static/sub%2f..%2f..%2fsecret.txt", "/static/%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd",
            "/static/..%252f..%252fsecret.txt", "/static/%", "/static/%zz",
        ]
        try withStaticServer(backend, tree) { server in
            for target in attempts {
                let c = try TestClient(port: server.port)
                try c.send(Array("GET \(target) HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".utf8))
                let raw = try c.receiveUntilEOF()
                let text = String(decoding: raw, as: UTF8.self)
                let status = Int(text.dropFirst(9).prefix(3)) ?? -1
                #expect([400, 403, 404].contains(status), "\(target) answered \(status)")
                #expect(!text.contains("SECRET") && !text.contains("root:x:0:0"), "\(target) leaked: \(text.prefix(200))")
            }
            #expect(attempts.count >= 20)
        }
    }

    @Test(arguments: allBackends) func bytesExactAcrossSizes(_ backend: BackendKind) throws {
        let tree = try Tree()
        let sizes = [0, 1, 4095, 4096, 4097, 16384, 16385, 65535, 65536, 65537, (1 << 20) + 7, (16 << 20) + 3]
        for size in sizes { try writePatternFile(tree.root + "/f\(size).bin", size: size) }
        try withStaticServer(backend, tree) { server in
            let c = try TestClient(port: server.port, timeoutSeconds: 30)
            for size in sizes {
                let r = try request(c, "/static/f\(size).bin")
                #expect(r.status == 200 && r.body.count == size)
                #expect(r.body == patternBytes(0..<size), "file of \(size) bytes differs")
            }
            // A range across block boundaries of the largest.
            let big = sizes.last!
            let a = (3 << 20) - 5, b = (9 << 20) + 11
            let r = try request(c, "/static/f\(big).bin", headers: ["Range: bytes=\(a)-\(b)"])
            #expect(r.status == 206 && r.header("Content-Range") == "bytes \(a)-\(b)/\(big)")
            #expect(r.body == patternBytes(a..<(b + 1)))
            // Pipelined: three requests in one send, answered in order.
            try c.send(Array("GET /static/f4097.bin HTTP/1.1\r\nHost: x\r\n\r\nGET /static/a.txt HTTP/1.1\r\nHost: x\r\n\r\nGET /static/f65537.bin HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
            #expect(try readReply(c).body == patternBytes(0..<4097))
            #expect(try readReply(c).body == Array("hello, static\n".utf8))
            #expect(try readReply(c).body == patternBytes(0..<65537))
        }
    }

    /// 1 GiB through one connection, verified block by block as it streams (both backends).
    @Test(arguments: allBackends) func oneGiBIsByteExact(_ backend: BackendKind) throws {
        let tree = try Tree()
        let size = 1 << 30
        try writePatternFile(tree.root + "/huge.bin", size: size)
        try withStaticServer(backend, tree) { server in
            let c = try TestClient(port: server.port, timeoutSeconds: 60)
            try c.send(Array("GET /static/huge.bin HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
            let head = try readReply(c, head: true)
            #expect(head.status == 200 && head.header("Content-Length") == "\(size)")
            var mismatches = 0
            for k in 0..<(size >> 20) {
                let got = try c.receive(exactly: 1 << 20)
                if got != patternBlock(k) { mismatches += 1 }
            }
            #expect(mismatches == 0, "\(mismatches) of 1024 MiB blocks differ")
            #expect(try request(c, "/static/a.txt").status == 200)  // the connection carries on
        }
    }

    /// Open files are cached for a second (no open/statx/close per hit); a replaced file is seen after.
    @Test(arguments: allBackends) func aReplacedFileIsSeenAfterTheCacheValidity(_ backend: BackendKind) throws {
        let tree = try Tree()
        try withStaticServer(backend, tree) { server in
            let c = try TestClient(port: server.port)
            let first = try request(c, "/static/a.txt")
            #expect(first.status == 200 && first.body == Array("hello, static\n".utf8))
            try "changed and longer\n".write(toFile: tree.root + "/a.txt.new", atomically: false, encoding: .utf8)
            #expect(rename(tree.root + "/a.txt.new", tree.root + "/a.txt") == 0)
            usleep(1_200_000)
            let second = try request(c, "/static/a.txt")
            #expect(second.status == 200 && second.body == Array("changed and longer\n".utf8))
            #expect(second.header("ETag") != first.header("ETag"))
            #expect(try request(c, "/static/a.txt", headers: ["If-None-Match: \(first.header("ETag") ?? "")"]).status == 200)
        }
    }

    @Test func pathNormalization() {
        func n(_ s: String) -> String? { Array(s.utf8).withUnsafeBytes { HTTPStaticPath.normalize($0) } }
        #expect(n("") == "")
        #expect(n("a.txt") == "a.txt")
        #expect(n("dir/") == "dir/")
        #expect(n("a%20b/c.txt") == "a b/c.txt")
        #expect(n("%2e%2e") == nil)
        #expect(n("a/../b") == nil)
        #expect(n("/etc/passwd") == nil)
        #expect(n("a//b") == nil)
        #expect(n("a%2f..%2fb") == nil)
        #expect(n("a%00b") == nil)
        #expect(n("a%5cb") == nil)
        #expect(n("%c3%a9t%c3%a9.txt") == "été.txt")
        #expect(n("%c0%ae") == nil)
        #expect(n("%4") == nil)
    }
}

/// File sends by splice (io_uring, `fileSpliceThreshold`): bytes exact, counted, the fallbacks (mask,
/// no free pipe), and a splice that cannot finish (a reader that stops, a reset) ended and released.
@Suite(.serialized, .timeLimit(.minutes(2))) struct SpliceFileSendTests {
    private func withSpliceServer(_ tree: Tree, _ configure: @escaping (inout ServerConfiguration) -> Void = { _ in },
                                  _ body: (RunningServer) throws -> Void) throws {
        var router = HTTPRouter.benchmarkRoutes
        try router.files("/static", root: tree.root)
        try withServer(.uring, configure: { $0.sendBuffers = 1024; configure(&$0) },
                       handler: HTTPServer.handler(router: router), body)
    }

    @Test func splicedSendsAreByteExactAndCounted() throws {
        try skipIfUnavailable(.uring)
        let tree = try Tree()
        let sizes = [65536, (1 << 20) - 1, 1 << 20, (1 << 20) + 1, (3 << 20) + 5]
        for size in sizes { try writePatternFile(tree.root + "/f\(size).bin", size: size) }
        try withSpliceServer(tree) { server in
            let c = try TestClient(port: server.port, timeoutSeconds: 30)
            for size in sizes {
                let r = try request(c, "/static/f\(size).bin")
                #expect(r.status == 200 && r.body == patternBytes(0..<size), "file of \(size) bytes differs")
            }
            // A range that starts mid-file, and two large responses pipelined in one send.
            let r = try request(c, "/static/f\((3 << 20) + 5).bin", headers: ["Range: bytes=100000-2200000"])
            #expect(r.status == 206 && r.body == patternBytes(100_000..<2_200_001))
            try c.send(Array("GET /static/f\(1 << 20).bin HTTP/1.1\r\nHost: x\r\n\r\nGET /static/f65536.bin HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
            #expect(try readReply(c).body == patternBytes(0..<(1 << 20)))
            #expect(try readReply(c).body == patternBytes(0..<65536))
            let s = server.stats
            #expect(s.fileSplices >= sizes.count + 3, "splices: \(s.fileSplices)")
            #expect(s.fileSpliceFallbacks == 0)
            #expect(eventually { server.stats.splicePipesInUse == 0 })
        }
    }

    @Test func maskedSpliceReadsInstead() throws {
        try skipIfUnavailable(.uring)
        let tree = try Tree()
        try writePatternFile(tree.root + "/big.bin", size: (2 << 20) + 3)
        try withSpliceServer(tree, { $0.disabledFeatures.insert(.splice) }) { server in
            let c = try TestClient(port: server.port, timeoutSeconds: 30)
            let r = try request(c, "/static/big.bin")
            #expect(r.status == 200 && r.body == patternBytes(0..<((2 << 20) + 3)))
            #expect(server.stats.fileSplices == 0)
        }
    }

    /// One pipe for four concurrent downloads: the sends that find it taken read into chunks.
    @Test func aPipeShortageFallsBackToReading() throws {
        try skipIfUnavailable(.uring)
        let tree = try Tree()
        let size = (4 << 20) + 9
        try writePatternFile(tree.root + "/big.bin", size: size)
        let expected = patternBytes(0..<size)
        try withSpliceServer(tree, { $0.splicePipes = 1 }) { server in
            let ok = Atomic<Int>(0)
            DispatchQueue.concurrentPerform(iterations: 4) { _ in
                guard let c = try? TestClient(port: server.port, timeoutSeconds: 30) else { return }
                for _ in 0..<2 {
                    guard let r = try? request(c, "/static/big.bin"), r.status == 200, r.body == expected else { return }
                }
                ok.add(1, ordering: .relaxed)
            }
            #expect(ok.load(ordering: .relaxed) == 4)
            let s = server.stats
            #expect(s.fileSplices > 0 && s.fileSpliceFallbacks > 0, "splices \(s.fileSplices) fallbacks \(s.fileSpliceFallbacks)")
            #expect(eventually { server.stats.splicePipesInUse == 0 })
        }
    }

    /// A client that asks for a large file and stops reading: the splice stays blocked in the kernel,
    /// the write-stall deadline interrupts it (a probe: bytes moved since the last progress count as
    /// progress) and closes the connection once a probe finds none, or TCP_USER_TIMEOUT (set to the same
    /// period) ends it first; either way the pipe comes back and another client is served meanwhile.
    @Test func aStalledReaderIsClosedAndItsPipeReturned() throws {
        try skipIfUnavailable(.uring)
        let tree = try Tree()
        let size = 4 << 20
        try writePatternFile(tree.root + "/big.bin", size: size)
        try withSpliceServer(tree, { $0.writeStallTimeout = .milliseconds(400); $0.socketSendBuffer = 32768 }) { server in
            let stalled = try TestClient(port: server.port, timeoutSeconds: 10, receiveBuffer: 16384)
            try stalled.send(Array("GET /static/big.bin HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
            #expect(eventually { server.stats.splicePipesInUse == 1 })
            let other = try TestClient(port: server.port, timeoutSeconds: 10)
            let r = try request(other, "/static/a.txt")
            #expect(r.status == 200)
            #expect(eventually(5) { server.stats.connectionsClosed == 1 })
            let s = server.stats
            #expect(s.splicePipesInUse == 0 && s.connectionsOpen == 1 && s.engineErrors == 0)
            // The pipe is usable again: a full download through it.
            let again = try request(other, "/static/big.bin")
            #expect(again.status == 200 && again.body == patternBytes(0..<size))
            #expect(server.stats.fileSplices >= 2)
        }
    }

    /// Clients that reset mid-download: every splice ends, every pipe and chunk comes back.
    @Test func resetsMidSpliceReleaseEverything() throws {
        try skipIfUnavailable(.uring)
        let tree = try Tree()
        try writePatternFile(tree.root + "/big.bin", size: 8 << 20)
        try withSpliceServer(tree, { $0.socketSendBuffer = 65536 }) { server in
            for k in 0..<20 {
                let c = try TestClient(port: server.port, timeoutSeconds: 10, receiveBuffer: 65536)
                try c.send(Array("GET /static/big.bin HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
                _ = try c.receive(exactly: 1000 + k * 5000)
                c.setLingerZero()
            }
            #expect(eventually { server.stats.connectionsOpen == 0 })
            let s = server.stats
            #expect(s.splicePipesInUse == 0 && s.buffersInUse == 0, "pipes \(s.splicePipesInUse) chunks \(s.buffersInUse)")
            #expect(s.fileSplices >= 20 && s.engineErrors == 0, "splices \(s.fileSplices) engine errors \(s.engineErrors)")
        }
    }
}
