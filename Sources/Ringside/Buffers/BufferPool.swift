import CLiburing
import Glibc

/// One page-aligned slab carved into fixed-size chunks; the only memory the engine receives into or
/// sends from.
///
/// Two size classes share the slab. Chunks `0..<receiveChunkCount` are *receive* chunks of
/// `receiveChunkSize` bytes: on io_uring they live in the provided-buffer ring (buffer id == chunk
/// index) while the kernel may fill them; on epoll they sit in a free list. The remaining chunks are
/// smaller *send* chunks (`sendChunkSize`), handed out to `Connection.write` copies, so many
/// connections with a small response pending do not each pin a receive-sized chunk.
///
/// Each chunk also carries queue metadata (`next`, `start`, `end`) so outbound queues are intrusive
/// linked lists through the chunk table: queuing data never allocates.
///
/// Invariants (loop-thread confined, never shared):
/// - a chunk is in exactly one place: the provided ring / receive free list, the send free list, a
///   connection's outbound queue, or borrowed by a handler call that is in progress;
/// - a receive chunk is never handed back to the kernel before its CQE was reaped and its bytes consumed
///   (or sent, when retained for a zero-copy send);
/// - `start <= end <= chunkSize` for a chunk in an outbound queue;
/// - a *pinned* send chunk (read by a zero-copy send whose notification has not arrived) is never back in
///   the send free list: releasing it only marks it, and the last `unpin` returns it.
final class BufferPool {
    let base: UnsafeMutableRawPointer
    let slabBytes: Int
    let receiveChunkSize: Int
    let sendChunkSize: Int
    let chunkCount: Int
    let receiveChunkCount: Int
    private let sendBase: UnsafeMutableRawPointer

    private let next: UnsafeMutablePointer<Int32>
    private let start: UnsafeMutablePointer<Int32>
    private let end: UnsafeMutablePointer<Int32>
    /// Per chunk: zero-copy sends still reading it (low bits) and whether it was released meanwhile
    /// (`releasedWhilePinned`). Zero for every chunk unless zero-copy sends are on.
    private let pins: UnsafeMutablePointer<UInt32>
    private static let releasedWhilePinned: UInt32 = 1 << 31
    private let freeSend: UnsafeMutablePointer<Int32>
    /// Where `takenSendChunk(at:)` reads: the free stack itself, or (`contiguous`) `takenBlock`.
    private var blockBase: UnsafeMutablePointer<Int32>
    /// Contiguous allocation (`useContiguousAllocation`): the free send chunks as a bitmap (bit set: free),
    /// and where a block take writes the chunks it took.
    @exclusivity(unchecked) private(set) var contiguous = false
    private let freeBits: UnsafeMutablePointer<UInt64>
    private let freeWords: Int
    private let takenBlock: UnsafeMutablePointer<Int32>
    @exclusivity(unchecked) private(set) var freeSendCount: Int
    private let freeRecv: UnsafeMutablePointer<Int32>
    @exclusivity(unchecked) private(set) var freeRecvCount: Int

    /// Chunks out of their home (held by queues or handlers); for leak checks and stats.
    @exclusivity(unchecked) private(set) var chunksOut: Int = 0
    @exclusivity(unchecked) private(set) var peakChunksOut: Int = 0

    /// Where released receive chunks go on io_uring (nil on epoll: the receive free list).
    /// Unowned: the io_uring backend owns the ring and outlives the pool's use of it (no ARC per release).
    /// Held unretained (+0 borrow on use, no retain/release per released chunk): the backend owns the
    /// ring and outlives the pool's use by its loop.
    var providedRingRef: Unmanaged<ProvidedBufferRing>?
    var providedRing: ProvidedBufferRing? {
        get { providedRingRef?.takeUnretainedValue() }
        set { providedRingRef = newValue.map { Unmanaged.passUnretained($0) } }
    }

    /// Debugging (`ServerConfiguration.poisonReleasedChunks`): released chunks are filled with
    /// `ServerConfiguration.poisonByte`, so bytes read after release show up as the pattern.
    var poison = false

