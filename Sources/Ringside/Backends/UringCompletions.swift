import CLiburing
import Glibc

/// Completions: each CQE becomes an event of its connection's state machine (or of the listener).
extension UringBackend {
    @inline(__always) func complete(_ ud: UserData, res: Int32, flags: UInt32) {
        guard let kind = ud.kind else { preconditionFailure("unknown user_data \(ud.raw)") }
        switch kind {
        case .recv: completeRecv(ud, res: res, flags: flags)
        case .send: completeSend(ud, res: res)
        case .spliceWrite, .spliceIn, .spliceOut: completeSplice(ud, res: res)
        case .spliceProbe: core.states[Int(ud.slot)].inflight -= 1  // what it found shows in the splice's own result
        case .sendZC: completeZeroCopySend(ud, res: res, flags: flags)
        case .directive: completeDirective(ud, res: res)
        case .close, .cancel, .cancelRecv, .shutdown, .setLinger: completeSlotOp(ud, kind: kind, res: res)
        case .connect: completeConnect(ud, res: res)
        case .accept: completeAccept(ud, res: res, flags: flags)
        case .wake:
            ringInflight -= 1
            control.drainWake()
            if control.stopRequested { beginStop() }
            if !core.stopping { prepare(UserData(.wake)) }
        case .acceptRetryTimer:
            ringInflight -= 1
            if !core.stopping && !acceptArmed[Int(ud.slot)] { armAccept(Int(ud.slot)) }
        case .loopTimer:
            loopTimerFired(ud)
        case .sendWaitTimer:
            sendWaitTimerArmed = false
        case .file:
            files.complete(ud, res: res)
        case .fileCancel:
            ringInflight -= 1
        case .cancelAccept, .closeDirect:
            ringInflight -= 1
        case .closeListener:
            ringInflight -= 1
            listenerClosed = true
        }
    }

    /// Whether `ud` names the slot's current connection; counts and reports stale completions.
    @inline(__always) func current(_ ud: UserData) -> Bool {
        let st = core.states[Int(ud.slot)]
        if ud.matches(generation: st.generation) && st.phase != .free { return true }
        core.counters.staleCompletions += 1
        return false
    }

    private func completeRecv(_ ud: UserData, res: Int32, flags: UInt32) {
        let hasBuffer = flags & IORING_CQE_F_BUFFER != 0
        let chunk = hasBuffer ? Int32(flags >> IORING_CQE_BUFFER_SHIFT) : -1
        // A bundle fills whole buffers from consecutive ring entries; without bundles res fits one.
        let size = pool.receiveChunkSize
        let buffers = !hasBuffer ? 0 : res > size ? (Int(res) + size - 1) / size : 1
        if hasBuffer { provided.noteConsumed(buffers); pool.noteReceivedFromRing(buffers) }
        guard current(ud) else {
            if hasBuffer { releaseBundle(chunk, buffers) }  // never lose a buffer to a stale completion
            return
        }
        let slot = ud.slot
        let i = Int(slot)
        if flags & IORING_CQE_F_MORE == 0 {
            // The multishot ended: this is its final CQE (with data: it reached its byte limit).
            core.states[i].receiveEnded()
            core.states[i].inflight -= 1
            if res > 0 && receiveLimit > 0 { core.counters.receiveBurstLimitEnds += 1 }
        }
        if res > 0 {
            core.counters.bytesIn += Int(res)
            core.noteReceived(slot)
            precondition(hasBuffer, "multishot recv completed with data but no buffer")
            if buffers > 1 { core.counters.bundledReceives += 1; core.counters.bundledBuffers += buffers }
            else if _slowPath(Int(res) == size) && receiveBundles && !core.states[i].traits.contains(.bulkInput) {
                // A full buffer: bulk input. Its receive asks for bundles from its next arming (bundles
                // run only with the per-arming byte limit, `UringProbe`, which ends a multishot after
                // `receiveLimit` bytes, so that comes soon).
                core.states[i].traits.insert(.bulkInput)
                core.counters.bulkInputConnections += 1
            }
            var c = chunk
            var left = Int(res)
            while true {
                let count = min(left, size)
                left -= count
                let next = left > 0 ? provided.chunk(after: c) : -1  // before `c` can go back to the ring
                if !core.states[i].deliversInput {
                    pool.release(c)  // input after close (or while lingering) is dropped
                } else if core.states[i].readPaused || core.states[i].heldHead >= 0 {
                    // The kernel completed this before our cancel landed: keep it, in order, for the
                    // resume, so the handler never sees input while its connection is over the high
                    // watermark.
                    core.hold(slot: slot, chunk: c, count: count)
                } else {
                    if !handlers.received(slot, chunk: c, offset: 0, count: count) { pool.release(c) }
                    if core.states[i].pauseIfNeeded(highWatermark: core.highWatermark, &core.counters) { cancelReceive(slot) }
                }
                if left == 0 { break }
                c = next
            }
        } else if res == 0 {
            if hasBuffer { pool.release(chunk) }
            if core.states[i].inputEnded() { handlers.inputClosed(slot) }
        } else {
            if hasBuffer { pool.release(chunk) }
            receiveFailed(slot, errno: -res)
        }
        core.markDirty(slot)
    }

