import Foundation
import Glibc

/// The longer attack scenarios, each on its own (see `Attack.attack`).
extension Attack {
    func slowloris(port: Int) -> AttackOutcome {
        let t0 = Date()
        func since() -> Double { Date().timeIntervalSince(t0) }
        // Request heads dribbled a byte at a time; the header deadline (2 s) must answer 408 and close.
        let n = count(500)
        let socks = (0..<n).compactMap { _ in try? RawSocket(port: port, source: "127.0.0.2") }
        let head = Array("GET /plaintext HTTP/1.1\r\nHost: x\r\nX-Slow: ".utf8)
        var k = 0
        var closedAt = [Double?](repeating: nil, count: socks.count)
        var saw408 = 0
        // A byte per 200 ms on an absolute schedule (the time a round takes does not stretch it).
        let pacer = Schedule(interval: 200_000_000)
        while since() < 10 && closedAt.contains(where: { $0 == nil }) {
            for (i, c) in socks.enumerated() where closedAt[i] == nil {
                _ = c.sendSome([k < head.count ? head[k] : UInt8(ascii: "a")])
                if let reply = c.pollClosed() {
                    closedAt[i] = since()
                    if reply.starts(with: Array("HTTP/1.1 408".utf8)) { saw408 += 1 }
                }
            }
            k += 1
            pacer.waitForNext()
        }
        socks.forEach { $0.close() }
        var o = outcome(socks.count, closedAt, expected: 2, what: "slowloris heads, a byte per 200 ms (\(pacer.summary))")
        o.detail += ", \(saw408) answered 408"
        if saw408 < socks.count * 9 / 10 { o.failures.append("only \(saw408)/\(socks.count) got 408") }
        return o
    }

    func uploadNoRead(port: Int) -> AttackOutcome {
        let t0 = Date()
        func since() -> Double { Date().timeIntervalSince(t0) }
        // 200 MB pushed at an echo without reading the echo: paused at the watermark, then cut off by
        // the write-stall timeout (2 s) once its queue stops moving.
        guard let c = try? RawSocket(port: port, source: "127.0.0.2", receiveBuffer: 4096) else { return failed("connect") }
        let total = count(200 << 20)
        var sent = 0
        var lastProgress = since()
        let chunk = [UInt8](repeating: 0x5A, count: 256 * 1024)
        var closed: Double? = nil
        while sent < total && since() < 20 {
            let n = c.sendSome(chunk[0..<min(chunk.count, total - sent)])
            if n > 0 { sent += n; lastProgress = since() }
            else if n < 0 { closed = since(); break }
            else {
                if c.peerClosedWithoutReading()
                    || !RawSocket.serverEstablishedPeers(serverPort: port).contains(c.localPort) { closed = since(); break }
                usleep(5_000)
            }
        }
        if closed == nil { closed = waitClosed([c], limit: since() + 10, t0: t0, reading: false, serverPort: port)[0] }
        c.close()
        var o = AttackOutcome(attackers: 1, cutoff: closed, expectedCutoff: lastProgress + 2,
                              detail: "uploaded \(sent >> 20) MiB of \(total >> 20) MiB without reading; last progress at \(String(format: "%.2f", lastProgress)) s")
        if closed == nil { o.failures.append("never cut off") }
        return o
    }

