import CLiburing
import Glibc

/// Zero-copy sends in flight (``ServerConfiguration/zeroCopySendThreshold``): one record per
/// IORING_OP_SEND_ZC, named by the send's user data, so both of its completions find the connection and
/// the chunks it reads.
///
/// A SEND_ZC completes twice: first with its result (IORING_CQE_F_MORE set when a notification follows),
/// which advances the connection's queue like a SEND's (a short send continues from the offset, the next
/// send may start); then, possibly much later (on a real NIC: when the peer acknowledged the bytes), with
/// the notification (IORING_CQE_F_NOTIF), after which the kernel no longer reads the chunks. Until then
/// the chunks are pinned in the pool (`BufferPool.pin`): the queue may release them (sent, discarded at
/// an abort, the connection gone) but they only return to the free list at the notification. The loop
/// counts each expected notification in `ringInflight`, so a stop waits for it.
///
/// Invariants (loop-thread confined): a record is in use from `take` until both its result and (if one
/// was announced) its notification arrived; the table is preallocated, and when it is full a send goes as
/// a plain SEND instead (nothing allocated per send).
final class UringZeroCopySends {
    struct Record {
        /// The connection (slot and generation at submission).
        var slot: Int32 = -1
        var generation: UInt32 = 0
        /// The chunks it reads: `chunks` slab neighbours from `first`, and the bytes at `address`.
        var first: Int32 = -1
        var chunks: Int32 = 0
        var address: UnsafeRawPointer? = nil
        var bytes: UInt32 = 0
        var awaitingResult = false
        var awaitingNotification = false
        /// Bytes the send took that stay counted in the connection's `queuedBytes` until the notification
        /// (so its watermarks see memory the kernel still holds).
        var accounted: Int32 = 0
    }

    /// Sends of at least this many bytes go zero-copy (0: off).
    let threshold: Int
    let capacity: Int
    /// The most send chunks zero-copy sends may hold at once (half of them); above, sends are plain.
    let pinLimit: Int
    private let records: UnsafeMutablePointer<Record>
    private let free: UnsafeMutablePointer<Int32>
    private var freeCount: Int

    init(threshold: Int, sendChunks: Int) {
        self.threshold = threshold
        capacity = threshold > 0 ? max(16, 2 * sendChunks) : 0
        pinLimit = sendChunks / 2
        records = .allocate(capacity: max(1, capacity))
        records.initialize(repeating: Record(), count: max(1, capacity))
        free = .allocate(capacity: max(1, capacity))
        for k in 0..<capacity { free[k] = Int32(capacity - 1 - k) }
        freeCount = capacity
    }

    deinit {
        records.deallocate()
        free.deallocate()
    }

    @inline(__always) subscript(_ k: Int32) -> Record {
        get { records[Int(k)] }
        _modify { yield &records[Int(k)] }
    }

    /// A free record, or nil when every record is in use (the caller sends plainly).
    func take() -> Int32? {
        guard freeCount > 0 else { return nil }
        freeCount -= 1
        return free[freeCount]
    }

    /// Returns record `k` once neither of its completions is outstanding.
    func releaseIfDone(_ k: Int32) {
        guard !records[Int(k)].awaitingResult && !records[Int(k)].awaitingNotification else { return }
        records[Int(k)] = Record()
        free[freeCount] = k
        freeCount += 1
    }

    /// Records in use.
    var inUse: Int { capacity - freeCount }
}

extension UringBackend {
    /// The queued bytes from chunk `c` that one fixed-buffer range covers: `c`'s range, then each next
    /// chunk of the queue as long as it is `c`'s slab neighbour (index + 1), the previous one is full and
    /// it starts at 0. A receive chunk (not registered) is a run of its own that cannot go zero-copy.
    @inline(__always) func sendRun(from c0: Int32) -> (bytes: Int, chunks: Int, after: Int32) {
        var c = c0
        let (s, e0) = pool.range(c)
        var e = e0
        var bytes = e - s
        var n = 1
        if pool.isReceiveChunk(c) { return (bytes, 1, pool.next(c)) }
        let size = pool.sendChunkSize
        while e == size && bytes <= (1 << 30) - size {
            let nx = pool.next(c)
            guard nx == c + 1 else { break }
            let (s2, e2) = pool.range(nx)
            guard s2 == 0 else { break }
            c = nx
            e = e2
            bytes += e2
            n += 1
        }
        return (bytes, n, pool.next(c))
    }

