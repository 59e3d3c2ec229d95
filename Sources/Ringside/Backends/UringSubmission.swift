import CLiburing
import Glibc

/// Submission: every operation is named by its `UserData` and prepared through `prepare`, which counts
/// it in flight once and parks it in a FIFO when the SQ is full (nothing is dropped).
extension UringBackend {
    /// Gets an SQE, submitting what is prepared if the SQ is full; nil if still none.
    @inline(__always) func sqe() -> UnsafeMutablePointer<io_uring_sqe>? {
        if let s = ring.getSQE() { return s }
        core.counters.sqFullEvents += 1
        _ = ring.submit()
        return ring.getSQE()
    }

    /// Prepares the operation named by `ud`, or parks it in the FIFO when the SQ is full.
    /// In-flight accounting happens here, once, whichever path the operation takes.
    func prepare(_ ud: UserData) {
        switch ud.kind! {
        case .recv, .send, .close, .cancel, .cancelRecv, .shutdown, .connect, .setLinger, .spliceWrite, .spliceIn, .spliceOut, .spliceProbe, .directive:
            core.states[Int(ud.slot)].inflight += 1
        case .loopTimer, .sendWaitTimer: break  // not awaited at stop: ring teardown ends it (its timespec is copied at submit)
        case .file: break  // counted by `files` (pendingFileOperations), awaited at stop
        case .fileCancel: ringInflight += 1
        case .sendZC:
            // The connection awaits the result; the loop awaits the notification (a stop waits for it).
            core.states[Int(zeroCopy[ud.slot].slot)].inflight += 1
            ringInflight += 1
        default: ringInflight += 1
        }
        if !deferred.isEmpty || !fill(ud) {
            core.counters.sqDeferredOps += 1
            deferred.append(ud)
        }
    }

    func drainDeferred() {
        guard !deferred.isEmpty else { return }
        var i = 0
        while i < deferred.count {
            // A deferred SO_LINGER and the close after it go into one submission (see `close`).
            if deferred[i].kind == .setLinger && ring.spaceLeft < 2 { _ = ring.submit() }
            guard fill(deferred[i]) else { break }
            i += 1
        }
        deferred.removeFirst(i)
    }

