import Foundation
import Glibc

/// The attack suite's helpers: waiting for the server to cut attackers off, reading the server's
/// descriptors and stop line, the summary table.
extension Attack {
    /// Waits until the server closed every socket (EOF or reset), up to `limit` seconds from `t0`;
    /// returns when each was seen closed (seconds since `t0`). `reply` gets each socket's first bytes.
    /// `reading: false` judges from the TCP state without reading (for clients that must not read).
    /// `dataArrived` (non-reading clients only) gets, for each open connection on every pass, its index
    /// and when data from the server last arrived (seconds since `t0`).
    func waitClosed(_ socks: [RawSocket], limit: Double, t0: Date, reading: Bool = true, serverPort: Int = 0,
                    reply: ((ArraySlice<UInt8>) -> Void)? = nil,
                    dataArrived: ((Int, Double) -> Void)? = nil) -> [Double?] {
        var closedAt = [Double?](repeating: nil, count: socks.count)
        while Date().timeIntervalSince(t0) < limit {
            var remaining = 0
            let established = reading ? [] : RawSocket.serverEstablishedPeers(serverPort: serverPort)
            for (i, s) in socks.enumerated() where closedAt[i] == nil {
                if !reading {
                    if let dataArrived, let ms = s.millisSinceDataArrived() {
                        dataArrived(i, Date().timeIntervalSince(t0) - Double(ms) / 1000)
                    }
                    // Cut off: the client saw a reset or FIN, or the server no longer has the connection.
                    if s.peerClosedWithoutReading() || !established.contains(s.localPort) {
                        closedAt[i] = Date().timeIntervalSince(t0)
                    } else { remaining += 1 }
                } else if let r = s.pollClosed() {
                    closedAt[i] = Date().timeIntervalSince(t0)
                    reply?(r)
                } else { remaining += 1 }
            }
            if remaining == 0 { break }
            usleep(10_000)
        }
        return closedAt
    }

    static func fdCount(_ pid: Int32) -> Int {
        guard let d = opendir("/proc/\(pid)/fd") else { return -1 }
        defer { closedir(d) }
        var n = 0
        while readdir(d) != nil { n += 1 }
        return n - 2
    }

    /// `key=value` or `key: value` from a swift-log line's metadata.
    static func metadataValue(_ line: String, _ key: String) -> Int? {
        guard let r = line.range(of: key + "=") else { return nil }
        return Int(line[r.upperBound...].prefix { $0.isNumber })
    }

    func printTable(_ results: [AttackResult]) {
        print("")
        print("| scenario | backend | attackers | cut off (limit) | peak RSS MiB | good p99 µs (alone -> attacked) | server fds | result |")
        print("|---|---|---|---|---|---|---|---|")
        for r in results {
            let cut = r.cutoffSeconds.map { String(format: "%.2f s", $0) } ?? "-"
            let lim = r.expectedCutoffSeconds.map { String(format: " (%.1f s)", $0) } ?? ""
            print("| \(r.scenario) | \(r.backend) | \(r.attackers) | \(cut)\(lim) | \(String(format: "%.1f", r.peakRSSMiB)) | "
                + "\(String(format: "%.0f", r.goodP99BaseMicros)) -> \(String(format: "%.0f", r.goodP99AttackMicros)) | "
                + "\(r.fdsBefore) -> \(r.fdsAfter) | \(r.failures.isEmpty ? "ok" : "FAIL") |")
        }
    }
}
