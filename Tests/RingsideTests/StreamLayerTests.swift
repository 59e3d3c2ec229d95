import Foundation
import Glibc
import Synchronization
import Ringside
import RingsideProtocols
import Testing

/// XORs `n` bytes from `src` into `dst` with `key` (eight at a time: debug builds run this per byte).
func xorBytes(_ src: UnsafeRawPointer, _ dst: UnsafeMutableRawPointer, _ n: Int, _ key: UInt8) {
    let k = UInt64(key) &* 0x0101_0101_0101_0101
    var i = 0
    while i + 8 <= n { dst.storeBytes(of: src.loadUnaligned(fromByteOffset: i, as: UInt64.self) ^ k, toByteOffset: i, as: UInt64.self); i += 8 }
    while i < n { dst.storeBytes(of: src.load(fromByteOffset: i, as: UInt8.self) ^ key, toByteOffset: i, as: UInt8.self); i += 1 }
}

/// A test cipher: every byte XORed with `key`, both ways. Transforms through a stack buffer (no
/// allocation per message) and keeps writes all-or-nothing by checking the room first.
final class XORLayer: StreamLayer {
    let key: UInt8
    init(key: UInt8) { self.key = key }

    func inbound(_ bytes: UnsafeRawBufferPointer, _ io: LayerIO, deliver: (UnsafeRawBufferPointer) -> Void) {
        withUnsafeTemporaryAllocation(byteCount: 4096, alignment: 16) { buf in
            var off = 0
            while off < bytes.count {
                let n = min(buf.count, bytes.count - off)
                xorBytes(bytes.baseAddress! + off, buf.baseAddress!, n, key)
                deliver(UnsafeRawBufferPointer(rebasing: buf[0..<n]))
                off += n
            }
        }
    }

    func outbound(_ bytes: UnsafeRawBufferPointer, _ io: LayerIO) throws(WriteError) {
        guard io.queueableBytes >= bytes.count else { throw .bufferPoolExhausted }
        let r: Result<Void, WriteError> = withUnsafeTemporaryAllocation(byteCount: 4096, alignment: 16) { buf in
            var off = 0
            while off < bytes.count {
                let n = min(buf.count, bytes.count - off)
                xorBytes(bytes.baseAddress! + off, buf.baseAddress!, n, key)
                do throws(WriteError) { try io.send(UnsafeRawBufferPointer(rebasing: buf[0..<n])) } catch { return .failure(error) }
                off += n
            }
            return .success(())
        }
        try r.get()
    }
}

struct XORFactory: StreamLayerFactory {
    let key: UInt8
    func makeLayer() -> any StreamLayer { XORLayer(key: key) }
}

/// A layer that is established only once the peer sent one `!` byte (a stand-in handshake): the
/// wrapped handler must not be opened (nor see bytes) before.
final class GateLayer: StreamLayer {
    private(set) var isEstablished = false
    func inbound(_ bytes: UnsafeRawBufferPointer, _ io: LayerIO, deliver: (UnsafeRawBufferPointer) -> Void) {
        var b = bytes
        if !isEstablished {
            guard let first = b.first else { return }
            guard first == UInt8(ascii: "!") else {
                io.record(.handshakeFailed)
                io.connection.close()
                return
            }
            isEstablished = true
            let plus: [UInt8] = [UInt8(ascii: "+")]
            let r: Result<Void, WriteError> = plus.withUnsafeBytes { p in Result { () throws(WriteError) in try io.send(p) } }
            if case .failure = r { io.connection.abort() }
            b = UnsafeRawBufferPointer(rebasing: b.dropFirst())
        }
        if !b.isEmpty { deliver(b) }
    }
    func outbound(_ bytes: UnsafeRawBufferPointer, _ io: LayerIO) throws(WriteError) { try io.send(bytes) }
}

struct GateFactory: StreamLayerFactory {
    func makeLayer() -> any StreamLayer { GateLayer() }
}

/// Passes bytes through, logging the size of every outbound call.
final class CountingLayer: StreamLayer {
    let log: LayerLog
    init(log: LayerLog) { self.log = log }
    func inbound(_ bytes: UnsafeRawBufferPointer, _ io: LayerIO, deliver: (UnsafeRawBufferPointer) -> Void) { deliver(bytes) }
    func outbound(_ bytes: UnsafeRawBufferPointer, _ io: LayerIO) throws(WriteError) {
        log.add("out \(bytes.count)")
        try io.send(bytes)
    }
}

struct CountingFactory: StreamLayerFactory {
    let log: LayerLog
    func makeLayer() -> any StreamLayer { CountingLayer(log: log) }
}

/// Writes each received message back in three pieces.
struct ThreePieces: ConnectionHandler {
    static var requiresAuthentication: Bool { false }
    mutating func received(_ bytes: ReceivedBytes, on connection: Connection) {
        do {
            try connection.write(Array("<".utf8))
            try connection.send(bytes)
            try connection.write(Array(">".utf8))
        } catch { connection.abort() }
    }
}

