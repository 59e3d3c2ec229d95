import Glibc
import Ringside
import Testing

/// Writes "tick" when its timer fires, re-arming until `ticks` were sent, then closes.
private struct Ticker: ConnectionHandler {
    var left = 3
    mutating func opened(on connection: Connection) { connection.setTimer(after: .milliseconds(30)) }
    mutating func received(_ bytes: ReceivedBytes, on connection: Connection) {}
    mutating func timerFired(on connection: Connection) {
        try? connection.write(Array("tick".utf8))
        left -= 1
        if left > 0 { connection.setTimer(after: .milliseconds(30)) } else { connection.close() }
    }
}

/// Arms a long timer and cancels it on the first byte: the timer must never fire.
private struct CancelsTimer: ConnectionHandler {
    mutating func opened(on connection: Connection) { connection.setTimer(after: .milliseconds(100)) }
    mutating func received(_ bytes: ReceivedBytes, on connection: Connection) {
        connection.cancelTimer()
        try? connection.write(Array("ok".utf8))
    }
    mutating func timerFired(on connection: Connection) { try? connection.write(Array("FIRED".utf8)) }
}

@Suite(.serialized) struct TimerTests {
    @Test(arguments: allBackends) func timersFireInOrderAndRearm(_ backend: BackendKind) throws {
        try withServer(backend, handler: { Ticker() }) { server in
            let start = ContinuousClock.now
            let clients = try (0..<200).map { _ in try TestClient(port: server.port) }
            for c in clients {
                let got = try c.receiveUntilEOF()
                #expect(got == Array("tickticktick".utf8), "got \(String(decoding: got, as: UTF8.self))")
            }
            let elapsed = ContinuousClock.now - start
            #expect(elapsed >= .milliseconds(90), "three 30 ms timers cannot finish in \(elapsed)")
            #expect(elapsed < .seconds(3))
        }
    }

    @Test(arguments: allBackends) func cancelledTimerNeverFires(_ backend: BackendKind) throws {
        try withServer(backend, handler: { CancelsTimer() }) { server in
            let c = try TestClient(port: server.port)
            try c.send([1])
            #expect(try c.receive(exactly: 2) == Array("ok".utf8))
            usleep(250_000)
            try c.send([2])
            #expect(try c.receive(exactly: 2) == Array("ok".utf8), "a cancelled timer fired")
        }
    }
}
