import CLiburing
import Foundation
import Glibc
import Ringside

/// A value shared between the attack thread and the measuring thread.
final class Locked<T: Sendable>: Sendable {
    private let m: PthreadMutex<T>
    init(_ v: T) { m = PthreadMutex(v) }
    func withLock<R>(_ f: (inout T) -> R) -> R { m.withLock { v in f(&v) } }
}

func rs_pin_self(_ cpu: Int) -> Int32 { rs_pin_to_cpu(Int32(cpu)) }

struct AttackClientError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

/// A loopback TCP socket for attackers: connected (blocking) from a chosen source address, then used
/// with MSG_DONTWAIT so one thread can drive thousands.
final class RawSocket {
    let fd: Int32
    /// This end's port (to find the server's side of the connection in /proc/net/tcp).
    private(set) var localPort = 0
    private var closed = false
    private var firstBytes: [UInt8] = []

    init(port: Int, source: String, receiveBuffer: Int? = nil) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw AttackClientError("socket: \(String(cString: strerror(errno)))") }
        if var size = receiveBuffer.map(Int32.init) {
            setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        }
        // IP_BIND_ADDRESS_NO_PORT: the source port is chosen at connect, by the whole 4-tuple, instead
        // of by bind(2) among every port bound on this address. With the TIME_WAIT sockets of earlier
        // scenarios (thousands, on the same source address) bind's search took the client core from the
        // good client sharing it: its p99 under the `oversized` waves went from ~1 ms to ~10 ms.
        var noPort: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_IP), 24 /* IP_BIND_ADDRESS_NO_PORT */, &noPort, socklen_t(MemoryLayout<Int32>.size))
        var local = sockaddr_in()
        local.sin_family = sa_family_t(AF_INET)
        local.sin_addr.s_addr = inet_addr(source)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let ok = withUnsafePointer(to: &local) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        } == 0 && withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        } == 0
        guard ok else {
            let e = errno
            Glibc.close(fd)
            throw AttackClientError("connect from \(source): \(String(cString: strerror(e)))")
        }
        var me = sockaddr_in()
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &me) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        localPort = Int(UInt16(bigEndian: me.sin_port))
    }

    /// Remote ports of the server's ESTABLISHED connections on `serverPort` (IPv4 loopback), from
    /// /proc/net/tcp: a connection missing here has been dropped by the server, even if the client
    /// was never told (an abort by TCP_USER_TIMEOUT sends nothing).
    static func serverEstablishedPeers(serverPort: Int) -> Set<Int> {
        let fd = open("/proc/net/tcp", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return [] }
        defer { Glibc.close(fd) }
        var bytes: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = read(fd, &buf, buf.count)
            if n <= 0 { break }
            bytes += buf[0..<n]
        }
        var peers = Set<Int>()
        for line in String(decoding: bytes, as: UTF8.self).split(separator: "\n").dropFirst() {
            let f = line.split(separator: " ", omittingEmptySubsequences: true)
            guard f.count > 3, f[3] == "01",
                  let lp = f[1].split(separator: ":").last.flatMap({ Int($0, radix: 16) }), lp == serverPort,
                  let rp = f[2].split(separator: ":").last.flatMap({ Int($0, radix: 16) }) else { continue }
            peers.insert(rp)
        }
        return peers
    }

    deinit { close() }

    func setNonBlocking() {}  // every call below uses MSG_DONTWAIT

    /// Sends what the socket takes now: bytes sent, 0 when full, -1 when the connection is gone.
    func sendSome(_ bytes: ArraySlice<UInt8>) -> Int {
        guard !closed, !bytes.isEmpty else { return 0 }
        let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress!, $0.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) }
        if n >= 0 { return n }
        return (errno == EAGAIN || errno == EINTR) ? 0 : -1
    }

    /// Reads what is there without blocking; returns the first bytes the server ever sent once the
    /// server has closed (EOF or reset), nil while the connection is open. `peekOnly`: do not consume.
    func pollClosed(peekOnly: Bool = false) -> ArraySlice<UInt8>? {
        var buf = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, 65536, Int32(MSG_DONTWAIT) | (peekOnly ? Int32(MSG_PEEK) : 0)) }
            if n > 0 {
                if firstBytes.count < 64 { firstBytes += buf[0..<min(n, 64 - firstBytes.count)] }
                if peekOnly { return nil }
                continue
            }
            if n == 0 { return firstBytes[...] }
            if errno == EINTR { continue }
            if errno == EAGAIN { return nil }
            return firstBytes[...]  // ECONNRESET and friends: gone
        }
    }

    /// Whether the server closed or reset the connection, judged from the TCP state (TCP_INFO), so a
    /// client that does not read can tell without reading (which would let the server make progress).
    func peerClosedWithoutReading() -> Bool {
        var info = [UInt8](repeating: 0, count: 256)
        var len = socklen_t(info.count)
        guard getsockopt(fd, Int32(IPPROTO_TCP), TCP_INFO, &info, &len) == 0 else { return true }
        let state = info[0]  // tcpi_state: 1 established, 7 close (reset), 8 close-wait (FIN received)
        return state != 1
    }

    /// Milliseconds since data last arrived on this connection (TCP_INFO `tcpi_last_data_recv`), read
    /// without reading the data; nil once the connection is no longer established.
    func millisSinceDataArrived() -> UInt32? {
        var info = tcp_info()
        var len = socklen_t(MemoryLayout<tcp_info>.size)
        guard getsockopt(fd, Int32(IPPROTO_TCP), TCP_INFO, &info, &len) == 0, info.tcpi_state == 1 else { return nil }
        return info.tcpi_last_data_recv
    }

    /// Closes with RST instead of FIN.
    func resetClose() {
        var l = linger(l_onoff: 1, l_linger: 0)
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, socklen_t(MemoryLayout<linger>.size))
        close()
    }

    func close() {
        if !closed { closed = true; Glibc.close(fd) }
    }
}

