import CLiburing
import Foundation
import Glibc
import Ringside
import RingsideProtocols
import Testing

/// Whether this kernel lets us use io_uring, and if not, why (printed when a test skips).
enum UringSupport {
    static let unavailableReason: String? = {
        var ring = io_uring()
        let r = rs_io_uring_queue_init(2, &ring, 0)
        if r < 0 {
            let e = Errno(rawValue: -r)
            let sysctl = (try? String(contentsOfFile: "/proc/sys/kernel/io_uring_disabled", encoding: .utf8)) ?? "?"
            return "io_uring refused by this kernel: io_uring_setup -> \(e) (kernel.io_uring_disabled=\(sysctl.trimmingCharacters(in: .whitespacesAndNewlines)))"
        }
        rs_io_uring_queue_exit(&ring)
        return nil
    }()
}

/// The backends every conformance test runs against.
let allBackends: [BackendKind] = [.uring, .epoll]

/// Skips the current test case, printing why, when `backend` is io_uring and the kernel refuses it.
func skipIfUnavailable(_ backend: BackendKind) throws {
    guard backend == .uring, let reason = UringSupport.unavailableReason else { return }
    print("SKIP [\(backend)]: \(reason)")
    try Test.cancel(Comment(rawValue: reason))
}

/// Starts a server on 127.0.0.1:0, runs `body`, stops it, and checks that nothing leaked:
/// every connection torn down and every pool buffer back home.
func withServer<H: ConnectionHandler>(
    _ backend: BackendKind,
    configure: (inout ServerConfiguration) -> Void = { _ in },
    handler: @escaping @Sendable () -> H,
    _ body: (RunningServer) throws -> Void
) throws {
    try withServer(backend, configure: configure, start: { try RingsideServer.start(configuration: $0, handler: handler) }, body)
}

/// `withServer` for any way of starting a server (callback handlers, the async API).
func withServer(
    _ backend: BackendKind,
    configure: (inout ServerConfiguration) -> Void = { _ in },
    start: (ServerConfiguration) throws -> RunningServer,
    _ body: (RunningServer) throws -> Void
) throws {
    try skipIfUnavailable(backend)
    signal(SIGPIPE, SIG_IGN)
    var config = ServerConfiguration(host: "127.0.0.1", port: 0, backend: backend)
    config.drainTimeout = .seconds(2)
    configure(&config)
    let server = try start(config)
    #expect(server.backend == backend)
    var bodyError: (any Error)? = nil
    do { try body(server) } catch { bodyError = error }
    try server.shutdown()
    let s = server.stats
    #expect(s.connectionsOpen == 0, "connections left open after stop")
    #expect(s.buffersInUse == 0, "pool buffers leaked: \(s.buffersInUse)")
    #expect(s.connectionsAccepted == s.connectionsClosed)
    if let bodyError { throw bodyError }
}

func withEchoServer(_ backend: BackendKind, configure: (inout ServerConfiguration) -> Void = { _ in },
                    _ body: (RunningServer) throws -> Void) throws {
    try withServer(backend, configure: configure, handler: { EchoHandler() }, body)
}

struct ClientError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

/// A blocking test client socket with receive/send timeouts, so a broken server fails a test instead
/// of hanging it.
final class TestClient {
    let fd: Int32

