import Dispatch
import Glibc
import Testing
@testable import Ringside

/// Where a handler parks a `Connection` it should not have kept (the stale-handle test).
final class HandleBox: @unchecked Sendable {
    private let lock = PthreadMutex(())
    private var handle: Connection? = nil
    private var results: [String] = []
    func keep(_ c: Connection) { lock.withLock { _ in handle = c } }
    func take() -> Connection? { lock.withLock { _ in defer { handle = nil }; return handle } }
    func note(_ s: String) { lock.withLock { _ in results.append(s) } }
    var notes: [String] { lock.withLock { _ in results } }
}

/// The first connection keeps its handle and closes; the next one (same slot) tries to use the stale
/// handle, then greets and echoes.
struct StaleHandleProbe: ConnectionHandler {
    static var requiresAuthentication: Bool { false }
    let box: HandleBox
    var first = false
    mutating func opened(on connection: Connection) {
        if let stale = box.take() {
            box.note("same slot: \(stale.slot == connection.slot), generations \(stale.generation) -> \(connection.generation)")
            box.note("stale isOpen: \(stale.isOpen)")
            do { try stale.write(Array("STALE".utf8)); box.note("stale write: accepted") } catch { box.note("stale write: \(error)") }
            stale.close()
            stale.abort()
            stale.shutdownOutput()
            stale.pauseReading()
            do { try connection.write(Array("OK".utf8)) } catch { box.note("fresh write: \(error)") }
        } else {
            first = true
            box.keep(connection)
            connection.close()
        }
    }
    mutating func received(_ bytes: ReceivedBytes, on connection: Connection) {
        do { try connection.send(bytes) } catch { connection.abort() }
    }
}

/// Hands each received buffer back twice: the second is a copy that does not fit the tiny send pool.
struct DoubleSend: ConnectionHandler {
    static var requiresAuthentication: Bool { false }
    let box: HandleBox
    mutating func received(_ bytes: ReceivedBytes, on connection: Connection) {
        do { try connection.send(bytes) } catch { box.note("first: \(error)") }
        do { try connection.send(bytes); box.note("second: queued") } catch { box.note("second: \(error)") }
        connection.close()
        do { try connection.write([1]); box.note("after close: queued") } catch { box.note("after close: \(error)") }
    }
}

@Suite(.serialized) struct LifecycleTests {
    @Test(arguments: allBackends)
    func staleHandleCannotReachTheNextConnection(_ backend: BackendKind) throws {
        let box = HandleBox()
        try withServer(backend, handler: { StaleHandleProbe(box: box) }) { server in
            do {
                let a = try TestClient(port: server.port)
                #expect(try a.receiveUntilEOF() == [])
            }  // closed here: the server's lingering close ends
            #expect(eventually { server.stats.connectionsClosed == 1 })
            let b = try TestClient(port: server.port)
            #expect(try b.receive(exactly: 2) == Array("OK".utf8))
            try b.send(Array("ping".utf8))
            #expect(try b.receive(exactly: 4) == Array("ping".utf8))  // still open: the stale close did nothing
            b.shutdownWrite()
            #expect(try b.receiveUntilEOF() == [])
        }
        let notes = box.notes
        #expect(notes.contains("same slot: true, generations 0 -> 1"), "\(notes)")
        #expect(notes.contains("stale isOpen: false"), "\(notes)")
        #expect(notes.contains("stale write: closed"), "\(notes)")
        #expect(!notes.contains { $0.hasPrefix("fresh write") }, "\(notes)")
    }

    /// `Connection.send` of a buffer already handed back copies; a copy the pool cannot take is an error
    /// (it was silently dropped before), and so is a write after close.
    @Test(arguments: allBackends)
    func sendThatDoesNotFitIsAnError(_ backend: BackendKind) throws {
        let box = HandleBox()
        try withServer(backend, configure: { $0.sendBuffers = 1; $0.sendBufferSize = 4096 },
                       handler: { DoubleSend(box: box) }) { server in
            let c = try TestClient(port: server.port)
            let payload = randomBytes(12_000, seed: 5)
            try c.send(payload)
            let back = try c.receiveUntilEOF()
            #expect(back == Array(payload[0..<back.count]))  // a prefix of the first hand-back, nothing else
        }
        let notes = box.notes
        #expect(notes.contains("second: bufferPoolExhausted"), "\(notes)")
        #expect(notes.contains("after close: closed"), "\(notes)")
        #expect(!notes.contains { $0.hasPrefix("first:") }, "\(notes)")
    }

    @Test func engineBugErrnosAreNotResets() {
        #expect(EngineErrors.isEngineBug(EFAULT) && EngineErrors.isEngineBug(EBADF) && EngineErrors.isEngineBug(EINVAL))
        #expect(EngineErrors.isEngineBug(ENOTSOCK))
        for e in [ECONNRESET, EPIPE, ETIMEDOUT, ECONNREFUSED, EHOSTUNREACH, ENETUNREACH, ECONNABORTED] {
            #expect(!EngineErrors.isEngineBug(e), "\(Errno(rawValue: e))")
        }
        EngineErrors.trapInDebug.store(false, ordering: .relaxed)
        defer { EngineErrors.trapInDebug.store(true, ordering: .relaxed) }
        var c = ServerStats()
        let r = EngineErrors.reason(EBADF, op: "send", slot: 3, counters: &c, logger: .init(label: "test"))
        #expect(r == CloseReason.error(Errno(rawValue: EBADF)))
        #expect(c.engineErrors == 1)
        _ = EngineErrors.reason(ECONNRESET, op: "recv", slot: 3, counters: &c, logger: .init(label: "test"))
        #expect(c.engineErrors == 1)
    }

    @Test func featureMaskParsing() throws {
        #expect(try KernelFeatures(parsing: "recv-limit, defer-taskrun") == [.receiveLimit, .deferTaskrun])
        #expect(try KernelFeatures(parsing: "") == [])
        #expect(throws: ConfigurationError.self) { try KernelFeatures(parsing: "recv-limit,warp-drive") }
    }
}
