import CLiburing
import Glibc

/// A provided-buffer ring (IORING_REGISTER_PBUF_RING): the kernel picks a buffer from it for each
/// multishot receive completion, so idle connections hold no buffer at all.
///
/// Buffer ids are the pool's receive chunk indices. Returned buffers are added at once and published to
/// the kernel in one tail update per completion batch (`publish()`), which is what makes the kernel see
/// them (liburing io_uring_buf_ring_add / io_uring_buf_ring_advance).
///
/// Receive bundles (IORING_RECVSEND_BUNDLE) take several buffers in one completion, which names only the
/// first: the rest are the ring entries that follow it. `order` (ring position -> chunk) and `position`
/// (chunk -> ring position) record where each `give` put its chunk, so `chunk(after:)` names them.
///
/// Invariants: `entries` is a power of two >= every buffer id count we ever add (the pool's receive chunk
/// count); memory is page-aligned and stays mapped until after the ring is unregistered; a chunk is in the
/// ring at most once, so its `position` is the entry the kernel took it from.
final class ProvidedBufferRing {
    let groupID: UInt16
    let entries: Int
    private let ring: UnsafeMutablePointer<io_uring_buf_ring>
    private let mapBytes: Int
    private let mask: Int32
    @exclusivity(unchecked) private var pending: Int32 = 0
    /// Our copy of the ring's tail (the kernel reads the shared one): where the next `give` lands.
    @exclusivity(unchecked) private var tail: UInt16 = 0
    private let order: UnsafeMutablePointer<Int32>
    private let position: UnsafeMutablePointer<Int32>
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
        order = .allocate(capacity: entries)
        order.initialize(repeating: -1, count: entries)
        position = .allocate(capacity: entries)
        position.initialize(repeating: -1, count: entries)
    }

    /// Unregisters (call before the ring is torn down, after the last receive completion).
    func unregister(uring: UnsafeMutablePointer<io_uring>) {
        _ = rs_io_uring_unregister_buf_ring(uring, Int32(groupID))
    }

    deinit {
        munmap(ring, mapBytes)
        order.deallocate()
        position.deallocate()
    }

    /// Adds one buffer; visible to the kernel after `publish()`.
    @inline(__always) func give(chunk: Int32, address: UnsafeMutableRawPointer, length: Int) {
        io_uring_buf_ring_add(ring, address, UInt32(length), UInt16(truncatingIfNeeded: chunk), mask, pending)
        let at = Int32(truncatingIfNeeded: tail &+ UInt16(truncatingIfNeeded: pending)) & mask
        order[Int(at)] = chunk
        position[Int(chunk)] = at
        pending += 1
    }

    /// Publishes added buffers with one tail store. Returns how many were published.
    @discardableResult @inline(__always) func publish() -> Int {
        guard pending > 0 else { return 0 }
        io_uring_buf_ring_advance(ring, pending)
        tail &+= UInt16(truncatingIfNeeded: pending)
        let n = Int(pending)
        available += n
        pending = 0
        return n
    }

    /// The kernel consumed `count` buffers (a receive completion carried IORING_CQE_F_BUFFER).
    @inline(__always) func noteConsumed(_ count: Int = 1) { available -= count }

    /// The chunk in the ring entry after `chunk`'s: a bundle's next buffer.
    @inline(__always) func chunk(after chunk: Int32) -> Int32 {
        order[Int((position[Int(chunk)] &+ 1) & mask)]
    }
}
