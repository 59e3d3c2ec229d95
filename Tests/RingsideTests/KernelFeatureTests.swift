import CLiburing
import Foundation
import Glibc
import Testing
@testable import Ringside
import RingsideProtocols

/// Kernel features masked as if the kernel lacked them, so each fallback runs on a new kernel.
@Suite(.serialized) struct KernelFeatureTests {
    /// Issue 11's bug, reproduced on a new kernel: with the receive limit refused as a kernel before 6.16
    /// refuses it (EINVAL), 500 connections opened at once as the very first traffic all echo, byte for
    /// byte, with no reset. (Before the start-up probe, the first EINVAL switched the limit off mid-burst
    /// and every other receive armed with it was reset.)
    @Test(arguments: [KernelFeatures.receiveLimit, []])
    func burstAsFirstTrafficWithTheReceiveLimitRefused(_ mask: KernelFeatures) throws {
        try withServer(.uring, configure: { $0.disabledFeatures = mask }, handler: { EchoHandler() }) { server in
            let payloads = (0..<500).map { randomBytes(2048 + $0, seed: UInt64($0)) }
            var options = MultiClient.Options()
            options.connectAllFirst = true
            options.timeout = 20
            let report = try MultiClient(port: server.port, payloads: payloads, options: options).run()
            #expect(report.connections == 500)
            #expect(server.stats.engineErrors == 0)
        }
    }

    /// The conformance echo under every mask: each fallback path serves byte-exact.
    @Test(arguments: [KernelFeatures.deferTaskrun, .singleIssuer, .coopTaskrun, .ringSetupFlags, .receiveLimit,
                      .directDescriptors, .socketCommands, .registeredBuffers, .receiveBundles])
    func echoUnderEachMask(_ mask: KernelFeatures) throws {
        try withServer(.uring, configure: { $0.disabledFeatures = mask }, handler: { EchoHandler() }) { server in
            let payloads = (0..<64).map { randomBytes(1 + $0 * 4099, seed: UInt64($0) + 77) }
            let report = try MultiClient(port: server.port, payloads: payloads).run()
            #expect(report.connections == 64)
            #expect(server.stats.engineErrors == 0)
        }
    }

    /// Receive bundles: 1 MiB per connection arrives in loopback segments of several receive buffers,
    /// which one completion carries as a bundle (6.10+); the engine names every buffer after the first
    /// from the ring's order, so a wrong one shows as corrupt bytes. Masked, each buffer is its own
    /// completion, with the same bytes. Bundles ride only with the per-arming receive limit (6.16+): with
    /// it masked (as kernels before 6.16 refuse it) no receive carries a bundle, because an unbounded
    /// bundle can take the whole ring for a client that then stops reading.
    @Test(arguments: [KernelFeatures.receiveBundles, [], .receiveLimit])
    func receiveBundlesCarrySeveralBuffersInOrder(_ mask: KernelFeatures) throws {
        try withServer(.uring, configure: { $0.disabledFeatures = mask }, handler: { EchoHandler() }) { server in
            let payloads = (0..<8).map { randomBytes((1 << 20) + $0 * 4097, seed: UInt64($0) + 901) }
            let report = try MultiClient(port: server.port, payloads: payloads, options: .init(timeout: 30)).run()
            #expect(report.connections == 8)
            #expect(report.bytesReceived == payloads.reduce(0) { $0 + $1.count })
            #expect(eventually { server.stats.connectionsOpen == 0 })
            let s = server.stats
            #expect(s.engineErrors == 0)
            #expect(s.buffersInUse == 0, "every bundled buffer went back to the ring: \(s.buffersInUse) out")
            if mask.contains(.receiveBundles) || mask.contains(.receiveLimit) {
                #expect(s.bundledReceives == 0, "\(s)")
            } else if kernelOffersBundles && (s.receiveBurstLimitEnds > 0 || s.bulkInputConnections > 0) {
                // The limit is in effect (an arming ended at it, or a connection was marked bulk, which
                // only happens with the limit): each upload is first seen as bulk, then bundled.
                #expect(s.bundledReceives > 0, "1 MiB uploads should arrive in bundles: \(s)")
                #expect(s.bulkInputConnections > 0, "\(s)")
                #expect(s.bundledBuffers >= 2 * s.bundledReceives)
            } else if kernelOffersBundles {
                // Bundles without the receive limit (6.10-6.15): off.
                #expect(s.bundledReceives == 0, "bundles must not run without the receive limit: \(s)")
            } else {
                print("SKIP receive-bundle count: this kernel has no IORING_FEAT_RECVSEND_BUNDLE (6.10+); bytes checked only")
            }
        }
    }

    /// Message-sized input never asks for bundles where the byte limit lets the engine choose per
    /// connection: 64-byte ping-pong fills no buffer, so no connection is marked bulk and no receive
    /// carries a bundle (a bundle's buffer-ring peek would be a cost per message).
    @Test func messageSizedInputDoesNotAskForBundles() throws {
        try withServer(.uring, handler: { EchoHandler() }) { server in
            let payloads = (0..<16).map { randomBytes(64, seed: UInt64($0) + 5150) }
            let report = try MultiClient(port: server.port, payloads: payloads).run()
            #expect(report.connections == 16)
            #expect(eventually { server.stats.connectionsOpen == 0 })
            let s = server.stats
            #expect(s.bulkInputConnections == 0, "\(s)")
            #expect(s.bundledReceives == 0, "\(s)")
        }
    }