    /// Returns the `count` buffers of a receive completion that starts at `chunk` to the pool.
    private func releaseBundle(_ chunk: Int32, _ count: Int) {
        var c = chunk
        for k in 0..<count {
            let next = k + 1 < count ? provided.chunk(after: c) : -1
            pool.release(c)
            c = next
        }
    }

    private func receiveFailed(_ slot: Int32, errno: Int32) {
        switch errno {
        case ENOBUFS:
            core.counters.noBufferEvents += 1
            if core.states[Int(slot)].starve() { starved.append(slot) }
        case ECANCELED:
            core.counters.canceledCompletions += 1
        default:
            core.requestClose(slot: slot, abort: true, reason: EngineErrors.reason(
                errno, op: "recv", slot: slot, counters: &core.counters, logger: logger))
        }
    }

    func completeSend(_ ud: UserData, res: Int32) {
        guard current(ud) else { return }
        let slot = ud.slot
        let i = Int(slot)
        core.states[i].inflight -= 1
        let asked = core.states[i].inflightBytes
        core.states[i].sendEnded()
        if res >= 0 {
            if res < asked { core.counters.shortSends += 1 }
            core.consumeSent(slot: slot, Int(res))
        } else if -res == ECANCELED {
            core.counters.canceledCompletions += 1
            core.requestClose(slot: slot, abort: true, reason: .error(.canceled))
        } else {
            core.requestClose(slot: slot, abort: true, reason: EngineErrors.reason(
                -res, op: "send", slot: slot, counters: &core.counters, logger: logger))
        }
        // Torn down while the send was in flight: what it read can go back to the pool now.
        if core.states[i].phase == .tearingDown { core.discardQueue(slot: slot) }
        core.markDirty(slot)
    }

    private func completeSlotOp(_ ud: UserData, kind: UserData.Kind, res: Int32) {
        guard current(ud) else { return }
        let i = Int(ud.slot)
        core.states[i].inflight -= 1
        switch kind {
        case .close: core.states[i].fdClosed = true
        case .cancelRecv: core.states[i].cancelCompleted()
        case .setLinger where res < 0:
            // The probe found socket commands supported: a failure is the engine's (the close follows anyway).
            _ = EngineErrors.reason(-res, op: "setsockopt(SO_LINGER)", slot: ud.slot, counters: &core.counters, logger: logger)
        case .shutdown:
            // The close waited for this (`socketWorkerOps`): the descriptor cannot have been reused.
            if res < 0 && res != -ENOTCONN && core.states[i].phase != .tearingDown {
                core.requestClose(slot: ud.slot, abort: true, reason: EngineErrors.reason(
                    -res, op: "shutdown", slot: ud.slot, counters: &core.counters, logger: logger))
            }
            socketWorkerOpEnded(ud.slot)
        default: break  // cancel: -ENOENT / -EALREADY mean the operation already finished
        }
        core.markDirty(ud.slot)
    }

    private func completeConnect(_ ud: UserData, res: Int32) {
        guard current(ud) else { return }
        let slot = ud.slot
        let i = Int(slot)
        core.states[i].inflight -= 1
        if res == 0 {
            core.counters.connectionsConnected += 1
            core.states[i].phase = .open
            _ = Socket.configureAccepted(core.states[i].fd, noDelay: config.noDelay)
            handlers.open(slot)
            if core.stopping { core.requestClose(slot: slot, abort: false, reason: .serverShutdown) }
        } else {
            core.counters.connectFailures += 1
            core.states[i].phase = .connectFailed
            core.markDirty(slot)
        }
    }
}

// MARK: the state machine's I/O

extension UringBackend: ConnectionIO {
    static var cancelsUnwantedReceive: Bool { false }

