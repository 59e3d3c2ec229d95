/// Connection timers and the engine's deadlines (authentication, idle, read, write stall, linger).
extension LoopCore {
    /// Fires every due connection timer through `fire` (called with the slot), then enforces due
    /// deadlines, at the loop clock the backend refreshed (`tick()`) after its wait.
    @inline(__always) func expireTimers(_ fire: (Int32) -> Void) {
        if timers.armed > 0 {
            let n = timers.expire(now: now, into: dueTimers)
            for k in 0..<n { fire(dueTimers[k]) }
        }
        if deadlines.armed > 0 {
            let n = deadlines.expire(now: now, into: dueTimers)
            for k in 0..<n { checkDeadlines(dueTimers[k]) }
        }
    }

    /// The earliest timer or deadline (absolute CLOCK_MONOTONIC milliseconds), or nil.
    @inline(__always) func nextTimerDue() -> UInt64? {
        switch (timers.nextDue, deadlines.nextDue) {
        case (nil, nil): return nil
        case (let a?, nil): return a
        case (nil, let b?): return b
        case (let a?, let b?): return min(a, b)
        }
    }

    /// How long the loop may sleep before a timer or deadline is due (nil: none armed).
    func millisUntilNextTimer() -> UInt64? {
        guard let due = nextTimerDue() else { return nil }
        let t = monotonicMillis()
        return due <= t ? 0 : due - t
    }

    /// Refreshes the loop clock (once per iteration, before completions are handled).
    @inline(__always) func tick() { now = monotonicMillis() }

    /// Publishes the counters for `ServerStats` readers at a bounded rate: at most once per loop
    /// millisecond while the loop is busy, and on every iteration while stopping (so the last figures
    /// are exact). An iteration in the same millisecond as the last publish only notes that its changes
    /// are unpublished; the backend publishes them (`publishStatsBeforeSleeping`) before a wait that is
    /// going to sleep, so a reader never sees figures older than a millisecond of busy looping, and an
    /// idle loop has published everything. A busy loop thus takes the readers' mutex and copies the
    /// counters about 1,000 times a second instead of once per wait.
    @inline(__always) func publishStats(_ control: LoopControl) {
        guard now != statsPublishedAt || stopping else { statsUnpublished = true; return }
        publishStatsNow(control)
    }

    /// Publishes what `publishStats` left unpublished; called just before the loop sleeps.
    @inline(__always) func publishStatsBeforeSleeping(_ control: LoopControl) {
        if statsUnpublished { publishStatsNow(control) }
    }

    private func publishStatsNow(_ control: LoopControl) {
        refreshGauges()
        publishCounters(control)
        statsPublishedAt = now
        statsUnpublished = false
    }

    /// The queue of `slot` is becoming non-empty: the write-stall clock starts now. Arms the deadline
    /// entry if it is not armed (when armed, it is due within one stall period: see `recheck`).
    @inline(__always) func startStallClock(_ slot: Int32) {
        let i = Int(slot)
        states[i].lastSendProgress = now
        if limits.writeStallMillis > 0 && states[i].traits.contains(.deadlines) && !deadlines.isArmed(slot) {
            deadlines.arm(slot, at: now + limits.writeStallMillis)
        }
    }

    /// Records input on `slot` (idle deadline). One store per receive.
    @inline(__always) func noteReceived(_ slot: Int32) { states[Int(slot)].lastActivity = now }

    func startDeadlines(_ s: Int32) {
        let i = Int(s)
        guard limits.authenticationMillis | limits.idleMillis | limits.writeStallMillis != 0 else { return }
        states[i].traits.insert(.deadlines)
        states[i].lastActivity = now
        states[i].lastSendProgress = now
        states[i].authDue = limits.authenticationMillis > 0 ? now + limits.authenticationMillis : 0
        if let due = nextDeadline(s)?.due { deadlines.arm(s, at: recheck(due)) }
    }