/// The well-behaved client: one connection from 127.0.0.1 doing request/response (a 64-byte echo,
/// or GET /plaintext), timing each and checking every byte.
final class GoodClient {
    private let fd: Int32
    private let http: Bool
    private var seq: UInt64 = 0
    private var buf = [UInt8](repeating: 0, count: 4096)

    struct Measurement {
        var samples: [Double]  // µs
        var p99: Double {
            guard !samples.isEmpty else { return 0 }
            let s = samples.sorted()
            return s[min(s.count - 1, Int(Double(s.count) * 0.99))]
        }
    }

    init(port: Int, http: Bool, token: String?) throws {
        self.http = http
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw AttackClientError("socket") }
        var tv = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let r = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard r == 0 else { Glibc.close(fd); throw AttackClientError("good client connect: \(String(cString: strerror(errno)))") }
        if let token { try sendAll(Array((token + "\n").utf8)) }
    }

    func close() { Glibc.close(fd) }

    private func sendAll(_ bytes: [UInt8]) throws {
        var off = 0
        while off < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + off, bytes.count - off, Int32(MSG_NOSIGNAL)) }
            if n < 0 { if errno == EINTR { continue }; throw AttackClientError("good client send: \(String(cString: strerror(errno)))") }
            off += n
        }
    }

    private func receive(exactly count: Int, into out: inout [UInt8]) throws {
        out.removeAll(keepingCapacity: true)
        while out.count < count {
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, min(4096, count - out.count), 0) }
            if n == 0 { throw AttackClientError("good client: EOF") }
            if n < 0 { if errno == EINTR { continue }; throw AttackClientError("good client recv: \(String(cString: strerror(errno)))") }
            out += buf[0..<n]
        }
    }

    /// One request/response; returns its latency in µs.
    func roundTrip() throws -> Double {
        seq += 1
        let start = DispatchTime.now().uptimeNanoseconds
        if http {
            try sendAll(Array("GET /plaintext HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
            var head: [UInt8] = []
            var byte = [UInt8](repeating: 0, count: 1)
            while !(head.count >= 4 && head.suffix(4).elementsEqual([13, 10, 13, 10])) {
                let n = recv(fd, &byte, 1, 0)
                if n <= 0 { if n < 0 && errno == EINTR { continue }; throw AttackClientError("good client: no response head") }
                head.append(byte[0])
            }
            let text = String(decoding: head, as: UTF8.self)
            guard text.hasPrefix("HTTP/1.1 200"),
                  let r = text.range(of: "content-length: ", options: .caseInsensitive),
                  let len = Int(text[r.upperBound...].prefix { $0.isNumber }) else {
                throw AttackClientError("good client: bad response head \(text.prefix(60))")
            }
            var body: [UInt8] = []
            try receive(exactly: len, into: &body)
            guard body == Array("Hello, World!".utf8) else { throw AttackClientError("good client: wrong body") }
        } else {
            var msg = [UInt8](repeating: 0, count: 64)
            for i in 0..<64 { msg[i] = UInt8(truncatingIfNeeded: seq &* 31 &+ UInt64(i)) }
            try sendAll(msg)
            var back: [UInt8] = []
            try receive(exactly: 64, into: &back)
            guard back == msg else { throw AttackClientError("good client: echo mismatch at request \(seq)") }
        }
        return Double(DispatchTime.now().uptimeNanoseconds - start) / 1000
    }

    /// Round trips for `seconds`.
    func measure(seconds: Double) throws -> Measurement {
        var samples: [Double] = []
        let end = DispatchTime.now().uptimeNanoseconds + UInt64(seconds * 1e9)
        while DispatchTime.now().uptimeNanoseconds < end { samples.append(try roundTrip()) }
        return Measurement(samples: samples)
    }
}
