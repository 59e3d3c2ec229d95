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
                      .directDescriptors, .socketCommands, .registeredBuffers])
    func echoUnderEachMask(_ mask: KernelFeatures) throws {
        try withServer(.uring, configure: { $0.disabledFeatures = mask }, handler: { EchoHandler() }) { server in
            let payloads = (0..<64).map { randomBytes(1 + $0 * 4099, seed: UInt64($0) + 77) }
            let report = try MultiClient(port: server.port, payloads: payloads).run()
            #expect(report.connections == 64)
            #expect(server.stats.engineErrors == 0)
        }
    }
}
