/// The outbound queue and the held input of each connection: intrusive lists of pool chunks, linked
/// through `BufferPool.next`, so queuing never allocates.
///
/// Chunk ownership: a chunk in a queue belongs to its connection until it is sent or discarded; the
/// first `inflightChunks` chunks of the queue are also read by the kernel (a send in flight) and are
/// never released before that send's final completion, whatever else happens (abort, teardown, stop).
extension LoopCore {
    @usableFromInline func enqueueCopy(slot: Int32, _ bytes: UnsafeRawBufferPointer) throws(WriteError) {
        // Stream layers: a layered connection's handler writes plaintext, which its layers transform
        // (and queue through `enqueueUnlayered`). One bit test on the unlayered path.
        if _slowPath(states[Int(slot)].traits.contains(.layered)) { try enqueueLayered(slot: slot, bytes); return }
        try enqueueUnlayered(slot: slot, bytes)
    }

    /// Copies `bytes` into send chunks at the end of the queue, bypassing any layer: the engine's own
    /// queueing, and the socket end of a layer stack (`LayerIO.send` at the lowest layer).
    @inline(__always) func enqueueUnlayered(slot: Int32, _ bytes: UnsafeRawBufferPointer) throws(WriteError) {
        let i = Int(slot)
        guard states[i].acceptsWrites else { throw .closed }
        var remaining = bytes.count
        guard remaining > 0 else { return }
        let chunkSize = pool.sendChunkSize
        // Room at the end of the tail chunk (safe even while an earlier range of it is being sent:
        // the kernel only reads the range it was given).
        let tail = states[i].sendTail
        var room = 0
        if tail >= 0 { room = pool.size(tail) - pool.range(tail).end }
        let needed = remaining > room ? (remaining - room + chunkSize - 1) / chunkSize : 0
        guard needed <= pool.freeSendCount else {
            counters.writesRefused += 1
            throw .bufferPoolExhausted
        }
        var src = bytes.baseAddress!
        if room > 0 {
            let n = min(room, remaining)
            let (s, e) = pool.range(tail)
            (pool.pointer(tail) + e).copyMemory(from: src, byteCount: n)
            pool.setRange(tail, s, e + n)
            src += n; remaining -= n
        }
        // Taken as one block (capacity checked above): chunks released in order come back as slab
        // neighbours in order, which a zero-copy send can cover with one fixed-buffer range.
        var k = needed > 0 ? pool.takeSendChunks(needed) : 0
        while remaining > 0 {
            let c = pool.takenSendChunk(at: k)
            k += 1
            let n = min(chunkSize, remaining)
            pool.pointer(c).copyMemory(from: src, byteCount: n)
            pool.setRange(c, 0, n)
            append(slot: slot, chunk: c)
            src += n; remaining -= n
        }
        noteQueued(slot, bytes.count)
    }

    /// Queues the received chunk lent to the current handler call for sending without a copy; a second
    /// hand-back of the same chunk copies instead.
    @usableFromInline func enqueueReceived(slot: Int32, _ r: ReceivedBytes) throws(WriteError) {
        // A layered connection's received bytes are plaintext a layer produced: they go back through the
        // layers (transformed, so never the chunk itself).
        if _slowPath(states[Int(slot)].traits.contains(.layered)) { try enqueueLayered(slot: slot, r.bytes); return }
        precondition(r.chunk == lentChunk, "ReceivedBytes used outside the handler call it was passed to")
        guard states[Int(slot)].acceptsWrites else { throw .closed }
        if lentChunkKept || r.count == 0 {
            try enqueueCopy(slot: slot, r.bytes)
            return
        }
        lentChunkKept = true
        pool.setRange(r.chunk, Int(r.offset), Int(r.offset) + r.count)
        append(slot: slot, chunk: r.chunk)
        noteQueued(slot, r.count)
    }

    /// A layered connection's write: through its layer stack (Layers/LayerStack.swift), which queues the
    /// transformed bytes with `enqueueUnlayered`. Out of line: not on the unlayered path.
    @inline(never) func enqueueLayered(slot: Int32, _ bytes: UnsafeRawBufferPointer) throws(WriteError) {
        guard states[Int(slot)].acceptsWrites else { throw .closed }
        guard bytes.count > 0 else { return }
        let r: Result<Void, WriteError>? = withLayerStack(slot) { stack in
            Result { () throws(WriteError) in try stack.writeFromHandler(bytes) }
        }
        guard let r else { throw .closed }
        try r.get()
    }

