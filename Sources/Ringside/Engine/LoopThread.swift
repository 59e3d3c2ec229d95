import Glibc

/// A joinable pthread running one event loop. The closure is boxed once at start.
final class LoopThread: Sendable {
    private final class Box { let body: @Sendable () -> Void; init(_ b: @escaping @Sendable () -> Void) { body = b } }
    private let body: @Sendable () -> Void
    private let name: String
    private nonisolated(unsafe) var tid = pthread_t()

    init(name: String, _ body: @escaping @Sendable () -> Void) { self.name = name; self.body = body }

    func start() throws(SyscallError) {
        let box = Unmanaged.passRetained(Box(body)).toOpaque()
        let r = pthread_create(&tid, nil, { arg in
            let b = Unmanaged<Box>.fromOpaque(arg!).takeRetainedValue()
            b.body()
            return nil
        }, box)
        if r != 0 {
            Unmanaged<Box>.fromOpaque(box).release()
            throw SyscallError("pthread_create", Errno(rawValue: r))
        }
    }

    func join() { pthread_join(tid, nil) }
}