    func startSend(_ slot: Int32) {
        let i = Int(slot)
        if _slowPath(core.states[i].directiveBytes >= 0) && startDirectedSend(slot) { return }
        if _slowPath(zeroCopy.threshold > 0) && startZeroCopySend(slot) { return }
        let h = core.states[i].sendHead
        if pool.next(h) < 0 {
            let (a, b) = pool.range(h)
            core.states[i].sendStarted(bytes: b - a, chunks: 1)  // one chunk (the common reply): a SEND
        } else {
            let (bytes, chunks) = sendVectors.prepare(slot: slot, head: h, pool: pool)  // one SENDMSG
            core.states[i].sendStarted(bytes: bytes, chunks: chunks)
        }
        prepare(UserData(.send, slot: slot, generation: core.states[i].generation))
    }

    func armReceive(_ slot: Int32) {
        prepare(UserData(.recv, slot: slot, generation: core.states[Int(slot)].generation))
    }

    /// Cancels only the receive (a pause must not cancel a send in flight), submitted as soon as the
    /// completion batch in hand is consumed (`reapAll`): the kernel keeps completing receives until the
    /// cancel lands, and each of those is a buffer we hold. (Not from inside the batch: entering the
    /// kernel while a peeked batch is unconsumed stalled the loop under DEFER_TASKRUN, see `reapAll`.)
    func cancelReceive(_ slot: Int32) {
        prepare(UserData(.cancelRecv, slot: slot, generation: core.states[Int(slot)].generation))
        submitSoon = true
    }

    func shutdownWrite(_ slot: Int32) {
        core.states[Int(slot)].socketWorkerOps += 1  // IORING_OP_SHUTDOWN always runs on an io-wq worker
        prepare(UserData(.shutdown, slot: slot, generation: core.states[Int(slot)].generation))
    }

    func close(_ slot: Int32, abort: Bool) {
        let i = Int(slot)
        let gen = core.states[i].generation
        switch core.states[i].receive {
        case .armed, .cancelling: prepare(UserData(.cancel, slot: slot, generation: gen))
        default: if core.states[i].sendInFlight { prepare(UserData(.cancel, slot: slot, generation: gen)) }
        }
        // A splice-out still queued for a worker has no descriptor yet: the cancel above cannot match it.
        if let op = splice?.operations[slot], op.outIssued, op.pending > 0 {
            prepare(UserData(.spliceProbe, slot: slot, generation: gen))
        }
        guard core.states[i].socketWorkerOps == 0 else {
            core.states[i].deferredClose = abort ? 2 : 1  // `socketWorkerOpEnded` closes
            return
        }
        issueClose(slot, abort: abort)
    }

    /// An io-wq operation on the socket of `slot` ended: a close that waited for it goes now.
    func socketWorkerOpEnded(_ slot: Int32) {
        let i = Int(slot)
        core.states[i].socketWorkerOps -= 1
        guard core.states[i].socketWorkerOps == 0, core.states[i].deferredClose != 0 else { return }
        let abort = core.states[i].deferredClose == 2
        core.states[i].deferredClose = 0
        issueClose(slot, abort: abort)
    }

    private func issueClose(_ slot: Int32, abort: Bool) {
        let i = Int(slot)
        let gen = core.states[i].generation
        // An abort resets the connection (RST) rather than leaving unsent data to a peer that may never
        // take it. The setsockopt completes inline at submission, ahead of the close (hard-linked so the
        // close runs even if it fails; kept in order by the FIFO if the SQ is full).
        if abort && !core.states[i].traits.contains(.direct) {
            Socket.setLingerZero(core.states[i].fd)  // an ordinary descriptor: setsockopt(2) directly
        } else if abort && lingerSupported {
            // The pair must not be split at an SQ boundary (a dangling hard link goes to io-wq and could
            // run after the close, on a slot already reused): make room for both first.
            if deferred.isEmpty && ring.spaceLeft < 2 { _ = ring.submit() }
            prepare(UserData(.setLinger, slot: slot, generation: gen))
        }
        prepare(UserData(.close, slot: slot, generation: gen))
    }

    func closeUnconnected(_ slot: Int32) { closeDescriptor(core.states[Int(slot)].fd) }

    func settle(_ slot: Int32) {}

    // MARK: stopping

    func beginStop() {
        guard !core.stopping else { return }
        if acceptsArmed > 0 { prepare(UserData(.cancelAccept)) }
        if listenFD >= 0 { prepare(UserData(.closeListener)) }
        core.beginStop(drainTimeout: config.drainTimeout)
        // Starved slots will not be re-armed any more.
        starved.removeAll(keepingCapacity: true)
    }
}
