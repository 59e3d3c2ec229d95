import CLiburing
import Glibc

/// Socket directives on io_uring (Layers/SocketDirectives.swift): sends stop at a directive's place
/// in the queue; the directive then runs as the connection's send in flight: a setsockopt through a
/// socket command (direct descriptors) or directly (ordinary ones: it completes at once), or a SENDMSG
/// whose msghdr, iovec and cmsg live in the directive until its completion.
extension UringBackend {
    /// The send of a connection with a directive queued. Returns false when the directives due ran
    /// synchronously and none is left: the caller sends the rest of the queue as usual.
    func startDirectedSend(_ slot: Int32) -> Bool {
        let i = Int(slot)
        while core.states[i].directiveBytes >= 0 {
            let limit = Int(core.states[i].directiveBytes)
            if limit > 0 {
                let (bytes, chunks) = sendVectors.prepare(slot: slot, head: core.states[i].sendHead, pool: pool, byteLimit: limit)
                core.states[i].sendStarted(bytes: bytes, chunks: chunks)
                prepare(UserData(.send, slot: slot, generation: core.states[i].generation))
                return true
            }
            guard let d = core.dueDirective(slot: slot) else { preconditionFailure("a due socket directive is missing") }
            if case .option(let level, let name) = d.kind, !core.states[i].traits.contains(.direct) {
                guard core.setOptionDirectly(slot: slot, d, level: level, name: name, logger: logger) else { return true }
                continue
            }
            core.states[i].sendStarted(bytes: 0, chunks: 0)
            prepare(UserData(.directive, slot: slot, generation: core.states[i].generation))
            return true
        }
        guard core.states[i].sendHead >= 0 else { core.states[i].sendEnded(); return true }
        return false
    }

    func fillDirective(_ s: UnsafeMutablePointer<io_uring_sqe>, _ slot: Int32) {
        let i = Int(slot)
        guard let d = core.dueDirective(slot: slot) else { preconditionFailure("a socket directive in flight is missing") }
        switch d.kind {
        case .option(let level, let name):
            let v = d.optionValue
            rs_prep_setsockopt(s, core.states[i].fd, level, name, v.baseAddress, UInt32(v.count))
        case .controlMessage:
            io_uring_prep_sendmsg(s, core.states[i].fd, d.preparedMessage(), UInt32(MSG_NOSIGNAL))
        }
    }

    func completeDirective(_ ud: UserData, res: Int32) {
        // Never stale: the slot cannot be freed while this operation is counted in flight.
        guard current(ud) else { return }
        let slot = ud.slot
        let i = Int(slot)
        core.states[i].inflight -= 1
        core.states[i].sendEnded()
        defer { core.markDirty(slot) }
        guard core.states[i].phase != .tearingDown else { return }
        guard let d = core.dueDirective(slot: slot) else { return }
        if res < 0 {
            if -res == ECANCELED { core.counters.canceledCompletions += 1 }
            let reason: CloseReason = -res == ECANCELED ? .error(.canceled) : EngineErrors.reason(
                -res, op: d.operationName, slot: slot, counters: &core.counters, logger: logger)
            core.requestClose(slot: slot, abort: true, reason: reason)
            return
        }
        if !d.isOption {
            d.payloadSent += Int(res)
            core.counters.bytesOut += Int(res)
            if d.payloadLeft > 0 { return }  // the rest goes with the next send
        }
        core.directiveDone(slot: slot)
    }
}
