/// A reference to a lock-protected value, so it can be shared by closures and threads.
final class Locked<Value: Sendable>: Sendable {
    private let mutex: PthreadMutex<Value>
    init(_ value: Value) { mutex = PthreadMutex(value) }
    func withLock<R>(_ body: (inout Value) -> R) -> R { mutex.withLock { body(&$0) } }
    var value: Value { mutex.withLock { $0 } }
}
