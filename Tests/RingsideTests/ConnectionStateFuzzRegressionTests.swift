import Testing
@testable import Ringside

/// Cases found by the fuzz-connection-state target (Fuzz/), each kept as a unit test beside its
/// reproducer in Fuzz/Corpus/connection-state/regress-*.
@Suite struct ConnectionStateFuzzRegressionTests {
    /// regress-starve-while-cancelling: backpressure cancels the receive, then the receive ends on
    /// ENOBUFS before the cancel completes. The machine used to mark the receive `starved`, forgetting
    /// the cancel still in flight: once buffers returned it armed a new receive (same user_data) with
    /// the old cancel's completion still to come, and a later pause could take that completion for its
    /// own cancel's. Now the receive stays `awaitingCancel` until the cancel completes, and only then
    /// may be armed again.
    @Test func starvingWhileTheCancelIsInFlightWaitsForTheCancel() {
        var c = ServerStats()
        var s = ConnectionStateTests.open()
        #expect(ConnectionStateTests.drain(&s, &c) == [.armReceive])
        s.handlerPaused = true
        #expect(ConnectionStateTests.drain(&s, &c) == [.cancelReceive])
        #expect(s.receive == .cancelling)
        // The multishot's final completion: -ENOBUFS (UringBackend.completeRecv, receiveFailed).
        s.receiveEnded()
        #expect(s.receive == .awaitingCancel)
        let joined = s.starve()
        #expect(!joined, "not put on the starved list while the cancel is in flight")
        #expect(s.receive == .awaitingCancel)
        // Buffers return and the handler resumes: still no new receive before the cancel completes.
        s.unstarve()
        s.handlerPaused = false
        #expect(ConnectionStateTests.drain(&s, &c) == [])
        #expect(s.receive == .awaitingCancel)
        s.cancelCompleted()
        #expect(s.receive == .idle)
        #expect(ConnectionStateTests.drain(&s, &c) == [.armReceive])
        // If the ring is still dry, the new receive ends on ENOBUFS and starves as usual.
        s.receiveEnded()
        let joinedNow = s.starve()
        #expect(joinedNow)
        #expect(s.receive == .starved)
        #expect(ConnectionStateTests.drain(&s, &c) == [])
    }
}
