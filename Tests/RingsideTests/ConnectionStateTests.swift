import Testing
@testable import Ringside

/// The connection state machine without sockets: every transition, and every event in every phase.
@Suite struct ConnectionStateTests {
    static let uring = ConnectionState.Environment(highWatermark: 1000, lowWatermark: 100, stopping: false,
                                                   lingerEnabled: true, cancelsUnwantedReceive: false)
    static let epoll = ConnectionState.Environment(highWatermark: 1000, lowWatermark: 100, stopping: false,
                                                   lingerEnabled: true, cancelsUnwantedReceive: true)

    /// Runs `nextAction` until `.none` (bounded), returning the actions taken.
    @discardableResult
    static func drain(_ s: inout ConnectionState, _ counters: inout ServerStats,
                      _ env: ConnectionState.Environment = uring) -> [ConnectionState.Action] {
        var out: [ConnectionState.Action] = []
        for _ in 0..<20 {
            let a = s.nextAction(env, &counters)
            if a == .none { return out }
            out.append(a)
            // Terminal: the driver frees the slot (`LoopCore.freeSlot`).
            if a == .finalize || a == .releaseUnconnected { s.phase = .free; return out }
        }
        Issue.record("state machine did not settle: \(out)")
        return out
    }

    static func open() -> ConnectionState {
        var s = ConnectionState()
        s.phase = .open
        return s
    }

    @Test func freeAndConnectingDoNothing() {
        var c = ServerStats()
        var s = ConnectionState()
        #expect(Self.drain(&s, &c) == [])
        s.phase = .connecting
        #expect(Self.drain(&s, &c) == [])
        s.phase = .connectFailed
        #expect(s.nextAction(Self.uring, &c) == .releaseUnconnected)
    }

    @Test func openArmsTheReceiveOnceAndCountsReArms() {
        var c = ServerStats()
        var s = Self.open()
        #expect(Self.drain(&s, &c) == [.armReceive])
        #expect(s.receive == .armed)
        #expect(Self.drain(&s, &c) == [])
        s.receiveEnded()  // a multishot ended (no F_MORE)
        #expect(Self.drain(&s, &c) == [.armReceive])
        #expect(c.recvRearms == 1)
    }

    @Test func oneSendInFlightAtATime() {
        var c = ServerStats()
        var s = Self.open()
        s.receive = .armed
        s.sendHead = 7; s.queuedBytes = 10
        #expect(Self.drain(&s, &c) == [.send])
        #expect(s.sendInFlight)
        s.sendStarted(bytes: 10, chunks: 1)
        #expect(Self.drain(&s, &c) == [])
        s.sendEnded()
        #expect(Self.drain(&s, &c) == [.send])
    }

    @Test func backpressurePausesAndResumes() {
        for env in [Self.uring, Self.epoll] {
            var c = ServerStats()
            var s = Self.open()
            s.receive = .armed
            s.sendHead = 1; s.queuedBytes = 2000; s.sendInFlight = true
            #expect(Self.drain(&s, &c, env) == [.cancelReceive])
            #expect(s.readPaused && s.owesWritable && c.readPauses == 1)
            #expect(s.receive == (env.cancelsUnwantedReceive ? .idle : .cancelling))
            if !env.cancelsUnwantedReceive {
                s.receiveEnded(); #expect(s.receive == .awaitingCancel)
                s.cancelCompleted(); #expect(s.receive == .idle)
            }
            #expect(Self.drain(&s, &c, env) == [])  // still above the low mark
            s.queuedBytes = 50; s.sendInFlight = false; s.sendHead = -1
            #expect(Self.drain(&s, &c, env) == [.notifyWritable, .armReceive])
            #expect(!s.readPaused && !s.owesWritable)
        }
    }

    @Test func cancelCompletingBeforeTheReceiveEndsWaitsForIt() {
        var c = ServerStats()
        var s = Self.open()
        s.receive = .cancelling
        s.readPaused = false
        s.cancelCompleted()  // the cancel found the receive still running: its end follows
        #expect(s.receive == .armed)
        s.receiveEnded()
        #expect(s.receive == .idle)
        #expect(Self.drain(&s, &c) == [.armReceive])
    }

    @Test func heldInputIsDeliveredBeforeReArming() {
        var c = ServerStats()
        var s = Self.open()
        s.heldHead = 3; s.heldTail = 3
        #expect(s.nextAction(Self.uring, &c) == .deliverHeld)
        s.heldHead = -1; s.heldTail = -1
        #expect(s.nextAction(Self.uring, &c) == .armReceive)
    }

