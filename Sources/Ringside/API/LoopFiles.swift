import CLiburing
import Glibc

/// Why a file operation failed: the errno the kernel returned (ENOSPC, EIO, EDQUOT, ENOENT, ...), or
/// `ECANCELED` when the loop stopped first, or `EBUSY` when the loop's file queue was full.
public struct FileError: Error, Equatable, Sendable, CustomStringConvertible {
    public let errno: Int32
    public init(errno: Int32) { self.errno = errno }
    public var description: String { "\(String(cString: strerror(errno))) (errno \(errno))" }
}

/// What `stat` reports of an open file.
public struct FileStatus: Equatable, Sendable {
    public var size: Int
    /// Modification time, seconds and nanoseconds since the epoch.
    public var modificationSeconds: Int64
    public var modificationNanoseconds: UInt32
    /// File type and permission bits (`st_mode`).
    public var mode: UInt32
    public var inode: UInt64
    public var device: UInt64
    /// Whether it is a regular file.
    public var isRegularFile: Bool { mode & 0o170000 == 0o100000 }
    /// Whether it is a directory.
    public var isDirectory: Bool { mode & 0o170000 == 0o040000 }

    init(_ s: rs_file_status) {
        size = Int(s.size); modificationSeconds = s.mtime_sec; modificationNanoseconds = s.mtime_nsec
        mode = s.mode; inode = s.inode; device = s.device
    }
}

/// File I/O on the connection's loop, completed asynchronously like its sockets: on io_uring each call
/// is a ring operation (openat2, READ/WRITE or READ_FIXED/WRITE_FIXED when the buffer lies in the
/// registered slab, fsync, statx, close); on epoll a small bounded pool of helper threads runs the
/// blocking call (a read first tries `preadv2(RWF_NOWAIT)`, answered from the page cache) and posts
/// the result back through the loop's eventfd. Either way the loop thread never blocks on a disk.
///
/// Call on the loop thread (in a handler call or a task on the loop's executor). Each completion runs
/// later on the loop thread, exactly once, also when the loop stops first (`ECANCELED`). Buffers passed
/// to `read`/`write` must stay valid until their completion runs. Descriptors opened here belong to
/// the caller: close them with ``close(_:_:)``.
public struct LoopFiles {
    let coreRef: Unmanaged<LoopCore>

    private func ops() -> any LoopFileOperations {
        coreRef._withUnsafeGuaranteedRef { core in
            // The backend sets this before its first handler call; every backend has one.
            core.files!.takeUnretainedValue() as! any LoopFileOperations
        }
    }

    /// Opens `path` (relative to `directory`, a descriptor, or the working directory when nil) with
    /// open(2) `flags` (O_CLOEXEC is added). `beneath`: the path may not leave `directory` — `..`,
    /// absolute paths and symlinks pointing outside fail with EXDEV (openat2 RESOLVE_BENEATH).
    public func open(_ path: String, in directory: Int32? = nil, flags: Int32 = O_RDONLY, mode: mode_t = 0o644,
                     beneath: Bool = false, _ done: @escaping (Result<Int32, FileError>) -> Void) {
        let copy = strdup(path)!
        let resolve: UInt64 = beneath ? 0x08 : 0  // RESOLVE_BENEATH
        // openat2 refuses a mode without O_CREAT or O_TMPFILE (EINVAL).
        let creates = flags & O_CREAT != 0 || flags & 0o20200000 == 0o20200000
        ops().submit(.open(path: copy, directory: directory ?? AT_FDCWD, flags: flags | O_CLOEXEC,
                           mode: creates ? UInt32(mode) : 0, resolve: resolve)) { o in
            done(Self.descriptor(o))
        }
    }

    /// Reads up to `buffer.count` bytes at `offset` (-1: at the current position, for pipes and FIFOs).
    /// Succeeds with the count read (0 at end of file).
    public func read(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer, at offset: Int64,
                     _ done: @escaping (Result<Int, FileError>) -> Void) {
        ops().submit(.read(fd: fd, buffer: buffer.baseAddress!, count: buffer.count, offset: offset)) { done(Self.count($0)) }
    }

    /// Writes `buffer` at `offset` (-1: at the current position). Succeeds with the count written, which
    /// can be short; ENOSPC, EDQUOT and EIO arrive as failures.
    public func write(_ fd: Int32, from buffer: UnsafeRawBufferPointer, at offset: Int64,
                      _ done: @escaping (Result<Int, FileError>) -> Void) {
        ops().submit(.write(fd: fd, buffer: buffer.baseAddress!, count: buffer.count, offset: offset)) { done(Self.count($0)) }
    }

    /// fsync(2), or fdatasync(2) when `dataOnly`.
    public func sync(_ fd: Int32, dataOnly: Bool = false, _ done: @escaping (Result<Void, FileError>) -> Void) {
        ops().submit(.sync(fd: fd, dataOnly: dataOnly)) { o in done(Self.count(o).map { _ in () }) }
    }

