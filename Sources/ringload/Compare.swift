import ArgumentParser
import CLiburing
import Foundation
import Glibc
import Ringside

/// One workload of a comparison.
struct Scenario: Codable, Hashable, Sendable, CustomStringConvertible {
    var mode: String        // echo, http, idle
    var size: Int
    var connections: Int
    var pipeline: Int
    /// Open loop: total requests per second (nil: closed loop).
    var rate: Double?

    /// Parses "echo,64,50,1", "http,0,50,1" or "idle,0,10000,0", with an optional fifth field, the
    /// open-loop rate ("echo,64,50,1,50000").
    init?(_ text: String) {
        let p = text.split(separator: ",").map(String.init)
        guard p.count == 4 || p.count == 5, ["echo", "http", "idle"].contains(p[0]),
              let s = Int(p[1]), let c = Int(p[2]), let d = Int(p[3]) else { return nil }
        mode = p[0]; size = s; connections = c; pipeline = max(1, d)
        if p.count == 5 {
            guard let r = Double(p[4]), r > 0, mode != "idle" else { return nil }
            rate = r
        }
    }

    var description: String {
        let at = rate.map { String(format: " @%.0f/s", $0) } ?? ""
        switch mode {
        case "idle": return "idle \(connections) conns"
        case "http": return "http \(connections)c" + (pipeline > 1 ? " p\(pipeline)" : "") + at
        default: return "echo \(size)B \(connections)c" + (pipeline > 1 ? " p\(pipeline)" : "") + at
        }
    }
}

/// One measured run of one server on one scenario.
struct CompareRun: Codable, Sendable {
    var scenario: Scenario
    var server: String
    var rep: Int
    var load: LoadResult?
    var serverCPUSeconds: Double
    var serverCPUMicrosPerMessage: Double
    var serverCPUPercent: Double
    var peakRSSKiB: Int
    var idleRSSKiBPerConnection: Double?
    /// Server RSS before the idle connections were opened (preallocated slabs live here).
    var idleBaselineRSSKiB: Int?
    var exitStatus: Int32
    var error: String?
}

/// Medians of one server on one scenario.
struct CompareSummary: Codable, Sendable {
    var scenario: Scenario
    var server: String
    var cleanRuns: Int
    var runs: Int
    var messagesPerSecond: Double
    var serverCPUMicrosPerMessage: Double
    var p50: Double, p90: Double, p99: Double, p999: Double, max: Double
    /// Open loop: medians of the generator's send lateness (µs).
    var sendLateness: LoadResult.Lateness?
    var peakRSSKiB: Double
    var idleRSSKiBPerConnection: Double?
    var clientCPUPercent: Double
    var clientBound: Bool
}

func median(_ xs: [Double]) -> Double {
    guard !xs.isEmpty else { return .nan }
    let s = xs.sorted()
    return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
}

