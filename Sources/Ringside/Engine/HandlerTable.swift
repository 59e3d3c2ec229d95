/// The calls a loop makes into the handlers of one handler type, one handler value per slot.
///
/// The loop itself is not generic: both backends, `LoopCore` and `HandlerTable` are compiled once, in
/// this module, for every handler type. What depends on the handler type is only the slab of handler
/// values and the calls into them; that part (`HandlerSlab<H>`) is `@inlinable`, and the public
/// `RingsideServer.start<H>` that builds it is too, so it is compiled in the module that names the
/// handler type, specialised for it: the handler's methods are called directly (or inlined), the slab
/// is indexed by `H`'s static size, and no witness table or value witness is involved. The loop reaches
/// that code through one indirect call per event (these closures), as a C server calls through a
/// function pointer.
///
/// (A generic loop specialised per handler type would instead put the whole engine, about 4,000 lines,
/// into every client module once per handler type; a generic class's vtable or a protocol's witness
/// table would not help, since both always point at the unspecialised implementation.)
@usableFromInline struct HandlerCalls {
    /// Makes the slot's handler value (the factory) and calls `opened`.
    @usableFromInline let open: (Int32, Connection) -> Void
    @usableFromInline let received: (Int32, ReceivedBytes, Connection) -> Void
    @usableFromInline let inputClosed: (Int32, Connection) -> Void
    @usableFromInline let writable: (Int32, Connection) -> Void
    @usableFromInline let timerFired: (Int32, Connection) -> Void
    /// Calls `closed` and destroys the slot's handler value.
    @usableFromInline let finalize: (Int32, CloseReason) -> Void

    @inlinable init(open: @escaping (Int32, Connection) -> Void,
                    received: @escaping (Int32, ReceivedBytes, Connection) -> Void,
                    inputClosed: @escaping (Int32, Connection) -> Void,
                    writable: @escaping (Int32, Connection) -> Void,
                    timerFired: @escaping (Int32, Connection) -> Void,
                    finalize: @escaping (Int32, CloseReason) -> Void) {
        self.open = open; self.received = received; self.inputClosed = inputClosed
        self.writable = writable; self.timerFired = timerFired; self.finalize = finalize
    }
}

/// How a server makes each loop's handler calls: built by `RingsideServer.start<H>` where `H` is known
/// (so the closures it makes are specialised there), used by the non-generic loop.
@usableFromInline struct HandlerFactory: Sendable {
    /// `H.requiresAuthentication` (the PROXY-protocol wrapper passes it through).
    @usableFromInline let requiresAuthentication: Bool
    /// The calls into a slab of `capacity` handlers.
    @usableFromInline let make: @Sendable (_ capacity: Int) -> HandlerCalls
    /// The same behind the PROXY protocol's header phase (`ProxyProtocolHandler`).
    @usableFromInline let makeProxied: @Sendable (_ capacity: Int, ProxyProtocolPolicy) -> HandlerCalls

    @inlinable init<H: ConnectionHandler>(_ factory: @escaping @Sendable () -> H) {
        requiresAuthentication = H.requiresAuthentication
        make = { capacity in HandlerSlab<H>.calls(capacity: capacity, factory: factory) }
        makeProxied = { capacity, policy in
            HandlerSlab<ProxyProtocolHandler<H>>.calls(capacity: capacity) { ProxyProtocolHandler(factory(), policy: policy) }
        }
    }
}

/// The handler values of one loop, stored unboxed in a preallocated slab indexed by slot.
///
/// Invariant: `handlers[i]` is initialised exactly while the loop's `states[i].phase` is one of `.open`,
/// `.draining`, `.lingering`, `.aborting`, `.tearingDown` (an outbound connection gets its handler once
/// connected; `finalize` destroys it before the slot is freed). The loop calls these closures only on
/// its own thread, one at a time, with the slot it owns, so the pointer accesses never overlap.
@usableFromInline final class HandlerSlab<H: ConnectionHandler> {
    @usableFromInline let handlers: UnsafeMutablePointer<H>
    @usableFromInline let factory: @Sendable () -> H

    @inlinable init(capacity: Int, factory: @escaping @Sendable () -> H) {
        self.factory = factory
        handlers = .allocate(capacity: capacity)
    }

    deinit { handlers.deallocate() }  // every slot was finalised before the loop ended

    /// The loop's calls into a new slab of `capacity` handlers made by `factory`. Each closure holds
    /// the slab; the loop's `HandlerTable` holds the closures until the loop ends.
    @inlinable static func calls(capacity: Int, factory: @escaping @Sendable () -> H) -> HandlerCalls {
        let slab = HandlerSlab(capacity: capacity, factory: factory)
        return HandlerCalls(
            open: { slot, c in
                (slab.handlers + Int(slot)).initialize(to: slab.factory())
                slab.handlers[Int(slot)].opened(on: c)
            },
            received: { slot, bytes, c in slab.handlers[Int(slot)].received(bytes, on: c) },
            inputClosed: { slot, c in slab.handlers[Int(slot)].inputClosed(on: c) },
            writable: { slot, c in slab.handlers[Int(slot)].writable(on: c) },
            timerFired: { slot, c in slab.handlers[Int(slot)].timerFired(on: c) },
            finalize: { slot, reason in
                slab.handlers[Int(slot)].closed(reason: reason)
                (slab.handlers + Int(slot)).deinitialize(count: 1)
            })
    }
}

/// A loop's handlers as the backends see them: the state bookkeeping around each call (the lent chunk,
/// the dirty mark, the phase check) is here, compiled once; the call itself goes to `HandlerCalls`.
final class HandlerTable {
    /// The loop's core, unretained: the backend holds its only strong reference and outlives this
    /// table. Hot paths borrow it at +0 through `withCore` (no retain/release per call; an
    /// `unowned(unsafe)` reference cost a pair per access).
    let coreRef: Unmanaged<LoopCore>
    var core: LoopCore { coreRef.takeUnretainedValue() }
    let calls: HandlerCalls

    @inline(__always) func withCore<R>(_ body: (LoopCore) -> R) -> R { coreRef._withUnsafeGuaranteedRef(body) }

    init(core: LoopCore, calls: HandlerCalls) {
        self.coreRef = Unmanaged.passUnretained(core)
        self.calls = calls
    }

    @inline(__always) private func connection(_ slot: Int32, _ core: LoopCore) -> Connection {
        Connection(coreRef: coreRef, slot: slot, generation: core.states[Int(slot)].generation)
    }

    @inline(__always) func open(_ slot: Int32) {
        withCore { core in
            calls.open(slot, connection(slot, core))
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
            calls.received(slot, ReceivedBytes(bytes: bytes, chunk: chunk, offset: Int32(offset)), connection(slot, core))
            core.lentChunk = -1
            core.markDirty(slot)
            return core.lentChunkKept
        }
    }

    @inline(__always) func inputClosed(_ slot: Int32) {
        withCore { core in
            calls.inputClosed(slot, connection(slot, core))
            core.markDirty(slot)
        }
    }

    @inline(__always) func writable(_ slot: Int32) {
        withCore { core in
            calls.writable(slot, connection(slot, core))
            core.markDirty(slot)
        }
    }

    @inline(__always) func timerFired(_ slot: Int32) {
        withCore { core in
            switch core.states[Int(slot)].phase {
            case .open, .draining, .lingering: break
            default: return
            }
            calls.timerFired(slot, connection(slot, core))
            core.markDirty(slot)
        }
    }

    /// Tells the handler the connection is gone and destroys it.
    func finalize(_ slot: Int32, reason: CloseReason) {
        calls.finalize(slot, reason)
    }
}