    /// The send wait: at one connection a request-response costs one kernel entry, not two. The wait
    /// that submits the answer asks for two completions (the answer's send, which completes during the
    /// submission, and the next request), so the loop sleeps on past the send instead of entering again
    /// to sleep. Turned off (`sendCompletionWait` zero), no wait asks for two and every send's
    /// completion ends a wait of its own. Bytes are checked either way.
    @Test(arguments: [true, false])
    func sendWaitTakesOneEntryPerRoundTrip(_ on: Bool) throws {
        let rounds = 2000
        try withServer(.uring, configure: { if !on { $0.sendCompletionWait = .zero } }, handler: { EchoHandler() }) { server in
            do {  // the client closes at the end of this scope
                let client = try TestClient(port: server.port)
                var rng = SplitMix(seed: 7_412)
                for k in 0..<rounds {
                    let message = (0..<64).map { _ in UInt8.random(in: 0...255, using: &rng) }
                    try client.send(message)
                    let echoed = try client.receive(exactly: 64)
                    guard echoed == message else { Issue.record("round \(k): echo differs"); return }
                }
            }
            #expect(eventually { server.stats.connectionsOpen == 0 })
            let s = server.stats
            let perRound = Double(s.loopWaits) / Double(rounds)
            print(String(format: "send wait %@: %d waits for %d round trips (%.2f each), %d send waits",
                         on ? "on" : "off", s.loopWaits, rounds, perRound, s.sendWaits))
            if on {
                // Nearly every answer goes out in a send wait; a round trip whose next request comes
                // after the wait's bound (1 ms; the bound's own timeout completing) costs a second entry.
                #expect(s.sendWaits >= rounds * 9 / 10, "\(s)")
                #expect(perRound < 1.4, "\(perRound) waits per round trip")
            } else {
                #expect(s.sendWaits == 0, "\(s)")
                #expect(perRound >= 1.8, "every send's completion ends a wait: \(perRound) waits per round trip")
            }
        }
    }

    private var kernelOffersBundles: Bool {
        guard let ring = try? Ring(entries: 8, completionEntries: 16, inject: nil, disabled: []) else { return false }
        return ring.features & UInt32(RS_IORING_FEAT_RECVSEND_BUNDLE) != 0
    }

    /// A host without liburing (the engine opens liburing.so.2 with dlopen, so the binary starts without
    /// it): `auto` serves on epoll and says why, `uring` fails with the reason. RINGSIDE_TEST_NO_LIBURING
    /// makes the loader refuse as if the library were absent; scripts/release-smoke.sh hides the real
    /// file in a mount namespace for the same check.
    @Test func withoutLiburingAutoServesOnEpoll() throws {
        var env = ProcessInfo.processInfo.environment
        env["RINGSIDE_TEST_NO_LIBURING"] = "1"
        // `--backend uring`: exits non-zero with the reason.
        let uring = Process()
        uring.executableURL = builtBinary("ringside")
        uring.arguments = ["serve", "--protocol", "echo", "--backend", "uring", "--port", "0"]
        uring.environment = env
        let uringErr = Pipe()
        uring.standardError = uringErr
        uring.standardOutput = FileHandle.nullDevice
        try uring.run()
        let uringText = String(decoding: uringErr.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        uring.waitUntilExit()
        #expect(uring.terminationStatus != 0)
        #expect(uringText.contains("liburing could not be loaded"))
        // `--backend auto`: listens on epoll, logs the reason, serves, stops cleanly.
        let auto = Process()
        auto.executableURL = builtBinary("ringside")
        auto.arguments = ["serve", "--protocol", "echo", "--backend", "auto", "--port", "0"]
        auto.environment = env
        let out = Pipe(), err = Pipe()
        auto.standardOutput = out
        auto.standardError = err
        try auto.run()
        var line = ""
        while !line.hasSuffix("\n") {
            let d = out.fileHandleForReading.availableData
            if d.isEmpty { break }
            line += String(decoding: d, as: UTF8.self)
        }
        #expect(line.contains("backend=epoll"))
        if let portText = line.split(separator: " ").first(where: { $0.contains("127.0.0.1:") })?.split(separator: ":").last,
           let port = Int(portText.trimmingCharacters(in: .whitespacesAndNewlines)) {
            let report = try MultiClient(port: port, payloads: [randomBytes(5000, seed: 9)]).run()
            #expect(report.connections == 1)
        } else {
            Issue.record("no listening line: \(line)")
        }
        kill(auto.processIdentifier, SIGINT)
        let errText = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        auto.waitUntilExit()
        #expect(auto.terminationStatus == 0)
        #expect(errText.contains("liburing could not be loaded"))
    }
}