struct Compare: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the same workloads against several servers side by side (interleaved repetitions, pinned cores) and report medians and ratios.",
        discussion: """
        Servers: one `ringside serve` per --backends entry, plus every --peer. A peer is MODE:NAME=COMMAND \
        (MODE echo or http; plain NAME=COMMAND means echo); COMMAND must exec a server that prints \
        `listening on HOST:PORT` and exits 0 on SIGINT (append `--port 0` yourself).
        Scenarios: --scenario MODE,SIZE,CONNECTIONS,PIPELINE[,RATE], repeatable (echo,64,50,1  http,0,50,1  \
        idle,0,10000,0); a RATE makes it open loop at RATE requests per second (echo,64,50,1,50000).
        """)

    @Option(help: "The ringside binary (default: next to ringload).") var server: String?
    @Option(help: "Ringside backends to compare, comma-separated.") var backends = "uring,epoll"
    @Option(help: "A peer server: [MODE:]NAME=COMMAND (repeatable).") var peer: [String] = []
    @Option(help: "A workload MODE,SIZE,CONNECTIONS,PIPELINE[,RATE] (repeatable).") var scenario: [String] = []
    @Option(help: "Interleaved repetitions (the server order rotates by one each rep).") var reps = 3
    @Option(help: "Measured duration per run (e.g. 5s, 500ms).") var duration = Seconds(argument: "5s")!
    @Option(help: "Warm-up per run (e.g. 1s).") var warmup = Seconds(argument: "1s")!
    @Option(help: "CPU for the servers.") var serverCPU = 0
    @Option(help: "CPU for the load generator.") var clientCPU = 1
    @Option(help: "Load generator backend (auto: io_uring unless the kernel refuses it).") var clientBackend: BackendKind = .auto
    @Option(help: "Output folder (default bench/results/compare-DATE).") var out: String?
    @Flag(help: "Open-loop scenarios: run the pacer thread at SCHED_FIFO priority (see `ringload echo --help`).")
    var realtime = false

    func run() throws {
        let scenarios = try (scenario.isEmpty ? ["echo,64,50,1"] : scenario).map { s in
            guard let v = Scenario(s) else { throw ValidationError("bad --scenario \(s)") }
            return v
        }
        let exe = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent()
        let ringside = server ?? exe.appendingPathComponent("ringside").path
        var servers: [(name: String, modes: Set<String>, command: String)] = []
        for b in backends.split(separator: ",") {
            servers.append(("ringside-\(b)", ["echo", "idle"], "\(ringside) serve --protocol echo --backend \(b) --port 0 --max-connections 20000"))
            servers.append(("ringside-\(b)", ["http"], "\(ringside) serve --protocol http --backend \(b) --port 0"))
        }
        for p in peer {
            guard let eq = p.firstIndex(of: "=") else { throw ValidationError("--peer needs NAME=COMMAND: \(p)") }
            var name = String(p[..<eq])
            var modes: Set<String> = ["echo", "idle"]
            if let colon = name.firstIndex(of: ":") {
                modes = [String(name[..<colon])]
                if modes.contains("echo") { modes.insert("idle") }
                name = String(name[name.index(after: colon)...])
            }
            // One entry per command: a name may appear once per mode (e.g. echo:swiftnio and http:swiftnio).
            servers.append((name, modes, String(p[p.index(after: eq)...])))
        }
        let stamp = { () -> String in
            let f = DateFormatter(); f.dateFormat = "yyyyMMdd-HHmmss"; return f.string(from: Date())
        }()
        let dir = out ?? "bench/results/compare-\(stamp)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        if rs_pin_to_cpu(Int32(clientCPU)) != 0 { printError("ringload: cannot pin to CPU \(clientCPU)\n") }

        var runs: [CompareRun] = []
        for sc in scenarios {
            let here = servers.filter { $0.modes.contains(sc.mode) }
            if here.isEmpty { printError("no server serves \(sc.mode); skipping \(sc)\n"); continue }
            for rep in 1...reps {
                // Interleaved, and rotated by one server per rep (A B C, B C A, C A B, ...), so no server
                // always runs first (after the idle gap) or always right after the same neighbour.
                for k in here.indices {
                    let s = here[(k + rep - 1) % here.count]
                    let r = runOne(sc, server: s.name, command: s.command, rep: rep, dir: dir)
                    printError("  \(sc)  rep \(rep)  \(s.name.padding(toLength: 16, withPad: " ", startingAt: 0)) " + describe(r) + "\n")
                    runs.append(r)
                }
            }
        }
        let summaries = summarize(runs)
        let table = compareTable(summaries)
        print(table)
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        enc.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        struct Output: Codable { var runs: [CompareRun]; var summaries: [CompareSummary]; var meta: [String: String] }
        let meta = ["date": stamp, "duration": "\(duration)", "warmup": "\(warmup)", "reps": "\(reps)",
                    "serverCPU": "\(serverCPU)", "clientCPU": "\(clientCPU)", "clientBackend": clientBackend.rawValue,
                    "kernel": (try? String(contentsOfFile: "/proc/sys/kernel/osrelease", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "?"]
        try enc.encode(Output(runs: runs, summaries: summaries, meta: meta)).write(to: URL(fileURLWithPath: "\(dir)/results.json"))
        try htmlReport(summaries: summaries, runs: runs, meta: meta, table: table).write(toFile: "\(dir)/report.html", atomically: true, encoding: .utf8)
        print("results: \(dir)/results.json")
        print("report:  \(dir)/report.html")
        if runs.contains(where: { $0.error != nil }) { throw ExitCode(1) }
    }

    private func describe(_ r: CompareRun) -> String {
        if let e = r.error { return "ERROR \(e)" }
        if let idle = r.idleRSSKiBPerConnection {
            return String(format: "%.2f KiB/conn (RSS before: %d KiB)", idle, r.idleBaselineRSSKiB ?? 0)
        }
        guard let l = r.load else { return "" }
        return String(format: "%9.0f msgs/s  %6.2f µs/msg srv  p50 %6.0f µs  p99 %7.0f µs  cli %3.0f%%", l.messagesPerSecond,
                      r.serverCPUMicrosPerMessage, l.latencyMicros.p50, l.latencyMicros.p99, l.clientCPUPercent)
            + (l.sendLatenessMicros.map { "  send late " + latenessCell($0) } ?? "")
            + l.warnings.map { "\n      warning: " + $0 }.joined()
    }

    private func runOne(_ sc: Scenario, server name: String, command: String, rep: Int, dir: String) -> CompareRun {
        var run = CompareRun(scenario: sc, server: name, rep: rep, load: nil, serverCPUSeconds: 0,
                             serverCPUMicrosPerMessage: 0, serverCPUPercent: 0, peakRSSKiB: 0, exitStatus: 0)
        let log = "\(dir)/\(name)-\(sc.mode)-\(sc.size)-\(sc.connections)-\(sc.pipeline)-\(rep).log"
        let proc: ServerProcess
        do { proc = try ServerProcess(name: name, command: command, cpu: serverCPU, log: log) } catch {
            run.error = "\(error)"
            return run
        }
        do {
            if sc.mode == "idle" {
                (run.idleRSSKiBPerConnection, run.idleBaselineRSSKiB) = try idleRun(sc, proc: proc)
            } else {
                var o = LoadOptions()
                o.mode = sc.mode == "http" ? .http : .echo
                o.port = proc.port
                o.connections = sc.connections
                o.size = sc.size
                o.pipeline = sc.pipeline
                o.duration = duration.value
                o.warmup = warmup.value
                o.backend = clientBackend
                o.rate = sc.rate
                o.realtime = realtime
                var cpu0 = 0.0, cpu1 = 0.0, t0 = 0.0, t1 = 0.0
                let l = try runLoad(o) { start in
                    if start { cpu0 = proc.cpuSeconds(); t0 = Double(nowNanos()) / 1e9 }
                    else { cpu1 = proc.cpuSeconds(); t1 = Double(nowNanos()) / 1e9 }
                }
                run.load = l
                run.serverCPUSeconds = cpu1 - cpu0
                run.serverCPUMicrosPerMessage = l.messages > 0 ? (cpu1 - cpu0) * 1e6 / Double(l.messages) : 0
                run.serverCPUPercent = (cpu1 - cpu0) / max(1e-9, t1 - t0) * 100
                if l.errors.total > 0 { run.error = "\(l.errors.total) wrong or failed responses: \(l.errors)" }
                else if l.windowSkewMillis > max(5, duration.value * 10) {
                    run.error = String(format: "measurement window off by %.0f ms (the generator's main thread was starved): discarded", l.windowSkewMillis)
                }
            }
        } catch {
            run.error = "\(error)"
        }
        run.peakRSSKiB = proc.statusKiB("VmHWM")
        run.exitStatus = proc.stop()
        if run.exitStatus != 0 && run.error == nil { run.error = "server exit status \(run.exitStatus) (see \(log))" }
        return run
    }

    /// Opens `connections` idle connections and returns the server's RSS growth per connection (KiB)
    /// and its RSS before them.
    private func idleRun(_ sc: Scenario, proc: ServerProcess) throws -> (Double, Int) {
        struct Idle: ConnectionHandler {
            mutating func received(_ bytes: ReceivedBytes, on connection: Connection) {}
        }
        usleep(200_000)
        let before = proc.statusKiB("VmRSS")
        var config = ServerConfiguration(host: "127.0.0.1", port: 0, backend: clientBackend)
        config.listen = false
        config.maxConnections = sc.connections + 8
        config.connect = OutboundConnections(host: "127.0.0.1", port: proc.port, count: sc.connections)
        let loop = try RingsideServer.start(configuration: config, logger: quietLogger) { Idle() }
        let deadline = nowNanos() + 30_000_000_000
        while nowNanos() < deadline {
            let s = loop.stats
            if s.connectionsConnected + s.connectFailures >= sc.connections { break }
            usleep(10_000)
        }
        usleep(1_000_000)  // let the server settle (accept backlog drained, pages touched)
        let after = proc.statusKiB("VmRSS")
        let failures = loop.stats.connectFailures
        let connected = loop.stats.connectionsConnected
        try loop.shutdown()
        if failures > 0 { throw ValidationErrorText("\(failures) of \(sc.connections) idle connections failed") }
        return (Double(after - before) / Double(max(1, connected)), before)
    }

    private func summarize(_ runs: [CompareRun]) -> [CompareSummary] {
        var out: [CompareSummary] = []
        var seen: [(Scenario, String)] = []
        for r in runs where !seen.contains(where: { $0.0 == r.scenario && $0.1 == r.server }) { seen.append((r.scenario, r.server)) }
        for (sc, name) in seen {
            let all = runs.filter { $0.scenario == sc && $0.server == name }
            let clean = all.filter { $0.error == nil }
            let loads = clean.compactMap(\.load)
            out.append(CompareSummary(
                scenario: sc, server: name, cleanRuns: clean.count, runs: all.count,
                messagesPerSecond: median(loads.map(\.messagesPerSecond)),
                serverCPUMicrosPerMessage: median(clean.filter { $0.load != nil }.map(\.serverCPUMicrosPerMessage)),
                p50: median(loads.map(\.latencyMicros.p50)), p90: median(loads.map(\.latencyMicros.p90)),
                p99: median(loads.map(\.latencyMicros.p99)), p999: median(loads.map(\.latencyMicros.p999)),
                max: median(loads.map(\.latencyMicros.max)),
                sendLateness: sc.rate == nil ? nil : LoadResult.Lateness(
                    p50: median(loads.compactMap(\.sendLatenessMicros?.p50)),
                    p99: median(loads.compactMap(\.sendLatenessMicros?.p99)),
                    max: median(loads.compactMap(\.sendLatenessMicros?.max))),
                peakRSSKiB: median(clean.map { Double($0.peakRSSKiB) }),
                idleRSSKiBPerConnection: sc.mode == "idle" ? median(clean.compactMap(\.idleRSSKiBPerConnection)) : nil,
                clientCPUPercent: median(loads.map(\.clientCPUPercent)),
                clientBound: loads.contains(where: \.clientBound)))
        }
        return out
    }
}

/// The side-by-side table: medians, and ratios against the first server of each scenario.
func compareTable(_ summaries: [CompareSummary]) -> String {
    var rows: [TableRow] = []
    var firstOf: [Scenario: CompareSummary] = [:]
    for s in summaries {
        let base = firstOf[s.scenario] ?? s
        firstOf[s.scenario] = base
        func f(_ v: Double, _ fmt: String) -> String { v.isNaN ? "-" : String(format: fmt, v) }
        // A ratio is shown only where it compares like with like: not for idle rows (no messages; their
        // RSS per connection is shown in KiB, since a ratio of two near-zero figures is noise), not for
        // throughput under an open loop (the offered rate sets it), and not against a base that shows
        // as zero.
        func ratio(_ a: Double, _ b: Double) -> String {
            (a.isNaN || b.isNaN || !a.isFinite || !b.isFinite || b < 0.005) ? "-" : String(format: "%.2fx", a / b)
        }
        let idle = s.scenario.mode == "idle"
        rows.append(TableRow(cells: [
            s.scenario.description, s.server, "\(s.cleanRuns)/\(s.runs)",
            s.scenario.mode == "idle" ? f(s.idleRSSKiBPerConnection ?? .nan, "%.2f KiB/conn") : f(s.messagesPerSecond, "%.0f"),
            idle ? "-" : f(s.serverCPUMicrosPerMessage, "%.2f"), f(s.p50, "%.0f"), f(s.p99, "%.0f"), f(s.p999, "%.0f"),
            latenessCell(s.sendLateness), f(s.peakRSSKiB / 1024, "%.1f"),
            f(s.clientCPUPercent, "%.0f%%") + (s.clientBound ? " (!)" : ""),
            idle || s.scenario.rate != nil ? "-" : ratio(s.messagesPerSecond, base.messagesPerSecond),
            idle ? "-" : ratio(s.serverCPUMicrosPerMessage, base.serverCPUMicrosPerMessage),
        ]))
    }
    let header = ["scenario", "server", "clean", "msgs/s", "srv µs/msg", "p50 µs", "p99 µs", "p99.9 µs",
                  "send late p50/p99/max µs", "peak RSS MiB", "client CPU", "x msgs/s", "x µs/msg"]
    return formatTable(rows, header: header)
        + "\n(medians of clean runs; x = ratio to the first server of the scenario, where one means something (not idle rows, not msgs/s at a fixed rate); "
        + "(!) = load generator near 100% of its core: client-bound; "
        + "send late = open loop: actual minus intended send time)"
}
