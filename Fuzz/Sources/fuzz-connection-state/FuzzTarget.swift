// libFuzzer target for the connection state machine (Sources/Ringside/Engine/ConnectionState.swift,
// compiled here from the engine's own file; see Engine.swift for the harness and its properties).
//
// Input: 2 config bytes (backend semantics, watermarks, linger, chunk size, pool size), then events of
// 2 bytes each (kind, parameter), each followed by the driver's service pass, as the engine runs
// `service` for a dirty slot. Bytes the handler or the socket consume (reactions, how much a send
// takes) come from the same stream. At the end the peer and the kernel finish everything (the
// server stops, every operation completes) and the connection must finalize with every chunk back.
import FuzzSupport
import Glibc

extension Harness {
    /// One event from the outside world (the peer, the kernel, the handler, a timer, the server).
    mutating func event(_ kind: UInt8, _ p: UInt8, _ r: inout ByteReader) {
        switch kind % 17 {
        case 0: receiveData(Int(p), more: p & 0x80 != 0, &r)
        case 1: receiveEnd(eof: true, error: 0)
        case 2: receiveEnd(eof: false, error: ENOBUFS)
        case 3: receiveEnd(eof: false, error: p & 1 == 0 ? ECANCELED : ECONNRESET)
        case 4: completeCancelRecv()
        case 5: completeSend(p)
        case 6:
            note("write \(p)")
            if !tornDown { _ = enqueueCopy(Int(p)) }
        case 7:
            note("close")
            s.requestClose(abort: false, reason: .closedByHandler)
        case 8:
            note("abort")
            s.requestClose(abort: true, reason: .abortedByHandler)
        case 9:
            note("shutdownWrite")
            s.requestShutdownWrite()
        case 10:
            note("pause \(p & 1 != 0)")
            if s.phase == .open { s.handlerPaused = p & 1 != 0 }  // LoopCore.setInputPaused
        case 11:
            note("linger time up")
            if s.phase == .lingering { s.lingerDone = true }  // Deadlines.checkDeadlines
        case 12:
            // Deadlines.checkDeadlines: a deadline passed (a write stall aborts).
            note("deadline \(p & 1 != 0 ? "write stall" : "idle")")
            guard s.phase == .open || s.phase == .draining else { break }
            let abort = p & 1 != 0 || s.timedOut
            s.timedOut = true
            s.requestClose(abort: abort, reason: .timedOut(p & 1 != 0 ? .writeStall : .idle))
        case 13: completeOther(p)
        case 14:
            note("buffers returned")
            s.unstarve()
        case 15:
            note("server stops")
            env.stopping = true
            switch s.phase {  // LoopCore.beginStop
            case .open, .draining, .lingering: s.requestClose(abort: p & 1 != 0, reason: .serverShutdown)
            default: break
            }
        default:
            // Pool pressure: other connections take chunks, or give them back.
            if p & 1 == 0 {
                for _ in 0..<Int(p >> 1 & 7) { if let c = take(.other) { others.append(c) } }
            } else {
                for c in others { release(c) }
                others.removeAll()
                s.unstarve()
            }
            note("pool pressure, \(freeCount) free")
        }
        syncInflight()
        service(&r)
    }

    /// io_uring: a multishot receive completion with data (UringBackend.completeRecv); epoll: readable
    /// (EpollIO.readReady).
    mutating func receiveData(_ p: Int, more: Bool, _ r: inout ByteReader) {
        let n = 1 + p % chunkSize
        if epoll {
            guard recvLive || s.phase == .lingering, !s.fdClosed else { return }
            note("readable \(n)")
            if s.phase == .lingering { return }  // read into the discard buffer: no chunk
            guard s.deliversInput, !s.readPaused, !s.handlerPaused, s.queuedBytes <= env.highWatermark else { return }
            guard let c = take(.lent) else {
                counters.noBufferEvents += 1
                _ = s.starve()
                return
            }
            if !handlerReceived(c, n, &r) { release(c) }
            if s.startSendIfReady() { startSend(&r) }
            return
        }
        guard recvLive else { return }
        guard let c = take(.lent) else {
            receiveEnd(eof: false, error: ENOBUFS)  // the ring ran dry: the multishot ends with ENOBUFS
            return
        }
        note("recv \(n)\(more ? "" : " final")")
        if !more {
            s.receiveEnded()
            recvLive = false
            recvCancelAsked = false
        }
        if !s.deliversInput {
            release(c)
        } else if s.readPaused || s.heldHead >= 0 {
            hold(c, n)
        } else {
            if !handlerReceived(c, n, &r) { release(c) }
            if s.pauseIfNeeded(highWatermark: env.highWatermark, &counters) { cancelReceive() }
        }
    }