    /// Bytes that can be queued on `slot` right now without exhausting the pool's send chunks (room in
    /// the tail chunk plus every free send chunk). For layers that must know before they transform.
    func queueableBytes(slot: Int32) -> Int {
        let tail = states[Int(slot)].sendTail
        let room = tail >= 0 ? pool.size(tail) - pool.range(tail).end : 0
        return room + pool.freeSendCount * pool.sendChunkSize
    }

    @inline(__always) func noteQueued(_ slot: Int32, _ n: Int) {
        let i = Int(slot)
        if states[i].queuedBytes == 0 { startStallClock(slot) }
        states[i].queuedBytes += n
        if states[i].queuedBytes > highWatermark { states[i].owesWritable = true }
        markDirty(slot)
    }

    @inline(__always) func append(slot: Int32, chunk: Int32) {
        let i = Int(slot)
        pool.setNext(chunk, -1)
        if states[i].sendTail >= 0 { pool.setNext(states[i].sendTail, chunk) } else { states[i].sendHead = chunk }
        states[i].sendTail = chunk
    }

    /// Drops `n` sent bytes from the head of the queue, releasing emptied chunks.
    func consumeSent(slot: Int32, _ n: Int) {
        let i = Int(slot)
        var left = n
        states[i].queuedBytes -= n
        counters.bytesOut += n
        if n > 0 { states[i].lastActivity = now; states[i].lastSendProgress = now }
        if _slowPath(states[i].directiveBytes > 0) {
            precondition(n <= Int(states[i].directiveBytes), "a send went past a socket directive")
            states[i].directiveBytes -= Int32(truncatingIfNeeded: n)
        }
        while left > 0 {
            let h = states[i].sendHead
            precondition(h >= 0, "sent more than was queued")
            let (s, e) = pool.range(h)
            let take = min(left, e - s)
            left -= take
            if s + take == e {
                states[i].sendHead = pool.next(h)
                if states[i].sendHead < 0 { states[i].sendTail = -1 }
                pool.release(h)
            } else {
                pool.setRange(h, s + take, e)
            }
        }
    }

    /// Holds a received chunk (bytes `0..<count`) behind any already held, for delivery on resume.
    func hold(slot: Int32, chunk: Int32, count: Int) {
        let i = Int(slot)
        pool.setRange(chunk, 0, count)
        pool.setNext(chunk, -1)
        if states[i].heldTail >= 0 { pool.setNext(states[i].heldTail, chunk) } else { states[i].heldHead = chunk }
        states[i].heldTail = chunk
        counters.receivesHeld += 1
    }

    /// Takes the oldest held chunk (-1: none).
    func popHeld(slot: Int32) -> Int32 {
        let i = Int(slot)
        let c = states[i].heldHead
        if c >= 0 {
            states[i].heldHead = pool.next(c)
            if states[i].heldHead < 0 { states[i].heldTail = -1 }
        }
        return c
    }

    /// Releases every held chunk (teardown, lingering).
    func discardHeld(slot: Int32) {
        while true {
            let c = popHeld(slot: slot)
            if c < 0 { return }
            pool.release(c)
        }
    }

    /// Releases every queued chunk except those a send in flight still reads (the first
    /// `inflightChunks`): those return to the pool on that send's final completion.
    func discardQueue(slot: Int32) {
        let i = Int(slot)
        let keep = states[i].sendInFlight ? Int(states[i].inflightChunks) : 0
        var c = states[i].sendHead
        if keep == 0 {
            states[i].sendHead = -1
            states[i].sendTail = -1
            states[i].queuedBytes = 0
        } else {
            var bytes = 0
            var last = c
            var kept = 0
            while kept < keep && c >= 0 {
                let (s, e) = pool.range(c)
                bytes += e - s
                last = c
                c = pool.next(c)
                kept += 1
            }
            pool.setNext(last, -1)
            states[i].sendTail = last
            states[i].queuedBytes = bytes
        }
        while c >= 0 {
            let n = pool.next(c)
            pool.release(c)
            c = n
        }
    }
}
