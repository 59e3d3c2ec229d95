import ArgumentParser
import CLiburing
import Foundation
import Ringside
import RingsideTLS

extension BackendKind: ExpressibleByArgument {}

/// Parses "10s", "500ms", "2m" or a plain number of seconds; shown as "10s", "500ms", "1.5s".
struct Seconds: ExpressibleByArgument, CustomStringConvertible {
    let value: Double
    var description: String {
        if value == 0 { return "0s" }
        guard value.isFinite, abs(value) < 1e15 else { return "\(value)s" }
        if abs(value) < 1, (value * 1000).rounded() == value * 1000 { return "\(Int(value * 1000))ms" }
        if value.rounded() == value { return "\(Int(value))s" }
        return "\(value)s"
    }
    /// `--help` shows the default as written ("10s"), not the struct.
    var defaultValueDescription: String { description }
    init?(argument: String) {
        let a = argument.lowercased()
        if a.hasSuffix("ms"), let v = Double(a.dropLast(2)) { value = v / 1000 }
        else if a.hasSuffix("s"), let v = Double(a.dropLast()) { value = v }
        else if a.hasSuffix("m"), let v = Double(a.dropLast()) { value = v * 60 }
        else if let v = Double(a) { value = v }
        else { return nil }
    }
}

extension TLSVersion: ExpressibleByArgument {
    /// "1.2" or "1.3" (or "TLSv1.2", "TLSv1.3").
    public init?(argument: String) {
        switch argument.lowercased() {
        case "1.2", "tlsv1.2": self = .tls12
        case "1.3", "tlsv1.3": self = .tls13
        default: return nil
        }
    }
}

/// `--tls` and its settings (echo, http; the handshake mode always speaks TLS).
struct TLSOptions: ParsableArguments {
    @Flag(help: "Speak TLS: every connection does a TLS 1.2/1.3 client handshake first, then the same load over the encrypted stream (closed and open loop).")
    var tls = false
    @Option(name: .customLong("tls-ca"), help: ArgumentHelp("Verify the server's certificate against these CA certificates (PEM). Without it nothing is verified, and the output says so.", valueName: "file"))
    var tlsCA: String?
    @Option(help: ArgumentHelp("Send this server name (SNI); with --tls-ca the certificate must match it (otherwise the target's IP address must).", valueName: "name"))
    var tlsServerName: String?
    @Option(help: ArgumentHelp("Pin the TLS version: 1.2 or 1.3 (default: either, as the server prefers).", valueName: "1.2|1.3"))
    var tlsVersion: TLSVersion?
    @Flag(inversion: .prefixedNo, help: "Resume sessions: a new connection presents the session ticket of an earlier one.")
    var tlsResume = true

    /// The client configuration for `host` (nil unless `force` or `--tls`).
    func configuration(host: String, alpn: [String], force: Bool = false) -> TLSClientConfiguration? {
        guard tls || force else { return nil }
        var c = TLSClientConfiguration(caFile: tlsCA, serverName: tlsServerName, host: host)
        c.version = tlsVersion
        c.resumption = tlsResume
        c.alpn = alpn
        return c
    }
}

/// Options every load mode shares.
struct CommonLoadOptions: ParsableArguments {
    @Option(help: "Target HOST:PORT (loopback only in this project's tests).") var target: String
    @Option(help: "Connections.") var connections = 50
    @Option(help: "Requests kept outstanding per connection (1: ping-pong).") var pipeline = 1
    @Option(help: "Measured duration (e.g. 10s); a hard stop.") var duration = Seconds(argument: "10s")!
    @Option(help: "Warm-up before measuring (excluded).") var warmup = Seconds(argument: "2s")!
    @Option(help: "Open loop: total requests per second (latency from intended send times).") var rate: Double?
    @Option(help: "A request outstanding this long counts as a timeout.") var timeout = Seconds(argument: "5s")!
    @Option(help: "Client backend (uring, epoll, auto: io_uring unless the kernel refuses it).") var backend: BackendKind = .auto
    @Option(help: "Pin the load generator to this CPU.") var cpu: Int?
    @Flag(help: "Open loop: run the pacer thread at real-time priority (SCHED_FIFO; needs CAP_SYS_NICE), so other work on its CPU cannot delay sends.")
    var realtime = false
    @Flag(help: "Print one JSON result instead of the table.") var json = false
    @OptionGroup(title: "TLS") var tls: TLSOptions