    init(receiveChunkSize: Int, receiveChunks: Int, sendChunkSize: Int, sendChunks: Int) throws(SyscallError) {
        precondition(receiveChunkSize > 0 && receiveChunkSize <= Int(Int32.max) && receiveChunks > 0)
        precondition(sendChunkSize > 0 && sendChunkSize <= Int(Int32.max) && sendChunks > 0)
        let chunkCount = receiveChunks + sendChunks
        let receiveChunkCount = receiveChunks
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let bytes = (receiveChunkSize * receiveChunks + sendChunkSize * sendChunks + page - 1) / page * page
        let p = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        guard let p, p != MAP_FAILED else { throw SyscallError("mmap(buffer slab, \(bytes) bytes)", .current) }
        base = p
        slabBytes = bytes
        self.receiveChunkSize = receiveChunkSize
        self.sendChunkSize = sendChunkSize
        sendBase = p + receiveChunkSize * receiveChunks
        self.chunkCount = chunkCount
        self.receiveChunkCount = receiveChunkCount
        next = .allocate(capacity: chunkCount); next.initialize(repeating: -1, count: chunkCount)
        start = .allocate(capacity: chunkCount); start.initialize(repeating: 0, count: chunkCount)
        end = .allocate(capacity: chunkCount); end.initialize(repeating: 0, count: chunkCount)
        pins = .allocate(capacity: chunkCount); pins.initialize(repeating: 0, count: chunkCount)
        let sendCount = chunkCount - receiveChunkCount
        freeSend = .allocate(capacity: sendCount)
        // Ascending, so a block taken from the top (`takeSendChunks`) is slab neighbours in order.
        for i in 0..<sendCount { freeSend[i] = Int32(receiveChunkCount + i) }
        freeSendCount = sendCount
        blockBase = freeSend
        freeWords = (sendCount + 63) / 64
        freeBits = .allocate(capacity: freeWords); freeBits.initialize(repeating: 0, count: freeWords)
        takenBlock = .allocate(capacity: sendCount); takenBlock.initialize(repeating: -1, count: sendCount)
        freeRecv = .allocate(capacity: receiveChunkCount)
        for i in 0..<receiveChunkCount { freeRecv[i] = Int32(receiveChunkCount - 1 - i) }
        freeRecvCount = receiveChunkCount
    }

    /// The pool a loop of `config` uses (sizes, and poisoning when asked for).
    convenience init(_ config: ServerConfiguration) throws(SyscallError) {
        try self.init(receiveChunkSize: config.bufferSize, receiveChunks: config.receiveBuffers,
                      sendChunkSize: config.sendBufferSize, sendChunks: config.sendBuffers)
        poison = config.poisonReleasedChunks
    }

    /// The send chunks' part of the slab: what READ_FIXED file sends read into, so the only part
    /// registered as fixed buffers.
    var sendRegion: (base: UnsafeMutableRawPointer, bytes: Int) { (sendBase, sendChunkSize * (chunkCount - receiveChunkCount)) }

    deinit {
        munmap(base, slabBytes)
        next.deallocate(); start.deallocate(); end.deallocate(); pins.deallocate(); freeSend.deallocate(); freeRecv.deallocate()
        freeBits.deallocate(); takenBlock.deallocate()
    }

    @inline(__always) func pointer(_ chunk: Int32) -> UnsafeMutableRawPointer {
        let c = Int(chunk)
        return c < receiveChunkCount ? base + c * receiveChunkSize : sendBase + (c - receiveChunkCount) * sendChunkSize
    }
    @inline(__always) func size(_ chunk: Int32) -> Int {
        Int(chunk) < receiveChunkCount ? receiveChunkSize : sendChunkSize
    }
    @inline(__always) func isReceiveChunk(_ chunk: Int32) -> Bool { Int(chunk) < receiveChunkCount }

    // MARK: chunk metadata (outbound queues)
    @inline(__always) func next(_ c: Int32) -> Int32 { next[Int(c)] }
    @inline(__always) func setNext(_ c: Int32, _ n: Int32) { next[Int(c)] = n }
    @inline(__always) func range(_ c: Int32) -> (start: Int, end: Int) { (Int(start[Int(c)]), Int(end[Int(c)])) }
    @inline(__always) func setRange(_ c: Int32, _ s: Int, _ e: Int) {
        assert(s >= 0 && s <= e && e <= size(c))
        start[Int(c)] = Int32(truncatingIfNeeded: s); end[Int(c)] = Int32(truncatingIfNeeded: e)
    }

    // MARK: taking and returning chunks

    /// One line for the start-up log.
    var summary: String {
        "pool=\(slabBytes / 1024)KiB (recv \(receiveChunkCount)x\(receiveChunkSize)B, send \(chunkCount - receiveChunkCount)x\(sendChunkSize)B)"
    }

    /// A free send chunk, or nil when the send side of the pool is exhausted.
    @inline(__always) func takeSendChunk() -> Int32? {
        guard freeSendCount > 0 else { return nil }
        if _slowPath(contiguous) {
            let c = takeLowestFree()
            freeSendCount -= 1
            noteOut(1)
            next[Int(c)] = -1
            return c
        }
        freeSendCount -= 1
        noteOut(1)
        let c = freeSend[freeSendCount]
        next[Int(c)] = -1
        return c
    }

    /// Takes `n` free send chunks at once (the caller checked `freeSendCount >= n`) and returns where they
    /// are: `takenSendChunk(at: first + j)` for j in 0..<n, valid until the next take or release. From the
    /// stack they come in the order they were released (chunks a queue sent in order return as neighbours
    /// in order); with `contiguous` allocation they are the lowest n free neighbours when there are any:
    /// what lets a large write or a file piece be one zero-copy send.
    @inline(__always) func takeSendChunks(_ n: Int) -> Int {
        if _slowPath(contiguous) && n > 0 { takeBlock(n); return 0 }
        freeSendCount -= n
        noteOut(n)
        return freeSendCount
    }
    @inline(__always) func takenSendChunk(at k: Int) -> Int32 {
        let c = blockBase[k]
        next[Int(c)] = -1
        return c
    }

    // MARK: contiguous allocation (zero-copy sends)

