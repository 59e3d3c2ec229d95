import CLiburing
import Glibc

/// The open loop's own io_uring: one receive per connection in flight, and one absolute
/// CLOCK_MONOTONIC timeout (IORING_OP_TIMEOUT with IORING_TIMEOUT_ABS), so the pacer sleeps until a
/// nanosecond deadline instead of the engine's 1 ms timer wheel. Sends do not go through the ring:
/// they are plain non-blocking send(2) calls made at the intended instant.
///
/// Confinement: created on one thread, then used only by the pacer thread until `close()`.
final class PacerRing {
    private let ring: UnsafeMutablePointer<io_uring>  // owned
    private let deadline: UnsafeMutablePointer<__kernel_timespec>  // owned; read by the kernel at submit
    /// The deadline of the timeout in flight (0: none). Only the newest one clears it when it fires.
    private var armed: UInt64 = 0
    private var closed = false
    /// user_data of a timeout: this bit plus its deadline (connection indexes stay far below it).
    static let timerTag: UInt64 = 1 << 63

    init(entries: UInt32) throws {
        ring = .allocate(capacity: 1)
        deadline = .allocate(capacity: 1)
        deadline.initialize(to: __kernel_timespec(tv_sec: 0, tv_nsec: 0))
        let r = rs_io_uring_queue_init(entries, ring, 0)
        guard r == 0 else {
            ring.deallocate(); deadline.deallocate()
            throw ValidationErrorText("the open loop needs io_uring (its own ring paces the sends): io_uring_queue_init: \(String(cString: strerror(-r)))")
        }
    }

    /// Cancels what is in flight and releases the ring (the receive buffers may be freed afterwards).
    func close() {
        guard !closed else { return }
        closed = true
        rs_io_uring_queue_exit(ring)
        ring.deallocate()
        deadline.deallocate()
    }

    deinit { close() }

    private func sqe() -> UnsafeMutablePointer<io_uring_sqe> {
        if let s = io_uring_get_sqe(ring) { return s }
        _ = rs_io_uring_submit(ring)  // full: push what is queued, then there is room
        return io_uring_get_sqe(ring)!
    }

    /// Queues a receive of up to `count` bytes into `buffer` for connection `index`. `buffer` must
    /// stay valid until its completion is reaped or the ring is closed.
    func receive(fd: Int32, into buffer: UnsafeMutableRawPointer, count: Int, index: Int) {
        let s = sqe()
        io_uring_prep_recv(s, fd, buffer, count, 0)
        io_uring_sqe_set_data64(s, UInt64(index))
    }

    /// Makes sure a wake-up is due no later than `at` (ns, CLOCK_MONOTONIC). A later timeout still in
    /// flight fires anyway and is ignored.
    func wake(at: UInt64) {
        if armed != 0 && armed <= at { return }
        deadline.pointee = __kernel_timespec(tv_sec: Int64(at / 1_000_000_000), tv_nsec: Int64(at % 1_000_000_000))
        let s = sqe()
        io_uring_prep_timeout(s, deadline, 0, UInt32(IORING_TIMEOUT_ABS))
        io_uring_sqe_set_data64(s, Self.timerTag | at)
        armed = at
        _ = rs_io_uring_submit(ring)  // the kernel copies the deadline now
    }

    /// Submits what is queued and blocks until at least one completion is there.
    func wait() {
        let r = rs_io_uring_submit_and_wait(ring, 1)
        precondition(r >= 0 || r == -EINTR || r == -EBUSY || r == -ETIME, "io_uring_submit_and_wait: \(r)")
    }

    /// Submits queued receives without waiting.
    func submitPending() {
        if io_uring_sq_ready(ring) > 0 { _ = rs_io_uring_submit(ring) }
    }

    /// Calls `body(index, result)` for every receive completion there is now (no system call);
    /// timer completions only clear the armed deadline. Returns whether a timer fired.
    @inline(__always) func reap(_ body: (Int, Int32) -> Void) -> Bool {
        var fired = false
        var cqe: UnsafeMutablePointer<io_uring_cqe>? = nil
        while io_uring_peek_cqe(ring, &cqe) == 0, let c = cqe {
            let data = c.pointee.user_data
            let res = c.pointee.res
            io_uring_cqe_seen(ring, c)
            if data & Self.timerTag != 0 {
                if data & ~Self.timerTag == armed { armed = 0 }
                fired = true
            } else {
                body(Int(data), res)
            }
        }
        return fired
    }
}