    func badRequestWaves(_ s: Scenario, port: Int) -> AttackOutcome {
        let t0 = Date()
        func since() -> Double { Date().timeIntervalSince(t0) }
        // Waves of bad requests for 1.5 s. oversized: a 64 KiB header line (limit 16 KiB) must get
        // 431 and a close at once; garbage: 4 KiB of random bytes must get a 4xx and a close.
        var rng = UInt64(0x1234_5678)
        var junk = [UInt8](repeating: 0, count: 4096)
        for i in 0..<junk.count { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; junk[i] = UInt8(truncatingIfNeeded: rng) }
        let big = Array("GET / HTTP/1.1\r\nX-Big: ".utf8) + [UInt8](repeating: 0x41, count: 64 * 1024)
        let payload = s == .oversized ? big : junk
        let expect = Array((s == .oversized ? "HTTP/1.1 431" : "HTTP/1.1 4").utf8)
        var total = 0, statuses = 0, slowest = 0.0, open = 0
        // Waves on an absolute schedule: 1,500 connections/s of bad requests, not a connection-rate flood.
        let wave = count(100)
        let pacer = Schedule(interval: UInt64(Double(wave) / 1500 * 1e9))
        while since() < 1.5 {
            let socks = (0..<wave).compactMap { _ in try? RawSocket(port: port, source: "127.0.0.2") }
            let w0 = Date()
            for c in socks { _ = c.sendSome(payload[...]) }
            let closedAt = waitClosed(socks, limit: 5, t0: w0) { reply in if reply.starts(with: expect) { statuses += 1 } }
            socks.forEach { $0.close() }
            total += socks.count
            open += closedAt.filter { $0 == nil }.count
            slowest = max(slowest, closedAt.compactMap { $0 }.max() ?? 0)
            pacer.waitForNext()
        }
        let achieved = Double(total) / max(since(), 1e-9)
        var o = AttackOutcome(attackers: total, cutoff: slowest, expectedCutoff: 0,
                              detail: "\(total) connections sent \(s == .oversized ? "64 KiB header lines" : "4 KiB of random bytes") in waves of \(wave) "
                                  + String(format: "(1,500/s scheduled, %.0f/s achieved; ", achieved) + pacer.summary + ")"
                                  + ", \(statuses) answered \(s == .oversized ? "431" : "4xx"); cut-off is the slowest per connection")
        if open > 0 { o.failures.append("\(open) never closed") }
        if statuses < total * 9 / 10 { o.failures.append("only \(statuses)/\(total) got the error status") }
        return o
    }

    func stopReading(port: Int) -> AttackOutcome {
        let t0 = Date()
        func since() -> Double { Date().timeIntervalSince(t0) }
        // 50 clients queue megabytes of echo and stop reading: paused, then aborted at the stall timeout.
        let n = count(50)
        let socks = (0..<n).compactMap { _ in try? RawSocket(port: port, source: "127.0.0.2", receiveBuffer: 4096) }
        let payload = [UInt8](repeating: 0x44, count: 4 << 20)
        for c in socks { c.setNonBlocking() }
        var offs = [Int](repeating: 0, count: socks.count)
        let until = since() + 1.5
        while since() < until {
            var progressed = false
            for (i, c) in socks.enumerated() where offs[i] < payload.count {
                let k = c.sendSome(payload[offs[i]...])
                if k > 0 { offs[i] += k; progressed = true }
            }
            if !progressed { usleep(5_000) }
        }
        let stuckAt = since()
        // The write-stall timeout counts from the server's last progress, and a client that stopped
        // reading can still take bytes after it is stuck: its kernel reopens a sliver of window when it
        // compacts its receive queue, and each sliver is progress for the server. So each connection
        // is due 2 s after the later of the moment it got stuck and the last data it received.
        var lastData = [Double](repeating: 0, count: socks.count)
        let closedAt = waitClosed(socks, limit: 12, t0: t0, reading: false, serverPort: port,
                                  dataArrived: { i, at in lastData[i] = max(lastData[i], at) })
        socks.forEach { $0.close() }
        let queued = offs.reduce(0, +)
        let due = lastData.map { max(stuckAt, $0) + 2 }
        var o = outcome(socks.count, closedAt, expected: stuckAt + 2,
                        what: "\(socks.count) clients pushed \(queued >> 20) MiB of echo and stopped reading")
        // Judge the connection cut off latest relative to its own due time.
        if let worst = closedAt.indices.filter({ closedAt[$0] != nil }).max(by: { closedAt[$0]! - due[$0] < closedAt[$1]! - due[$1] }) {
            o.cutoff = closedAt[worst]
            o.expectedCutoff = due[worst]
            o.detail += String(format: "; latest relative to its due time: cut off at %.2f s, data last arrived at %.2f s (stuck at %.2f s)",
                               closedAt[worst]!, lastData[worst], stuckAt)
        }
        // Output the engine already handed to the kernel is cut off by TCP_USER_TIMEOUT, which the
        // kernel checks on its zero-window probe schedule (exponential from 200 ms): up to ~4 s late.
        o.tolerance = 4.5
        return o
    }
}
