import CLiburing
import Glibc

/// Per-slot `msghdr` + iovec blocks for io_uring SENDMSG, so one send can carry several queued chunks
/// (a large copied write, a streamed file) instead of one chunk per SQE.
///
/// The area is one anonymous mapping of `capacity` blocks: pages are backed only once a slot sends
/// more than one chunk at a time, so idle connections cost nothing.
///
/// Invariant: the kernel reads a slot's block until that slot's send CQE; a slot has at most one send
/// in flight, so its block is never rewritten while in use.
final class SendVectors {
    static let maxChunks = 64
    private let base: UnsafeMutableRawPointer
    private let bytes: Int
    private let stride: Int

    init(capacity: Int) throws(SyscallError) {
        let raw = MemoryLayout<msghdr>.stride + Self.maxChunks * MemoryLayout<iovec>.stride
        stride = (raw + 63) & ~63
        bytes = max(stride * capacity, 4096)
        let p = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        guard let p, p != MAP_FAILED else { throw SyscallError("mmap(send vectors, \(bytes) bytes)", .current) }
        base = p
    }

    deinit { munmap(base, bytes) }

    /// Slot `slot`'s message header (valid after `prepare`).
    @inline(__always) func message(slot: Int32) -> UnsafeMutablePointer<msghdr> {
        (base + Int(slot) * stride).assumingMemoryBound(to: msghdr.self)
    }

    /// Fills slot `slot`'s block with up to `limit` (at most `maxChunks`) queued chunks starting at `head` and returns
    /// the bytes and the number of chunks it covers; at most `byteLimit` bytes (a socket directive's
    /// place in the queue), the last chunk then covered in part.
    @inline(__always)
    func prepare(slot: Int32, head: Int32, pool: BufferPool, limit: Int = maxChunks, byteLimit: Int = .max) -> (bytes: Int, chunks: Int) {
        let block = base + Int(slot) * stride
        let msg = block.bindMemory(to: msghdr.self, capacity: 1)
        let iov = (block + MemoryLayout<msghdr>.stride).bindMemory(to: iovec.self, capacity: Self.maxChunks)
        var c = head
        var n = 0
        var total = 0
        let most = min(limit, Self.maxChunks)
        while c >= 0 && n < most && total < byteLimit {
            let (s, e) = pool.range(c)
            let take = min(e - s, byteLimit - total)
            iov[n] = iovec(iov_base: pool.pointer(c) + s, iov_len: take)
            total += take
            n += 1
            c = pool.next(c)
        }
        msg.pointee = msghdr()
        msg.pointee.msg_iov = iov
        msg.pointee.msg_iovlen = n
        return (total, n)
    }
}