    /// Switches the send free list to a bitmap taken lowest first (`contiguous`), before any send chunk is
    /// taken: blocks of slab neighbours are then found whatever order chunks came back in, so a large
    /// write or a file piece is one fixed-buffer range a zero-copy send can carry. Only with zero-copy
    /// sends on: the default stack (last released, first taken) stays on every other configuration.
    func useContiguousAllocation() {
        precondition(freeSendCount == chunkCount - receiveChunkCount, "switching with send chunks out")
        let sendCount = chunkCount - receiveChunkCount
        for w in 0..<freeWords { freeBits[w] = 0 }
        for k in 0..<sendCount { freeBits[k >> 6] |= 1 << UInt64(k & 63) }
        contiguous = true
        blockBase = takenBlock
    }

    /// The lowest free send chunk, taken from the bitmap (the caller counts it).
    private func takeLowestFree() -> Int32 {
        var w = 0
        while freeBits[w] == 0 { w += 1 }
        let b = freeBits[w].trailingZeroBitCount
        freeBits[w] &= ~(1 << UInt64(b))
        return Int32(receiveChunkCount + w * 64 + b)
    }

    /// Takes `n` free send chunks into `blockBase[0..<n]`: the lowest `n` neighbours that are all free,
    /// else the lowest `n` free ones.
    private func takeBlock(_ n: Int) {
        let sendCount = chunkCount - receiveChunkCount
        var run = 0
        var k = 0
        var found = -1
        while k < sendCount {
            let word = freeBits[k >> 6]
            if word == 0 && k & 63 == 0 { run = 0; k += 64; continue }  // a whole word in use
            if word & (1 << UInt64(k & 63)) != 0 {
                run += 1
                if run == n { found = k + 1 - n; break }
            } else {
                run = 0
            }
            k += 1
        }
        if found >= 0 {
            for j in 0..<n {
                let x = found + j
                freeBits[x >> 6] &= ~(1 << UInt64(x & 63))
                blockBase[j] = Int32(receiveChunkCount + x)
            }
        } else {
            for j in 0..<n { blockBase[j] = takeLowestFree() }
        }
        freeSendCount -= n
        noteOut(n)
    }

    /// A free receive chunk for epoll reads, or nil when all are in use.
    @inline(__always) func takeReceiveChunk() -> Int32? {
        guard freeRecvCount > 0 else { return nil }
        freeRecvCount -= 1
        noteOut(1)
        return freeRecv[freeRecvCount]
    }

    /// Notes that the kernel handed a provided-ring chunk to us (io_uring receive completion).
    @inline(__always) func noteReceivedFromRing(_ count: Int = 1) { noteOut(count) }

    /// Returns a chunk to its home: the provided ring (io_uring receive chunks), the receive free list
    /// (epoll), or the send free list.
    @inline(__always) func release(_ c: Int32) {
        if _slowPath(pins[Int(c)] != 0) { pins[Int(c)] |= Self.releasedWhilePinned; return }
        chunksOut -= 1
        if poison { memset(pointer(c), Int32(ServerConfiguration.poisonByte), size(c)) }
        if isReceiveChunk(c) {
            if let ring = providedRingRef {
                ring._withUnsafeGuaranteedRef { $0.give(chunk: c, address: pointer(c), length: receiveChunkSize) }
            } else {
                freeRecv[freeRecvCount] = c; freeRecvCount += 1
            }
        } else if _slowPath(contiguous) {
            let x = Int(c) - receiveChunkCount
            freeBits[x >> 6] |= 1 << UInt64(x & 63)
            freeSendCount += 1
        } else {
            freeSend[freeSendCount] = c; freeSendCount += 1
        }
    }

    // MARK: zero-copy sends

    /// A zero-copy send reads send chunk `c` until its notification: `release` must not return it before.
    @inline(__always) func pin(_ c: Int32) {
        assert(!isReceiveChunk(c))
        if pins[Int(c)] & ~Self.releasedWhilePinned == 0 { pinnedChunks += 1 }
        pins[Int(c)] += 1
    }

    /// Send chunks read by at least one zero-copy send in flight.
    @exclusivity(unchecked) private(set) var pinnedChunks = 0

    /// A zero-copy send's notification arrived: the kernel no longer reads `c`. Returns it to the pool if
    /// it was released meanwhile and no other zero-copy send reads it.
    @inline(__always) func unpin(_ c: Int32) {
        let p = pins[Int(c)]
        precondition(p & ~Self.releasedWhilePinned > 0, "unpinning chunk \(c), which no zero-copy send reads")
        pins[Int(c)] = p - 1
        if (p - 1) & ~Self.releasedWhilePinned == 0 { pinnedChunks -= 1 }
        if p - 1 == Self.releasedWhilePinned {
            pins[Int(c)] = 0
            release(c)
        }
    }

    /// Whether `c` is read by a zero-copy send in flight.
    func isPinned(_ c: Int32) -> Bool { pins[Int(c)] & ~Self.releasedWhilePinned > 0 }

    @inline(__always) private func noteOut(_ n: Int) {
        chunksOut += n
        if chunksOut > peakChunksOut { peakChunksOut = chunksOut }
    }
}
