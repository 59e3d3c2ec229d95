import Foundation
import Glibc
import Ringside
import Synchronization
import Testing

/// Handler: writes 512 KiB at open (over the high watermark), pauses reading, and answers `writable`
/// with one byte "W".
struct PauseThenWritable: ConnectionHandler {
    static var requiresAuthentication: Bool { false }
    var wrote = false
    mutating func opened(on connection: Connection) {
        let chunk = [UInt8](repeating: 0x41, count: 4096)
        for _ in 0..<128 { try? connection.write(chunk) }
        connection.pauseReading()
    }
    mutating func received(_ bytes: ReceivedBytes, on connection: Connection) {}
    mutating func writable(on connection: Connection) {
        if !wrote { wrote = true; try? connection.write([0x57]) }
    }
}

@Suite(.serialized, .timeLimit(.minutes(2)))
/// Found in review: each failed before its fix (see the commit that added it).
struct BackpressureRegressionTests {
    @Test(arguments: allBackends)
    func writableWhilePaused(_ backend: BackendKind) throws {
        try withServer(backend, handler: { PauseThenWritable() }) { server in
            let c = try TestClient(port: server.port, timeoutSeconds: 3)
            let body = try c.receive(exactly: 128 * 4096)
            #expect(body.count == 128 * 4096)
            // writable owed: the queue went over the high mark and drained
            let w = try? c.receive(exactly: 1)
            #expect(w == [0x57], "writable never delivered while the handler had paused reading")
        }
    }

    /// Async: a task writing a large response while the client streams input concurrently and reads slowly.
    @Test(arguments: allBackends)
    func asyncFullDuplexDeadlock(_ backend: BackendKind) throws {
        try skipIfUnavailable(backend)
        signal(SIGPIPE, SIG_IGN)
        var config = ServerConfiguration(host: "127.0.0.1", port: 0, backend: backend)
        config.drainTimeout = .seconds(1)
        let total = 8 << 20
        let server = try RingsideServer.startAsync(configuration: config, requiresAuthentication: false) { conn in
            let block = [UInt8](repeating: 0x42, count: 1 << 20)
            for _ in 0..<(total >> 20) { try await conn.write(block) }
            // then drain input
            for try await _ in conn.inbound {}
        }
        defer { try? server.shutdown() }
        let c = try TestClient(port: server.port, timeoutSeconds: 5)
        // sender thread: streams 4 MiB of input
        let sent = Atomic<Int>(0)
        let fd = c.fd
        let t = Thread {
            let buf = [UInt8](repeating: 1, count: 16384)
            for _ in 0..<256 {
                let n = buf.withUnsafeBytes { Glibc.send(fd, $0.baseAddress!, 16384, Int32(MSG_NOSIGNAL)) }
                if n <= 0 { break }
                sent.add(n, ordering: .relaxed)
            }
        }
        t.start()
        var got = 0
        var buf = [UInt8](repeating: 0, count: 65536)
        while got < total {
            usleep(2000)
            let n = buf.withUnsafeMutableBytes { recv(c.fd, $0.baseAddress!, 65536, 0) }
            if n <= 0 { break }
            got += n
        }
        #expect(got == total, "received \(got) of \(total); client sent \(sent.load(ordering: .relaxed))")
    }
}

/// Writes `size` bytes when the first input arrives, then closes gracefully.
struct WriteThenClose: ConnectionHandler {
    static var requiresAuthentication: Bool { false }
    static let size = Atomic<Int>(0)
    mutating func received(_ bytes: ReceivedBytes, on connection: Connection) {
        let n = Self.size.load(ordering: .relaxed)
        let chunk = [UInt8](repeating: 0x43, count: 4096)
        for _ in 0..<(n / 4096) { try? connection.write(chunk) }
        connection.close()
    }
}

@Suite(.serialized, .timeLimit(.minutes(2)))
struct LingerRegressionTests {
    /// Lingering close, then the peer half-closes before it has read the whole response.
    @Test(arguments: allBackends)
    func peerFinDuringLingerKeepsResponse(_ backend: BackendKind) throws {
        for size in [64 * 1024, 128 * 1024, 256 * 1024] {
            WriteThenClose.size.store(size, ordering: .relaxed)
            try withServer(backend, configure: { $0.lingerTimeout = .seconds(2) }, handler: { WriteThenClose() }) { server in
                let c = try TestClient(port: server.port, timeoutSeconds: 5)
                try c.send([1])
                // The whole response handed to the kernel (send completions counted), then the flush's
                // half-close and the linger start on the loop's next turns.
                #expect(eventually { server.stats.bytesOut == size }, "\(server.stats)")
                usleep(100_000)
                c.shutdownWrite()  // peer FIN while our data is still in flight
                // The FIN ends the linger: the server closes (with our data still in flight) before we read.
                #expect(eventually { server.stats.connectionsClosed == 1 }, "\(server.stats)")
                var got = 0
                var err: String? = nil
                var buf = [UInt8](repeating: 0, count: 65536)
                while true {
                    let n = buf.withUnsafeMutableBytes { recv(c.fd, $0.baseAddress!, 65536, 0) }
                    if n == 0 { break }
                    if n < 0 { err = "\(Errno.current)"; break }
                    got += n
                }
                #expect(got == size && err == nil, "[\(backend)] size \(size): got \(got), error \(err ?? "none")")
            }
        }
    }
}
