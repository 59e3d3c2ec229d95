import Foundation
import Glibc
import Ringside
import RingsideHTTP
import Testing

/// Runs the `ringside` binary built next to the tests; returns its exit status and stderr.
private func ringside(_ args: [String]) throws -> (status: Int32, stderr: String) {
    let exe = builtBinary("ringside")
    let p = Process()
    p.executableURL = exe
    p.arguments = args
    let err = Pipe()
    p.standardError = err
    p.standardOutput = FileHandle.nullDevice
    try p.run()
    let data = err.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return (p.terminationReason == .exit ? p.terminationStatus : -p.terminationStatus, String(decoding: data, as: UTF8.self))
}

private func rejected(_ mutate: (inout ServerConfiguration) -> Void) -> String? {
    var c = ServerConfiguration()
    mutate(&c)
    do { try c.validate() } catch { return error.field }
    return nil
}

@Suite(.serialized) struct ConfigValidationTests {
    @Test func defaultsAreValid() throws {
        try ServerConfiguration().validate()
        try HTTPServerConfiguration().validate()
    }

    @Test func everyFieldIsCheckedAndNamed() {
        let cases: [(String, (inout ServerConfiguration) -> Void)] = [
            ("host", { $0.host = "localhost" }),
            ("port", { $0.port = 70000 }),
            ("port", { $0.port = -1 }),
            ("backlog", { $0.backlog = -1 }),
            ("maxConnections", { $0.maxConnections = 0 }),
            ("maxConnections", { $0.maxConnections = Int.max }),
            ("bufferSize", { $0.bufferSize = 0 }),
            ("bufferSize", { $0.bufferSize = Int(Int32.max) + 1 }),
            ("receiveBuffers", { $0.receiveBuffers = 100 }),
            ("receiveBuffers", { $0.receiveBuffers = 0 }),
            ("receiveBuffers", { $0.receiveBuffers = 65536 }),
            ("sendBufferSize", { $0.sendBufferSize = -4096 }),
            ("sendBuffers", { $0.sendBuffers = 0 }),
            ("sendBuffers", { $0.sendBufferSize = 1 << 30; $0.sendBuffers = 1 << 20 }),
            ("highWatermark", { $0.highWatermark = 0 }),
            ("lowWatermark", { $0.lowWatermark = $0.highWatermark + 1 }),
            ("lowWatermark", { $0.lowWatermark = -1 }),
            ("ringEntries", { $0.ringEntries = 0 }),
            ("ringEntries", { $0.ringEntries = 65536 }),
            ("completionEntries", { $0.completionEntries = 16 }),
            ("completionEntries", { $0.completionEntries = 1 << 20 }),
            ("drainTimeout", { $0.drainTimeout = .seconds(-1) }),
            ("authenticationTimeout", { $0.authenticationTimeout = .seconds(Int64.max) }),
            ("idleTimeout", { $0.idleTimeout = .seconds(Int64.max) }),
            ("idleTimeout", { $0.idleTimeout = .milliseconds(-5) }),
            ("writeStallTimeout", { $0.writeStallTimeout = .seconds(1e12) }),
            ("lingerTimeout", { $0.lingerTimeout = .seconds(-2) }),
            ("maxConnectionsPerAddress", { $0.maxConnectionsPerAddress = 0 }),
            ("keepAlive.idle", { $0.keepAlive = TCPKeepAlive(idle: .seconds(40000)) }),
            ("keepAlive.idle", { $0.keepAlive = TCPKeepAlive(idle: .milliseconds(10)) }),
            ("keepAlive.interval", { $0.keepAlive = TCPKeepAlive(interval: .zero) }),
            ("keepAlive.count", { $0.keepAlive = TCPKeepAlive(count: 0) }),
            ("keepAlive.count", { $0.keepAlive = TCPKeepAlive(count: 128) }),
            ("receiveBurstLimit", { $0.receiveBurstLimit = -1 }),
            ("connect.host", { $0.connect = OutboundConnections(host: "example.com", port: 80, count: 1) }),
            ("connect.port", { $0.connect = OutboundConnections(host: "127.0.0.1", port: 0, count: 1) }),
            ("connect.count", { $0.connect = OutboundConnections(host: "127.0.0.1", port: 80, count: -1) }),
            ("threads", { $0.threads = 0 }),
            ("threads", { $0.threads = 1 << 20 }),
            ("cpuAffinity", { $0.cpuAffinity = [] }),
            ("cpuAffinity", { $0.cpuAffinity = [0, -1] }),
            ("sendCompletionWait", { $0.sendCompletionWait = .milliseconds(11) }),
            ("sendCompletionWait", { $0.sendCompletionWait = .microseconds(-1) }),
            ("completionBatchWait", { $0.completionBatchWait = .milliseconds(11) }),
        ]
        for (field, mutate) in cases {
            #expect(rejected(mutate) == field)
        }
        // Boundaries that are valid.
        #expect(rejected { $0.port = 65535; $0.receiveBuffers = 32768; $0.ringEntries = 32768 } == nil)
        #expect(rejected { $0.idleTimeout = .zero; $0.lingerTimeout = nil; $0.keepAlive = nil } == nil)
        #expect(rejected { $0.idleTimeout = ServerConfiguration.maximumDuration } == nil)
        #expect(rejected { $0.sendCompletionWait = .zero } == nil)
        #expect(rejected { $0.sendCompletionWait = .milliseconds(10) } == nil)
    }

