import CLiburing
import Glibc

/// File sends by splice (io_uring, plaintext connections): the file's pages go into a pipe and from
/// the pipe into the socket (IORING_OP_SPLICE twice), never through a send chunk. Measured on 1 MiB
/// static files against the read path (READV into chunks, then SEND): a quarter of the server CPU per
/// GB, because both copies (page cache to chunk, chunk to socket buffer) are gone.
///
/// How one send runs (`spliceFile`), and why:
/// - Only when the connection has nothing queued and no send in flight, and the splice then *is* its
///   send in flight (`sendInFlight`, with no chunk): writes made meanwhile queue behind it, a close
///   cancels it, and the slot is not reused before its last completion (`inflight`).
/// - A prefix (the response head) is written into the empty pipe first (IORING_OP_WRITE, linked to the
///   splice-in), so head and body leave in one socket send.
/// - Splice-in (file to pipe) runs alone; splice-out (pipe to socket) is submitted only after it
///   completed. Not linked: a linked request not yet started is invisible to the close's cancel, and it
///   would resolve the direct descriptor only when it starts, after the close may have given the
///   index to a new connection.
/// - The kernel runs every splice on an io-wq worker (the ops are marked unbound and never try
///   non-blocking); a splice-out to a peer that stops reading blocks its worker. So the pipes per loop
///   (`splicePipes`) bound the workers a loop can tie up; sends that find none free read instead, and
///   the write-stall deadline (which covers a splice in flight) ends a stuck one by its close's cancel.
/// - A pipe left holding bytes (a failure, a close mid-send, end of file after a prefix) is closed, not
///   drained; a new one is made when needed.
final class SplicePipes {
    struct Pipe {
        var read: Int32
        var write: Int32
        var capacity: Int
    }

    /// The splice in flight on one connection slot (at most one: it is the slot's send in flight).
    struct Operation {
        var pipe: Pipe
        var fd: Int32
        var offset: Int64
        /// File bytes asked of the splice-in.
        var count: Int
        /// The prefix's bytes (owned; freed when the operation ends), written into the pipe first.
        var prefix: UnsafeMutableRawBufferPointer?
        var pending = 0
        var wrote: Int32 = 0
        var spliced: Int32 = 0
        var outIssued = false
        /// Bytes in the pipe to send, and sent so far.
        var inPipe = 0
        var sent = 0
        var outResult: Int32 = 0
        /// The splice-out in flight was interrupted by the write-stall deadline (`probeStalledSplice`).
        var probed = false
        var done: (Result<Int, SendFileError>) -> Void
    }

    let threshold: Int
    private(set) var limit: Int
    let size: Int
    private var free: [Pipe] = []
    private(set) var created = 0
    var operations: [Int32: Operation] = [:]
    /// The capacity pipes actually get (F_SETPIPE_SZ may refuse the size asked: per-user limits).
    private(set) var capacity = 0
    private(set) var note = ""

    /// Makes the first pipe (to learn the capacity the kernel grants); nil when even that fails.
    init?(threshold: Int, limit: Int, size: Int) {
        self.threshold = threshold
        self.limit = limit
        self.size = size
        guard let p = makePipe() else { return nil }
        guard p.capacity >= Self.minimumCapacity else {
            closePipe(p)
            return nil
        }
        capacity = p.capacity
        free.append(p)
        created = 1
        operations.reserveCapacity(limit)
    }

    deinit {
        for p in free { closePipe(p) }
        for op in operations.values {
            closePipe(op.pipe)
            op.prefix?.deallocate()
        }
    }

    /// A free pipe, made if fewer than `limit` exist; nil when all are in use.
    func take() -> Pipe? {
        if let p = free.popLast() { return p }
        guard created < limit, let p = makePipe() else { return nil }
        guard p.capacity >= Self.minimumCapacity else {
            // Over the per-user pipe budget: new pipes get a page or two. Stop making them.
            closePipe(p)
            limit = created
            note = "pipe budget reached at \(created) pipes"
            return nil
        }
        created += 1
        return p
    }

    /// A pipe smaller than this moves too little per kernel-worker hand-off to beat reading.
    static let minimumCapacity = 64 * 1024

    /// Returns a pipe: kept when empty, closed when it may still hold bytes.
    func give(_ p: Pipe, clean: Bool) {
        if clean {
            free.append(p)
        } else {
            closePipe(p)
            created -= 1
        }
    }

    private static let F_SETPIPE_SZ: Int32 = 1031
    private static let F_GETPIPE_SZ: Int32 = 1032

