import CLiburing
import Glibc

/// The epoll backend's readiness events (turned into state-machine events) and its I/O actions.
extension EpollBackend {
    /// Starts the configured outbound connections (non-blocking connect, completion seen as EPOLLOUT).
    func startOutbound() throws {
        guard let c = config.connect else { return }
        var addr = try Socket.address(host: c.host, port: c.port)
        for _ in 0..<c.count {
            let fd = try Socket.stream(family: addr.family, nonBlocking: true)
            guard let slot = core.allocateSlot(fd: fd, outbound: true) else {
                closeDescriptor(fd)
                core.counters.connectFailures += 1
                continue
            }
            let len = addr.length
            let r = withUnsafePointer(to: &addr.storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, len) }
            }
            var ok = r == 0 || Errno.current.rawValue == EINPROGRESS
            if ok {
                var ev = epoll_event()
                ev.events = EPOLLOUT.rawValue
                ev.data.u64 = tag(slot)
                ok = epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) == 0
                registered[Int(slot)] = ok ? EPOLLOUT.rawValue : 0
            }
            if !ok { connectFailed(slot) }
        }
    }

    private func connectFailed(_ slot: Int32) {
        core.counters.connectFailures += 1
        core.states[Int(slot)].phase = .connectFailed
        core.markDirty(slot)
    }

    /// A connect finished (EPOLLOUT/EPOLLERR on a connecting socket).
    private func connectReady(_ slot: Int32) {
        let i = Int(slot)
        var err: Int32 = 0
        var len = socklen_t(MemoryLayout<Int32>.size)
        if getsockopt(core.states[i].fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 { err = Errno.current.rawValue }
        if err != 0 { connectFailed(slot); return }
        core.counters.connectionsConnected += 1
        core.states[i].phase = .open
        _ = Socket.configureAccepted(core.states[i].fd, noDelay: config.noDelay)
        handlers.open(slot)
        if core.stopping { core.requestClose(slot: slot, abort: false, reason: .serverShutdown) }
    }

    func acceptReady() {
        for _ in 0..<64 {
            var peer = sockaddr_storage()
            var peerLength = socklen_t(MemoryLayout<sockaddr_storage>.size)
            let fd = withUnsafeMutablePointer(to: &peer) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    rs_accept4_addr(listenFD, $0, &peerLength, Int32(SOCK_NONBLOCK.rawValue | SOCK_CLOEXEC.rawValue))
                }
            }
            if fd < 0 {
                let e = Errno.current
                if e == .interrupted { continue }
                if e.rawValue == EAGAIN || e.rawValue == ECONNABORTED { return }
                core.counters.acceptErrors += 1
                if core.counters.acceptErrors == 1 || core.counters.acceptErrors % 1000 == 0 {
                    logger.warning("accept failed: \(e) (count \(core.counters.acceptErrors)); retrying in 50 ms")
                }
                // EMFILE/ENFILE/ENOMEM: stop watching the listener for a while instead of spinning.
                _ = epoll_ctl(epfd, EPOLL_CTL_DEL, listenFD, nil)
                acceptResume = monotonicMillis() + 50
                return
            }
            admit(fd, peer: &peer)
        }
    }

    /// Gives an accepted descriptor a slot and a handler, or refuses it (cap, per-address cap).
    private func admit(_ fd: Int32, peer: inout sockaddr_storage) {
        // Per-address cap: `.some(key)` admitted (key nil when no cap applies), nil refused (counted).
        guard let key = withUnsafePointer(to: &peer, { core.admitAddress(UnsafeRawPointer($0)) }) else {
            closeDescriptor(fd)
            return
        }
        guard let slot = core.allocateSlot(fd: fd) else {
            core.forgetAddress(key)
            core.counters.connectionsRefused += 1
            closeDescriptor(fd)
            return
        }
        core.noteAddress(slot, key)
        withUnsafePointer(to: &peer) { core.notePeer(slot, UnsafeRawPointer($0)) }
        _ = Socket.configureAccepted(fd, noDelay: config.noDelay)
        var ev = epoll_event()
        ev.events = EPOLLIN.rawValue | EPOLLRDHUP.rawValue
        ev.data.u64 = tag(slot)
        guard epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) == 0 else {
            // Cannot watch it: refuse it like a capped connection.
            core.counters.connectionsRefused += 1
            closeDescriptor(fd)
            core.states[Int(slot)].phase = .connectFailed
            core.freeSlot(slot)
            return
        }
        registered[Int(slot)] = ev.events
        core.states[Int(slot)].receive = .armed  // EPOLLIN registered
        core.states[Int(slot)].armedOnce = true
        handlers.open(slot)
    }

    @inline(__always) func connectionReady(_ ud: UserData, mask: UInt32) {
        let slot = ud.slot
        let i = Int(slot)
        guard ud.matches(generation: core.states[i].generation), core.states[i].phase != .free else {
            core.counters.staleCompletions += 1
            return
        }
        switch core.states[i].phase {
        case .connecting: connectReady(slot); return
        case .connectFailed: return
        default: break
        }
        if mask & (EPOLLIN.rawValue | EPOLLHUP.rawValue | EPOLLERR.rawValue | EPOLLRDHUP.rawValue) != 0 {
            readReady(slot)
        }
        // EPOLLHUP/EPOLLERR are reported whatever the interest set: once input is closed too, the peer
        // is gone both ways; close rather than wake on the same level-triggered event forever.
        // (Not when we shut our own side first, as a lingering close does: then HUP is the orderly end of
        // both directions, and the graceful close already under way must not become a reset.)
        if mask & (EPOLLHUP.rawValue | EPOLLERR.rawValue) != 0 && core.states[i].input != .open {
            if mask & EPOLLERR.rawValue == 0 && core.states[i].output == .shutDown {
                core.markDirty(slot)
            } else {
                core.requestClose(slot: slot, abort: true, reason: .peerClosed)
            }
        }
        if mask & EPOLLOUT.rawValue != 0 {
            if core.states[i].sendInFlight { core.states[i].sendEnded() }  // writable again: send the rest
            core.markDirty(slot)
        }
    }

    func readReady(_ slot: Int32) {
        let i = Int(slot)
        if core.states[i].phase == .lingering { discardInput(slot); return }
        let size = pool.receiveChunkSize
        for _ in 0..<16 {  // bounded per wake, for fairness between connections
            guard core.states[i].deliversInput, !core.states[i].readPaused, !core.states[i].handlerPaused,
                  core.states[i].queuedBytes <= core.highWatermark  // backpressure: at most one chunk over
            else { break }
            guard let chunk = pool.takeReceiveChunk() else {
                core.counters.noBufferEvents += 1
                if core.states[i].starve() { starved.append(slot) }
                break
            }
            let n = recv(core.states[i].fd, pool.pointer(chunk), size, 0)
            if n > 0 {
                core.counters.bytesIn += n
                core.noteReceived(slot)
                if !handlers.received(slot, chunk: chunk, offset: 0, count: n) { pool.release(chunk) }
                if n < size { break }
                continue
            }
            pool.release(chunk)
            if n == 0 {
                if core.states[i].inputEnded() { handlers.inputClosed(slot) }
                break
            }
            let e = Errno.current
            if e == .interrupted { continue }
            if e.rawValue == EAGAIN { break }
            core.requestClose(slot: slot, abort: true, reason: EngineErrors.reason(
                e.rawValue, op: "recv", slot: slot, counters: &core.counters, logger: logger))
            break
        }
        // Flush now rather than at the end of the batch: a zero-copy reply holds its receive chunk
        // until sent, and with many connections ready at once the later ones would find none left.
        if core.states[i].startSendIfReady() { startSend(slot) }
        core.markDirty(slot)
    }

    /// A lingering connection: read and drop what arrives, until EAGAIN or end-of-file (bounded per wake).
    private func discardInput(_ slot: Int32) {
        let i = Int(slot)
        for _ in 0..<16 {
            let n = recv(core.states[i].fd, discard, 16 * 1024, 0)
            if n > 0 { core.counters.bytesIn += n; continue }
            if n == 0 { _ = core.states[i].inputEnded(); break }
            if Errno.current == .interrupted { continue }
            if Errno.current.rawValue != EAGAIN { core.states[i].lingerDone = true }
            break
        }
        core.markDirty(slot)
    }
}

