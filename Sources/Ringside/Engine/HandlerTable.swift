/// The handlers of one loop, one value per slot, stored unboxed in a preallocated slab so calls are
/// specialised for `H` (no existential, no witness-table call, no ARC).
///
/// Invariant: `handlers[i]` is initialised exactly while `core.states[i].phase` is one of `.open`,
/// `.draining`, `.lingering`, `.aborting`, `.tearingDown` (an outbound connection gets its handler once
/// connected; `finalize` destroys it before the slot is freed).
final class HandlerTable<H: ConnectionHandler> {
    private let handlers: UnsafeMutablePointer<H>
    private let capacity: Int
    /// The loop's core, unretained: the backend holds its only strong reference and outlives this
    /// table. Hot paths borrow it at +0 through `withCore` (no retain/release per call; an
    /// `unowned(unsafe)` reference cost a pair per access).
    let coreRef: Unmanaged<LoopCore>
    var core: LoopCore { coreRef.takeUnretainedValue() }
    let factory: @Sendable () -> H

    @inline(__always) func withCore<R>(_ body: (LoopCore) -> R) -> R { coreRef._withUnsafeGuaranteedRef(body) }

    init(core: LoopCore, factory: @escaping @Sendable () -> H) {
        self.coreRef = Unmanaged.passUnretained(core)
        self.capacity = core.capacity
        self.factory = factory
        handlers = .allocate(capacity: capacity)
    }

    deinit { handlers.deallocate() }  // every slot was finalised before the loop ended

    @inline(__always) private func connection(_ slot: Int32, _ core: LoopCore) -> Connection {
        Connection(coreRef: coreRef, slot: slot, generation: core.states[Int(slot)].generation)
    }

    @inline(__always) func open(_ slot: Int32) {
        withCore { core in
            (handlers + Int(slot)).initialize(to: factory())
            handlers[Int(slot)].opened(on: connection(slot, core))
            core.markDirty(slot)
        }
    }

    /// Lends `count` bytes at `offset` of receive chunk `chunk` to the handler; returns whether the
    /// handler kept the chunk (zero-copy send) so the caller must not recycle it.
    @inline(__always) func received(_ slot: Int32, chunk: Int32, offset: Int, count: Int) -> Bool {
        withCore { core in
            core.lentChunk = chunk
            core.lentChunkKept = false
            let bytes = UnsafeRawBufferPointer(start: core.pool.pointer(chunk) + offset, count: count)
            handlers[Int(slot)].received(ReceivedBytes(bytes: bytes, chunk: chunk, offset: Int32(offset)), on: connection(slot, core))
            core.lentChunk = -1
            core.markDirty(slot)
            return core.lentChunkKept
        }
    }

    @inline(__always) func inputClosed(_ slot: Int32) {
        withCore { core in
            handlers[Int(slot)].inputClosed(on: connection(slot, core))
            core.markDirty(slot)
        }
    }

    @inline(__always) func writable(_ slot: Int32) {
        withCore { core in
            handlers[Int(slot)].writable(on: connection(slot, core))
            core.markDirty(slot)
        }
    }

    @inline(__always) func timerFired(_ slot: Int32) {
        withCore { core in
            switch core.states[Int(slot)].phase {
            case .open, .draining, .lingering: break
            default: return
            }
            handlers[Int(slot)].timerFired(on: connection(slot, core))
            core.markDirty(slot)
        }
    }

    /// Tells the handler the connection is gone and destroys it.
    func finalize(_ slot: Int32, reason: CloseReason) {
        withCore { core in
            handlers[Int(slot)].closed(reason: reason)
            (handlers + Int(slot)).deinitialize(count: 1)
        }
    }
}
