@testable import Ringside
import RingsideProtocols
import Testing

/// Drives the rare paths on purpose: tiny rings, tiny pools, injected setup failures.
@Suite(.serialized) struct RarePathTests {
    /// Opens `count` clients, has each send `size` bytes, then reads every echo back and compares.
    private func echoBurst(port: Int, clients count: Int, size: Int) throws {
        let clients = try (0..<count).map { _ in try TestClient(port: port) }
        let payloads = (0..<count).map { randomBytes(size, seed: UInt64($0 + 1)) }
        for (c, p) in zip(clients, payloads) { try c.send(p) }
        for (c, p) in zip(clients, payloads) { #expect(try c.receive(exactly: size) == p) }
    }

    @Test(arguments: allBackends) func submissionQueueOfTwoEntries(_ backend: BackendKind) throws {
        try withEchoServer(backend, configure: { $0.ringEntries = 2 }) { server in
            try echoBurst(port: server.port, clients: 50, size: 2000)
            if backend == .uring {
                let s = server.stats
                #expect(s.sqFullEvents > 0, "a 2-entry SQ must fill up: \(s)")
            }
        }
    }

    @Test(arguments: allBackends) func providedBufferRingOfTwo(_ backend: BackendKind) throws {
        try withEchoServer(backend, configure: { $0.receiveBuffers = 2; $0.bufferSize = 4096 }) { server in
            try echoBurst(port: server.port, clients: 40, size: 48 * 1024)
            let s = server.stats
            #expect(s.noBufferEvents > 0, "2 receive buffers for 40 busy clients must run dry: \(s)")
            #expect(s.recvRearms > 0, "receives must be re-armed after running dry: \(s)")
            #expect(s.peakBuffersInUse <= 2 + 64)
        }
    }

    @Test func completionQueueOverflow() throws {
        try withEchoServer(.uring, configure: { $0.ringEntries = 2; $0.completionEntries = 2 }) { server in
            try echoBurst(port: server.port, clients: 64, size: 64 * 1024)
            let s = server.stats
            #expect(s.cqOverflowEvents > 0, "a 2-entry CQ must overflow under 64 busy multishot receives: \(s)")
            #expect(s.cqDropped == 0, "with IORING_FEAT_NODROP nothing may be lost")
        }
    }

    @Test(arguments: [Errno.noSuchSyscall, .notPermitted, .noMemory])
    func autoFallsBackToEpollWhenRingSetupFails(_ errno: Errno) throws {
        var config = ServerConfiguration(host: "127.0.0.1", port: 0, backend: .auto)
        config.injectRingSetupFailure = errno
        let server = try RingsideServer.start(configuration: config) { EchoHandler() }
        defer { try? server.shutdown() }
        #expect(server.backend == .epoll)
        let c = try TestClient(port: server.port)
        try c.send([1, 2, 3])
        #expect(try c.receive(exactly: 3) == [1, 2, 3])
    }

    @Test func uringBackendReportsWhyRingSetupFailed() throws {
        let cases: [(Errno, String)] = [
            (.noSuchSyscall, "seccomp"), (.notPermitted, "io_uring_disabled"), (.noMemory, "RLIMIT_MEMLOCK"),
        ]
        for (errno, phrase) in cases {
            var config = ServerConfiguration(host: "127.0.0.1", port: 0, backend: .uring)
            config.injectRingSetupFailure = errno
            do {
                let s = try RingsideServer.start(configuration: config) { EchoHandler() }
                try s.shutdown()
                Issue.record("uring backend started despite injected \(errno)")
            } catch let e as RingSetupError {
                #expect(e.errno == errno)
                #expect("\(e)".contains(phrase), "message should explain \(errno): \(e)")
            }
        }
    }

    @Test func userDataPacksKindGenerationAndSlot() {
        let u = UserData(.send, slot: 12345, generation: 0xABCDEF)
        #expect(u.kind == .send && u.slot == 12345 && u.generation == 0xABCDEF)
        #expect(u.matches(generation: 0xABCDEF) && !u.matches(generation: 0xABCDEE))
        // Generations wrap at 24 bits: a slot reused 2^24 times later still compares by the low bits.
        #expect(UserData(.recv, slot: 0, generation: 0x1000001).matches(generation: 1))
        #expect(MemoryLayout<UserData>.size == 8)
    }
}
