import CLiburing
import Glibc

/// How the loop sleeps. Deadlines (connection timers, the drain deadline) are kept by one
/// IORING_OP_TIMEOUT on the ring, re-armed only when the next one is earlier than the armed one, so a
/// wait carries no timeout of its own: the kernel arms no hrtimer per entry, and an idle loop sleeps
/// until a completion or its next deadline. A busy loop may wait for a batch of completions
/// (`batchLimit`), bounded by the kernel's minimum-wait timeout so a lone completion is never held
/// back longer than `batchWaitMicros`. A loop that submits message-sized sends and has nothing else
/// ready waits for two completions (the send wait, bounded by `sendWaitMicros`): the send's own, posted
/// during the submission, and the next, so answering a request and sleeping until the next one is one
/// entry.
extension UringBackend {
    /// Submits what is queued and waits for completions; returns what the kernel returned.
    @inline(__always) func waitForCompletions() -> Int32 {
        let sends = bulkSendPrepared ? 0 : sendsPrepared  // (bulk: a send that must not wait was prepared)
        sendsPrepared = 0
        bulkSendPrepared = false
        let limit = executorRef._withUnsafeGuaranteedRef { $0.waitLimitNanos(stopping: core.stopping) }
        if let limit {
            // Jobs pending (0: do not sleep), or tasks finishing during a stop (poll every millisecond).
            return limit == 0 ? ring.submitAndWait(0) : ring.submitAndWait(1, timeoutNanos: limit)
        }
        armLoopTimer()
        let idle = io_uring_cq_ready(ring.ring) == 0
        let batch = batchLimit > 1 && lastReaped > 1
        // The send wait: a small send completes during the submission (its completion is posted before
        // the wait starts), so asking for one completion would return at once and the loop would enter
        // again to sleep; asking for two sleeps until the next completion after it (one entry per
        // request-response at one connection, not two). A relative timeout on the ring bounds it (one
        // in flight at a time, armed by the first send wait after it fired): its completion is the
        // second one at the latest. If the sends did not complete at once, the first completion to come
        // waits at most that long for a second. Only for one message-sized send (one chunk) of an
        // open connection after a reap of at most two completions (the loop answering one client at
        // a time): a bulk send's completion drives the next piece of its stream, a close or shutdown
        // waits on its send's completion, and a busy loop has more completions coming anyway (at 50
        // connections the wait raised p50 latency by a fifth: it batched).
        let sendWait = !batch && idle && sends == 1 && lastReaped <= 2 && !core.stopping && sendWaitMicros > 0
            && armSendWaitTimer()
        core.counters.loopWaits &+= 1
        if sendWait { core.counters.sendWaits &+= 1 }
        // No completion waiting in the ring: the wait will most likely sleep, so readers get the figures
        // now (an enter can still find completions its task work posts; that only publishes early).
        if idle { core.publishStatsBeforeSleeping(control) }
        if batch { return ring.submitAndWait(min(lastReaped, batchLimit), minWaitMicros: batchWaitMicros) }
        if sendWait { return ring.submitAndWait(2) }
        return ring.submitAndWait(1)
    }

    /// The send wait's bound: arms its relative timeout unless one is in flight (it then fires within
    /// the bound anyway). False when no SQE could be had: the wait must not ask for two then.
    @inline(__always) private func armSendWaitTimer() -> Bool {
        if sendWaitTimerArmed { return true }
        guard deferred.isEmpty, fill(UserData(.sendWaitTimer)) else { return false }
        sendWaitTimerArmed = true
        return true
    }

    /// Makes sure the loop timer fires by the next deadline (ms resolution, like the timer wheel).
    @inline(__always) private func armLoopTimer() {
        var due = UInt64.max
        if let t = core.nextTimerDue() { due = t }
        if core.stopping, let d = core.drainDeadline {  // (checked only while stopping: Instant is resilient)
            let left = ContinuousClock.now.duration(to: d)
            let ms = max(1, left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000)
            due = min(due, core.now &+ UInt64(ms))
        }
        guard due != .max, loopTimerDue == 0 || due < loopTimerDue else { return }
        loopTimerDue = due
        loopTimerSpec.pointee = __kernel_timespec(tv_sec: Int64(due / 1000), tv_nsec: Int64(due % 1000) * 1_000_000)
        prepare(Self.loopTimerData(due))
    }

    /// The due time travels in the user data (56 bits: slot and generation), so a completion of an
    /// earlier, superseded timer is told apart from the armed one.
    @inline(__always) static func loopTimerData(_ due: UInt64) -> UserData {
        UserData(.loopTimer, slot: Int32(bitPattern: UInt32(truncatingIfNeeded: due)),
                 generation: UInt32(truncatingIfNeeded: due >> 32))
    }

    /// A loop timer completed (-ETIME when it fired; the wheel runs after the reap anyway).
    @inline(__always) func loopTimerFired(_ ud: UserData) {
        let due = UInt64(UInt32(bitPattern: ud.slot)) | UInt64(ud.generation) << 32
        if due == loopTimerDue { loopTimerDue = 0 }
    }
}