/// Records what the wrapped handler saw.
final class LayerLog: @unchecked Sendable {
    private let lock = NSLock()
    private var _events: [String] = []
    func add(_ e: String) { lock.lock(); _events.append(e); lock.unlock() }
    var events: [String] { lock.lock(); defer { lock.unlock() }; return _events }
}

/// Echo with commands: a message "close" answers "bye" then closes, "abort" aborts, "blast N" writes
/// N bytes of a pattern through backpressure (continuing in `writable`), then closes.
struct CommandEcho: ConnectionHandler {
    static var requiresAuthentication: Bool { false }
    let log: LayerLog
    var toBlast = 0
    var blasted = 0

    mutating func opened(on connection: Connection) { log.add("opened") }

    mutating func received(_ bytes: ReceivedBytes, on connection: Connection) {
        // Commands are short; decoding every echoed 16 KiB chunk as text cost ~4 µs a byte in a debug build.
        let text = bytes.count <= 32 ? String(decoding: bytes.bytes, as: UTF8.self) : ""
        if text == "close" {
            do { try connection.write(Array("bye".utf8)) } catch { connection.abort() }
            connection.close()
        } else if text == "abort" {
            connection.abort()
        } else if text.hasPrefix("blast ") {
            toBlast = Int(text.dropFirst(6))!
            blast(connection)
        } else {
            do { try connection.send(bytes) } catch { log.add("send failed: \(error)"); connection.abort() }
        }
    }

    mutating func writable(on connection: Connection) {
        log.add("writable")
        blast(connection)
    }

    private mutating func blast(_ connection: Connection) {
        while blasted < toBlast && !connection.isBackpressured {
            let n = min(16 * 1024, toBlast - blasted)
            let piece = blastPattern(from: blasted, count: n)
            do { try connection.write(piece) } catch { log.add("write failed: \(error)"); connection.abort(); return }
            blasted += n
        }
        if blasted == toBlast && toBlast > 0 { connection.close() }
    }

    mutating func closed(reason: CloseReason) { log.add("closed: \(reason)") }
}

func xor(_ bytes: [UInt8], _ key: UInt8) -> [UInt8] {
    var out = [UInt8](repeating: 0, count: bytes.count)
    bytes.withUnsafeBytes { s in out.withUnsafeMutableBytes { d in if !s.isEmpty { xorBytes(s.baseAddress!, d.baseAddress!, s.count, key) } } }
    return out
}

/// The `blast` pattern.
func blastPattern(from start: Int, count: Int) -> [UInt8] {
    var out = [UInt8](repeating: 0, count: count)
    out.withUnsafeMutableBufferPointer { p in for i in 0..<count { p[i] = UInt8(truncatingIfNeeded: (start + i) % 251) } }
    return out
}

@Suite(.serialized, .timeLimit(.minutes(1)))
struct StreamLayerTests {
    static func start(_ config: ServerConfiguration, _ layers: [any StreamLayerFactory], log: LayerLog) throws -> RunningServer {
        try RingsideServer.start(configuration: config, layers: LayerStackFactory(layers)) { CommandEcho(log: log) }
    }

    @Test(arguments: allBackends)
    func echoThroughOneAndTwoLayers(_ backend: BackendKind) throws {
        for layers in [[XORFactory(key: 0x5A)], [XORFactory(key: 0x5A), XORFactory(key: 0x33)]] {
            let key = layers.reduce(UInt8(0)) { $0 ^ $1.key }
            let log = LayerLog()
            try withServer(backend, start: { try Self.start($0, layers, log: log) }) { server in
                let c = try TestClient(port: server.port)
                for (i, size) in [1, 1000, 70_000, 200_000].enumerated() {
                    let payload = randomBytes(size, seed: UInt64(50 + i))
                    try c.send(xor(payload, key))
                    #expect(try xor(c.receive(exactly: size), key) == payload, "size \(size)")
                }
                // The wire carries the transformed bytes: the handler's echo of "close" arrives as "bye".
                try c.send(xor(Array("close".utf8), key))
                #expect(try xor(c.receiveUntilEOF(), key) == Array("bye".utf8))
                c.shutdownWrite()  // ends the server's lingering close at once (else it waits 2 s for our FIN)
                #expect(eventually { server.stats.connectionsOpen == 0 })
                #expect(log.events.first == "opened")
                #expect(log.events.last == "closed: closed by handler")
                #expect(server.stats.bytesOut == 1 + 1000 + 70_000 + 200_000 + 3)
            }
        }
    }

    @Test(arguments: allBackends)
    func abortAndPeerCloseThroughLayer(_ backend: BackendKind) throws {
        let log = LayerLog()
        try withServer(backend, start: { try Self.start($0, [XORFactory(key: 7)], log: log) }) { server in
            let a = try TestClient(port: server.port)
            try a.send(xor(Array("abort".utf8), 7))
            #expect(throws: (any Error).self) { _ = try a.receive(exactly: 1) }
            let b = try TestClient(port: server.port)
            try b.send(xor(Array("hello".utf8), 7))
            #expect(try xor(b.receive(exactly: 5), 7) == Array("hello".utf8))
            b.shutdownWrite()
            #expect(try b.receiveUntilEOF() == [])
            #expect(eventually { server.stats.connectionsOpen == 0 })
            #expect(eventually { log.events.filter { $0.hasPrefix("closed") }.count == 2 })
            #expect(log.events.contains("closed: aborted by handler"))
            #expect(log.events.contains("closed: peer closed"))
        }
    }