    /// pipe and F_SETPIPE_SZ (neither blocks): the size asked, or the largest the per-user limit
    /// (`/proc/sys/fs/pipe-user-pages-soft`) allows, down to the default 64 KiB.
    private func makePipe() -> Pipe? {
        var fds: (Int32, Int32) = (-1, -1)
        let r = withUnsafeMutableBytes(of: &fds) { pipe($0.baseAddress!.assumingMemoryBound(to: Int32.self)) }
        guard r == 0 else {
            note = "pipe: \(Errno.current)"
            return nil
        }
        _ = fcntl(fds.0, F_SETFD, FD_CLOEXEC)
        _ = fcntl(fds.1, F_SETFD, FD_CLOEXEC)
        var want = size
        var got = Int(fcntl(fds.1, Self.F_SETPIPE_SZ, Int32(clamping: want)))
        while got < 0 && want > 64 * 1024 {
            note = "F_SETPIPE_SZ \(want): \(Errno.current)"
            want /= 2
            got = Int(fcntl(fds.1, Self.F_SETPIPE_SZ, Int32(clamping: want)))
        }
        if got < 0 { got = Int(fcntl(fds.1, Self.F_GETPIPE_SZ)) }
        return Pipe(read: fds.0, write: fds.1, capacity: max(got, 4096))
    }

    private func closePipe(_ p: Pipe) {
        closeDescriptor(p.read)
        closeDescriptor(p.write)
    }
}

extension UringBackend: FileSplicer {
    func spliceFile(slot: Int32, fd: Int32, offset: Int64, count: Int, prefix: UnsafeRawBufferPointer?,
                    _ done: @escaping (Result<Int, SendFileError>) -> Void) -> Bool {
        guard let splice, count >= splice.threshold else { return false }
        let prefixCount = prefix?.count ?? 0
        guard let pipe = splice.take() else {
            core.counters.fileSpliceFallbacks += 1
            return false
        }
        guard prefixCount <= pipe.capacity / 2 else {
            splice.give(pipe, clean: true)
            return false
        }
        let n = min(count, pipe.capacity - prefixCount)
        var op = SplicePipes.Operation(pipe: pipe, fd: fd, offset: offset, count: n, prefix: nil, done: done)
        if let prefix, prefixCount > 0 {
            let copy = UnsafeMutableRawBufferPointer.allocate(byteCount: prefixCount, alignment: 16)
            copy.copyMemory(from: prefix)
            op.prefix = copy
        }
        op.pending = prefixCount > 0 ? 2 : 1
        splice.operations[slot] = op
        core.states[Int(slot)].socketWorkerOps += 1  // its splice-out runs on a worker (see `close`)
        core.counters.fileSplices += 1
        core.counters.splicePipesInUse += 1
        let i = Int(slot)
        core.states[i].sendStarted(bytes: prefixCount + n, chunks: 0)
        core.startStallClock(slot)
        let gen = core.states[i].generation
        if prefixCount > 0 {
            // The linked pair must not be split at an SQ boundary (see `close` for the same care).
            if deferred.isEmpty && ring.spaceLeft < 2 { _ = ring.submit() }
            prepare(UserData(.spliceWrite, slot: slot, generation: gen))
        }
        prepare(UserData(.spliceIn, slot: slot, generation: gen))
        return true
    }

    func probeStalledSplice(slot: Int32) -> Bool {
        guard var op = splice?.operations[slot], op.outIssued, op.pending == 1, !op.probed else { return false }
        op.probed = true
        splice!.operations[slot] = op
        prepare(UserData(.spliceProbe, slot: slot, generation: core.states[Int(slot)].generation))
        return true
    }

    /// Fills the SQE of one splice stage (`fill`).
    func fillSplice(_ s: UnsafeMutablePointer<io_uring_sqe>, _ ud: UserData) {
        guard let op = splice?.operations[ud.slot] else {
            // Cannot happen: the operation lives until its last completion. A NOP keeps the count right.
            io_uring_prep_nop(s)
            return
        }
        switch ud.kind! {
        case .spliceWrite:
            io_uring_prep_write(s, op.pipe.write, op.prefix!.baseAddress, UInt32(op.prefix!.count), UInt64.max)
            s.pointee.flags |= UInt8(RS_IOSQE_IO_LINK)
        case .spliceIn:
            io_uring_prep_splice(s, op.fd, op.offset, op.pipe.write, -1, UInt32(op.count), 0)
        default:
            let slot = Int(ud.slot)
            io_uring_prep_splice(s, op.pipe.read, -1, core.states[slot].fd, -1, UInt32(op.inPipe - op.sent), 0)
            if core.states[slot].traits.contains(.direct) { s.pointee.flags |= UInt8(RS_IOSQE_FIXED_FILE) }
        }
    }

