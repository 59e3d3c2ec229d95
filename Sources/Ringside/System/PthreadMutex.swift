import Glibc

/// A value protected by a `pthread_mutex_t`: the project's lock, used instead of
/// `Synchronization.Mutex` so that ThreadSanitizer sees every acquire and release.
///
/// Why not `Synchronization.Mutex`: its contended path (`_MutexHandle._lockSlow`/`_unlockSlow`) lives in
/// the uninstrumented `libswiftSynchronization.so` (a raw `lock cmpxchg` plus a PI futex), so TSan
/// records no happens-before edge there and reports races between code that holds the same lock
/// (`scripts/sanitizers/mutex-tsan-repro.swift`: 3 false reports with `Mutex`, none with
/// `pthread_mutex_t`). TSan intercepts `pthread_mutex_lock`/`unlock`, whatever the contention.
/// Uncontended, glibc's `pthread_mutex_lock` on a default (normal) mutex is one compare-exchange, like
/// `Mutex`'s fast path.
///
/// The API mirrors `Mutex`'s: `withLock` hands the body the value `inout` with the lock held.
/// Not recursive: taking the lock again inside `withLock` on the same thread deadlocks, as with `Mutex`.
/// Allocation happens once, in `init` (the object and the mutex); `withLock` allocates nothing.
package final class PthreadMutex<Value: ~Copyable>: @unchecked Sendable {
    // MARK: unsafe place: a raw pthread mutex guarding `value`
    //
    // @unchecked Sendable, justified by these invariants:
    // - `value` (the pointee) is read or written only inside `withLock`, between `pthread_mutex_lock` and
    //   `pthread_mutex_unlock` on `mutex`; nothing hands out a reference to it that outlives the body
    //   (the body gets it `inout`, and results are `sending`). So every access is serialized by the
    //   mutex, and the mutex gives the acquire/release ordering between holders.
    // - `mutex` and `value` are heap-allocated once in `init` and never move (a pthread mutex must not
    //   be moved or copied once initialised); `mutex` is initialised with default attributes
    //   (`PTHREAD_MUTEX_NORMAL`); both are destroyed and freed only in `deinit`, when no other
    //   reference, hence no holder, exists.
    //   `value` is a raw pointer rather than a stored property so that `withLock` pays no dynamic
    //   exclusivity check (swift_beginAccess): the mutex already makes the access exclusive. Both are
    //   `@usableFromInline` for `withLock` only; nothing else outside this class touches them.
    // - `Value` values enter through `init(_:)` and leave through `withLock`'s result, both `sending`,
    //   as with `Mutex`: no non-Sendable state is shared by the caller and the lock.
    // - lock/unlock failures (EINVAL, EDEADLK, EPERM) can only come from misuse of this type, which
    //   the invariants above rule out; they are preconditions.
    @usableFromInline let mutex: UnsafeMutablePointer<pthread_mutex_t>
    @usableFromInline let value: UnsafeMutablePointer<Value>

    /// Creates a lock around `initialValue`.
    package init(_ initialValue: consuming sending Value) {
        mutex = .allocate(capacity: 1)
        mutex.initialize(to: pthread_mutex_t())
        let rc = pthread_mutex_init(mutex, nil)
        precondition(rc == 0, "pthread_mutex_init failed: \(rc)")
        value = .allocate(capacity: 1)
        value.initialize(to: initialValue)
    }

    deinit {
        let rc = pthread_mutex_destroy(mutex)
        assert(rc == 0, "pthread_mutex_destroy failed: \(rc)")
        mutex.deinitialize(count: 1)
        mutex.deallocate()
        value.deinitialize(count: 1)
        value.deallocate()
    }

    /// Calls `body` with the value `inout` while holding the lock, and returns its result.
    /// (Inlinable, so a caller in another module, such as HTTPDate's per-response cache, gets a
    /// specialized call rather than the generic one.)
    @inlinable
    package func withLock<Result: ~Copyable, E: Error>(
        _ body: (inout sending Value) throws(E) -> sending Result
    ) throws(E) -> sending Result {
        let rc = pthread_mutex_lock(mutex)
        precondition(rc == 0, "pthread_mutex_lock failed: \(rc)")
        defer {
            let rc = pthread_mutex_unlock(mutex)
            precondition(rc == 0, "pthread_mutex_unlock failed: \(rc)")
        }
        return try body(&value.pointee)
    }
}