    /// statx(2) of an open descriptor.
    public func stat(_ fd: Int32, _ done: @escaping (Result<FileStatus, FileError>) -> Void) {
        ops().submit(.stat(fd: fd)) { o in
            switch o {
            case .status(let s): done(.success(FileStatus(s)))
            case .failure(let e): done(.failure(FileError(errno: e)))
            case .value: done(.failure(FileError(errno: EIO)))
            }
        }
    }

    /// Closes a descriptor opened with ``open(_:in:flags:mode:beneath:_:)``.
    public func close(_ fd: Int32, _ done: @escaping (Result<Void, FileError>) -> Void = { _ in }) {
        ops().submit(.close(fd: fd)) { o in done(Self.count(o).map { _ in () }) }
    }

    private static func count(_ o: FileOutcome) -> Result<Int, FileError> {
        switch o {
        case .value(let n): .success(n)
        case .failure(let e): .failure(FileError(errno: e))
        case .status: .failure(FileError(errno: EIO))
        }
    }

    private static func descriptor(_ o: FileOutcome) -> Result<Int32, FileError> {
        count(o).map { Int32($0) }
    }
}

extension LoopFiles {
    /// ``open(_:in:flags:mode:beneath:_:)`` for tasks running on the loop's executor.
    public func open(_ path: String, in directory: Int32? = nil, flags: Int32 = O_RDONLY, mode: mode_t = 0o644,
                     beneath: Bool = false) async throws(FileError) -> Int32 {
        try await Self.await { resume in open(path, in: directory, flags: flags, mode: mode, beneath: beneath, resume) }
    }

    /// ``read(_:into:at:_:)`` for tasks running on the loop's executor.
    public func read(_ fd: Int32, into buffer: UnsafeMutableRawBufferPointer, at offset: Int64) async throws(FileError) -> Int {
        try await Self.await { resume in read(fd, into: buffer, at: offset, resume) }
    }

    /// ``write(_:from:at:_:)`` for tasks running on the loop's executor.
    public func write(_ fd: Int32, from buffer: UnsafeRawBufferPointer, at offset: Int64) async throws(FileError) -> Int {
        try await Self.await { resume in write(fd, from: buffer, at: offset, resume) }
    }

    /// ``sync(_:dataOnly:_:)`` for tasks running on the loop's executor.
    public func sync(_ fd: Int32, dataOnly: Bool = false) async throws(FileError) {
        try await Self.await { resume in sync(fd, dataOnly: dataOnly, resume) }
    }

    /// ``stat(_:_:)`` for tasks running on the loop's executor.
    public func stat(_ fd: Int32) async throws(FileError) -> FileStatus {
        try await Self.await { resume in stat(fd, resume) }
    }

    /// ``close(_:_:)`` for tasks running on the loop's executor.
    public func close(_ fd: Int32) async throws(FileError) {
        try await Self.await { resume in close(fd, resume) }
    }

    /// Suspends until the completion runs (on the loop thread, where the task resumes). The results
    /// are plain values (counts, descriptors, a status) made on the loop thread for this one waiter.
    private static func await<T: Sendable>(_ start: (@escaping (Result<T, FileError>) -> Void) -> Void) async throws(FileError) -> T {
        let r: Result<T, FileError> = await withUnsafeContinuation { (c: UnsafeContinuation<Result<T, FileError>, Never>) in
            start { c.resume(returning: $0) }
        }
        return try r.get()
    }
}

extension Connection {
    /// File I/O on this connection's loop (see ``LoopFiles``).
    public var files: LoopFiles { LoopFiles(coreRef: coreRef) }
}

extension Connection {
    /// Sends up to `count` bytes of file `fd` from `offset` without copying them through the caller:
    /// the loop's file operations read them straight into free send chunks (io_uring: READ_FIXED into
    /// the registered slab when ``ServerConfiguration/registerBuffers`` is on, else one READV; epoll: an
    /// inline `preadv2(RWF_NOWAIT)`, else a helper thread), which are then queued in order like written
    /// bytes. One call reads at most 16 send chunks; `done` runs on the loop thread with the count
    /// queued (0 at end of file), and the caller sends the next piece from there (checking
    /// ``isBackpressured`` first). The descriptor stays the caller's.
    ///
    /// `prefix` (copied before this returns) is queued just before the file's bytes, in the same send:
    /// a response head and the start of its body leave together. It is queued only with file bytes:
    /// on a failure or at end of file (0) nothing is.
    /// - Throws: ``WriteError/closed`` when the connection no longer accepts writes (or `count` is 0),
    ///   ``WriteError/bufferPoolExhausted`` when no send chunk (or no file-operation slot) is free
    ///   (retry later, as with `write`);
    ///   `done` is not called then.
    public func sendFile(_ fd: Int32, at offset: Int64, count: Int, prefix: UnsafeRawBufferPointer? = nil,
                         _ done: @escaping (Result<Int, SendFileError>) -> Void) throws(WriteError) {
        let r: Result<Void, WriteError> = withCore { c in
            guard c.isCurrent(slot, generation) else { return .failure(.closed) }
            return Result { () throws(WriteError) in
                try c.sendFile(slot: slot, fd: fd, offset: offset, count: count, prefix: prefix, done)
            }
        }
        try r.get()
    }
}