    /// 1 MB through the layer to a client that reads only after a pause: the queue goes over the high
    /// watermark, `writable` comes back through the layer, every byte arrives in order.
    @Test(arguments: allBackends)
    func backpressureAndWritableThroughLayer(_ backend: BackendKind) throws {
        let log = LayerLog()
        try withServer(backend, start: { try Self.start($0, [XORFactory(key: 0x21), XORFactory(key: 0x42)], log: log) }) { server in
            let c = try TestClient(port: server.port, receiveBuffer: 64 * 1024)
            let total = 1 << 20
            try c.send(xor(Array("blast \(total)".utf8), 0x63))
            usleep(300_000)
            let got = xor(try c.receiveUntilEOF(), 0x63)
            #expect(got.count == total)
            #expect(got == blastPattern(from: 0, count: total))
            #expect(log.events.contains("writable"))
            // Echo of a large upload from a client that does not read at first: reading pauses.
            let d = try TestClient(port: server.port)
            let big = randomBytes(1 << 20, seed: 9)
            let fd = d.fd
            let wire = xor(big, 0x63)
            let sender = Thread {
                var off = 0
                while off < wire.count {
                    let n = wire.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + off, wire.count - off, 0) }
                    if n <= 0 { break }
                    off += n
                }
            }
            sender.start()
            usleep(300_000)
            #expect(try xor(d.receive(exactly: big.count), 0x63) == big)
        }
    }

    /// The async API over two layers: the task reads plaintext and its writes go back through them.
    @Test(arguments: allBackends)
    func asyncEchoThroughLayers(_ backend: BackendKind) throws {
        let layers = LayerStackFactory([XORFactory(key: 0x11), XORFactory(key: 0x22)])
        try withServer(backend, start: { config in
            try RingsideServer.startAsync(configuration: config, requiresAuthentication: false, layers: layers) { conn in
                for try await chunk in conn.inbound { try await conn.write(chunk) }
            }
        }) { server in
            let c = try TestClient(port: server.port)
            for (i, size) in [1, 5000, 100_000].enumerated() {
                let payload = randomBytes(size, seed: UInt64(90 + i))
                try c.send(xor(payload, 0x33))
                #expect(try xor(c.receive(exactly: size), 0x33) == payload)
            }
            c.shutdownWrite()
            #expect(try c.receiveUntilEOF() == [])
            #expect(eventually { server.stats.connectionsOpen == 0 })
        }
    }

    /// Writes of one handler call reach the layers as one batch (one TLS record per response, not one
    /// per write); a write larger than the batch goes through at once, after what was gathered.
    @Test(arguments: allBackends)
    func writesOfOneCallAreBatched(_ backend: BackendKind) throws {
        let log = LayerLog()
        try withServer(backend, start: { try RingsideServer.start(configuration: $0, layers: LayerStackFactory([CountingFactory(log: log)])) { ThreePieces() } }) { server in
            let c = try TestClient(port: server.port)
            try c.send(Array("hello".utf8))
            #expect(try c.receive(exactly: 7) == Array("<hello>".utf8))
            #expect(log.events == ["out 7"])
            // 5000 bytes (one receive on loopback): "<" gathered, flushed before the 5000 that go at
            // once, then ">" gathered and flushed at the end of the call. Order kept.
            let big = randomBytes(5000, seed: 5)
            try c.send(big)
            let got = try c.receive(exactly: big.count + 2)
            #expect(got == [UInt8(ascii: "<")] + big + [UInt8(ascii: ">")])
            #expect(Array(log.events.suffix(3)) == ["out 1", "out 5000", "out 1"])
        }
    }

    /// The wrapped handler opens only once every layer is established, and never when the layer
    /// refuses; the engine's counters come back to zero.
    @Test(arguments: allBackends)
    func innerOpensAfterEstablishment(_ backend: BackendKind) throws {
        let log = LayerLog()
        try withServer(backend, start: { try Self.start($0, [XORFactory(key: 3), GateFactory()], log: log) }) { server in
            let refused = try TestClient(port: server.port)
            try refused.send(xor(Array("no".utf8), 3))
            #expect(try refused.receiveUntilEOF() == [])
            refused.shutdownWrite()  // ends the server's lingering close at once
            #expect(eventually { server.stats.connectionsOpen == 0 })
            #expect(log.events.isEmpty)
            #expect(server.stats.tlsHandshakeFailures == 1)

            let c = try TestClient(port: server.port)
            try c.send(xor(Array("!ping".utf8), 3))
            #expect(try xor(c.receive(exactly: 5), 3) == Array("+ping".utf8))
            #expect(log.events == ["opened"])
        }
    }
}