    /// A receive's final completion without data: end-of-file, or an error.
    mutating func receiveEnd(eof: Bool, error: Int32) {
        if epoll {
            guard recvLive || s.phase == .lingering, !s.fdClosed else { return }
            note(eof ? "read EOF" : "read error \(error)")
            if eof {
                if s.phase == .lingering { _ = s.inputEnded(); return }
                guard s.deliversInput else { return }
                if s.inputEnded() { handlerInputClosed() }
            } else if error == ENOBUFS {
                counters.noBufferEvents += 1
                _ = s.starve()
            } else if error != ECANCELED {
                s.requestClose(abort: true, reason: .error(Errno(rawValue: error)))
            }
            return
        }
        guard recvLive else { return }
        // The kernel cancels a receive only when asked to (a cancel, whose own completion may come
        // first, or the teardown's cancel and close).
        if error == ECANCELED && !recvCancelAsked && !tornDown { return }
        note(eof ? "recv EOF" : "recv error \(error)")
        s.receiveEnded()
        recvLive = false
        recvCancelAsked = false
        if eof {
            if s.inputEnded() { handlerInputClosed() }
        } else if error == ENOBUFS {
            counters.noBufferEvents += 1
            _ = s.starve()
        } else if error != ECANCELED {
            s.requestClose(abort: true, reason: .error(Errno(rawValue: error)))
        }
    }

    /// io_uring: the receive's cancel completed (UringBackend.completeSlotOp, .cancelRecv).
    mutating func completeCancelRecv() {
        guard !epoll, cancelRecvOps > 0 else { return }
        note("cancelRecv done")
        cancelRecvOps -= 1
        s.cancelCompleted()
    }

    /// io_uring: the send's completion (UringBackend.completeSend), `p` picking the result; epoll:
    /// EPOLLOUT (EpollIO: the send in flight ends, the machine sends the rest).
    mutating func completeSend(_ p: UInt8) {
        guard sendOp else { return }
        sendOp = false
        if epoll {
            note("writable")
            s.sendEnded()
            return
        }
        let asked = Int(s.inflightBytes)
        s.sendEnded()
        if p >= 0xF0 {
            note("send error")
            s.requestClose(abort: true, reason: .error(Errno(rawValue: p == 0xFF ? ECANCELED : EPIPE)))
        } else {
            let res = p & 0x80 != 0 ? asked : min(asked, Int(p))
            note("send \(res)/\(asked)")
            consumeSent(res)
        }
        if s.phase == .tearingDown { discardQueue() }
    }

    /// io_uring: a shutdown, a cancel or the close completed (UringBackend.completeSlotOp).
    mutating func completeOther(_ p: UInt8) {
        guard !epoll else { return }
        switch p % 3 {
        case 0 where shutdownOps > 0:
            note("shutdown done")
            shutdownOps -= 1
        case 1 where cancelOps > 0:
            note("cancel done")
            cancelOps -= 1
        case 2 where closeOps > 0:
            note("close done")
            closeOps -= 1
            s.fdClosed = true
        default: break
        }
    }

    /// The end of the input: the server stops, the peer closes, every operation completes, the linger
    /// time passes. The connection must finalize.
    mutating func finish(_ r: inout ByteReader) {
        note("-- finish")
        env.stopping = true
        if !tornDown { s.requestClose(abort: false, reason: .serverShutdown) }
        for c in others { release(c) }
        others.removeAll()
        s.unstarve()
        syncInflight()
        service(&r)
        // Each round completes one operation (or ends the linger): bounded by what is in flight.
        let rounds = 64 + Int(s.inflight) + (sendOp ? 1 : 0) + (recvLive ? 1 : 0)
        for _ in 0..<rounds {
            if finalized { return }
            if s.phase == .lingering { s.lingerDone = true }
            if sendOp { completeSend(0x80) } else if recvLive {
                if tornDown || s.receive == .cancelling { receiveEnd(eof: false, error: ECANCELED) } else { receiveEnd(eof: true, error: 0) }
            } else if cancelRecvOps > 0 { completeCancelRecv() } else if shutdownOps > 0 { completeOther(0) } else if cancelOps > 0 { completeOther(1) } else if closeOps > 0 { completeOther(2) } else if epoll && s.phase == .lingering { receiveEnd(eof: true, error: 0) }
            s.unstarve()
            syncInflight()
            service(&r)
        }
        if !finalized { fail("the connection never finalized once everything completed") }
    }
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOne(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let all = UnsafeRawBufferPointer(start: data, count: size)
    var r = ByteReader(bytes: all)
    let config = [r.next(), r.next()]
    var h = Harness(config: config)
    h.service(&r)
    var events = 0
    while !r.isAtEnd && !h.finalized && events < 4096 {
        let kind = r.next()
        let p = r.next()
        h.event(kind, p, &r)
        events += 1
    }
    if !h.finalized { h.finish(&r) }
    return 0
}
