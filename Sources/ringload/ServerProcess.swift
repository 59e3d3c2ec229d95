import Foundation
import Glibc

/// A server under test: started pinned to one CPU, its port read from its `listening on HOST:PORT`
/// line, its CPU time and memory read from /proc, stopped with SIGINT.
final class ServerProcess {
    let name: String
    let pid: Int32
    let port: Int
    private let process: Process

    /// Starts `command` (a shell command line; it must exec the server so the PID is the server's)
    /// under `taskset -c cpu`, waiting up to `timeout` seconds for the listening line.
    init(name: String, command: String, cpu: Int, log: String, timeout: Double = 20) throws {
        self.name = name
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/taskset")
        p.arguments = ["-c", "\(cpu)", "/bin/sh", "-c", "exec \(command)"]
        let out = Pipe()
        p.standardOutput = out
        _ = FileManager.default.createFile(atPath: log, contents: nil)
        p.standardError = FileHandle(forWritingAtPath: log)
        p.standardInput = FileHandle.nullDevice
        try p.run()
        process = p
        pid = p.processIdentifier
        // Read stdout until the listening line, bounded.
        let fd = out.fileHandleForReading.fileDescriptor
        var text = ""
        let deadline = Date().addingTimeInterval(timeout)
        var found: Int? = nil
        var buf = [UInt8](repeating: 0, count: 4096)
        while found == nil && Date() < deadline {
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            guard poll(&pfd, 1, 200) > 0 else { if !p.isRunning { break }; continue }
            let n = read(fd, &buf, buf.count)
            if n <= 0 { break }
            text += String(decoding: buf[0..<n], as: UTF8.self)
            if let r = text.range(of: #"listening on [^\s:]+:(\d+)"#, options: .regularExpression) {
                found = Int(text[r].split(separator: ":").last!)
            }
        }
        guard let port = found else {
            p.terminate()
            throw ValidationErrorText("\(name): no 'listening on HOST:PORT' line within \(Int(timeout)) s (see \(log)); output: \(text.prefix(300))")
        }
        self.port = port
        // A wrapper that prints the line before it execs the server (bench/nginx-peer.sh picks the port
        // and then execs nginx) is not listening yet: wait until a connection is accepted, bounded.
        let acceptDeadline = Date().addingTimeInterval(timeout)
        while !Self.accepts(port: port) {
            guard Date() < acceptDeadline, kill(pid, 0) == 0 else {
                p.terminate()
                throw ValidationErrorText("\(name): printed port \(port) but accepted no connection within \(Int(timeout)) s (see \(log))")
            }
            usleep(20_000)
        }
    }

    /// Whether a TCP connection to 127.0.0.1:`port` is accepted (closed again at once).
    private static func accepts(port: Int) -> Bool {
        let fd = blockingConnect(host: "127.0.0.1", port: port)
        if fd >= 0 { close(fd) }
        return fd >= 0
    }

    /// utime + stime of the server, in seconds (/proc/PID/stat fields 14 and 15).
    func cpuSeconds() -> Double {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = stat.lastIndex(of: ")") else { return 0 }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        // fields[0] is field 3 (state): utime is field 14, stime 15.
        guard fields.count > 13, let u = Double(fields[11]), let s = Double(fields[12]) else { return 0 }
        return (u + s) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    /// A /proc/PID/status value in KiB (VmRSS, VmHWM).
    func statusKiB(_ key: String) -> Int {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return 0 }
        for line in status.split(separator: "\n") where line.hasPrefix(key + ":") {
            return Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "0") ?? 0
        }
        return 0
    }

    /// SIGINT, then waits up to `timeout` s (SIGKILL after). Returns the exit status (-1 if killed).
    func stop(timeout: Double = 15) -> Int32 {
        kill(pid, SIGINT)
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(10_000) }
        if process.isRunning {
            kill(pid, SIGKILL)
            process.waitUntilExit()
            return -1
        }
        return process.terminationStatus
    }
}

struct ValidationErrorText: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}