    /// One stage of a splice completed.
    func completeSplice(_ ud: UserData, res: Int32) {
        let slot = ud.slot
        let i = Int(slot)
        core.states[i].inflight -= 1
        guard var op = splice?.operations[slot] else {
            core.counters.engineErrors += 1
            logger.error("engine bug: a splice completion for slot \(slot) with no splice in flight")
            return
        }
        op.pending -= 1
        switch ud.kind! {
        case .spliceWrite: op.wrote = res
        case .spliceIn: op.spliced = res
        default:
            op.outResult = res
            if res > 0 {
                op.probed = false
                op.sent += Int(res)
                core.states[i].lastSendProgress = core.now
                core.states[i].lastActivity = core.now
            }
        }
        splice!.operations[slot] = op
        if op.pending == 0 { advanceSplice(slot) }
    }

    /// Every stage submitted so far has completed: send what the pipe holds, or finish.
    private func advanceSplice(_ slot: Int32) {
        let i = Int(slot)
        var op = splice!.operations[slot]!
        let phase = core.states[i].phase
        let live = (phase == .open || phase == .draining) && core.states[i].output != .shutDown
        let prefixCount = op.prefix?.count ?? 0
        if !op.outIssued {
            if prefixCount > 0 && op.wrote != Int32(prefixCount) {
                let e = op.wrote < 0 ? -op.wrote : EIO
                return finishSplice(slot, .failure(live ? .file(FileError(errno: e)) : .closed), clean: false, abortWith: live ? e : nil)
            }
            if op.spliced < 0 {
                let e = -op.spliced
                return finishSplice(slot, .failure(live ? .file(FileError(errno: e)) : .closed), clean: false, abortWith: nil)
            }
            if op.spliced == 0 { return finishSplice(slot, .success(0), clean: prefixCount == 0, abortWith: nil) }
            guard live else { return finishSplice(slot, .failure(.closed), clean: false, abortWith: nil) }
            op.inPipe = prefixCount + Int(op.spliced)
            op.outIssued = true
        } else {
            if op.probed && op.outResult <= 0 && live {
                // Interrupted at the write-stall deadline with nothing sent since the last progress.
                core.counters.writeStallTimeouts += 1
                core.states[i].timedOut = true
                return finishSplice(slot, .failure(.closed), clean: false, close: .timedOut(.writeStall))
            }
            if op.outResult < 0 {
                let e = -op.outResult
                let ours = e == ECANCELED || e == EINTR
                return finishSplice(slot, .failure(.closed), clean: false, abortWith: live && !ours ? e : nil)
            }
            if op.sent == op.inPipe {
                core.counters.fileSpliceBytes += Int(op.spliced)
                core.counters.bytesOut += op.inPipe
                return finishSplice(slot, .success(Int(op.spliced)), clean: true, abortWith: nil)
            }
            guard live, op.outResult > 0 else {
                return finishSplice(slot, .failure(.closed), clean: false, abortWith: nil)
            }
            core.counters.shortSends += 1
        }
        op.pending = 1
        splice!.operations[slot] = op
        prepare(UserData(.spliceOut, slot: slot, generation: core.states[i].generation))
    }

    /// Ends the slot's splice: the pipe back (or closed), the send in flight ended, then `done`, which
    /// may start the next piece at once.
    private func finishSplice(_ slot: Int32, _ result: Result<Int, SendFileError>, clean: Bool, abortWith errno: Int32?) {
        let reason = errno.map {
            EngineErrors.reason($0, op: "splice", slot: slot, counters: &core.counters, logger: logger)
        }
        finishSplice(slot, result, clean: clean, close: reason)
    }

    private func finishSplice(_ slot: Int32, _ result: Result<Int, SendFileError>, clean: Bool, close reason: CloseReason?) {
        let i = Int(slot)
        let op = splice!.operations.removeValue(forKey: slot)!
        op.prefix?.deallocate()
        splice!.give(op.pipe, clean: clean)
        core.counters.splicePipesInUse -= 1
        core.states[i].sendEnded()
        socketWorkerOpEnded(slot)
        if let reason { core.requestClose(slot: slot, abort: true, reason: reason) }
        if core.states[i].phase == .tearingDown { core.discardQueue(slot: slot) }
        core.markDirty(slot)
        op.done(result)
    }
}
