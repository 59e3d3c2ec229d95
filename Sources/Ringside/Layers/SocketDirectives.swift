import Glibc
import Logging

/// Socket operations ordered with a layered connection's queued bytes: a socket option set, or a
/// message sent with one control message (`sendmsg` + cmsg), exactly after the bytes queued before it
/// have left and before any queued after it. Kernel TLS needs both: `TCP_ULP`/`TLS_TX` must take
/// effect after the last record encrypted in user space and before the first plaintext byte, and
/// non-data records (alerts, session tickets) go as `sendmsg` with a `TLS_SET_RECORD_TYPE` cmsg.
///
/// Bookkeeping: the connection's `LayerStack.directives` holds them in order, each with `gap`, the
/// number of queued bytes between the previous directive (or the head of the queue) and itself;
/// `ConnectionState.directiveBytes` is the first one's remaining gap (-1: none). A send never covers
/// more than `directiveBytes`; at 0 the backend runs the directive instead of a send, as the
/// connection's one send in flight (`SendVectors`-like storage of its own, below).
///
/// Invariant (memory): a directive's storage is read by the kernel only while its operation is in
/// flight (io_uring), and the directive stays in the stack's list until that operation's completion;
/// the stack itself lives until the slot is freed, which waits for every operation in flight.
final class SocketDirective {
    enum Kind {
        /// setsockopt(level, name, value).
        case option(level: Int32, name: Int32)
        /// sendmsg(payload) with one control message (level, type, data).
        case controlMessage(level: Int32, type: Int32)
    }

    let kind: Kind
    /// Queued bytes between the previous directive (or the queue's head) and this one, at queueing.
    var gap: Int
    /// The option value, or the payload (its unsent part starts at `payloadSent`).
    let value: UnsafeMutableRawBufferPointer
    var payloadSent = 0
    /// For a control message: its msghdr, one iovec and the cmsg (stable while a SENDMSG reads them).
    private let message: UnsafeMutablePointer<msghdr>
    private let vector: UnsafeMutablePointer<iovec>
    private let control: UnsafeMutableRawBufferPointer

    init(kind: Kind, gap: Int, value: UnsafeRawBufferPointer, controlData: UnsafeRawBufferPointer = .init(start: nil, count: 0)) {
        self.kind = kind
        self.gap = gap
        self.value = .allocate(byteCount: max(value.count, 1), alignment: 16)
        if value.count > 0 { self.value.baseAddress!.copyMemory(from: value.baseAddress!, byteCount: value.count) }
        valueCount = value.count
        message = .allocate(capacity: 1)
        message.initialize(to: msghdr())
        vector = .allocate(capacity: 1)
        vector.initialize(to: iovec())
        // CMSG_SPACE(n): the header, then the data, each aligned to size_t.
        let header = (MemoryLayout<cmsghdr>.size + 7) & ~7
        let space = header + ((controlData.count + 7) & ~7)
        control = .allocate(byteCount: max(space, 8), alignment: 8)
        control.initializeMemory(as: UInt8.self, repeating: 0)
        if case .controlMessage(let level, let type) = kind {
            let h = control.baseAddress!.assumingMemoryBound(to: cmsghdr.self)
            h.pointee.cmsg_len = header + controlData.count
            h.pointee.cmsg_level = level
            h.pointee.cmsg_type = type
            if controlData.count > 0 { (control.baseAddress! + header).copyMemory(from: controlData.baseAddress!, byteCount: controlData.count) }
            controlLength = space
        }
    }

    private let valueCount: Int
    private var controlLength = 0

    deinit {
        // Option values carry key material (TLS_TX): wiped before they go back to the allocator.
        memset(value.baseAddress!, 0, value.count)
        value.deallocate()
        message.deallocate()
        vector.deallocate()
        control.deallocate()
    }

    /// The option value (`.option`).
    var optionValue: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: value.baseAddress, count: valueCount) }

    /// Bytes of the payload not sent yet (`.controlMessage`).
    var payloadLeft: Int { valueCount - payloadSent }

    /// The msghdr for the unsent part of the payload with its control message (`.controlMessage`),
    /// valid until the next call or the directive's end.
    func preparedMessage() -> UnsafeMutablePointer<msghdr> {
        vector.pointee = iovec(iov_base: value.baseAddress! + payloadSent, iov_len: valueCount - payloadSent)
        message.pointee = msghdr()
        message.pointee.msg_iov = vector
        message.pointee.msg_iovlen = 1
        message.pointee.msg_control = control.baseAddress
        message.pointee.msg_controllen = controlLength
        return message
    }
}

extension SocketDirective {
    var isOption: Bool { if case .option = kind { true } else { false } }
    /// The operation's name in an engine-error report.
    var operationName: StaticString { isOption ? "setsockopt (socket directive)" : "sendmsg (socket directive)" }
}

extension LoopCore {
    /// Runs the due option directive `d` with setsockopt(2) on an ordinary descriptor (epoll, io_uring
    /// without direct descriptors): done, or the send ends and the connection closes with the errno.
    /// Returns whether the option was set.
    func setOptionDirectly(slot: Int32, _ d: SocketDirective, level: Int32, name: Int32, logger: Logger) -> Bool {
        let v = d.optionValue
        if setsockopt(states[Int(slot)].fd, level, name, v.baseAddress, socklen_t(v.count)) == 0 {
            directiveDone(slot: slot)
            return true
        }
        failDirective(slot: slot, d, errno: Errno.current.rawValue, logger: logger)
        return false
    }