    @Test func startThrowsTheFieldInsteadOfTrapping() {
        var c = ServerConfiguration(host: "127.0.0.1", port: 70000, backend: .epoll)
        #expect(throws: ConfigurationError(field: "port", problem: "70000 is outside 0...65535")) {
            _ = try RingsideServer.start(configuration: c) { NoOp() }
        }
        c.port = 0
        c.receiveBuffers = 100
        #expect(throws: ConfigurationError.self) { _ = try RingsideServer.start(configuration: c) { NoOp() } }
    }

    @Test func httpFieldsAreCheckedAndNamed() {
        let cases: [(String, (inout HTTPServerConfiguration) -> Void)] = [
            ("limits.maxRequestLine", { $0.limits.maxRequestLine = 0 }),
            ("limits.maxHeaderBytes", { $0.limits.maxHeaderBytes = 10 }),
            ("limits.maxHeaderCount", { $0.limits.maxHeaderCount = 0 }),
            ("limits.maxBodyBytes", { $0.limits.maxBodyBytes = -1 }),
            ("limits.maxChunkLine", { $0.limits.maxChunkLine = 0 }),
            ("spoolThreshold", { $0.spoolThreshold = -1 }),
            ("headerTimeout", { $0.headerTimeout = .zero }),
            ("headerTimeout", { $0.headerTimeout = .seconds(Int64.max) }),
            ("spoolDirectory", { $0.spoolDirectory = "/nonexistent-ringside-spool" }),
            ("spoolDirectory", { $0.spoolDirectory = "/etc/hostname" }),
        ]
        for (field, mutate) in cases {
            var c = HTTPServerConfiguration()
            mutate(&c)
            do { try c.validate(); Issue.record("\(field): accepted") } catch { #expect(error.field == field) }
        }
    }

    /// The CLI: exit status 2 and one line on stderr for any bad value, never a trap.
    @Test func cliRejectsBadValuesWithExitTwoAndOneLine() throws {
        let cases: [([String], String)] = [
            (["serve", "--port", "70000"], "--port"),
            (["serve", "--receive-buffers", "100"], "--receive-buffers"),
            (["serve", "--idle-timeout", "1e300"], "--idle-timeout"),
            (["serve", "--auth-timeout", "nan"], "--auth-timeout"),
            (["serve", "--write-stall-timeout=-1"], "--write-stall-timeout"),
            (["serve", "--protocol", "http", "--header-timeout", "inf"], "--header-timeout"),
            (["serve", "--port=-1"], "--port"),
            (["serve", "--max-connections", "0"], "--max-connections"),
            (["serve", "--send-buffers=-5"], "--send-buffers"),
            (["serve", "--buffer-size", "0"], "--buffer-size"),
            (["serve", "--ring-entries", "0"], "--ring-entries"),
            (["serve", "--ring-entries", "99999999999"], "--ring-entries"),
            (["serve", "--threads", "0"], "--threads"),
            (["serve", "--max-per-address=-3"], "--max-per-address"),
            (["serve", "--protocol", "http", "--spool-threshold=-1"], "--spool-threshold"),
            (["serve", "--protocol", "http", "--spool-directory", "/nonexistent-ringside-spool"], "--spool-directory"),
            (["serve", "--log-level", "loud"], "--log-level"),
            (["serve", "--port", "abc"], "--port"),
            (["serve", "--proxy-protocol", "--trusted-proxies", "10.0.0.0/33"], "--trusted-proxies"),
            (["serve", "--proxy-protocol", "--trusted-proxies", "127.0.0.1,example.com"], "--trusted-proxies"),
            (["serve", "--proxy-protocol", "--proxy-header-timeout", "0"], "--proxy-header-timeout"),
            (["serve", "--shutdown-delay", "soon"], "--shutdown-delay"),
            (["serve", "--shutdown-delay=-1s"], "--shutdown-delay"),
        ]
        for (args, flag) in cases {
            let (status, err) = try ringside(args)
            #expect(status == 2, "\(args): exit \(status), \(err)")
            let lines = err.split(separator: "\n")
            #expect(lines.count == 1 && err.contains(flag), "\(args): \(err)")
        }
    }
}

private struct NoOp: ConnectionHandler {
    mutating func received(_ bytes: ReceivedBytes, on connection: Connection) {}
}
