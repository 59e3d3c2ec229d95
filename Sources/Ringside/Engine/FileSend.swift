import Glibc

/// Sending a file's bytes without copying them through the handler: the loop's file operations read
/// them straight into free send chunks of the pool, which are then queued like written bytes.
///
/// io_uring with registered buffers: one READ_FIXED per chunk (the registered slab is what they read
/// into), submitted together; otherwise one vectored read (READV, or a helper thread's preadv on epoll,
/// after an inline `preadv2(RWF_NOWAIT)` try). The chunks belong to the operation until it completes:
/// then the bytes read are queued in file order, and chunks left over return to the pool.
final class FileSendOperation {
    let slot: Int32
    let generation: UInt32
    let chunks: [Int32]
    /// Chunks holding bytes that go before the file's (copied at the start, queued with the file's).
    let prefixChunks: [Int32]
    let prefixBytes: Int
    /// Bytes asked of each chunk (the last may be short).
    let lengths: [Int]
    /// Per-chunk results when reading chunk by chunk (nil: not completed yet).
    var results: [FileOutcome?]
    var outstanding: Int
    /// Invariant: `vector` has `chunks.count` entries pointing into those chunks, allocated here and
    /// freed in deinit, after the read that uses it has completed.
    let vector: UnsafeMutablePointer<iovec>
    let done: (Result<Int, SendFileError>) -> Void

    init(slot: Int32, generation: UInt32, chunks: [Int32], lengths: [Int], prefixChunks: [Int32], prefixBytes: Int,
         pool: BufferPool, done: @escaping (Result<Int, SendFileError>) -> Void) {
        self.slot = slot; self.generation = generation; self.chunks = chunks; self.lengths = lengths; self.done = done
        self.prefixChunks = prefixChunks; self.prefixBytes = prefixBytes
        results = Array(repeating: nil, count: chunks.count)
        outstanding = chunks.count
        vector = .allocate(capacity: chunks.count)
        for k in chunks.indices { vector[k] = iovec(iov_base: pool.pointer(chunks[k]), iov_len: lengths[k]) }
    }

    deinit { vector.deallocate() }
}

/// A file send on a layered connection: the prefix and the file's bytes in one staging buffer.
/// Invariant: `staging` is owned here, written by one read (after the prefix) and freed in deinit,
/// after that read completed (the completion closure holds this object).
final class LayeredFileSend {
    let staging: UnsafeMutableRawBufferPointer
    let prefixBytes: Int
    let count: Int

    init(prefix: UnsafeRawBufferPointer?, count: Int) {
        prefixBytes = prefix?.count ?? 0
        self.count = count
        staging = .allocate(byteCount: prefixBytes + count, alignment: 64)
        if let prefix, prefixBytes > 0 { staging.baseAddress!.copyMemory(from: prefix.baseAddress!, byteCount: prefixBytes) }
    }

    deinit { staging.deallocate() }
}

/// Why a file send did not queue bytes.
public enum SendFileError: Error, Equatable, Sendable {
    /// The connection closed (or stopped accepting writes) before the bytes could be queued.
    case closed
    /// A layered connection's layers (TLS) found too few free send chunks for the bytes read: nothing
    /// was queued; send the same range again later.
    case bufferPoolExhausted
    /// The read failed (EIO, EBADF, ...; ECANCELED when the loop stopped first).
    case file(FileError)
}

/// A backend that can move a file's pages into a connection's socket without reading them into
/// send chunks (io_uring: IORING_OP_SPLICE through a pipe, `UringSplice.swift`).
protocol FileSplicer: AnyObject {
    /// Starts sending `count` bytes (or fewer: at most a pipe's capacity) of `fd` at `offset`, after
    /// `prefix`, on `slot`, whose queue is empty and has no send in flight; the slot counts it as its send
    /// in flight until `done` (bytes of the file sent, 0 at end of file). Returns false, having done
    /// nothing, when the send should read into chunks instead (too small, no free pipe).
    func spliceFile(slot: Int32, fd: Int32, offset: Int64, count: Int, prefix: UnsafeRawBufferPointer?,
                    _ done: @escaping (Result<Int, SendFileError>) -> Void) -> Bool
    /// The write-stall deadline of `slot` passed with its splice in flight: interrupts the splice-out
    /// (its completion then tells whether bytes moved) and returns true, or false when there is nothing
    /// to interrupt or it was already interrupted without progress (the caller closes the connection).
    func probeStalledSplice(slot: Int32) -> Bool
}

