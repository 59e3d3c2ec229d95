// Does ThreadSanitizer see Synchronization.Mutex? (evidence for scripts/sanitizers/tsan.supp)
//
//   swiftc -O -sanitize=thread scripts/sanitizers/mutex-tsan-repro.swift -o /tmp/mutex-tsan
//   SWIFT_BACKTRACE=enable=no /tmp/mutex-tsan mutex     # Mutex: TSan reports data races
//   SWIFT_BACKTRACE=enable=no /tmp/mutex-tsan pthread   # pthread_mutex_t: no report
//
// Two threads each toggle a Bool and increment an Int inside the lock 100,000 times. With Swift 6.3.1
// on this machine the Mutex run prints 3 TSan warnings (a write/write race on the Bool, two Swift
// access races) yet ends with count 200000: mutual exclusion held, TSan just did not see it. The
// pthread run prints none. Why: Mutex's fast path is an inlined compare-exchange, but a contended
// lock goes through _MutexHandle._lockSlow/_unlockSlow in libswiftSynchronization.so, which is not
// instrumented and takes the lock with a raw `lock cmpxchg` and syscall(SYS_futex) (PI futex), so TSan
// records no acquire/release edge there. (objdump -d of those two functions shows exactly that.)
import Glibc
import Synchronization

struct Shared { var flag = false; var count = 0 }
final class Box: @unchecked Sendable { let m = Mutex(Shared()) }
let box = Box()
let n = 100_000
let mode = CommandLine.arguments.count > 1 ? CommandLine.arguments[1] : "mutex"

final class PBox: @unchecked Sendable {
    var lock = pthread_mutex_t()
    var shared = Shared()
    init() { pthread_mutex_init(&lock, nil) }
}
let pbox = PBox()

func work() {
    for _ in 0..<n {
        if mode == "mutex" {
            box.m.withLock { s in s.flag = !s.flag; s.count += 1 }
        } else {
            pthread_mutex_lock(&pbox.lock); pbox.shared.flag.toggle(); pbox.shared.count += 1; pthread_mutex_unlock(&pbox.lock)
        }
    }
}
var threads: [pthread_t] = []
for _ in 0..<2 {
    var t = pthread_t()
    pthread_create(&t, nil, { _ in work(); return nil }, nil)
    threads.append(t)
}
for t in threads { pthread_join(t, nil) }
let total = mode == "mutex" ? box.m.withLock { $0.count } : pbox.shared.count
print("\(mode): count \(total) (expected \(2 * n))")