    /// Fills one SQE for `ud`. Returns false when no SQE is free.
    func fill(_ ud: UserData) -> Bool {
        guard let s = sqe() else { return false }
        let slot = Int(ud.slot)
        switch ud.kind! {
        case .accept: fillAccept(s, slot)
        case .recv:
            io_uring_prep_recv_multishot(s, core.states[slot].fd, nil, 0, 0)
            s.pointee.flags |= UInt8(RS_IOSQE_BUFFER_SELECT)
            rs_sqe_set_buf_group(s, provided.groupID)
            // Bundles once a receive has filled a whole buffer: a bundle receive peeks the buffer ring
            // for every pick (io_buffers_peek), which costs a message-sized receive a quarter of the
            // ring's kernel work per message (echo 64 B, 500 connections) and buys it nothing. The
            // switch happens at the next arming, which the per-arming byte limit brings soon. Bundles
            // are on only with that limit (see `UringProbe`): unbounded, one can take the whole ring.
            if receiveBundles && core.states[slot].traits.contains(.bulkInput) {
                s.pointee.ioprio |= UInt16(RS_IORING_RECVSEND_BUNDLE)
            }
            if receiveLimit > 0 { rs_sqe_set_recv_total_limit(s, UInt32(clamping: receiveLimit)) }
        case .send: fillSend(s, ud.slot)
        case .spliceWrite, .spliceIn, .spliceOut: fillSplice(s, ud)
        case .spliceProbe: io_uring_prep_cancel64(s, UserData(.spliceOut, slot: ud.slot, generation: ud.generation).raw, 0)
        case .sendZC: fillZeroCopySend(s, ud.slot)
        case .directive: fillDirective(s, ud.slot)
        case .close:
            if core.states[slot].traits.contains(.direct) {
                io_uring_prep_close_direct(s, UInt32(core.states[slot].fd))
            } else {
                io_uring_prep_close(s, core.states[slot].fd)
            }
        case .closeDirect:
            io_uring_prep_close_direct(s, UInt32(ud.slot))  // a refused direct accept: slot = its index
        case .setLinger:
            // Hard-linked to the close that follows: the close runs whether or not this succeeds.
            rs_prep_set_linger_zero(s, core.states[slot].fd)
            s.pointee.flags |= UInt8(RS_IOSQE_IO_HARDLINK)
        case .cancelRecv:
            io_uring_prep_cancel64(s, UserData(.recv, slot: ud.slot, generation: ud.generation).raw, 0)
        case .cancel:
            // Every operation on this connection's file (receive and a send stuck on a full socket).
            let fixed = core.states[slot].traits.contains(.direct) ? UInt32(IORING_ASYNC_CANCEL_FD_FIXED) : 0
            io_uring_prep_cancel_fd(s, core.states[slot].fd, UInt32(IORING_ASYNC_CANCEL_ALL) | fixed)
        case .shutdown:
            io_uring_prep_shutdown(s, core.states[slot].fd, Int32(SHUT_WR))
        case .connect:
            outbound!.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                io_uring_prep_connect(s, core.states[slot].fd, $0, outbound!.pointee.length)
            }
        case .wake:
            io_uring_prep_read(s, control.wakeFD, wakeBuffer, 8, 0)
        case .acceptRetryTimer:
            io_uring_prep_timeout(s, acceptRetryTimespec, 0, 0)
        case .loopTimer:
            io_uring_prep_timeout(s, loopTimerSpec, 0, UInt32(IORING_TIMEOUT_ABS))
        case .sendWaitTimer:
            io_uring_prep_timeout(s, sendWaitSpec, 0, 0)  // relative: the send wait's bound
        case .file:
            files.fill(s, ud)
        case .fileCancel:
            io_uring_prep_cancel64(s, UserData(.file, slot: ud.slot, generation: ud.generation).raw, 0)
        case .cancelAccept:
            io_uring_prep_cancel_fd(s, listenFD, UInt32(IORING_ASYNC_CANCEL_ALL))
        case .closeListener:
            io_uring_prep_close(s, listenFD)
        }
        switch ud.kind! {
        case .recv, .send, .shutdown, .setLinger, .directive:
            if core.states[slot].traits.contains(.direct) { s.pointee.flags |= UInt8(RS_IOSQE_FIXED_FILE) }
        default: break
        }
        io_uring_sqe_set_data64(s, ud.raw)
        return true
    }

    private func fillAccept(_ s: UnsafeMutablePointer<io_uring_sqe>, _ slot: Int) {
        if acceptSlots == 1 {
            if directFiles {
                io_uring_prep_multishot_accept_direct(s, listenFD, nil, nil, 0)
            } else {
                io_uring_prep_multishot_accept(s, listenFD, nil, nil, Int32(SOCK_CLOEXEC.rawValue))
            }
            return
        }
        // Single-shot, so the kernel's write of the peer address cannot be overwritten by the next
        // accept before this completion is read.
        acceptAddressLengths[slot] = socklen_t(MemoryLayout<sockaddr_storage>.size)
        (acceptAddresses + slot).withMemoryRebound(to: sockaddr.self, capacity: 1) { a in
            if directFiles {
                // liburing 2.3 stores index + 1, so "allocate" is passed as ALLOC - 1.
                io_uring_prep_accept_direct(s, listenFD, a, acceptAddressLengths + slot, 0, UInt32(IORING_FILE_INDEX_ALLOC) - 1)
            } else {
                io_uring_prep_accept(s, listenFD, a, acceptAddressLengths + slot, Int32(SOCK_CLOEXEC.rawValue))
            }
        }
    }

    /// The send the state machine started (`startSend` recorded its chunks): one chunk as a plain SEND,
    /// several as one SENDMSG over the slot's iovec block, prepared when the send started.
    private func fillSend(_ s: UnsafeMutablePointer<io_uring_sqe>, _ slot: Int32) {
        let i = Int(slot)
        if core.states[i].inflightChunks == 1 {
            // `inflightBytes`, not the chunk's range: a send that stops at a socket directive covers
            // part of its last chunk.
            let h = core.states[i].sendHead
            let a = pool.range(h).start
            io_uring_prep_send(s, core.states[i].fd, pool.pointer(h) + a, Int(core.states[i].inflightBytes), Int32(MSG_NOSIGNAL))
            // A message-sized send: the send wait may follow (UringWait.swift), unless something
            // waits on this send's completion (a close or shutdown after it: the client may be
            // waiting for the FIN with nothing more to send).
            if core.states[i].phase == .open && core.states[i].output == .open { sendsPrepared &+= 1 } else { bulkSendPrepared = true }
        } else {
            io_uring_prep_sendmsg(s, core.states[i].fd, sendVectors.message(slot: slot), UInt32(MSG_NOSIGNAL))
            bulkSendPrepared = true  // bulk output: its completion drives the next send; no send wait
        }
    }
}