    /// `bindTo`: a local source address (e.g. 127.0.0.2); `receiveBuffer`: SO_RCVBUF before connecting.
    init(port: Int, timeoutSeconds: Int = 10, bindTo: String? = nil, receiveBuffer: Int? = nil) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ClientError("socket: \(Errno.current)") }
        var tv = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        if var size = receiveBuffer.map(Int32.init) {
            setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        }
        if let source = bindTo {
            var local = sockaddr_in()
            local.sin_family = sa_family_t(AF_INET)
            local.sin_addr.s_addr = inet_addr(source)
            let b = withUnsafePointer(to: &local) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            guard b == 0 else {
                let e = Errno.current
                Glibc.close(fd)
                throw ClientError("bind(\(source)): \(e)")
            }
        }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let r = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard r == 0 else {
            let e = Errno.current
            Glibc.close(fd)
            throw ClientError("connect: \(e)")
        }
    }

    deinit { Glibc.close(fd) }

    func send(_ bytes: [UInt8]) throws {
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + off, bytes.count - off, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if Errno.current == .interrupted { continue }
                throw ClientError("send: \(Errno.current)")
            }
            off += n
        }
    }

    /// Reads exactly `count` bytes (throws on EOF or timeout).
    func receive(exactly count: Int) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        var off = 0
        while off < count {
            let n = out.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + off, count - off, 0) }
            if n == 0 { throw ClientError("EOF after \(off) of \(count) bytes") }
            if n < 0 {
                if Errno.current == .interrupted { continue }
                throw ClientError("recv after \(off) of \(count) bytes: \(Errno.current)")
            }
            off += n
        }
        return out
    }

    /// Reads until the server closes; returns what arrived. Throws on timeout or reset.
    func receiveUntilEOF(limit: Int = 64 << 20) throws -> [UInt8] {
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 65536)
        while out.count < limit {
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, 65536, 0) }
            if n == 0 { return out }
            if n < 0 {
                if Errno.current == .interrupted { continue }
                throw ClientError("recv: \(Errno.current)")
            }
            out.append(contentsOf: buf[0..<n])
        }
        return out
    }

    func shutdownWrite() { Glibc.shutdown(fd, Int32(SHUT_WR)) }

    /// Makes the next close send RST instead of FIN.
    func setLingerZero() {
        var l = linger(l_onoff: 1, l_linger: 0)
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, socklen_t(MemoryLayout<linger>.size))
    }

    func setNonBlocking() { _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) }
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
func randomBytes(_ count: Int, seed: UInt64) -> [UInt8] {
    var x = seed &* 0x9E37_79B9_7F4A_7C15 | 1
    var out = [UInt8](repeating: 0, count: count)
    for i in 0..<count {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17
        out[i] = UInt8(truncatingIfNeeded: x)
    }
    return out
}

/// Polls `condition` until it holds or `seconds` pass.
func eventually(_ seconds: Double = 5, _ condition: () -> Bool) -> Bool {
    let deadline = ContinuousClock.now.advanced(by: .milliseconds(Int(seconds * 1000)))
    while ContinuousClock.now < deadline {
        if condition() { return true }
        usleep(5_000)
    }
    return condition()
}

/// Number of open file descriptors of this process.
func openDescriptorCount() -> Int {
    guard let d = opendir("/proc/self/fd") else { return -1 }
    defer { closedir(d) }
    var n = 0
    while readdir(d) != nil { n += 1 }
    return n - 2
}

/// SplitMix64: a tiny seeded generator, so randomised tests and fuzz failures reproduce.
struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// A product built next to the test bundle (`ringside`, `ringload`): beside it, or one folder up.
func builtBinary(_ name: String) -> URL {
    let dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    let exe = dir.appendingPathComponent(name)
    return FileManager.default.fileExists(atPath: exe.path) ? exe : dir.deletingLastPathComponent().appendingPathComponent(name)
}

/// Runs a binary built next to the tests (`builtBinary`), optionally behind `prefix` (`timeout 60`,
/// `taskset -c 1`); returns its exit status and stdout (stderr is dropped).
func runBuilt(_ name: String, _ args: [String], prefix: [String] = []) throws -> (status: Int32, output: String) {
    let exe = builtBinary(name)
    let p = Process()
    p.executableURL = URL(fileURLWithPath: prefix.first ?? exe.path)
    p.arguments = prefix.isEmpty ? args : Array(prefix.dropFirst()) + [exe.path] + args
    let out = Pipe()
    p.standardOutput = out
    p.standardError = FileHandle.nullDevice
    try p.run()
    let data = out.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return (p.terminationStatus, String(decoding: data, as: UTF8.self))
}

/// A JSON object (ringload's `--json` output).
func jsonObject(_ s: String) throws -> [String: Any] {
    guard let o = try JSONSerialization.jsonObject(with: Data(s.utf8)) as? [String: Any] else {
        throw ClientError("not a JSON object: \(s)")
    }
    return o
}