extension LoopCore {
    /// The most chunks one file send reads into.
    static let fileSendChunks = 16

    /// Starts reading up to `count` bytes of `fd` at `offset` into send chunks (see
    /// ``Connection/sendFile(_:at:count:_:)``). Throws `bufferPoolExhausted` when no send chunk (or
    /// no file-operation slot) is free.
    func sendFile(slot: Int32, fd: Int32, offset: Int64, count: Int, prefix: UnsafeRawBufferPointer?,
                  _ done: @escaping (Result<Int, SendFileError>) -> Void) throws(WriteError) {
        let i = Int(slot)
        guard states[i].acceptsWrites else { throw .closed }
        guard count > 0 else { throw .closed }
        if _slowPath(states[i].traits.contains(.layered)) {
            return sendFileLayered(slot: slot, fd: fd, offset: offset, count: count, prefix: prefix, done)
        }
        // Splice (io_uring, plaintext): only with nothing queued or in flight, so the file's bytes keep
        // their place after everything written before (later writes wait: the splice is the send in flight).
        if let splicer, states[i].sendHead < 0, !states[i].sendInFlight,
           splicer.spliceFile(slot: slot, fd: fd, offset: offset, count: count, prefix: prefix, done) {
            return
        }
        let size = pool.sendChunkSize
        let prefixCount = prefix?.count ?? 0
        let prefixNeeded = (prefixCount + size - 1) / size
        guard pool.freeSendCount > prefixNeeded else {
            counters.writesRefused += 1
            throw .bufferPoolExhausted
        }
        // The prefix is copied now (the caller's buffer is free once this returns).
        var prefixChunks: [Int32] = []
        if let prefix, prefixCount > 0 {
            prefixChunks.reserveCapacity(prefixNeeded)
            var at = 0
            while at < prefixCount {
                let c = pool.takeSendChunk()!  // counted above
                let n = min(size, prefixCount - at)
                pool.pointer(c).copyMemory(from: prefix.baseAddress! + at, byteCount: n)
                pool.setRange(c, 0, n)
                prefixChunks.append(c)
                at += n
            }
        }
        let wanted = min(Self.fileSendChunks, (count + size - 1) / size)
        // Leave most of a short pool to the other connections' writes (at least one chunk is taken).
        let ops = files!.takeUnretainedValue() as! any LoopFileOperations
        var k = min(wanted, max(pool.freeSendCount > 0 ? 1 : 0, pool.freeSendCount / 4))
        // Chunk-by-chunk reads take one file-operation slot each: keep half the table for other calls.
        let room = ops.fileOperationRoom
        k = ops.readsSlabAsFixedBuffers ? min(k, room / 2) : (room > 0 ? k : 0)
        guard k > 0 else {
            for c in prefixChunks { pool.release(c) }
            counters.writesRefused += 1
            throw .bufferPoolExhausted
        }
        var chunks: [Int32] = []
        var lengths: [Int] = []
        chunks.reserveCapacity(k); lengths.reserveCapacity(k)
        var left = count
        // One block (counted above): chunks released in order come back as slab neighbours in order, so
        // a zero-copy send (`zeroCopySendThreshold`) can cover the piece with one fixed-buffer range.
        let block = pool.takeSendChunks(k)
        for j in 0..<k {
            chunks.append(pool.takenSendChunk(at: block + j))
            lengths.append(min(size, left))
            left -= min(size, left)
        }
        let op = FileSendOperation(slot: slot, generation: states[i].generation, chunks: chunks, lengths: lengths,
                                   prefixChunks: prefixChunks, prefixBytes: prefixCount, pool: pool, done: done)
        let me = Unmanaged.passUnretained(self)
        if ops.readsSlabAsFixedBuffers {
            var at = offset
            for k in chunks.indices {
                ops.submit(.read(fd: fd, buffer: op.vector[k].iov_base, count: lengths[k], offset: at)) { outcome in
                    op.results[k] = outcome
                    op.outstanding -= 1
                    if op.outstanding == 0 { me._withUnsafeGuaranteedRef { $0.finishFileSend(op) } }
                }
                at += Int64(lengths[k])
            }
        } else {
            ops.submit(.readv(fd: fd, vector: op.vector, count: Int32(chunks.count), offset: offset)) { outcome in
                op.results[0] = outcome
                op.outstanding = 0
                me._withUnsafeGuaranteedRef { $0.finishFileSend(op, vectored: true) }
            }
        }
    }

