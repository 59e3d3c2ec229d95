import Dispatch
import Foundation
import Glibc
import Synchronization
import Testing
@testable import Ringside
import RingsideHTTP

/// Echo that copies what it receives into send chunks (`write`, not the hand-back of the received chunk),
/// so large echoes queue runs of registered send chunks: what zero-copy sends carry.
struct CopyingEchoHandler: ConnectionHandler {
    static var requiresAuthentication: Bool { false }
    mutating func received(_ bytes: ReceivedBytes, on connection: Connection) {
        do { try connection.write(bytes.bytes) } catch { connection.abort() }
    }
}

/// Zero-copy sends (`zeroCopySendThreshold`): bytes exact with them on, every SEND_ZC's notification
/// received (each chunk back in the pool only after it), the masked feature and epoll falling back to
/// plain sends. Over loopback the kernel copies for the local receiver, and says so in every notification.
@Suite(.serialized, .timeLimit(.minutes(3))) struct ZeroCopySendTests {
    static func zeroCopy(_ c: inout ServerConfiguration, mask: KernelFeatures = []) {
        c.registerBuffers = true
        c.zeroCopySendThreshold = 8 * 1024
        c.sendBuffers = 1536  // 6 MiB registered: fits the 8 MiB RLIMIT_MEMLOCK
        c.disabledFeatures = mask
        c.fileSpliceThreshold = nil  // file bodies through the send chunks (large ones would splice)
    }

    /// Skips (printing why) when the kernel refuses fixed-buffer SEND_ZC with usage reports: the probe's
    /// reason is in the start log, and no send went zero-copy.
    static func skipUnlessZeroCopy(_ s: ServerStats, _ name: String) throws {
        guard s.zeroCopySends == 0 else { return }
        let reason = "\(name): no zero-copy send on this kernel (SEND_ZC with fixed buffers and usage reports needs Linux 6.2+; see the start log)"
        print("SKIP: \(reason)")
        try Test.cancel(Comment(rawValue: reason))
    }

    /// 32 echoes of 256 KiB to 2 MiB each, byte-exact; on io_uring every SEND_ZC got its notification,
    /// and loopback reports them copied.
    @Test(arguments: [(BackendKind.uring, KernelFeatures()), (BackendKind.uring, KernelFeatures.zeroCopySend), (BackendKind.epoll, KernelFeatures())])
    func largeEchoesAreByteExact(_ backend: BackendKind, _ mask: KernelFeatures) throws {
        var stopped: RunningServer? = nil
        // The pool covers every connection's high watermark plus a receive burst (32 x 128 KiB < 6 MiB):
        // zero-copy sends keep their chunks while the kernel holds the bytes in the socket buffer, so the
        // socket buffers no longer absorb a queue the way copies into them do.
        try withServer(backend, configure: {
            Self.zeroCopy(&$0, mask: mask)
            $0.highWatermark = 64 * 1024
            $0.lowWatermark = 16 * 1024
            $0.receiveBurstLimit = 64 * 1024
        }, handler: { CopyingEchoHandler() }) { server in
            let payloads = (0..<32).map { randomBytes((256 << 10) + $0 * 57_331, seed: UInt64($0) + 5) }
            let report = try MultiClient(port: server.port, payloads: payloads).run()
            #expect(report.connections == 32)
            #expect(server.stats.engineErrors == 0)
            // Chunks pinned by zero-copy sends count against the watermarks: the pool is never exhausted.
            #expect(server.stats.writesRefused == 0)
            stopped = server
        }
        let s = stopped!.stats  // after the stop: every notification is in
        print("\(backend) mask=\(mask): zero-copy sends \(s.zeroCopySends), notified zero-copy \(s.zeroCopySendsCompleted), copied \(s.zeroCopySendsCopied), bytes out \(s.bytesOut)")
        if backend == .epoll || !mask.isEmpty {
            #expect(s.zeroCopySends == 0, "a fallback sent zero-copy")
            return
        }
        try Self.skipUnlessZeroCopy(s, "largeEchoesAreByteExact")
        #expect(s.zeroCopySendsCompleted + s.zeroCopySendsCopied == s.zeroCopySends, "a SEND_ZC without its notification")
        #expect(s.zeroCopySendsCopied > 0, "loopback must report copies")
    }

    /// Send chunks at least as large as the threshold go zero-copy one by one, whatever their order.
    @Test func largeChunksGoZeroCopyOneByOne() throws {
        var stopped: RunningServer? = nil
        try withServer(.uring, configure: {
            Self.zeroCopy(&$0)
            $0.zeroCopySendThreshold = 16 * 1024
            $0.sendBufferSize = 64 * 1024
            $0.sendBuffers = 96
            $0.highWatermark = 128 * 1024
            $0.lowWatermark = 32 * 1024
            $0.receiveBurstLimit = 64 * 1024
        }, handler: { CopyingEchoHandler() }) { server in
            let payloads = (0..<8).map { randomBytes((1 << 20) + $0 * 7_919, seed: UInt64($0) + 21) }
            let report = try MultiClient(port: server.port, payloads: payloads).run()
            #expect(report.connections == 8)
            #expect(server.stats.writesRefused == 0)
            stopped = server
        }
        let s = stopped!.stats
        print("64 KiB chunks: zero-copy sends \(s.zeroCopySends), copied \(s.zeroCopySendsCopied), bytes out \(s.bytesOut)")
        try Self.skipUnlessZeroCopy(s, "largeChunksGoZeroCopyOneByOne")
        #expect(s.zeroCopySendsCompleted + s.zeroCopySendsCopied == s.zeroCopySends)
    }

    /// The pool's side: a pinned chunk released by its queue stays out of the free list until its last
    /// pin goes, then returns exactly once; a pinned chunk never released stays with its owner.
    @Test func pinnedChunksReturnOnlyAtTheirLastUnpin() throws {
        let pool = try BufferPool(receiveChunkSize: 1024, receiveChunks: 2, sendChunkSize: 512, sendChunks: 4)
        let free = pool.freeSendCount
        let block = pool.takeSendChunks(3)
        let c = (0..<3).map { pool.takenSendChunk(at: block + $0) }
        #expect(c[1] == c[0] + 1 && c[2] == c[1] + 1, "a fresh block is slab neighbours in order: \(c)")
        for x in c { pool.pin(x) }
        pool.pin(c[0])  // a second zero-copy send (the rest of a short one) reads c[0] too
        #expect(pool.pinnedChunks == 3)
        for x in c.prefix(2) { pool.release(x) }  // sent: the queue lets go
        #expect(pool.freeSendCount == free - 3 && pool.chunksOut == 3)
        for x in c { pool.unpin(x) }  // the first notification
        #expect(pool.freeSendCount == free - 2, "c[1] returns; c[0] is still read; c[2] is still queued")
        pool.unpin(c[0])  // the second notification
        #expect(pool.freeSendCount == free - 1 && pool.pinnedChunks == 0)
        pool.release(c[2])
        #expect(pool.freeSendCount == free && pool.chunksOut == 0)
        // Released in slab order (as a queue releases what it sent), they come back as neighbours in order.
        let all = pool.takeSendChunks(4)
        let a = (0..<4).map { pool.takenSendChunk(at: all + $0) }
        for x in a.sorted() { pool.release(x) }
        let again = pool.takeSendChunks(3)
        let d = (0..<3).map { pool.takenSendChunk(at: again + $0) }
        #expect(d[1] == d[0] + 1 && d[2] == d[1] + 1, "\(d)")
        for x in d { pool.release(x) }
        #expect(pool.chunksOut == 0)
    }

    /// Contiguous allocation (zero-copy sends on): a block take finds slab neighbours whatever order the
    /// chunks came back in, and falls back to any free chunks when no run is long enough.
    @Test func contiguousAllocationFindsNeighbours() throws {
        let pool = try BufferPool(receiveChunkSize: 1024, receiveChunks: 2, sendChunkSize: 512, sendChunks: 130)
        pool.useContiguousAllocation()
        let all = pool.takeSendChunks(130)
        var chunks = (0..<130).map { pool.takenSendChunk(at: all + $0) }
        #expect(chunks == (0..<130).map { Int32(2 + $0) })
        #expect(pool.takeSendChunk() == nil)
        var g = SplitMix(seed: 3)
        chunks.shuffle(using: &g)
        for c in chunks.prefix(100) { pool.release(c) }  // back in a scrambled order
        let free = Set(chunks.prefix(100))
        for n in [16, 16, 5, 1] {
            let b = pool.takeSendChunks(n)
            let got = (0..<n).map { pool.takenSendChunk(at: b + $0) }
            #expect(got.allSatisfy { free.contains($0) })
            let neighbours = zip(got, got.dropFirst()).allSatisfy { $1 == $0 + 1 }
            let possible = (0...(130 - n)).contains { s in (s..<(s + n)).allSatisfy { free.contains(Int32(2 + $0)) } }
            if possible { #expect(neighbours, "a run of \(n) was free but \(got) was taken") }
            for c in got { pool.release(c) }
        }
        for c in chunks.suffix(30) { pool.release(c) }
        #expect(pool.freeSendCount == 130 && pool.chunksOut == 0)
        // Fragmented: every other chunk out, no run of 2; a block of 4 still gets 4 free chunks.
        let again = pool.takeSendChunks(130)
        let every = (0..<130).map { pool.takenSendChunk(at: again + $0) }
        for c in every where c % 2 == 0 { pool.release(c) }
        let b = pool.takeSendChunks(4)
        let four = (0..<4).map { pool.takenSendChunk(at: b + $0) }
        #expect(Set(four).count == 4 && four.allSatisfy { $0 % 2 == 0 })
        for c in four { pool.release(c) }
        for c in every where c % 2 == 1 { pool.release(c) }
        #expect(pool.freeSendCount == 130 && pool.chunksOut == 0)
    }

    /// `ringside serve --register-buffers --zero-copy-sends BYTES`: the start line says `send-zc=on`, a
    /// static file arrives byte-exact, and the stop line counts the zero-copy sends and their usage.
    @Test func cliFlagServesZeroCopy() throws {
        try skipIfUnavailable(.uring)
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("ringside-zc-cli-\(getpid())").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let body = randomBytes(1 << 20, seed: 31)
        try Data(body).write(to: URL(fileURLWithPath: dir + "/m.bin"))
        let p = Process()
        p.executableURL = builtBinary("ringside")
        p.arguments = ["serve", "--protocol", "http", "--backend", "uring", "--port", "0", "--static", dir,
                       "--register-buffers", "--zero-copy-sends", "16384", "--file-splice-threshold", "0"]
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        var line = ""
        while !line.hasSuffix("\n") {
            let d = out.fileHandleForReading.availableData
            if d.isEmpty { break }
            line += String(decoding: d, as: UTF8.self)
        }
        guard let portText = line.split(separator: " ").first(where: { $0.contains("127.0.0.1:") })?.split(separator: ":").last,
              let port = Int(portText.trimmingCharacters(in: .whitespacesAndNewlines)) else {
            p.terminate()
            Issue.record("no listening line: \(line)")
            return
        }
        let c = try TestClient(port: port, timeoutSeconds: 30)
        for _ in 0..<4 {
            try c.send(Array("GET /static/m.bin HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
            let (status, got) = try Self.readResponse(c)
            #expect(status == 200 && got == body)
        }
        c.shutdownWrite()  // done: the stop need not wait out a lingering close of this connection
        kill(p.processIdentifier, SIGINT)
        let rest = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            + String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        #expect(p.terminationStatus == 0)
        let all = line + rest
        guard all.contains("send-zc=on") else {
            let reason = all.components(separatedBy: " ").first { $0.hasPrefix("send-zc=") } ?? "no send-zc verdict"
            print("SKIP: cliFlagServesZeroCopy: \(reason)")
            try Test.cancel(Comment(rawValue: reason))
        }
        // e.g. zeroCopySends=sent 64 zeroCopy 0 copied 64
        let counts = all.components(separatedBy: "zeroCopySends=sent ").dropFirst().first?.split(separator: " ") ?? []
        #expect(counts.count >= 5, "no zero-copy counters in the stop line: \(all.suffix(600))")
        if counts.count >= 5, let sent = Int(counts[0]), let zc = Int(counts[2]), let copied = Int(counts[4]) {
            print("cli: zero-copy sends \(sent), zero-copy \(zc), copied \(copied)")
            #expect(sent > 0 && zc + copied == sent)
        }
    }

    /// The threshold is 1 byte or more (nil: off).
    @Test func thresholdIsValidated() throws {
        var c = ServerConfiguration()
        c.zeroCopySendThreshold = 0
        #expect(throws: ConfigurationError.self) { try c.validate() }
        c.zeroCopySendThreshold = -5
        #expect(throws: ConfigurationError.self) { try c.validate() }
        c.zeroCopySendThreshold = 16384
        try c.validate()
        #expect(try KernelFeatures(parsing: "send-zc") == .zeroCopySend)
    }

    /// Zero-copy asked for without registered buffers: plain sends, bytes exact.
    @Test func withoutRegisteredBuffersSendsPlainly() throws {
        try withServer(.uring, configure: { Self.zeroCopy(&$0); $0.registerBuffers = false }, handler: { CopyingEchoHandler() }) { server in
            let payloads = (0..<8).map { randomBytes(300_000 + $0, seed: UInt64($0) + 11) }
            _ = try MultiClient(port: server.port, payloads: payloads).run()
            #expect(server.stats.zeroCopySends == 0)
        }
    }

    /// Static files (HTTP bodies through file sends into the registered chunks) from 0 B to 3 MiB,
    /// byte-exact, several on one keep-alive connection.
    @Test(arguments: [(BackendKind.uring, KernelFeatures()), (BackendKind.uring, KernelFeatures.zeroCopySend), (BackendKind.epoll, KernelFeatures())])
    func staticFilesAreByteExact(_ backend: BackendKind, _ mask: KernelFeatures) throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("ringside-zc-\(getpid())-\(UInt32.random(in: 0...UInt32.max))").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let sizes = [0, 1, 4095, 4096, 65_537, 1 << 20, 3 << 20 | 123]
        var files: [[UInt8]] = []
        for (k, n) in sizes.enumerated() {
            let bytes = randomBytes(n, seed: UInt64(k) + 900)
            try Data(bytes).write(to: URL(fileURLWithPath: "\(dir)/f\(k).bin"))
            files.append(bytes)
        }
        var router = HTTPRouter()
        try router.files("/static", root: dir)
        var stopped: RunningServer? = nil
        try withServer(backend, configure: { Self.zeroCopy(&$0, mask: mask) }, handler: HTTPServer.handler(router: router)) { server in
            let c = try TestClient(port: server.port, timeoutSeconds: 30)
            for round in 0..<2 {
                for k in sizes.indices {
                    try c.send(Array("GET /static/f\(k).bin HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
                    let (status, body) = try Self.readResponse(c)
                    #expect(status == 200)
                    #expect(body == files[k], "round \(round): f\(k).bin (\(sizes[k]) B) differs")
                }
            }
            stopped = server
        }
        let s = stopped!.stats  // after the stop: every notification is in
        print("static \(backend) mask=\(mask): zero-copy sends \(s.zeroCopySends), notified zero-copy \(s.zeroCopySendsCompleted), copied \(s.zeroCopySendsCopied)")
        if backend == .epoll || !mask.isEmpty { #expect(s.zeroCopySends == 0); return }
        try Self.skipUnlessZeroCopy(s, "staticFilesAreByteExact")
        #expect(s.zeroCopySendsCompleted + s.zeroCopySendsCopied == s.zeroCopySends)
        #expect(s.zeroCopySendsCopied > 0)
    }

    /// Aborts connections while zero-copy sends are in flight (the kernel holds the chunks until their
    /// notifications), with released chunks poisoned: no client ever receives the poison or another
    /// client's bytes, every notification arrives, and every chunk is back in the pool at stop exactly
    /// once (`withServer` checks `buffersInUse == 0`; a chunk returned twice would drive it negative).
    @Test func abortWithZeroCopySendsInFlightReleasesEveryChunkOnce() throws {
        var stopped: RunningServer? = nil
        try withServer(.uring, configure: {
            Self.zeroCopy(&$0)
            $0.poisonReleasedChunks = true
            $0.highWatermark = 96 * 1024
            $0.lowWatermark = 32 * 1024
            $0.socketSendBuffer = 16 * 1024  // sends block early: zero-copy sends sit in flight
        }, handler: { StreamThenAbort() }) { server in
            let received = Atomic<Int>(0)
            let failures = PthreadMutex<[String]>([])
            for round in 0..<2 {
                DispatchQueue.concurrentPerform(iterations: 16) { k in
                    let key = UInt64(round * 1000 + k + 1) &* 0x1000_0001
                    do {
                        received.add(try PoisonedPoolTests.readStream(port: server.port, key: key), ordering: .relaxed)
                    } catch {
                        failures.withLock { $0.append("\(error)") }
                    }
                }
            }
            let f = failures.withLock { $0 }
            #expect(f.isEmpty, "\(f.prefix(3))")
            #expect(received.load(ordering: .relaxed) > 0)
            #expect(eventually { server.stats.connectionsOpen == 0 })
            stopped = server
        }
        let s = stopped!.stats  // after the stop: every notification is in
        print("abort: zero-copy sends \(s.zeroCopySends), notified \(s.zeroCopySendsCompleted + s.zeroCopySendsCopied) (copied \(s.zeroCopySendsCopied)), buffers in use at stop \(s.buffersInUse), teardowns with a send in flight \(s.teardownsWithSendInFlight)")
        try Self.skipUnlessZeroCopy(s, "abortWithZeroCopySendsInFlightReleasesEveryChunkOnce")
        #expect(s.zeroCopySendsCompleted + s.zeroCopySendsCopied == s.zeroCopySends)
        #expect(s.buffersInUse == 0)
    }

    /// Reads one response: head to CRLFCRLF, then Content-Length bytes.
    static func readResponse(_ c: TestClient) throws -> (Int, [UInt8]) {
        var head: [UInt8] = []
        while !(head.count >= 4 && head[(head.count - 4)...] == [13, 10, 13, 10][...]) {
            head += try c.receive(exactly: 1)
            if head.count > 16384 { throw ClientError("head too long") }
        }
        let text = String(decoding: head, as: UTF8.self)
        let status = Int(text.dropFirst(9).prefix(3)) ?? -1
        var length = 0
        for line in text.components(separatedBy: "\r\n") where line.lowercased().hasPrefix("content-length:") {
            length = Int(line.dropFirst(15).trimmingCharacters(in: .whitespaces)) ?? 0
        }
        return (status, length > 0 ? try c.receive(exactly: length) : [])
    }
}
