import Foundation
import Glibc
import Ringside
import Testing

/// `ringside serve --threads N` as an ordinary user (nobody, through setpriv) under a locked-memory limit
/// (prlimit): it must serve, every byte echoed, on the backend its start line names.
@Suite(.serialized) struct LockedMemoryTests {
    static let cases: [(limit: String, threads: Int)] = [
        ("64K", 2), ("64K", 4), ("8M", 2), ("8M", 4), ("unlimited", 2), ("unlimited", 4),
    ]

    @Test(arguments: 0..<cases.count)
    func threadsAsNonRootUnderMemlockLimit(_ index: Int) throws {
        let (limit, threads) = Self.cases[index]
        guard getuid() == 0 else {
            print("SKIP: needs root to drop to an ordinary user with setpriv and set RLIMIT_MEMLOCK with prlimit")
            try Test.cancel("needs root")
        }
        let bytes = limit == "unlimited" ? "unlimited" : "\(limit == "64K" ? 65536 : 8 << 20)"
        let probe = Process()
        probe.executableURL = URL(fileURLWithPath: "/usr/bin/prlimit")
        probe.arguments = ["--memlock=\(bytes):\(bytes)", "true"]
        probe.standardError = FileHandle.nullDevice
        try probe.run()
        probe.waitUntilExit()
        guard probe.terminationStatus == 0 else {
            print("SKIP [memlock \(limit)]: this host does not let even root raise RLIMIT_MEMLOCK to \(bytes) (prlimit refused)")
            try Test.cancel("RLIMIT_MEMLOCK \(bytes) not settable here")
        }
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/prlimit")
        p.arguments = ["--memlock=\(bytes):\(bytes)", "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                       builtBinary("ringside").path, "serve", "--protocol", "echo", "--backend", "auto", "--threads", "\(threads)", "--port", "0"]
        // A sanitizer build's options name files the ordinary user may not read: leave them out.
        p.environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasSuffix("SAN_OPTIONS") }
        let out = Pipe()
        p.standardOutput = out
        p.standardError = out
        try p.run()
        defer { if p.isRunning { kill(p.processIdentifier, SIGINT) }; p.waitUntilExit() }
        // Read until the listening line (the start log comes before it).
        var text = ""
        let deadline = Date().addingTimeInterval(10)
        while !text.contains("listening on") && Date() < deadline && p.isRunning {
            let d = out.fileHandleForReading.availableData
            if d.isEmpty { break }
            text += String(decoding: d, as: UTF8.self)
        }
        let line = text.split(separator: "\n").first { $0.contains("listening on") }.map(String.init)
        #expect(line != nil, "limit \(limit), threads \(threads): no listening line: \(text.suffix(600))")
        guard let line, let portText = line.split(separator: ":").last?.split(separator: " ").first,
              let port = Int(portText) else { return }
        let backend = line.contains("backend=uring") ? "uring" : "epoll"
        print("memlock \(limit), --threads \(threads): serving on \(backend)")
        if limit == "64K" {
            // Not even one ring fits: every loop on epoll, decided once before any loop started.
            #expect(backend == "epoll")
            #expect(text.contains("serving every loop on epoll"), "\(text.suffix(800))")
        } else {
            #expect(backend == "uring", "\(text.suffix(800))")
        }
        for k in 0..<8 {
            let c = try TestClient(port: port)
            let payload = randomBytes(10_000 + k, seed: UInt64(k))
            try c.send(payload)
            #expect(try c.receive(exactly: payload.count) == payload)
        }
        kill(p.processIdentifier, SIGINT)
        p.waitUntilExit()
        #expect(p.terminationStatus == 0)
    }
}