    @Test func handlerPauseHoldsEvenBelowTheWatermark() {
        var c = ServerStats()
        var s = Self.open()
        s.receive = .armed
        s.handlerPaused = true
        #expect(Self.drain(&s, &c) == [.cancelReceive])
        s.receiveEnded(); s.cancelCompleted()
        #expect(Self.drain(&s, &c) == [])
        s.handlerPaused = false
        #expect(Self.drain(&s, &c) == [.armReceive])
    }

    @Test func gracefulCloseFlushesThenLingers() {
        var c = ServerStats()
        var s = Self.open()
        s.receive = .armed
        s.sendHead = 1; s.queuedBytes = 10
        let accepted = s.requestClose(abort: false, reason: .closedByHandler); #expect(accepted)
        #expect(s.phase == .draining && !s.acceptsWrites)
        #expect(Self.drain(&s, &c) == [.send])
        s.sendEnded(); s.sendHead = -1; s.queuedBytes = 0
        #expect(Self.drain(&s, &c) == [.beginLinger(sendFIN: true)])
        #expect(s.phase == .lingering && s.output == .shutDown)
        #expect(!s.deliversInput)
        let tellHandler = s.inputEnded(); #expect(tellHandler == false)  // the peer's EOF ends the linger
        #expect(Self.drain(&s, &c) == [.teardown(abort: false)])
        #expect(s.phase == .tearingDown)
    }

    @Test func lingerTimeEndsTheLinger() {
        var c = ServerStats()
        var s = Self.open()
        s.requestClose(abort: false, reason: .closedByHandler)
        _ = Self.drain(&s, &c)
        #expect(s.phase == .lingering)
        s.lingerDone = true
        #expect(Self.drain(&s, &c) == [.teardown(abort: false)])
    }

    @Test func closeWithoutLingerAfterEOFOrTimeoutOrWhenDisabled() {
        var env = Self.uring
        env.lingerEnabled = false
        var c = ServerStats()
        var s = Self.open()
        s.requestClose(abort: false, reason: .closedByHandler)
        #expect(Self.drain(&s, &c, env) == [.teardown(abort: false)])

        var t = Self.open()
        let tellHandler = t.inputEnded(); #expect(tellHandler)
        #expect(t.closeReason == .peerClosed)
        t.requestClose(abort: false, reason: .closedByHandler)
        #expect(t.closeReason == .peerClosed)  // a close answering EOF keeps the peer's reason
        #expect(Self.drain(&t, &c) == [.teardown(abort: false)])

        var u = Self.open()
        u.timedOut = true
        u.requestClose(abort: false, reason: .timedOut(.idle))
        #expect(Self.drain(&u, &c) == [.teardown(abort: false)])
        #expect(u.closeReason == .timedOut(.idle))
    }

    @Test func abortTearsDownAtOnceAndOverridesAGracefulReason() {
        for phase in [ConnectionState.Phase.open, .draining, .lingering] {
            var c = ServerStats()
            var s = Self.open()
            s.phase = phase
            s.sendHead = 1; s.queuedBytes = 10; s.sendInFlight = true
            let accepted = s.requestClose(abort: true, reason: .abortedByHandler); #expect(accepted)
            #expect(s.closeReason == .abortedByHandler)
            #expect(Self.drain(&s, &c) == [.teardown(abort: true)])
            #expect(s.phase == .tearingDown)
            let acceptedAfter = s.requestClose(abort: true, reason: .peerClosed); #expect(!acceptedAfter)  // nothing after teardown
        }
    }

    @Test func finalizeOnlyOnceEverythingCompleted() {
        var c = ServerStats()
        var s = Self.open()
        s.phase = .tearingDown
        s.inflight = 2
        #expect(Self.drain(&s, &c) == [])
        s.inflight = 0
        #expect(Self.drain(&s, &c) == [])  // the close has not completed
        s.fdClosed = true
        s.dirty = true
        #expect(Self.drain(&s, &c) == [])  // still linked in the dirty list
        s.dirty = false
        #expect(s.nextAction(Self.uring, &c) == .finalize)
    }

    @Test func shutdownOutputAfterTheQueueFlushes() {
        var c = ServerStats()
        var s = Self.open()
        s.receive = .armed
        s.sendHead = 1; s.queuedBytes = 5; s.sendInFlight = true
        s.requestShutdownWrite()
        #expect(!s.acceptsWrites)
        #expect(Self.drain(&s, &c) == [])
        s.sendEnded(); s.sendHead = -1; s.queuedBytes = 0
        #expect(Self.drain(&s, &c) == [.shutdownWrite])
        #expect(s.output == .shutDown)
        #expect(s.phase == .open)  // receiving continues
    }