    /// Starts the connection's next send when zero-copy sends are on: a SEND_ZC of the head run if it is
    /// long enough; or, when the head run is short but the run after it is long enough, a plain send of
    /// the head run alone (so the next send can be zero-copy; order is kept: one send in flight per
    /// connection). Returns false to let the caller send as usual.
    func startZeroCopySend(_ slot: Int32) -> Bool {
        let i = Int(slot)
        let h = core.states[i].sendHead
        let run = sendRun(from: h)
        // At most half the send chunks pinned: the kernel holds a zero-copy send's chunks for as long as
        // its bytes sit in the socket's send buffer (until acknowledged), long after the queue moved on,
        // so without a cap a few slow readers could pin the whole pool and refuse every write.
        if !pool.isReceiveChunk(h) && run.bytes >= zeroCopy.threshold && pool.pinnedChunks + run.chunks <= zeroCopy.pinLimit,
           let k = zeroCopy.take() {
            let (s, _) = pool.range(h)
            zeroCopy[k] = .init(slot: slot, generation: core.states[i].generation, first: h, chunks: Int32(run.chunks),
                                address: UnsafeRawPointer(pool.pointer(h) + s), bytes: UInt32(run.bytes),
                                awaitingResult: true, awaitingNotification: true)
            for c in h..<(h + Int32(run.chunks)) { pool.pin(c) }
            core.states[i].sendStarted(bytes: run.bytes, chunks: run.chunks)
            core.counters.zeroCopySends += 1
            prepare(UserData(.sendZC, slot: k))
            return true
        }
        guard run.bytes < zeroCopy.threshold, run.after >= 0, pool.pinnedChunks < zeroCopy.pinLimit, !pool.isReceiveChunk(run.after),
              sendRun(from: run.after).bytes >= zeroCopy.threshold else { return false }
        if run.chunks == 1 {
            core.states[i].sendStarted(bytes: run.bytes, chunks: 1)
        } else {
            let (bytes, chunks) = sendVectors.prepare(slot: slot, head: h, pool: pool, limit: run.chunks)
            core.states[i].sendStarted(bytes: bytes, chunks: chunks)
        }
        prepare(UserData(.send, slot: slot, generation: core.states[i].generation))
        return true
    }

    /// Fills the SEND_ZC of record `k`: fixed buffer 0 (the registered send chunks), usage reported.
    func fillZeroCopySend(_ s: UnsafeMutablePointer<io_uring_sqe>, _ k: Int32) {
        let r = zeroCopy[k]
        let i = Int(r.slot)
        rs_prep_send_zc_fixed(s, core.states[i].fd, r.address, r.bytes, Int32(MSG_NOSIGNAL), 0)
        if core.states[i].traits.contains(.direct) { s.pointee.flags |= UInt8(RS_IOSQE_FIXED_FILE) }
    }

    /// A completion of record `k`'s SEND_ZC: its result (the queue advances as for a SEND) or its
    /// notification (the chunks are unpinned: those the queue already released return to the pool).
    func completeZeroCopySend(_ ud: UserData, res: Int32, flags: UInt32) {
        let k = ud.slot
        let r = zeroCopy[k]
        if flags & IORING_CQE_F_NOTIF != 0 {
            precondition(r.awaitingNotification, "a SEND_ZC notification nobody waits for")
            if UInt32(bitPattern: res) & RS_IORING_NOTIF_USAGE_ZC_COPIED != 0 {
                core.counters.zeroCopySendsCopied += 1
            } else {
                core.counters.zeroCopySendsCompleted += 1
            }
            zeroCopyNotified(k)
            zeroCopy.releaseIfDone(k)
            return
        }
        precondition(r.awaitingResult, "a second SEND_ZC result")
        zeroCopy[k].awaitingResult = false
        // No notification announced (the send failed or was cancelled before the kernel took the pages):
        // the kernel no longer reads the chunks.
        if flags & IORING_CQE_F_MORE == 0 { zeroCopyNotified(k) }
        let conn = UserData(.send, slot: r.slot, generation: r.generation)
        completeSend(conn, res: res)
        // The bytes sent left the queue but their chunks stay pinned until the notification: they still
        // count against the connection's watermarks, so a peer that reads slowly pauses its own input
        // rather than pinning the pool (the kernel holds them while they sit in the socket buffer).
        if res > 0 && zeroCopy[k].awaitingNotification && core.isCurrent(r.slot, r.generation)
            && core.states[Int(r.slot)].phase != .tearingDown {
            core.states[Int(r.slot)].queuedBytes += Int(res)
            zeroCopy[k].accounted = res
        }
        zeroCopy.releaseIfDone(k)
    }

    private func zeroCopyNotified(_ k: Int32) {
        let r = zeroCopy[k]
        zeroCopy[k].awaitingNotification = false
        ringInflight -= 1
        if r.accounted > 0 && core.isCurrent(r.slot, r.generation) {
            let i = Int(r.slot)
            core.states[i].queuedBytes = max(0, core.states[i].queuedBytes - Int(r.accounted))
            core.markDirty(r.slot)  // may resume reading or owe `writable`
        }
        // In slab order: the chunks return to the free list as neighbours, ready to form a run again.
        for c in r.first..<(r.first + r.chunks) { pool.unpin(c) }
    }
}