// MARK: the state machine's I/O

extension EpollBackend: ConnectionIO {
    static var cancelsUnwantedReceive: Bool { true }

    /// Writes as much of the queue as the socket takes; on EAGAIN the send stays "in flight" until
    /// EPOLLOUT (registered in `settle`). Nothing is left in the kernel's hands: no chunk is pinned.
    func startSend(_ slot: Int32) {
        let i = Int(slot)
        core.states[i].sendStarted(bytes: 0, chunks: 0)
        while core.states[i].sendHead >= 0 || core.states[i].directiveBytes >= 0 {
            // A socket directive (Layers/SocketDirectives.swift): sends stop at its place in the queue.
            var limit = Int.max
            if _slowPath(core.states[i].directiveBytes >= 0) {
                if core.states[i].directiveBytes == 0 {
                    if runDirective(slot) { continue }
                    return  // EAGAIN (in flight until EPOLLOUT), or closing
                }
                limit = Int(core.states[i].directiveBytes)
            }
            var c = core.states[i].sendHead
            var count = 0
            var total = 0
            while c >= 0 && count < maxIOV && total < limit {
                let (s, e) = pool.range(c)
                let take = min(e - s, limit - total)
                iov[count] = iovec(iov_base: pool.pointer(c) + s, iov_len: take)
                total += take
                count += 1
                c = pool.next(c)
            }
            var msg = msghdr()
            msg.msg_iov = iov
            msg.msg_iovlen = count
            let n = sendmsg(core.states[i].fd, &msg, Int32(MSG_NOSIGNAL))
            if n > 0 { core.consumeSent(slot: slot, n); continue }
            let e = Errno.current
            if e == .interrupted { continue }
            if e.rawValue == EAGAIN { return }  // stays in flight until EPOLLOUT
            core.requestClose(slot: slot, abort: true, reason: EngineErrors.reason(
                e.rawValue, op: "sendmsg", slot: slot, counters: &core.counters, logger: logger))
            break
        }
        core.states[i].sendEnded()
    }

