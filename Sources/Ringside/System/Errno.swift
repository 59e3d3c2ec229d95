import CLiburing
import Glibc

/// A POSIX error number, as returned by a failed syscall or carried (negated) in an io_uring completion.
public struct Errno: RawRepresentable, Error, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }

    /// The calling thread's current `errno`.
    @inlinable public static var current: Errno { Errno(rawValue: rs_errno()) }

    public static let interrupted = Errno(rawValue: EINTR)
    public static let wouldBlock = Errno(rawValue: EAGAIN)
    public static let noSuchSyscall = Errno(rawValue: ENOSYS)
    public static let notPermitted = Errno(rawValue: EPERM)
    public static let noMemory = Errno(rawValue: ENOMEM)
    public static let invalidArgument = Errno(rawValue: EINVAL)
    public static let noBuffers = Errno(rawValue: ENOBUFS)
    public static let canceled = Errno(rawValue: ECANCELED)
    public static let connectionReset = Errno(rawValue: ECONNRESET)
    public static let brokenPipe = Errno(rawValue: EPIPE)
    public static let tooManyOpenFiles = Errno(rawValue: EMFILE)
    public static let systemFileLimit = Errno(rawValue: ENFILE)
    public static let notFound = Errno(rawValue: ENOENT)
    public static let alreadyInProgress = Errno(rawValue: EALREADY)
    public static let busy = Errno(rawValue: EBUSY)
    public static let timedOut = Errno(rawValue: ETIME)
    public static let badFileDescriptor = Errno(rawValue: EBADF)

    public var description: String {
        guard let s = strerror(rawValue) else { return "errno \(rawValue)" }
        return "\(String(cString: s)) (errno \(rawValue))"
    }
}

/// An error from a named syscall, carrying the errno and the call that failed.
public struct SyscallError: Error, Sendable, CustomStringConvertible {
    public let call: String
    public let errno: Errno
    public init(_ call: String, _ errno: Errno) { self.call = call; self.errno = errno }
    public var description: String { "\(call): \(errno)" }
}
