import Glibc

/// What one load connection sends and how it checks what comes back, independent of how the bytes
/// travel: the closed loop runs it inside engine handlers, the open loop in `OpenLoop`.
protocol LoadStream: SendableMetatype {
    init(state: LoadState, index: Int)
    /// The bytes of request `index` (valid until the next call on this stream).
    mutating func request(_ index: UInt64) -> UnsafeRawBufferPointer
    /// Verifies `bytes` against the oldest outstanding requests of `window`, completing each finished
    /// one (its latency recorded in `state`). Returns how many completed, or nil when the bytes were
    /// wrong or unsolicited (already counted in `state`; the connection must be dropped).
    mutating func consume(_ bytes: UnsafeRawBufferPointer, window: inout LoadWindow, state: LoadState, now: UInt64) -> Int?
    func deallocate()
}

/// Echo: message k carries k in its first 8 bytes and a per-connection pattern in the rest; every
/// echoed byte is checked.
struct EchoStream: LoadStream {
    /// Message template (bytes 8... fixed per connection; 0..<8 stamped per send). Owned.
    private let payload: UnsafeMutableRawBufferPointer
    private var offset = 0  // bytes of the oldest outstanding message received so far

    init(state: LoadState, index: Int) {
        payload = .allocate(byteCount: max(state.size, 1), alignment: 16)
        for i in 0..<payload.count { payload[i] = UInt8(truncatingIfNeeded: index &* 31 &+ i &* 7 &+ 1) }
    }

    func deallocate() { payload.deallocate() }

    mutating func request(_ k: UInt64) -> UnsafeRawBufferPointer {
        for b in 0..<min(8, payload.count) { payload[b] = UInt8(truncatingIfNeeded: k >> (8 * UInt64(b))) }
        return UnsafeRawBufferPointer(payload)
    }

    mutating func consume(_ bytes: UnsafeRawBufferPointer, window: inout LoadWindow, state: LoadState, now: UInt64) -> Int? {
        guard var p = bytes.baseAddress else { return 0 }
        var left = bytes.count
        let size = payload.count
        var completed = 0
        while left > 0 {
            guard window.outstanding > 0 else { state.corrupt += 1; return nil }  // unsolicited
            let k = window.oldestIndex
            let n = min(left, size - offset)
            // Verify: stamp bytes one by one, the rest against the template.
            var i = 0
            while offset + i < 8 && i < n {
                if p.load(fromByteOffset: i, as: UInt8.self) != UInt8(truncatingIfNeeded: k >> (8 * UInt64(offset + i))) {
                    state.corrupt += 1; return nil
                }
                i += 1
            }
            if i < n && memcmp(p + i, payload.baseAddress! + offset + i, n - i) != 0 { state.corrupt += 1; return nil }
            offset += n; p += n; left -= n
            if offset == size {
                offset = 0
                state.complete(sentAt: window.didComplete(), now: now, bytes: size)
                completed += 1
            }
        }
        return completed
    }
}

/// HTTP/1.1 keep-alive GET: parses each response incrementally (status line, headers, Content-Length
/// body) and checks its status and body length.
struct HTTPStream: LoadStream {
    private let requestBytes: UnsafeMutableRawBufferPointer  // owned copy of `state.request` (+1 spare byte)
    private let requestCount: Int
    private enum Phase { case statusLine, headers, body }
    private var phase = Phase.statusLine
    private let line: UnsafeMutablePointer<UInt8>  // owned
    private let lineCapacity = 1024
    private var lineLength = 0
    private var status = 0
    private var contentLength = -1
    private var bodyLeft = 0
    private var responseBytes = 0

    init(state: LoadState, index: Int) {
        requestCount = state.request.count
        let copy = UnsafeMutableRawBufferPointer.allocate(byteCount: requestCount + 1, alignment: 16)
        state.request.withUnsafeBytes { copy.copyMemory(from: $0) }
        requestBytes = copy
        line = .allocate(capacity: 1024)
    }

    func deallocate() { requestBytes.deallocate(); line.deallocate() }

    mutating func request(_ index: UInt64) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(requestBytes)[0..<requestCount])
    }

    mutating func consume(_ bytes: UnsafeRawBufferPointer, window: inout LoadWindow, state: LoadState, now: UInt64) -> Int? {
        guard let base = bytes.baseAddress else { return 0 }
        var p = base.assumingMemoryBound(to: UInt8.self)
        var left = bytes.count
        var completed = 0
        responseBytes += left
        while left > 0 {
            if phase == .body {
                let n = min(left, bodyLeft)
                bodyLeft -= n; p += n; left -= n
                if bodyLeft == 0 { finish(&window, state, now); completed += 1 }
                continue
            }
            let c = p.pointee
            p += 1; left -= 1
            if c != UInt8(ascii: "\n") {
                if lineLength < lineCapacity { line[lineLength] = c; lineLength += 1 }
                continue
            }
            if lineLength > 0 && line[lineLength - 1] == UInt8(ascii: "\r") { lineLength -= 1 }
            defer { lineLength = 0 }
            if phase == .statusLine {
                // "HTTP/1.1 200 OK"
                guard window.outstanding > 0, lineLength >= 12, memcmp(line, "HTTP/1.", 7) == 0 else { state.corrupt += 1; return nil }
                status = Int(line[9] &- 48) * 100 + Int(line[10] &- 48) * 10 + Int(line[11] &- 48)
                contentLength = -1
                phase = .headers
            } else if lineLength == 0 {
                guard contentLength >= 0 else { state.corrupt += 1; return nil }  // chunked: not measured here
                bodyLeft = contentLength
                phase = .body
                if bodyLeft == 0 { finish(&window, state, now); completed += 1 }
            } else if lineLength > 15 && strncasecmp(UnsafeRawPointer(line).assumingMemoryBound(to: CChar.self), "content-length:", 15) == 0 {
                var v = 0
                for k in 15..<lineLength where line[k] >= 48 && line[k] <= 57 { v = v * 10 + Int(line[k] - 48) }
                contentLength = v
            }
        }
        return completed
    }

    /// One response is complete: checks it and records its latency. Bytes that arrived in the same
    /// chunk after it count towards the next response.
    private mutating func finish(_ window: inout LoadWindow, _ state: LoadState, _ now: UInt64) {
        phase = .statusLine
        if status != state.expectStatus { state.badStatus += 1 }
        if let expected = state.expectBodyLength {
            if expected != contentLength { state.corrupt += 1 }
        } else {
            state.expectBodyLength = contentLength
        }
        state.complete(sentAt: window.didComplete(), now: now, bytes: responseBytes)
        responseBytes = 0
    }
}