    /// A layered connection (TLS): the bytes must pass through its layers, so they are read into a
    /// staging buffer (after a copy of the prefix) and written like a handler's write, all or nothing.
    private func sendFileLayered(slot: Int32, fd: Int32, offset: Int64, count: Int, prefix: UnsafeRawBufferPointer?,
                                 _ done: @escaping (Result<Int, SendFileError>) -> Void) {
        let op = LayeredFileSend(prefix: prefix, count: min(count, Self.fileSendChunks * pool.sendChunkSize))
        let generation = states[Int(slot)].generation
        let ops = files!.takeUnretainedValue() as! any LoopFileOperations
        let me = Unmanaged.passUnretained(self)
        ops.submit(.read(fd: fd, buffer: op.staging.baseAddress! + op.prefixBytes, count: op.count, offset: offset)) { outcome in
            me._withUnsafeGuaranteedRef { core in
                guard core.isCurrent(slot, generation), core.states[Int(slot)].acceptsWrites else { return done(.failure(.closed)) }
                switch outcome {
                case .value(let n) where n > 0:
                    do throws(WriteError) {
                        try core.enqueueCopy(slot: slot, UnsafeRawBufferPointer(rebasing: op.staging[0..<(op.prefixBytes + n)]))
                        done(.success(n))
                    } catch {
                        done(.failure(error == .closed ? .closed : .bufferPoolExhausted))
                    }
                case .value: done(.success(0))
                case .failure(let e): done(.failure(.file(FileError(errno: e))))
                case .status: done(.failure(.file(FileError(errno: EIO))))
                }
            }
        }
    }

    /// Queues what a file send read (after its prefix), in file order up to the first short or failed
    /// piece; returns the unused chunks to the pool; reports the count queued (0: end of file, and then
    /// the prefix is not queued either) or the failure (nothing queued).
    private func finishFileSend(_ op: FileSendOperation, vectored: Bool = false) {
        // What was read, as one prefix of the chunks.
        var total = 0
        var failure: Int32? = nil
        if vectored {
            switch op.results[0] {
            case .value(let n)?: total = n
            case .failure(let e)?: failure = e
            default: failure = EIO
            }
        } else {
            for k in op.chunks.indices {
                guard case .value(let n)? = op.results[k] else {
                    if case .failure(let e)? = op.results[k], total == 0 { failure = e }
                    break
                }
                total += n
                if n < op.lengths[k] { break }  // end of file (or a short read): stop at the first gap
            }
        }
        let live = isCurrent(op.slot, op.generation) && states[Int(op.slot)].acceptsWrites
        let queue = live && failure == nil && total > 0
        for c in op.prefixChunks {
            if queue { append(slot: op.slot, chunk: c) } else { pool.release(c) }
        }
        var left = queue ? total : 0
        for k in op.chunks.indices {
            let c = op.chunks[k]
            let n = min(left, op.lengths[k])
            if n > 0 {
                pool.setRange(c, 0, n)
                append(slot: op.slot, chunk: c)
                left -= n
            } else {
                pool.release(c)
            }
        }
        if !live { return op.done(.failure(.closed)) }
        if let failure { return op.done(.failure(.file(FileError(errno: failure)))) }
        if queue { noteQueued(op.slot, op.prefixBytes + total) }
        op.done(.success(total))
    }
}
