import CLiburing
import Glibc

/// Accepting: one multishot accept, or (with a per-address cap) single-shot accepts with addresses.
extension UringBackend {
    func armAccept(_ k: Int) {
        acceptArmed[k] = true
        acceptsArmed += 1
        prepare(UserData(.accept, slot: Int32(k)))
    }

    func completeAccept(_ ud: UserData, res: Int32, flags: UInt32) {
        let k = Int(ud.slot)
        if flags & IORING_CQE_F_MORE == 0 {
            acceptArmed[k] = false
            acceptsArmed -= 1
            ringInflight -= 1
        }
        if res >= 0 {
            // Per-address cap: `.some(key)` admitted (key nil when no cap applies), nil refused.
            let admitted = acceptSlots > 1 ? core.admitAddress(UnsafeRawPointer(acceptAddresses + k)) : .some(nil)
            if !core.stopping, let key = admitted, let slot = core.allocateSlot(fd: res) {
                core.noteAddress(slot, key)
                if acceptSlots > 1 { core.notePeer(slot, UnsafeRawPointer(acceptAddresses + k)) }
                if directFiles {
                    core.states[Int(slot)].traits.insert(.direct)  // TCP_NODELAY is inherited from the listener
                } else {
                    _ = Socket.configureAccepted(res, noDelay: config.noDelay)
                }
                handlers.open(slot)
            } else {
                if let key = admitted {
                    core.forgetAddress(key)
                    if !core.stopping { core.counters.connectionsRefused += 1 }
                }
                if directFiles { prepare(UserData(.closeDirect, slot: res)) } else { closeDescriptor(res) }
            }
        } else if -res == ECANCELED {
            core.counters.canceledCompletions += 1
        } else if -res == ENFILE && directFiles && !lastAcceptENFILE {
            // The direct-descriptor table is full even with its headroom (a flood of refused connections
            // whose close_direct has not completed yet): the kernel closed the new connection. That is a
            // refusal, not an error to back off from.
            core.counters.connectionsRefused += 1
        } else {
            core.counters.acceptErrors += 1
            if core.counters.acceptErrors == 1 || core.counters.acceptErrors % 1000 == 0 {
                logger.warning("accept failed: \(Errno(rawValue: -res)) (count \(core.counters.acceptErrors)); retrying in 50 ms")
            }
        }
        let refusedByFullTable = -res == ENFILE && directFiles && !lastAcceptENFILE
        lastAcceptENFILE = -res == ENFILE
        if !acceptArmed[k] && !core.stopping {
            if res < 0 && -res != ECANCELED && !refusedByFullTable {
                // EMFILE/ENFILE and friends: retry after a pause rather than spinning.
                prepare(UserData(.acceptRetryTimer, slot: Int32(k)))
            } else {
                if acceptSlots == 1 { core.counters.acceptRearms += 1 }
                armAccept(k)
            }
        }
    }
}
