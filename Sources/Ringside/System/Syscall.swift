import CLiburing
import Glibc

// Every syscall the engine makes passes through these wrappers: EINTR is retried, EAGAIN becomes a value
// (`nil`), and every other failure is thrown as a `SyscallError` naming the call.

/// Runs `body` until it does not fail with EINTR; throws other failures.
@inline(__always)
func syscall<T: FixedWidthInteger>(_ name: String, _ body: () -> T) throws(SyscallError) -> T {
    while true {
        let r = body()
        if r >= 0 { return r }
        let e = Errno.current
        if e == .interrupted { continue }
        throw SyscallError(name, e)
    }
}

/// Like `syscall`, but EAGAIN/EWOULDBLOCK is returned as `nil` (non-blocking sockets).
@inline(__always)
func nonBlockingSyscall<T: FixedWidthInteger>(_ name: String, _ body: () -> T) throws(SyscallError) -> T? {
    while true {
        let r = body()
        if r >= 0 { return r }
        let e = Errno.current
        if e == .interrupted { continue }
        if e.rawValue == EAGAIN || e.rawValue == EWOULDBLOCK { return nil }
        throw SyscallError(name, e)
    }
}

/// Closes a descriptor. EINTR is not retried (on Linux the fd is released anyway); EBADF is a bug.
func closeDescriptor(_ fd: Int32) {
    let r = Glibc.close(fd)
    precondition(r == 0 || Errno.current != .badFileDescriptor, "close(\(fd)): EBADF, descriptor double-closed")
}
