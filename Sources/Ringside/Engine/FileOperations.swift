import CLiburing
import Glibc

/// One file operation, as the engine carries it out (io_uring: a ring operation; epoll: a blocking
/// syscall on a helper thread). Buffers and the path must stay valid until the completion runs.
enum FileRequest {
    case open(path: UnsafeMutablePointer<CChar>, directory: Int32, flags: Int32, mode: UInt32, resolve: UInt64)
    case read(fd: Int32, buffer: UnsafeMutableRawPointer, count: Int, offset: Int64)
    /// A vectored read (`vector` holds `count` iovecs; it and the buffers stay valid until completion).
    case readv(fd: Int32, vector: UnsafeMutablePointer<iovec>, count: Int32, offset: Int64)
    case write(fd: Int32, buffer: UnsafeRawPointer, count: Int, offset: Int64)
    case sync(fd: Int32, dataOnly: Bool)
    case stat(fd: Int32)
    case close(fd: Int32)
}

/// What a file operation produced: a count or descriptor, a status, or an errno.
enum FileOutcome {
    case value(Int)
    case status(rs_file_status)
    case failure(Int32)
}

typealias FileCompletion = (FileOutcome) -> Void

/// The loop's file operations (one implementation per backend). Loop thread only: `submit` is called
/// on it and every completion runs on it, exactly once, also when the loop stops (then with ECANCELED).
protocol LoopFileOperations: AnyObject {
    func submit(_ request: FileRequest, _ done: @escaping FileCompletion)
    /// Operations submitted and not yet completed.
    var pendingFileOperations: Int { get }
    /// Whether a read into the buffer slab goes through the registered buffers (io_uring READ_FIXED):
    /// then a file send reads chunk by chunk instead of one vectored read.
    var readsSlabAsFixedBuffers: Bool { get }
    /// Operations that can be submitted now without being refused with EBUSY.
    var fileOperationRoom: Int { get }
    /// The loop is ending: every pending operation completes now with ECANCELED (late results of work
    /// already running elsewhere are dropped).
    func cancelAllFileOperations()
}

/// A value that crosses to a helper thread and back without being touched there: the loop thread
/// creates it and the loop thread uses it (invariant kept by `BlockingFilePool`).
struct LoopConfined<T>: @unchecked Sendable {
    let value: T
}

/// The epoll backend's file operations: a small bounded pool of threads that run the blocking
/// syscalls and post each result back to the loop through its executor (the loop's eventfd), so no
/// file syscall ever blocks the loop thread. A read first tries `preadv2(RWF_NOWAIT)` on the loop,
/// which answers from the page cache without blocking or fails with EAGAIN.
final class BlockingFilePool: LoopFileOperations {
    /// A job owns what its helper thread touches: its path copy and a bounce buffer for reads and
    /// writes, so a helper never reads or writes the caller's memory (a cancelled operation may still
    /// be running in a helper when the loop reports ECANCELED and the caller frees its buffer).
    private struct Job {
        let id: UInt64
        let request: FileRequest
        let bounce: UnsafeMutableRawBufferPointer?
    }

    // Invariant: `mutex`/`condition` guard `queue` and `stopping`; they are allocated once, initialised
    // in init and destroyed in deinit after every worker has exited (workers are joined).
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let condition: UnsafeMutablePointer<pthread_cond_t>
    private var queue: [Job] = []
    private var stopping = false
    private var threads: [pthread_t] = []
    private let capacity: Int

    private let executor: LoopExecutor
    /// Loop thread only: completions not yet delivered, by operation id, and where a read's bytes go.
    private var waiting: [UInt64: FileCompletion] = [:]
    private var readTargets: [UInt64: ReadTarget] = [:]

    /// Where a read's bytes go once its bounce buffer comes back to the loop.
    private enum ReadTarget {
        case buffer(UnsafeMutableRawPointer)
        case vector(UnsafeMutablePointer<iovec>, Int32)

        /// Copies the first `n` bytes of `from` to the target (loop thread).
        func fill(from: UnsafeRawPointer, _ n: Int) {
            switch self {
            case .buffer(let p): p.copyMemory(from: from, byteCount: n)
            case .vector(let v, let count):
                var done = 0
                for k in 0..<Int(count) where done < n {
                    let take = min(v[k].iov_len, n - done)
                    v[k].iov_base.copyMemory(from: from + done, byteCount: take)
                    done += take
                }
            }
        }
    }
    private var nextID: UInt64 = 1

