import CLiburing
import Glibc

/// The io_uring backend's file operations: each is a ring operation (openat2, read/write, with the
/// registered slab's READ_FIXED/WRITE_FIXED when the buffer lies in it, fsync, statx, close), so the
/// loop thread never makes a file syscall. Completions are matched by a slot in a fixed table (the
/// user data carries slot and generation); a stop cancels what is pending and waits for it.
final class UringFiles: LoopFileOperations {
    struct Slot {
        var done: FileCompletion?
        var generation: UInt32 = 0
        var isStat = false
        var isOpen = false
        var path: UnsafeMutablePointer<CChar>? = nil
        var cancelRequested = false
    }
    // Invariant: `slots`, `statBuffers` and `openHows` have `capacity` entries, live as long as this
    // object, and an entry's memory is referenced by the kernel only while its slot has `done` set.
    let capacity = 1024
    private var slots: [Slot]
    private var free: [Int32]
    private let statBuffers: UnsafeMutableRawPointer
    private let statSize: Int
    private let openHows: UnsafeMutablePointer<open_how>
    private(set) var pendingFileOperations = 0
    var readsSlabAsFixedBuffers: Bool { fixedRange != nil }
    var fileOperationRoom: Int { free.count }
    unowned(unsafe) let backend: AnyObject
    let prepare: (UserData) -> Void
    let fixedRange: (UnsafeRawPointer, Int)?  // the registered slab (buffer index 0), if registered

    init(backend: AnyObject, fixed: (UnsafeRawPointer, Int)?, prepare: @escaping (UserData) -> Void) {
        self.backend = backend
        self.prepare = prepare
        fixedRange = fixed
        slots = Array(repeating: Slot(), count: capacity)
        free = (0..<Int32(capacity)).reversed().map { $0 }
        statSize = (Int(rs_statx_buffer_size()) + 15) & ~15
        statBuffers = .allocate(byteCount: statSize * capacity, alignment: 16)
        openHows = .allocate(capacity: capacity)
        openHows.initialize(repeating: open_how(), count: capacity)
    }

    deinit {
        statBuffers.deallocate()
        openHows.deallocate()
        for s in slots { Glibc.free(s.path) }
    }

    /// Requests waiting for an SQE, by slot (filled by the backend's `fill`).
    private var requests: [Int32: FileRequest] = [:]

    func submit(_ request: FileRequest, _ done: @escaping FileCompletion) {
        guard let slot = free.popLast() else {
            done(.failure(EBUSY))  // the table is full: the caller hears it
            return
        }
        slots[Int(slot)].done = done
        slots[Int(slot)].cancelRequested = false
        slots[Int(slot)].generation &+= 1
        if case .stat = request { slots[Int(slot)].isStat = true } else { slots[Int(slot)].isStat = false }
        if case .open(let path, _, _, _, _) = request { slots[Int(slot)].isOpen = true; slots[Int(slot)].path = path }
        else { slots[Int(slot)].isOpen = false }
        requests[slot] = request
        pendingFileOperations += 1
        prepare(UserData(.file, slot: slot, generation: slots[Int(slot)].generation))
    }

    /// Fills `sqe` for the file operation in `ud`'s slot.
    func fill(_ s: UnsafeMutablePointer<io_uring_sqe>, _ ud: UserData) {
        let slot = Int(ud.slot)
        guard let request = requests.removeValue(forKey: ud.slot) else {
            io_uring_prep_nop(s)  // cancelled before its SQE was filled: completes as a no-op
            return
        }
        switch request {
        case .open(let path, let dir, let flags, let mode, let resolve):
            openHows[slot] = open_how(flags: UInt64(UInt32(bitPattern: flags)), mode: UInt64(mode), resolve: resolve)
            io_uring_prep_openat2(s, dir, path, openHows + slot)
        case .read(let fd, let buffer, let count, let offset):
            if let (base, length) = fixedRange, UnsafeRawPointer(buffer) >= base, UnsafeRawPointer(buffer) + count <= base + length {
                io_uring_prep_read_fixed(s, fd, buffer, UInt32(count), UInt64(bitPattern: offset), 0)
            } else {
                io_uring_prep_read(s, fd, buffer, UInt32(count), UInt64(bitPattern: offset))
            }
        case .readv(let fd, let vector, let count, let offset):
            io_uring_prep_readv(s, fd, vector, UInt32(count), UInt64(bitPattern: offset))
        case .write(let fd, let buffer, let count, let offset):
            if let (base, length) = fixedRange, buffer >= base, buffer + count <= base + length {
                io_uring_prep_write_fixed(s, fd, buffer, UInt32(count), UInt64(bitPattern: offset), 0)
            } else {
                io_uring_prep_write(s, fd, buffer, UInt32(count), UInt64(bitPattern: offset))
            }
        case .sync(let fd, let dataOnly):
            io_uring_prep_fsync(s, fd, dataOnly ? UInt32(IORING_FSYNC_DATASYNC) : 0)
        case .stat(let fd):
            rs_prep_statx_fd(s, fd, statBuffers + slot * statSize)
        case .close(let fd):
            io_uring_prep_close(s, fd)
        }
    }

    /// A file operation completed.
    func complete(_ ud: UserData, res: Int32) {
        let slot = Int(ud.slot)
        guard slots[slot].generation == ud.generation, let done = slots[slot].done else { return }
        slots[slot].done = nil
        Glibc.free(slots[slot].path)
        slots[slot].path = nil
        free.append(ud.slot)
        pendingFileOperations -= 1
        if res < 0 {
            done(.failure(-res))
        } else if slots[slot].isStat {
            var st = rs_file_status()
            rs_statx_decode(statBuffers + slot * statSize, &st)
            done(.status(st))
        } else {
            done(.value(Int(res)))
        }
    }

    /// The loop is stopping: every pending operation not yet asked to is cancelled through the ring (a
    /// read blocked on a FIFO in the kernel's worker ends with ECANCELED or EINTR) and completes through
    /// `complete`. Called on every iteration while operations are pending (completions may submit more,
    /// such as a close).
    func cancelAllFileOperations() {
        for slot in 0..<capacity where slots[slot].done != nil && !slots[slot].cancelRequested {
            slots[slot].cancelRequested = true
            prepare(UserData(.fileCancel, slot: Int32(slot), generation: slots[slot].generation))
        }
    }
}
