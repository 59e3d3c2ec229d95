import CLiburing
import Glibc

/// A provided-buffer ring (IORING_REGISTER_PBUF_RING): the kernel picks a buffer from it for each
/// multishot receive completion, so idle connections hold no buffer at all.
///
/// Buffer ids are the pool's receive chunk indices. Returned buffers are added at once and published to
/// the kernel in one tail update per completion batch (`publish()`), which is what makes the kernel see
/// them (liburing io_uring_buf_ring_add / io_uring_buf_ring_advance).
///
/// Invariants: `entries` is a power of two >= every buffer id count we ever add (the pool's receive chunk
/// count); memory is page-aligned and stays mapped until after the ring is unregistered.
final class ProvidedBufferRing {
    let groupID: UInt16
    let entries: Int
    private let ring: UnsafeMutablePointer<io_uring_buf_ring>
    private let mapBytes: Int
    private let mask: Int32
    @exclusivity(unchecked) private var pending: Int32 = 0
    /// Buffers currently available to the kernel (approximately: counts what we added minus receives).
    @exclusivity(unchecked) private(set) var available: Int = 0

    /// Maps and registers the ring with `uring`. `entries` must be a power of two.
    init(uring: UnsafeMutablePointer<io_uring>, groupID: UInt16, entries: Int) throws(SyscallError) {
        precondition(entries > 0 && entries & (entries - 1) == 0 && entries <= 32768)
        self.groupID = groupID
        self.entries = entries
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let bytes = (entries * MemoryLayout<io_uring_buf>.stride + page - 1) / page * page
        let p = mmap(nil, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        guard let p, p != MAP_FAILED else { throw SyscallError("mmap(provided buffer ring)", .current) }
        mapBytes = bytes
        ring = p.bindMemory(to: io_uring_buf_ring.self, capacity: 1)
        io_uring_buf_ring_init(ring)
        var reg = io_uring_buf_reg()
        reg.ring_addr = UInt64(UInt(bitPattern: p))
        reg.ring_entries = UInt32(entries)
        reg.bgid = groupID
        let r = rs_io_uring_register_buf_ring(uring, &reg, 0)
        if r < 0 {
            munmap(p, bytes)
            throw SyscallError("io_uring_register_buf_ring(\(entries) entries)", Errno(rawValue: -r))
        }
        mask = io_uring_buf_ring_mask(UInt32(entries))
    }

    /// Unregisters (call before the ring is torn down, after the last receive completion).
    func unregister(uring: UnsafeMutablePointer<io_uring>) {
        _ = rs_io_uring_unregister_buf_ring(uring, Int32(groupID))
    }

    deinit { munmap(ring, mapBytes) }

    /// Adds one buffer; visible to the kernel after `publish()`.
    @inline(__always) func give(chunk: Int32, address: UnsafeMutableRawPointer, length: Int) {
        io_uring_buf_ring_add(ring, address, UInt32(length), UInt16(truncatingIfNeeded: chunk), mask, pending)
        pending += 1
    }

    /// Publishes added buffers with one tail store. Returns how many were published.
    @discardableResult @inline(__always) func publish() -> Int {
        guard pending > 0 else { return 0 }
        io_uring_buf_ring_advance(ring, pending)
        let n = Int(pending)
        available += n
        pending = 0
        return n
    }

    /// The kernel consumed one buffer (a receive completion carried IORING_CQE_F_BUFFER).
    @inline(__always) func noteConsumed() { available -= 1 }
}