    init(executor: LoopExecutor, threads count: Int = 2, capacity: Int = 1024) {
        self.executor = executor
        self.capacity = capacity
        mutex = .allocate(capacity: 1)
        condition = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(condition, nil)
        for _ in 0..<count {
            var t = pthread_t()
            let box = Unmanaged.passRetained(WorkerContext(pool: self))
            if pthread_create(&t, nil, { arg in
                let ctx = Unmanaged<WorkerContext>.fromOpaque(arg!).takeRetainedValue()
                ctx.pool.work()
                return nil
            }, box.toOpaque()) == 0 {
                pthread_detach(t)
                threads.append(t)
            } else {
                box.release()
            }
        }
    }

    private final class WorkerContext {
        let pool: BlockingFilePool
        init(pool: BlockingFilePool) { self.pool = pool }
    }

    /// Stops the workers: each exits once idle. They are detached, not joined: an operation stuck in
    /// the kernel (a read of a FIFO nobody writes) keeps its thread until it returns, and its result is
    /// dropped (the loop has completed it with ECANCELED already). Each worker holds the pool, so its
    /// memory outlives every worker.
    func shutDown() {
        pthread_mutex_lock(mutex)
        stopping = true
        pthread_cond_broadcast(condition)
        pthread_mutex_unlock(mutex)
        threads.removeAll()
    }

    deinit {
        pthread_cond_destroy(condition)
        pthread_mutex_destroy(mutex)
        condition.deallocate()
        mutex.deallocate()
    }

    var pendingFileOperations: Int { waiting.count }
    var readsSlabAsFixedBuffers: Bool { false }
    var fileOperationRoom: Int { max(0, capacity - waiting.count) }

    func submit(_ request: FileRequest, _ done: @escaping FileCompletion) {
        // A page-cache hit answers at once, without a thread hop (still delivered after this call).
        var inline: Int? = nil
        if case .read(let fd, let buffer, let count, let offset) = request {
            inline = rs_pread_nowait(fd, buffer, UInt(count), offset)
        } else if case .readv(let fd, let vector, let count, let offset) = request, offset >= 0 {
            inline = rs_preadv_nowait(fd, vector, count, offset)
        }
        if let r = inline {
            if r >= 0 || (-r != EAGAIN && -r != EOPNOTSUPP && -r != EINVAL) {
                let outcome: FileOutcome = r >= 0 ? .value(r) : .failure(Int32(-r))
                let id = nextID; nextID += 1
                waiting[id] = done
                post(id, outcome)
                return
            }
        }
        let id = nextID; nextID += 1
        var job: Job
        switch request {
        case .read(let fd, let buffer, let count, let offset):
            let bounce = UnsafeMutableRawBufferPointer.allocate(byteCount: max(1, count), alignment: 64)
            readTargets[id] = .buffer(buffer)
            job = Job(id: id, request: .read(fd: fd, buffer: bounce.baseAddress!, count: count, offset: offset), bounce: bounce)
        case .readv(let fd, let vector, let count, let offset):
            // One bounce buffer for the whole vector; the loop scatters it into the caller's buffers.
            var total = 0
            for k in 0..<Int(count) { total += vector[k].iov_len }
            let bounce = UnsafeMutableRawBufferPointer.allocate(byteCount: max(1, total), alignment: 64)
            readTargets[id] = .vector(vector, count)
            job = Job(id: id, request: .read(fd: fd, buffer: bounce.baseAddress!, count: total, offset: offset), bounce: bounce)
        case .write(let fd, let buffer, let count, let offset):
            let bounce = UnsafeMutableRawBufferPointer.allocate(byteCount: max(1, count), alignment: 64)
            bounce.baseAddress!.copyMemory(from: buffer, byteCount: count)
            job = Job(id: id, request: .write(fd: fd, buffer: bounce.baseAddress!, count: count, offset: offset), bounce: bounce)
        default:
            job = Job(id: id, request: request, bounce: nil)
        }
        pthread_mutex_lock(mutex)
        let full = queue.count >= capacity
        if !full { queue.append(job); pthread_cond_signal(condition) }
        pthread_mutex_unlock(mutex)
        waiting[id] = done
        if full {  // the bounded queue is full: the caller hears it
            Self.release(job)
            readTargets[id] = nil
            post(id, .failure(EBUSY))
        }
    }

    /// Frees what a job owns (its path copy, its bounce buffer).
    private static func release(_ job: Job) {
        job.bounce?.deallocate()
        if case .open(let path, _, _, _, _) = job.request { free(path) }
    }

