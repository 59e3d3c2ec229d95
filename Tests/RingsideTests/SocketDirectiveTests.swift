import Foundation
import Glibc
import Ringside
import Testing

// Socket directives (Layers/SocketDirectives.swift): socket options and control-message sends kept in
// order with a layered connection's queued bytes, the engine half of kernel TLS. On plain TCP a
// SOL_TLS control message is ignored by the kernel, so the client must read exactly the data and the
// control-message payloads, in the order they were queued, whatever the chunk and send boundaries.

/// What a `DirectiveLayer` saw: whether ordered operations were offered, and what failed.
final class DirectiveLog: Sendable {
    private let state = PthreadMutex<(supported: [Bool], errors: [WriteError], reasons: [CloseReason])>(([], [], []))
    var supported: [Bool] { state.withLock { $0.supported } }
    var errors: [WriteError] { state.withLock { $0.errors } }
    var reasons: [CloseReason] { state.withLock { $0.reasons } }
    func note(_ s: Bool) { state.withLock { $0.supported.append(s) } }
    func note(_ e: WriteError) { state.withLock { $0.errors.append(e) } }
    func note(_ r: CloseReason) { state.withLock { $0.reasons.append(r) } }
}

/// One step of a directive script.
enum DirectiveStep: Sendable {
    case data([UInt8])
    case option(level: Int32, name: Int32, value: Int32)
    case control([UInt8])
}

/// Runs `script` when the first byte arrives (a pass-through layer otherwise).
final class DirectiveLayer: StreamLayer {
    let script: [DirectiveStep]
    let log: DirectiveLog
    private var ran = false
    init(script: [DirectiveStep], log: DirectiveLog) { self.script = script; self.log = log }

    func inbound(_ bytes: UnsafeRawBufferPointer, _ io: LayerIO, deliver: (UnsafeRawBufferPointer) -> Void) {
        guard !ran else { return }
        ran = true
        log.note(io.supportsOrderedSocketOperations)
        do throws(WriteError) {
            for step in script {
                switch step {
                case .data(let d):
                    let r: Result<Void, WriteError> = d.withUnsafeBytes { p in Result { () throws(WriteError) in try io.send(p) } }
                    try r.get()
                case .option(let level, let name, var value):
                    let r: Result<Void, WriteError> = withUnsafeBytes(of: &value) { p in
                        Result { () throws(WriteError) in try io.setSocketOption(level: level, name: name, value: p) }
                    }
                    try r.get()
                case .control(let payload):
                    var type: UInt8 = 23
                    let r: Result<Void, WriteError> = withUnsafeBytes(of: &type) { t in
                        payload.withUnsafeBytes { p in
                            Result { () throws(WriteError) in try io.sendWithControlMessage(level: 282, type: 1, data: t, p) }
                        }
                    }
                    try r.get()
                }
            }
        } catch {
            log.note(error)
        }
    }

    func outbound(_ bytes: UnsafeRawBufferPointer, _ io: LayerIO) throws(WriteError) { try io.send(bytes) }
}

struct DirectiveFactory: StreamLayerFactory {
    let script: [DirectiveStep]
    let log: DirectiveLog
    func makeLayer() -> any StreamLayer { DirectiveLayer(script: script, log: log) }
}

/// Records the close reason of the wrapped handler (which writes nothing).
struct ReasonRecorder: ConnectionHandler {
    let log: DirectiveLog
    mutating func received(_ bytes: ReceivedBytes, on connection: Connection) {}
    mutating func closed(reason: CloseReason) { log.note(reason) }
}

@Suite struct SocketDirectiveTests {
    /// The configurations with ordered socket operations: io_uring through socket commands (direct
    /// descriptors), io_uring with ordinary descriptors (setsockopt directly), epoll.
    static let supported: [(BackendKind, KernelFeatures)] = [(.uring, []), (.uring, [.directDescriptors]), (.epoll, [])]

    private func start(_ backend: BackendKind, _ disabled: KernelFeatures, _ script: [DirectiveStep], _ log: DirectiveLog,
                       _ body: (RunningServer) throws -> Void) throws {
        try withServer(backend, configure: { $0.disabledFeatures = disabled; $0.lingerTimeout = .milliseconds(200) }, start: {
            try RingsideServer.start(configuration: $0, layers: LayerStackFactory([DirectiveFactory(script: script, log: log)])) { ReasonRecorder(log: log) }
        }, body)
    }

    @Test(arguments: supported)
    func directivesKeepTheirPlaceAmongTheBytes(_ backend: BackendKind, _ disabled: KernelFeatures) throws {
        // Pieces that end mid-chunk and span several chunks and sends, with options and control
        // messages between them, and two control messages back to back.
        let a = randomBytes(100_000, seed: 71), b = randomBytes(3_000, seed: 72), c = randomBytes(5, seed: 73)
        let d = randomBytes(20_000, seed: 74), e = randomBytes(7, seed: 75), f = randomBytes(40_000, seed: 76)
        let script: [DirectiveStep] = [
            .data(a), .option(level: 6 /* IPPROTO_TCP */, name: TCP_NODELAY, value: 1), .control(b), .control(c),
            .data(d), .option(level: SOL_SOCKET, name: SO_KEEPALIVE, value: 1), .data(e), .control(f),
        ]
        let log = DirectiveLog()
        try start(backend, disabled, script, log) { server in
            let client = try TestClient(port: server.port)
            try client.send([0x78])
            let want = a + b + c + d + e + f
            let got = try client.receive(exactly: want.count)
            #expect(got.count == want.count)
            #expect(got == want, "first difference at \((0..<min(got.count, want.count)).first { got[$0] != want[$0] } ?? -1)")
            #expect(log.supported == [true])
            #expect(log.errors.isEmpty)
            #expect(eventually { server.stats.bytesOut == want.count }, "bytesOut \(server.stats.bytesOut)")
        }
        #expect(log.reasons.count == 1)
    }

    @Test(arguments: supported)
    func aFailedOptionClosesTheConnectionWithItsErrno(_ backend: BackendKind, _ disabled: KernelFeatures) throws {
        let log = DirectiveLog()
        let script: [DirectiveStep] = [.data(randomBytes(10_000, seed: 77)), .option(level: 6 /* IPPROTO_TCP */, name: 9999, value: 1),
                                       .data(randomBytes(10, seed: 78))]
        try start(backend, disabled, script, log) { server in
            let client = try TestClient(port: server.port)
            try client.send([0x78])
            #expect(eventually { log.reasons.count == 1 })
            #expect(log.reasons == [.error(Errno(rawValue: ENOPROTOOPT))], "\(log.reasons)")
            #expect(server.stats.engineErrors == 0)
            #expect(log.errors.isEmpty)
        }
    }

    @Test(arguments: [(BackendKind.uring, KernelFeatures.socketCommands), (.uring, .kernelTLS), (.epoll, .kernelTLS)])
    func unsupportedOrMaskedRefusesOrderedOperations(_ backend: BackendKind, _ disabled: KernelFeatures) throws {
        let log = DirectiveLog()
        let script: [DirectiveStep] = [.data([1, 2, 3]), .option(level: 6 /* IPPROTO_TCP */, name: TCP_NODELAY, value: 1), .data([4])]
        try start(backend, disabled, script, log) { server in
            let client = try TestClient(port: server.port)
            try client.send([0x78])
            #expect(try client.receive(exactly: 3) == [1, 2, 3])
            #expect(eventually { log.errors.count == 1 })
            #expect(log.supported == [false])
            #expect(log.errors == [.closed])
        }
    }
}