    @Test func stoppingCancelsReceivesOnUringAndStopsArming() {
        var env = Self.uring
        env.stopping = true
        var c = ServerStats()
        var s = Self.open()
        s.receive = .armed
        #expect(Self.drain(&s, &c, env) == [.cancelReceive])
        var t = Self.open()
        #expect(Self.drain(&t, &c, env) == [])
    }

    @Test func endOfFileBehindHeldInputComesAfterIt() {
        var c = ServerStats()
        var s = Self.open()
        s.heldHead = 1; s.heldTail = 1; s.readPaused = true; s.queuedBytes = 2000
        let tellHandler = s.inputEnded(); #expect(!tellHandler)
        #expect(s.input == .endPending)
        s.queuedBytes = 0
        #expect(s.nextAction(Self.uring, &c) == .deliverHeld)
    }

    @Test func starvedReceiveWaitsForBuffers() {
        var c = ServerStats()
        var s = Self.open()
        s.receive = .armed
        s.receiveEnded()
        let newlyStarved = s.starve(); #expect(newlyStarved)
        let starvedAgain = s.starve(); #expect(!starvedAgain)
        #expect(Self.drain(&s, &c) == [])
        s.unstarve()
        #expect(Self.drain(&s, &c) == [.armReceive])
    }

    /// Every event in every phase: the machine never acts on a slot with no connection, never does
    /// anything but finalize a torn-down one, always settles, and only names actions its phase allows.
    @Test func everyEventInEveryPhase() {
        let phases: [ConnectionState.Phase] = [.free, .connecting, .connectFailed, .open, .draining, .lingering, .aborting, .tearingDown]
        let events: [(String, (inout ConnectionState) -> Void)] = [
            ("close", { $0.requestClose(abort: false, reason: .closedByHandler) }),
            ("abort", { $0.requestClose(abort: true, reason: .abortedByHandler) }),
            ("shutdown", { $0.requestShutdownWrite() }),
            ("eof", { _ = $0.inputEnded() }),
            ("sendStarted", { $0.sendStarted(bytes: 1, chunks: 1) }),
            ("sendEnded", { $0.sendEnded() }),
            ("receiveEnded", { $0.receiveEnded() }),
            ("cancelCompleted", { $0.cancelCompleted() }),
            ("starve", { _ = $0.starve() }),
            ("unstarve", { $0.unstarve() }),
            ("queue", { $0.sendHead = 1; $0.queuedBytes = 5000 }),
            ("drained", { if !$0.sendInFlight { $0.sendHead = -1; $0.queuedBytes = 0 } }),
            ("pause", { $0.handlerPaused = true }),
            ("resume", { $0.handlerPaused = false }),
            ("lingerDone", { $0.lingerDone = true }),
            ("closed", { $0.fdClosed = true; $0.inflight = 0 }),
        ]
        for env in [Self.uring, Self.epoll] {
            for phase in phases {
                for (name, event) in events {
                    for receive in [ConnectionState.Receive.idle, .armed, .cancelling, .awaitingCancel, .starved] {
                        var c = ServerStats()
                        var s = ConnectionState()
                        s.phase = phase
                        s.receive = receive
                        event(&s)
                        let actions = Self.drain(&s, &c, env)
                        let where_ = "\(phase) \(receive) after \(name)"
                        switch phase {
                        case .free, .connecting:
                            #expect(actions.isEmpty, "\(where_): \(actions)")
                        case .connectFailed:
                            #expect(actions.allSatisfy { $0 == .releaseUnconnected }, "\(where_): \(actions)")
                        case .tearingDown:
                            #expect(actions.allSatisfy { $0 == .finalize }, "\(where_): \(actions)")
                        case .open, .draining, .lingering, .aborting:
                            let teardowns = actions.filter { if case .teardown = $0 { true } else { false } }
                            #expect(teardowns.count <= 1, "\(where_): \(actions)")
                            if let k = actions.firstIndex(where: { if case .teardown = $0 { true } else { false } }) {
                                #expect(actions[(k + 1)...].allSatisfy { $0 == .finalize }, "\(where_): \(actions)")
                            }
                        }
                        if phase == .free { #expect(actions.isEmpty) }
                    }
                }
            }
        }
    }
}
