import Glibc
import Ringside

/// One echo load connection. Closed loop: keeps `pipeline` messages outstanding and sends the next as
/// each echo completes. Open loop: sends at its intended times (paced by the connection's timer) and
/// measures latency from the intended time, so a stalled server cannot hide its stall (coordinated
/// omission). Every echoed byte is checked: the first 8 bytes of message k carry k, the rest a
/// per-connection pattern.
struct EchoLoadHandler: ConnectionHandler {
    unowned(unsafe) let state: LoadState
    /// Message template (bytes 8... fixed per connection; 0..<8 stamped per send).
    private let payload: UnsafeMutableRawBufferPointer
    private var window: LoadWindow
    private var offset = 0  // bytes of the oldest outstanding message received so far

    init(state: LoadState) {
        self.state = state
        let index = state.nextConnectionIndex
        state.nextConnectionIndex += 1
        payload = .allocate(byteCount: max(state.size, 1), alignment: 16)
        for i in 0..<payload.count { payload[i] = UInt8(truncatingIfNeeded: index &* 31 &+ i &* 7 &+ 1) }
        window = LoadWindow(state: state, connectionIndex: index)
    }

    /// Stamps message `k` into the template and queues it.
    private static func write(_ payload: UnsafeMutableRawBufferPointer, _ k: UInt64, _ connection: Connection) -> Bool {
        for b in 0..<min(8, payload.count) { payload[b] = UInt8(truncatingIfNeeded: k >> (8 * UInt64(b))) }
        do { try connection.write(UnsafeRawBufferPointer(payload)) } catch { return false }
        return true
    }

    mutating func opened(on connection: Connection) {
        let payload = self.payload
        if state.intervalNanos > 0 {
            window.pace(connection, state: state) { Self.write(payload, $0, connection) }
        } else {
            for _ in 0..<state.pipeline { _ = window.send(stamp: nowNanos()) { Self.write(payload, $0, connection) } }
            window.armWatchdog(connection, state: state)
        }
    }

    mutating func received(_ bytes: ReceivedBytes, on connection: Connection) {
        var p = bytes.bytes.baseAddress!
        var left = bytes.count
        let size = payload.count
        while left > 0 {
            guard window.outstanding > 0 else { state.corrupt += 1; connection.abort(); return }  // unsolicited
            let k = window.oldestIndex
            let n = min(left, size - offset)
            // Verify: stamp bytes one by one, the rest against the template.
            var i = 0
            while offset + i < 8 && i < n {
                if p.load(fromByteOffset: i, as: UInt8.self) != UInt8(truncatingIfNeeded: k >> (8 * UInt64(offset + i))) {
                    state.corrupt += 1; connection.abort(); return
                }
                i += 1
            }
            if i < n && memcmp(p + i, payload.baseAddress! + offset + i, n - i) != 0 {
                state.corrupt += 1; connection.abort(); return
            }
            offset += n; p += n; left -= n
            if offset == size {
                offset = 0
                let now = nowNanos()
                state.complete(sentAt: window.didComplete(), now: now, bytes: size)
                if state.intervalNanos == 0 && !state.isStopping {
                    let payload = self.payload
                    _ = window.send(stamp: now) { Self.write(payload, $0, connection) }
                }
            }
        }
        if state.intervalNanos == 0 { window.armWatchdog(connection, state: state) }
    }

    mutating func timerFired(on connection: Connection) {
        let payload = self.payload
        window.timerFired(connection, state: state) { Self.write(payload, $0, connection) }
    }

    mutating func closed(reason: CloseReason) {
        state.noteClosed(reason)
        payload.deallocate()
        window.deallocate()
    }
}