    /// A directive run by a direct call (setsockopt(2), epoll's sendmsg) failed with `errno`: the send
    /// ends and the connection closes with that errno (an engine bug's errno is reported as one).
    func failDirective(slot: Int32, _ d: SocketDirective, errno: Int32, logger: Logger) {
        states[Int(slot)].sendEnded()
        requestClose(slot: slot, abort: true, reason: EngineErrors.reason(
            errno, op: d.operationName, slot: slot, counters: &counters, logger: logger))
    }

    /// Queues `directive` after every byte queued on `slot` so far. The caller checked
    /// `orderedSocketOperations` and that the connection is layered.
    func queueDirective(slot: Int32, kind: SocketDirective.Kind, value: UnsafeRawBufferPointer,
                        controlData: UnsafeRawBufferPointer = .init(start: nil, count: 0)) throws(WriteError) {
        let i = Int(slot)
        guard states[i].acceptsWrites else { throw .closed }
        let r: WriteError? = withLayerStack(slot) { stack -> WriteError? in
            // Bytes queued since the last directive: all queued bytes minus what lies before it.
            var before = 0
            if states[i].directiveBytes >= 0 {
                before = Int(states[i].directiveBytes)
                for d in stack.directives.dropFirst() { before += d.gap }
            }
            let gap = states[i].queuedBytes - before
            precondition(gap >= 0, "directive bookkeeping: \(states[i].queuedBytes) queued, \(before) before the last directive")
            stack.directives.append(SocketDirective(kind: kind, gap: gap, value: value, controlData: controlData))
            if stack.directives.count == 1 { states[i].directiveBytes = Int32(truncatingIfNeeded: gap) }
            return nil
        } ?? .closed
        if let r { throw r }
        if states[i].queuedBytes == 0 { startStallClock(slot) }
        markDirty(slot)
    }

    /// The directive due now on `slot` (its gap reached 0), if any.
    func dueDirective(slot: Int32) -> SocketDirective? {
        guard states[Int(slot)].directiveBytes == 0 else { return nil }
        return withLayerStack(slot) { $0.directives.first } ?? nil
    }

    /// The due directive is done: the next one (if any) becomes due after its gap.
    func directiveDone(slot: Int32) {
        let i = Int(slot)
        let next: Int32 = withLayerStack(slot) { stack -> Int32 in
            if !stack.directives.isEmpty { stack.directives.removeFirst() }
            return stack.directives.first.map { Int32(truncatingIfNeeded: $0.gap) } ?? -1
        } ?? -1
        states[i].directiveBytes = next
        states[i].lastSendProgress = now
        markDirty(slot)
    }
}

extension LayerIO {
    /// Whether ``setSocketOption(level:name:value:)`` and ``sendWithControlMessage(level:type:data:_:)``
    /// can be used on this connection: the layer is the one next to the socket, and the backend can
    /// run socket operations in order with the bytes it sends (epoll; io_uring with ordinary
    /// descriptors, or registered ones on a kernel with socket commands, 6.7+). False when
    /// ``KernelFeatures/kernelTLS`` is disabled.
    public var supportsOrderedSocketOperations: Bool {
        level == 0 && connection.withCore { $0.orderedSocketOperations }
    }

    /// Sets a socket option once every byte queued so far has been sent, and before any byte queued
    /// after this call (kernel TLS: `TCP_ULP` "tls", then `SOL_TLS`/`TLS_TX` with the keys). `value`
    /// is copied (and wiped when done). A failure closes the connection (an engine error, counted).
    /// - Throws: ``WriteError/closed`` when the connection no longer sends, or ordered operations are
    ///   not supported here (see ``supportsOrderedSocketOperations``).
    public func setSocketOption(level: Int32, name: Int32, value: UnsafeRawBufferPointer) throws(WriteError) {
        guard supportsOrderedSocketOperations else { throw .closed }
        let slot = connection.slot
        let r: Result<Void, WriteError> = connection.withCore { c in
            Result { () throws(WriteError) in try c.queueDirective(slot: slot, kind: .option(level: level, name: name), value: value) }
        }
        try r.get()
    }

    /// Sends `payload` as one `sendmsg` carrying one control message (`level`, `type`, `data`), in
    /// order with the bytes queued before and after it (kernel TLS: a non-data record, with a
    /// `TLS_SET_RECORD_TYPE` cmsg). `payload` and `data` are copied.
    /// - Throws: as ``setSocketOption(level:name:value:)``.
    public func sendWithControlMessage(level: Int32, type: Int32, data: UnsafeRawBufferPointer,
                                       _ payload: UnsafeRawBufferPointer) throws(WriteError) {
        guard supportsOrderedSocketOperations else { throw .closed }
        let slot = connection.slot
        let r: Result<Void, WriteError> = connection.withCore { c in
            Result { () throws(WriteError) in
                try c.queueDirective(slot: slot, kind: .controlMessage(level: level, type: type), value: payload, controlData: data)
            }
        }
        try r.get()
    }
}
