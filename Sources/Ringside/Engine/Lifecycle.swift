/// What a backend does for the connection state machine: the I/O half of each action. Everything
/// else (the decisions, the queue, the handler calls) is `HandlerTable.service`, shared by both
/// backends.
protocol ConnectionIO: AnyObject {
    /// Whether a receive nobody wants must be stopped (epoll: level-triggered readiness would spin);
    /// such backends stop it synchronously.
    static var cancelsUnwantedReceive: Bool { get }
    /// Start sending the queue; the state machine marked the send in flight. Call `sendStarted` with
    /// what the send covers, and (synchronous backends) `sendEnded` once the queue is flushed.
    func startSend(_ slot: Int32)
    /// Arm the receive (io_uring: a multishot receive; epoll: EPOLLIN, registered in `settle`).
    func armReceive(_ slot: Int32)
    /// Stop the receive (io_uring: an async cancel; its completions arrive later).
    func cancelReceive(_ slot: Int32)
    /// shutdown(SHUT_WR).
    func shutdownWrite(_ slot: Int32)
    /// Cancel what is in flight, reset when `abort` (SO_LINGER 0), close the descriptor. Synchronous
    /// backends set `fdClosed`; io_uring sets it on the close's completion.
    func close(_ slot: Int32, abort: Bool)
    /// Close the descriptor of an outbound connection that never connected.
    func closeUnconnected(_ slot: Int32)
    /// After the slot's actions: bring backend-side registrations in line with the state (epoll).
    func settle(_ slot: Int32)
}

extension HandlerTable {
    /// Runs `slot`'s state machine until it has nothing more to do, turning each action into handler
    /// calls and `io` operations. Called for every dirty slot, after completions and handler calls.
    @inline(__always) func service<IO: ConnectionIO>(_ slot: Int32, io: IO) {
        withCore { core in
            let i = Int(slot)
            let env = core.environment(cancelsUnwantedReceive: IO.cancelsUnwantedReceive)
            while true {
                let action = core.states[i].nextAction(env, &core.counters)
                switch action {
                case .none:
                    switch core.states[i].phase {
                    case .open, .draining, .lingering: io.settle(slot)
                    default: break
                    }
                    return
                case .releaseUnconnected:
                    io.closeUnconnected(slot)
                    core.freeSlot(slot)
                    return
                case .finalize:
                    core.discardQueue(slot: slot)
                    finalize(slot, reason: core.states[i].closeReason)
                    core.freeSlot(slot)
                    return
                case .teardown(let abort):
                    if core.states[i].sendInFlight && core.states[i].inflightChunks > 1 { core.counters.teardownsWithSendInFlight += 1 }
                    core.discardHeld(slot: slot)
                    core.discardQueue(slot: slot)  // keeps what a send in flight still reads
                    io.close(slot, abort: abort)
                case .send: io.startSend(slot)
                case .armReceive: io.armReceive(slot)
                case .cancelReceive: io.cancelReceive(slot)
                case .shutdownWrite: io.shutdownWrite(slot)
                case .beginLinger(let fin):
                    core.startLinger(slot)
                    if fin { io.shutdownWrite(slot) }
                case .deliverHeld: deliverHeld(slot, io: io)
                case .notifyWritable: writable(slot)
                }
            }
        }
    }

    /// Delivers held chunks in order until none are left or the connection pauses again; then a
    /// pending end-of-file.
    private func deliverHeld<IO: ConnectionIO>(_ slot: Int32, io: IO) {
        withCore { core in
            let i = Int(slot)
            while core.states[i].heldHead >= 0 && !core.states[i].readPaused && core.states[i].phase == .open {
                let c = core.popHeld(slot: slot)
                let (s, e) = core.pool.range(c)
                if !received(slot, chunk: c, offset: s, count: e - s) { core.pool.release(c) }
                if core.states[i].pauseIfNeeded(highWatermark: core.highWatermark, &core.counters) { io.cancelReceive(slot) }
            }
            if core.states[i].heldHead < 0 && core.states[i].input == .endPending {
                core.states[i].input = .ended
                if core.states[i].phase == .open { inputClosed(slot) }
            }
        }
    }
}
