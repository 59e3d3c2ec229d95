/// The 64-bit io_uring user_data of every operation: `kind` (8 bits) | `generation` (24 bits) |
/// `slot` (32 bits). The generation makes a completion for a previous occupant of a reused slot
/// recognisable; nothing is allocated per operation.
struct UserData: Equatable {
    let raw: UInt64

    enum Kind: UInt8 {
        case accept = 1, recv, send, close, cancel, cancelRecv, shutdown, wake, acceptRetryTimer, cancelAccept, closeListener, connect, closeDirect, setLinger, loopTimer, file, fileCancel, spliceWrite, spliceIn, spliceOut, spliceProbe
        /// A zero-copy send: `slot` is its record in `UringZeroCopySends` (which names the connection).
        case sendZC
        /// A socket directive of a layered connection (Layers/SocketDirectives.swift): a setsockopt
        /// through a socket command, or a SENDMSG with a control message; the connection's send in flight.
        case directive
        /// The send wait's bound (Backends/UringWait.swift): a relative timeout, one in flight at most.
        case sendWaitTimer
    }

    init(raw: UInt64) { self.raw = raw }
    @inline(__always) init(_ kind: Kind, slot: Int32 = 0, generation: UInt32 = 0) {
        raw = UInt64(kind.rawValue) << 56 | UInt64(generation & 0xFF_FFFF) << 32 | UInt64(UInt32(bitPattern: slot))
    }
    @inline(__always) var kind: Kind? { Kind(rawValue: UInt8(truncatingIfNeeded: raw >> 56)) }
    @inline(__always) var slot: Int32 { Int32(bitPattern: UInt32(truncatingIfNeeded: raw)) }
    @inline(__always) var generation: UInt32 { UInt32(truncatingIfNeeded: raw >> 32) & 0xFF_FFFF }

    /// Whether this names the current occupant of a slot whose generation is `current`.
    @inline(__always) func matches(generation current: UInt32) -> Bool { generation == current & 0xFF_FFFF }
}

// 8 bytes, stored straight into sqe->user_data.
extension UserData {
    static func _checkLayout() { assert(MemoryLayout<UserData>.size == 8) }
}