    /// Runs the due socket directive: true when done (the send goes on), false when the socket is
    /// full (the send stays in flight until EPOLLOUT) or it failed (the connection is closing).
    private func runDirective(_ slot: Int32) -> Bool {
        let i = Int(slot)
        guard let d = core.dueDirective(slot: slot) else { preconditionFailure("a due socket directive is missing") }
        switch d.kind {
        case .option(let level, let name):
            return core.setOptionDirectly(slot: slot, d, level: level, name: name, logger: logger)
        case .controlMessage:
            while d.payloadLeft > 0 {
                let n = sendmsg(core.states[i].fd, d.preparedMessage(), Int32(MSG_NOSIGNAL))
                if n >= 0 { d.payloadSent += n; core.counters.bytesOut += n; continue }
                if Errno.current == .interrupted { continue }
                if Errno.current.rawValue == EAGAIN { return false }
                break
            }
            if d.payloadLeft == 0 { core.directiveDone(slot: slot); return true }
        }
        core.failDirective(slot: slot, d, errno: Errno.current.rawValue, logger: logger)
        return false
    }

    func armReceive(_ slot: Int32) {}  // EPOLLIN is registered by `settle`
    func cancelReceive(_ slot: Int32) {}  // dropped by `settle`; nothing is in flight

    func shutdownWrite(_ slot: Int32) {
        guard Glibc.shutdown(core.states[Int(slot)].fd, Int32(SHUT_WR)) != 0 else { return }
        let e = Errno.current.rawValue
        if e == ENOTCONN { return }
        core.requestClose(slot: slot, abort: true, reason: EngineErrors.reason(
            e, op: "shutdown", slot: slot, counters: &core.counters, logger: logger))
    }

    func close(_ slot: Int32, abort: Bool) {
        let i = Int(slot)
        // An abort resets the connection (RST) and drops unsent data, instead of leaving it to a peer
        // that may never take it.
        if abort { Socket.setLingerZero(core.states[i].fd) }
        closeDescriptor(core.states[i].fd)  // also removes it from the epoll set
        registered[i] = 0
        core.states[i].sendEnded()
        core.states[i].receive = .idle
        core.states[i].fdClosed = true
        core.discardQueue(slot: slot)
    }

    func closeUnconnected(_ slot: Int32) {
        closeDescriptor(core.states[Int(slot)].fd)
        registered[Int(slot)] = 0
    }

    /// Registers exactly the readiness this slot needs now (EPOLL_CTL_MOD only on change).
    func settle(_ slot: Int32) {
        let i = Int(slot)
        var mask: UInt32 = 0
        if core.states[i].receive == .armed { mask |= EPOLLIN.rawValue | EPOLLRDHUP.rawValue }
        if core.states[i].sendInFlight { mask |= EPOLLOUT.rawValue }
        guard mask != registered[i] else { return }
        var ev = epoll_event()
        ev.events = mask
        ev.data.u64 = tag(slot)
        guard epoll_ctl(epfd, EPOLL_CTL_MOD, core.states[i].fd, &ev) == 0 else {
            core.requestClose(slot: slot, abort: true, reason: EngineErrors.reason(
                Errno.current.rawValue, op: "epoll_ctl", slot: slot, counters: &core.counters, logger: logger))
            return
        }
        registered[i] = mask
    }
}