    func options(_ mode: LoadOptions.Mode) throws -> LoadOptions {
        let parts = target.split(separator: ":")
        guard parts.count == 2, let port = Int(parts[1]) else { throw ValidationError("--target must be HOST:PORT") }
        var o = LoadOptions()
        o.mode = mode
        o.host = String(parts[0]) == "localhost" ? "127.0.0.1" : String(parts[0])
        o.port = port
        o.connections = connections
        o.pipeline = max(1, pipeline)
        o.duration = duration.value
        o.warmup = warmup.value
        o.rate = rate
        o.realtime = realtime
        o.timeout = timeout.value
        o.backend = backend
        o.progress = !json
        o.tls = tls.configuration(host: o.host, alpn: mode == .http ? ["http/1.1"] : [])
        return o
    }

    func pin() {
        if let cpu, rs_pin_to_cpu(Int32(cpu)) != 0 { printError("ringload: cannot pin to CPU \(cpu)\n") }
    }
}

struct RingLoad: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ringload",
        abstract: "Ringside's load generator: echo and HTTP/1.1 load (plain or TLS) through the engine's io_uring client path, and TLS handshake rates.",
        subcommands: [Echo.self, HTTP.self, Handshake.self, Compare.self, Attack.self]
    )
}

/// Prints a result as the table or JSON; exits 1 when any response was wrong.
func report(_ r: LoadResult, json: Bool) throws {
    if json {
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        print(String(decoding: try enc.encode(r), as: UTF8.self))
    } else {
        print(formatTable([r.tableRow(name: "\(r.mode) \(r.target)")]))
        if let b = r.bytesPerResponse {
            print(String(format: r.tls == nil ? "bytes per response (on the wire): %.1f" : "bytes per response (decrypted, head included): %.1f", b))
        }
        if let t = r.tls {
            print("TLS: \(t.handshakes) handshakes (\(t.resumed) resumed, resumption \(t.resumption ? "on" : "off")), \(t.failures) failed; server certificate \(t.verified ? "verified" : "NOT verified")")
        }
        for w in r.warnings { print("warning: \(w)") }
    }
    if r.errors.total > 0 {
        printError("ringload: \(r.errors.total) wrong or failed responses: \(r.errors)\n")
        throw ExitCode(1)
    }
}

struct Echo: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Echo load: ping-pong or pipelined messages, every byte verified (over TLS with --tls).")
    @OptionGroup var common: CommonLoadOptions
    @Option(help: "Message size in bytes.") var size = 64

    func run() throws {
        common.pin()
        var o = try common.options(.echo)
        o.size = max(1, size)
        try report(try runLoad(o), json: common.json)
    }
}

struct HTTP: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "HTTP/1.1 keep-alive GET load; status and body length of every response checked (HTTPS with --tls).")
    @OptionGroup var common: CommonLoadOptions
    @Option(help: "Request path.") var path = "/plaintext"
    @Option(help: "Expected status.") var expectStatus = 200
    @Option(help: "Send this Accept-Encoding (e.g. gzip, zstd) to ask for compressed responses; bytes per response are printed.")
    var acceptEncoding: String?

    func run() throws {
        common.pin()
        var o = try common.options(.http)
        o.path = path
        o.expectStatus = expectStatus
        o.acceptEncoding = acceptEncoding
        try report(try runLoad(o), json: common.json)
    }
}

RingLoad.main()