    func cancelAllFileOperations() {
        pthread_mutex_lock(mutex)
        let queued = queue.filter { if case .close = $0.request { return true } else { return false } }
        let dropped = queue.filter { if case .close = $0.request { return false } else { return true } }
        queue.removeAll()
        queue.append(contentsOf: queued)  // closes still run: a descriptor is never leaked by a stop
        pthread_mutex_unlock(mutex)
        for job in dropped { Self.release(job) }
        readTargets.removeAll()
        let closing = Set(queued.map(\.id))
        let all = waiting
        waiting.removeAll()
        // A queued close is still carried out by a worker after the loop ends, so it is reported done.
        for (id, done) in all.sorted(by: { $0.key < $1.key }) { done(closing.contains(id) ? .value(0) : .failure(ECANCELED)) }
    }

    /// Delivers `outcome` to operation `id` on the loop thread. If nobody takes it (the loop has
    /// stopped, or the operation was cancelled), a descriptor an open produced is closed, not leaked.
    /// A read's bounce buffer travels with its outcome and is copied to the caller's buffer on the loop
    /// thread, only if the caller still waits; it is freed either way.
    private func post(_ id: UInt64, _ outcome: FileOutcome, opened: Bool = false,
                      readBounce: UnsafeMutableRawBufferPointer? = nil) {
        let me = LoopConfined(value: Unmanaged.passUnretained(self))
        let result = LoopConfined(value: outcome)
        let bounce = LoopConfined(value: readBounce)
        let accepted = executor.execute {
            let pool = me.value.takeUnretainedValue()
            let target = pool.readTargets.removeValue(forKey: id)
            if let done = pool.waiting.removeValue(forKey: id) {
                if let b = bounce.value, let target, case .value(let n) = result.value, n > 0 {
                    target.fill(from: b.baseAddress!, n)
                }
                bounce.value?.deallocate()
                done(result.value)
            } else {
                bounce.value?.deallocate()
                if opened, case .value(let fd) = result.value { Glibc.close(Int32(fd)) }
            }
        }
        if !accepted {
            readBounce?.deallocate()
            if opened, case .value(let fd) = outcome { Glibc.close(Int32(fd)) }
        }
    }

    private func work() {
        while true {
            pthread_mutex_lock(mutex)
            while queue.isEmpty && !stopping { pthread_cond_wait(condition, mutex) }
            if queue.isEmpty { pthread_mutex_unlock(mutex); return }  // stopping, nothing left (closes run first)
            let job = queue.removeFirst()
            pthread_mutex_unlock(mutex)
            let outcome = Self.run(job.request)
            switch job.request {
            case .open(let path, _, _, _, _):
                free(path)
                post(job.id, outcome, opened: true)
            case .read:
                post(job.id, outcome, readBounce: job.bounce)  // the loop copies it out and frees it
            default:
                job.bounce?.deallocate()
                post(job.id, outcome)
            }
        }
    }

    /// The blocking syscall itself (helper thread).
    static func run(_ request: FileRequest) -> FileOutcome {
        func outcome(_ r: Int) -> FileOutcome { r >= 0 ? .value(r) : .failure(errno) }
        switch request {
        case .open(let path, let dir, let flags, let mode, let resolve):
            let r = rs_openat2(dir, path, UInt64(UInt32(bitPattern: flags)), UInt64(mode), resolve)
            return r >= 0 ? .value(Int(r)) : .failure(-r)
        case .read(let fd, let buffer, let count, let offset):
            return outcome(offset < 0 ? Glibc.read(fd, buffer, count) : pread(fd, buffer, count, Int(offset)))
        case .readv(let fd, let vector, let count, let offset):
            // Not reached: `submit` turns a vectored read into a read of one bounce buffer.
            let r = rs_preadv(fd, vector, count, offset)
            return r >= 0 ? .value(r) : .failure(Int32(-r))
        case .write(let fd, let buffer, let count, let offset):
            return outcome(offset < 0 ? Glibc.write(fd, buffer, count) : pwrite(fd, buffer, count, Int(offset)))
        case .sync(let fd, let dataOnly):
            return outcome(Int(dataOnly ? fdatasync(fd) : fsync(fd)))
        case .stat(let fd):
            let buf = UnsafeMutableRawPointer.allocate(byteCount: Int(rs_statx_buffer_size()), alignment: 16)
            defer { buf.deallocate() }
            let r = rs_statx_fd(fd, buf)
            guard r == 0 else { return .failure(-r) }
            var st = rs_file_status()
            rs_statx_decode(buf, &st)
            return .status(st)
        case .close(let fd):
            return outcome(Int(Glibc.close(fd)))
        }
    }
}