    /// When to look at a connection's deadlines again: at `due`, but never later than one write-stall
    /// period from now. That invariant lets a queue that starts stalling be caught on time without
    /// re-arming the wheel on every write (the stall clock only stores a timestamp).
    @inline(__always) private func recheck(_ due: UInt64) -> UInt64 {
        limits.writeStallMillis > 0 ? min(due, now + limits.writeStallMillis) : due
    }

    func setReadDeadline(_ s: Int32, at due: UInt64) {
        let i = Int(s)
        states[i].readDue = due
        states[i].traits.insert(.deadlines)
        let at = recheck(due)  // keep the entry due within one write-stall period (see `recheck`)
        if !deadlines.isArmed(s) || deadlines.due(s) > at { deadlines.arm(s, at: at) }
    }

    /// The earliest deadline that applies to `s` now, and which one.
    private func nextDeadline(_ s: Int32) -> (due: UInt64, kind: Deadline)? {
        let st = states[Int(s)]
        var best: (due: UInt64, kind: Deadline)? = nil
        func consider(_ due: UInt64, _ kind: Deadline) {
            if due != 0 && (best == nil || due < best!.due) { best = (due, kind) }
        }
        // (A splice in flight is output in flight with no queued chunk: `sendInFlight`, `sendHead` -1.)
        if (st.sendHead >= 0 || st.sendInFlight || st.directiveBytes >= 0) && limits.writeStallMillis > 0 {
            consider(st.lastSendProgress + limits.writeStallMillis, .writeStall)
        }
        if !st.timedOut {
            consider(st.authDue, .authentication)
            consider(st.readDue, .read)
            if limits.idleMillis > 0 { consider(st.lastActivity + limits.idleMillis, .idle) }
        }
        return best
    }

    /// Starts lingering on `s` (the state machine entered `.lingering`): what was held back is released,
    /// and the deadline wheel ends the linger at `lingerTimeout`.
    func startLinger(_ s: Int32) {
        let i = Int(s)
        discardHeld(slot: s)
        if states[i].input == .endPending { states[i].input = .ended }
        states[i].readDue = now + limits.lingerMillis
        deadlines.arm(s, at: states[i].readDue)
    }

    /// The deadline entry of `s` came due: close it if a deadline really passed, else re-arm for the
    /// earliest one (activity since arming moved it).
    private func checkDeadlines(_ s: Int32) {
        let i = Int(s)
        switch states[i].phase {
        case .open, .draining: break
        case .lingering:
            // Lingering is not a timeout: when its time is up the connection just closes.
            if states[i].readDue <= now { states[i].lingerDone = true; markDirty(s) }
            else { deadlines.arm(s, at: states[i].readDue) }
            return
        default: return
        }
        guard let (due, kind) = nextDeadline(s) else { return }
        if due > now { deadlines.arm(s, at: recheck(due)); return }
        // A splice in flight reports progress only when it completes; interrupt it to learn whether the
        // peer took anything meanwhile (it then ends the connection itself if not).
        if kind == .writeStall && states[i].sendHead < 0 && states[i].sendInFlight,
           let splicer, splicer.probeStalledSplice(slot: s) {
            deadlines.arm(s, at: now + limits.writeStallMillis)
            return
        }
        switch kind {
        case .authentication: counters.authenticationTimeouts += 1
        case .idle: counters.idleTimeouts += 1
        case .read: counters.readTimeouts += 1
        case .writeStall: counters.writeStallTimeouts += 1
        }
        // A stalled queue will never flush: abort. Otherwise close gracefully (what is queued still
        // leaves), with the write stall still watching it.
        let abort = kind == .writeStall || states[i].timedOut
        states[i].timedOut = true
        requestClose(slot: s, abort: abort, reason: .timedOut(kind))
        if !abort, let next = nextDeadline(s) { deadlines.arm(s, at: max(next.due, now + 1)) }
    }
}
