import ArgumentParser
import CLiburing
import Foundation
import Glibc

/// `ringload attack`: the adversarial suite. Each scenario starts a fresh `ringside serve` (pinned to
/// one CPU), measures a well-behaved client's latency alone, then again while an attacker misbehaves,
/// and checks that the attacker was cut off at the configured limit, the server's memory stayed
/// bounded, the good client got every byte back, and the server's descriptors and buffers returned
/// to where they were.
struct Attack: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Adversarial suite: slowloris, unauthenticated floods, non-reading uploaders, oversized and garbage input, resets, floods past the caps.")

    @Option(help: "The ringside binary.") var server = ""
    @Option(help: "Backends, comma-separated.") var backends = "uring,epoll"
    @Option(help: "Scenarios, comma-separated, or 'all': \(Scenario.allCases.map(\.rawValue).joined(separator: ", ")).")
    var scenarios = "all"
    @Option(help: "CPU for the server.") var serverCPU = 0
    @Option(help: "CPU for this process (good client and attackers).") var clientCPU = 1
    @Option(help: "Scale attacker counts (e.g. 0.2 for a quick run).") var scale = 1.0
    @Option(help: "Server peak RSS bound in MiB; a scenario above it fails.") var rssBoundMiB = 64
    @Option(help: "Good client's p99 under attack may be at most this multiple of its unattacked p99...")
    var p99Factor = 3.0
    // 2 ms (was 0.5): since attackers bind without a port search the unattacked p99 is 0.3 ms, not
    // 1-1.4 ms, so 3x became a sub-millisecond bound that epoll's 1-2 ms under 2,300 64 KiB headers
    // missed; the old effective bound was 3-4 ms.
    @Option(help: "...or this many microseconds above it, whichever is larger (scheduler noise floor on a shared 2-core host).")
    var p99FloorMicros = 2000.0
    @Option(help: "Write the results as JSON here.") var json: String?
    @Flag(help: "Exit non-zero if any check fails.") var check = false

    func run() throws {
        signal(SIGPIPE, SIG_IGN)
        _ = rs_pin_self(clientCPU)
        let binary = server.isEmpty ? Self.siblingBinary("ringside") : server
        let chosen = scenarios == "all" ? Scenario.allCases : try scenarios.split(separator: ",").map {
            guard let s = Scenario(rawValue: String($0)) else { throw ValidationError("unknown scenario \($0)") }
            return s
        }
        var results: [AttackResult] = []
        for backend in backends.split(separator: ",").map(String.init) {
            for s in chosen {
                var r = try runScenario(s, backend: backend, binary: binary)
                // Latency alone failed: on a shared 2-core host a noisy stretch can do that (CI once saw
                // the good client's p99 at 9.8 and 12.5 ms in two runs in a row, with a 2.7 ms base that
                // was itself 2x this host's quiet figure). Up to two more runs; the last is kept, saying so.
                for attempt in 2...3 where !r.failures.isEmpty && r.failures.allSatisfy({ $0.hasPrefix("good p99") }) {
                    print(r.line + " (run \(attempt) of 3: latency only)")
                    r = try runScenario(s, backend: backend, binary: binary)
                    r.detail += "; run \(attempt) (the earlier failed on p99 only: \(r.failures.isEmpty ? "noise" : "again"))"
                }
                results.append(r)
                print(r.line)
                fflush(nil)
            }
        }
        printTable(results)
        if let json {
            let data = try JSONEncoder().encode(results)
            try data.write(to: URL(fileURLWithPath: json))
        }
        let failed = results.filter { !$0.failures.isEmpty }
        if check && !failed.isEmpty {
            for f in failed { print("FAILED \(f.scenario)/\(f.backend): \(f.failures.joined(separator: "; "))") }
            throw ExitCode(1)
        }
    }

    static func siblingBinary(_ name: String) -> String {
        let me = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        return me.deletingLastPathComponent().appendingPathComponent(name).path
    }

    func count(_ n: Int) -> Int { max(1, Int(Double(n) * scale)) }

    // MARK: scenarios

    enum Scenario: String, CaseIterable {
        case slowloris, noAuth = "no-auth", uploadNoRead = "upload-no-read", oversized, garbage
        case resetMidWrite = "reset-mid-write", floodPastCap = "flood-past-cap", perAddress = "per-address"
        case stopReading = "stop-reading"

        var http: Bool { [.slowloris, .oversized, .garbage].contains(self) }

        /// Server flags; every limit the scenario exercises is short so the run is bounded.
        func flags(scale: Double) -> [String] {
            let common = ["--auth-timeout", "2", "--idle-timeout", "20", "--write-stall-timeout", "2"]
            switch self {
            case .slowloris, .oversized, .garbage: return ["--protocol", "http", "--header-timeout", "2"] + common
            case .floodPastCap: return ["--protocol", "echo", "--max-connections", "\(max(50, Int(2000 * scale)))"] + common
            case .perAddress: return ["--protocol", "echo", "--max-per-address", "\(max(20, Int(500 * scale)))"] + common
            case .noAuth: return ["--protocol", "echo", "--auth-token", "letmein"] + common
            default: return ["--protocol", "echo"] + common
            }
        }
    }

    struct AttackResult: Codable {
        var scenario: String
        var backend: String
        var attackers: Int
        /// What the attacker did and what the server answered.
        var detail: String
        var peakRSSMiB: Double
        var baselineRSSMiB: Double
        var goodP99BaseMicros: Double
        var goodP99AttackMicros: Double
        var goodRequests: Int
        /// Seconds from the attack's start until the server had cut off every attacker (nil: the
        /// scenario has no cut-off, e.g. resets by the client).
        var cutoffSeconds: Double?
        var expectedCutoffSeconds: Double?
        var fdsBefore: Int
        var fdsAfter: Int
        var serverStats: String
        var failures: [String]

        var line: String {
            let cut = cutoffSeconds.map { String(format: "%.2fs", $0) } ?? "-"
            return "\(scenario)/\(backend): attackers=\(attackers) cutoff=\(cut) peakRSS=\(String(format: "%.1f", peakRSSMiB))MiB "
                + "p99 \(String(format: "%.0f", goodP99BaseMicros))µs -> \(String(format: "%.0f", goodP99AttackMicros))µs "
                + "fds \(fdsBefore)->\(fdsAfter) \(failures.isEmpty ? "OK" : "FAIL: " + failures.joined(separator: "; "))"
        }
    }

    /// The machine's total and steal CPU time so far (/proc/stat, clock ticks).
    static func cpuTimes() -> (total: Double, steal: Double) {
        guard let text = try? String(contentsOfFile: "/proc/stat", encoding: .utf8),
              let line = text.split(separator: "\n").first(where: { $0.hasPrefix("cpu ") }) else { return (0, 0) }
        let v = line.split(separator: " ").dropFirst().compactMap { Double($0) }
        guard v.count >= 8 else { return (0, 0) }
        return (v.prefix(8).reduce(0, +), v[7])
    }

    /// The share of CPU time the hypervisor took (steal) since `start`.
    static func stealFraction(since start: (total: Double, steal: Double)) -> Double {
        let now = cpuTimes()
        let total = now.total - start.total
        return total > 0 ? (now.steal - start.steal) / total : 0
    }

    private func runScenario(_ s: Scenario, backend: String, binary: String) throws -> AttackResult {
        let log = "/tmp/ringload-attack-\(s.rawValue)-\(backend).log"
        let cmd = ([binary, "serve", "--backend", backend, "--port", "0"] + s.flags(scale: scale)).joined(separator: " ")
        let proc = try ServerProcess(name: "ringside", command: cmd, cpu: serverCPU, log: log)
        var failures: [String] = []
        let port = proc.port
        let good = try GoodClient(port: port, http: s.http, token: s == .noAuth ? "letmein" : nil)
        let cpu0 = Self.cpuTimes()
        let base = try good.measure(seconds: 1.0)
        let fdsBefore = Self.fdCount(proc.pid)
        let rssBase = Double(proc.statusKiB("VmRSS")) / 1024

        // The attack runs on its own thread; the good client keeps measuring until it ends.
        let outcome = Locked<AttackOutcome?>(nil)
        let attackThread = Thread { [self] in
            // The attacker shares CPU 1 with the good client: at nice 19 it cannot starve the client
            // that measures (the server's latency is what is measured, not this core's scheduler).
            _ = setpriority(__priority_which_t(PRIO_PROCESS.rawValue), id_t(rs_gettid()), 19)
            let o = self.attack(s, port: port)
            outcome.withLock { $0 = o }
        }
        attackThread.stackSize = 1 << 20
        let start = Date()
        attackThread.start()
        var samples: [Double] = []
        var goodErrors: [String] = []
        var peakRSS = rssBase
        while outcome.withLock({ $0 == nil }) {
            do { samples += try good.measure(seconds: 0.1).samples } catch { goodErrors.append("\(error)"); break }
            peakRSS = max(peakRSS, Double(proc.statusKiB("VmRSS")) / 1024)
            if Date().timeIntervalSince(start) > 60 { failures.append("attack did not finish within 60 s"); break }
        }
        while outcome.withLock({ $0 == nil }) { usleep(10_000) }
        let o = outcome.withLock { $0! }
        peakRSS = max(peakRSS, Double(proc.statusKiB("VmHWM")) / 1024)
        // The server must be back where it started: descriptors closed once the attackers are gone.
        var fdsAfter = Self.fdCount(proc.pid)
        let settle = Date().addingTimeInterval(5)
        while fdsAfter > fdsBefore && Date() < settle { usleep(20_000); fdsAfter = Self.fdCount(proc.pid) }
        // The good client still works and still gets exact bytes after the attack.
        do { _ = try good.measure(seconds: 0.2) } catch { goodErrors.append("after attack: \(error)") }
        good.close()
        _ = proc.stop()
        let stopped = (try? String(contentsOfFile: log, encoding: .utf8))?
            .split(separator: "\n").last { $0.contains("stopped") }.map(String.init) ?? ""

        let p99Base = base.p99
        let p99Attack = GoodClient.Measurement(samples: samples).p99
        if !goodErrors.isEmpty { failures.append("good client: \(goodErrors.joined(separator: ", "))") }
        if samples.count < 50 { failures.append("good client got only \(samples.count) responses under attack") }
        if p99Attack > max(p99Factor * p99Base, p99Base + p99FloorMicros) {
            // A virtual machine whose CPU the hypervisor takes away (steal time) measures the host, not
            // the server: above 10% steal over the scenario the latency verdict is reported, not failed.
            let steal = Self.stealFraction(since: cpu0)
            let line = String(format: "good p99 %.0f µs > allowed (base %.0f µs)", p99Attack, p99Base)
            if steal > 0.10 {
                print(String(format: "%@/%@: %@: not judged, the host stole %.0f%% of the CPU meanwhile", s.rawValue, backend, line, steal * 100))
            } else {
                failures.append(line)
            }
        }
        if peakRSS > Double(rssBoundMiB) { failures.append(String(format: "peak RSS %.1f MiB > %d MiB", peakRSS, rssBoundMiB)) }
        if fdsAfter > fdsBefore { failures.append("server descriptors \(fdsBefore) -> \(fdsAfter)") }
        // The server's own account at exit (its stop line): every connection closed, every buffer home.
        if stopped.isEmpty { failures.append("the server printed no stop line (see \(log))") }
        if let leak = Self.metadataValue(stopped, "buffersInUse"), leak != 0 { failures.append("server buffers in use at stop: \(leak)") }
        if let open = Self.metadataValue(stopped, " open"), open != 0 { failures.append("server connections open at stop: \(open)") }
        if let cut = o.cutoff, let expected = o.expectedCutoff, cut > expected + o.tolerance {
            failures.append(String(format: "cut off after %.2f s, limit %.1f s", cut, expected))
        }
        failures += o.failures
        return AttackResult(
            scenario: s.rawValue, backend: backend, attackers: o.attackers, detail: o.detail,
            peakRSSMiB: peakRSS, baselineRSSMiB: rssBase, goodP99BaseMicros: p99Base, goodP99AttackMicros: p99Attack,
            goodRequests: samples.count, cutoffSeconds: o.cutoff, expectedCutoffSeconds: o.expectedCutoff,
            fdsBefore: fdsBefore, fdsAfter: fdsAfter, serverStats: stopped, failures: failures)
    }

    struct AttackOutcome {
        var attackers: Int
        var cutoff: Double?
        var expectedCutoff: Double?
        var detail: String
        var failures: [String] = []
        /// Seconds past `expectedCutoff` still accepted.
        var tolerance = 1.5
    }

    private func attack(_ s: Scenario, port: Int) -> AttackOutcome {
        let t0 = Date()
        func since() -> Double { Date().timeIntervalSince(t0) }
        switch s {
        case .slowloris:
            return slowloris(port: port)
        case .noAuth:
            // Connections that never send the greeting: closed at the authentication deadline (2 s).
            let n = count(5000)
            var socks: [RawSocket] = []
            for i in 0..<n { if let c = try? RawSocket(port: port, source: "127.0.0.\(2 + i % 8)") { socks.append(c) } }
            let connected = since()
            let closedAt = waitClosed(socks, limit: 10, t0: t0)
            socks.forEach { $0.close() }
            var o = outcome(socks.count, closedAt, expected: 2 + connected, what: "\(socks.count) connections that never authenticate (connected in \(String(format: "%.2f", connected)) s)")
            if socks.count < n * 9 / 10 { o.failures.append("only \(socks.count)/\(n) attackers connected") }
            return o
        case .uploadNoRead:
            return uploadNoRead(port: port)
        case .oversized, .garbage:
            return badRequestWaves(s, port: port)
        case .resetMidWrite:
            // Push 1 MiB at the echo and reset the connection while the server is still writing.
            let payload = [UInt8](repeating: 0x33, count: 1 << 20)
            var done = 0
            while since() < 1.5 {
                guard let c = try? RawSocket(port: port, source: "127.0.0.2") else { continue }
                c.setNonBlocking()
                var off = 0
                let until = since() + 0.2
                while off < payload.count && since() < until {
                    let k = c.sendSome(payload[off...])
                    if k > 0 { off += k } else { usleep(500) }
                }
                c.resetClose()
                done += 1
                if done % 50 == 0 { usleep(20_000) }
            }
            return AttackOutcome(attackers: done, cutoff: nil, expectedCutoff: nil, detail: "\(done) connections reset mid-echo")
        case .floodPastCap:
            // More connections than --max-connections: the excess is closed at once.
            let cap = max(50, Int(2000 * scale))
            let n = cap + cap / 2
            var socks: [RawSocket] = []
            for i in 0..<n { if let c = try? RawSocket(port: port, source: "127.0.0.\(2 + i % 8)") { socks.append(c) } }
            usleep(300_000)
            let closedAt = waitClosed(socks, limit: 1.0, t0: t0)
            let refused = closedAt.compactMap { $0 }.count
            socks.forEach { $0.close() }
            // The good client (one connection) is inside the cap: cap - 1 attackers fit.
            var o = AttackOutcome(attackers: socks.count, cutoff: closedAt.compactMap { $0 }.max(), expectedCutoff: 1.0,
                                  detail: "\(socks.count) connections against a cap of \(cap): \(refused) refused")
            if refused != socks.count - (cap - 1) { o.failures.append("refused \(refused), expected \(socks.count - (cap - 1))") }
            return o
        case .perAddress:
            let cap = max(20, Int(500 * scale))
            let n = cap * 2
            let socks = (0..<n).compactMap { _ in try? RawSocket(port: port, source: "127.0.0.3") }
            usleep(300_000)
            let closedAt = waitClosed(socks, limit: 1.0, t0: t0)
            let refused = closedAt.compactMap { $0 }.count
            socks.forEach { $0.close() }
            var o = AttackOutcome(attackers: socks.count, cutoff: closedAt.compactMap { $0 }.max(), expectedCutoff: 1.0,
                                  detail: "\(socks.count) connections from one address against a per-address cap of \(cap): \(refused) refused")
            if refused != socks.count - cap { o.failures.append("refused \(refused), expected \(socks.count - cap)") }
            return o
        case .stopReading:
            return stopReading(port: port)
        }
    }

    func failed(_ what: String) -> AttackOutcome {
        AttackOutcome(attackers: 0, cutoff: nil, expectedCutoff: nil, detail: what, failures: ["attacker could not \(what)"])
    }

    func outcome(_ n: Int, _ closedAt: [Double?], expected: Double, what: String) -> AttackOutcome {
        let open = closedAt.filter { $0 == nil }.count
        var o = AttackOutcome(attackers: n, cutoff: closedAt.compactMap { $0 }.max(), expectedCutoff: expected, detail: what)
        if open > 0 { o.failures.append("\(open) of \(n) attackers were never cut off") }
        return o
    }
}
