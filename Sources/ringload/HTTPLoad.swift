import Glibc
import Ringside

/// One HTTP/1.1 keep-alive load connection: sends `GET path` (pipelined `pipeline` deep in the closed
/// loop, paced in the open loop), parses each response incrementally (status line, headers,
/// Content-Length body) and checks the status and body length of every response.
struct HTTPLoadHandler: ConnectionHandler {
    unowned(unsafe) let state: LoadState
    private var window: LoadWindow

    // Response parser state.
    private enum Phase { case statusLine, headers, body }
    private var phase = Phase.statusLine
    private let line: UnsafeMutablePointer<UInt8>
    private let lineCapacity = 1024
    private var lineLength = 0
    private var status = 0
    private var contentLength = -1
    private var bodyLeft = 0
    private var responseBytes = 0

    init(state: LoadState) {
        self.state = state
        let index = state.nextConnectionIndex
        state.nextConnectionIndex += 1
        window = LoadWindow(state: state, connectionIndex: index)
        line = .allocate(capacity: lineCapacity)
    }

    /// Queues one request.
    private static func write(_ state: LoadState, _ connection: Connection) -> Bool {
        do { try connection.write(state.request) } catch { return false }
        return true
    }

    mutating func opened(on connection: Connection) {
        let state = self.state
        if state.intervalNanos > 0 { window.pace(connection, state: state) { _ in Self.write(state, connection) }; return }
        for _ in 0..<state.pipeline { _ = window.send(stamp: nowNanos()) { _ in Self.write(state, connection) } }
        window.armWatchdog(connection, state: state)
    }

    private mutating func fail(_ connection: Connection) {
        state.corrupt += 1
        connection.abort()
    }

    mutating func received(_ bytes: ReceivedBytes, on connection: Connection) {
        var p = bytes.bytes.baseAddress!.assumingMemoryBound(to: UInt8.self)
        var left = bytes.count
        responseBytes += left
        while left > 0 {
            switch phase {
            case .body:
                let n = min(left, bodyLeft)
                bodyLeft -= n; p += n; left -= n
                if bodyLeft == 0 { finishResponse(connection); if phase != .statusLine { return } }
            case .statusLine, .headers:
                let c = p.pointee
                p += 1; left -= 1
                if c != UInt8(ascii: "\n") {
                    if lineLength < lineCapacity { line[lineLength] = c; lineLength += 1 }
                    continue
                }
                if lineLength > 0 && line[lineLength - 1] == UInt8(ascii: "\r") { lineLength -= 1 }
                if phase == .statusLine {
                    // "HTTP/1.1 200 OK"
                    guard window.outstanding > 0, lineLength >= 12, memcmp(line, "HTTP/1.", 7) == 0 else { fail(connection); return }
                    status = Int(line[9] &- 48) * 100 + Int(line[10] &- 48) * 10 + Int(line[11] &- 48)
                    contentLength = -1
                    phase = .headers
                } else if lineLength == 0 {
                    guard contentLength >= 0 else { fail(connection); return }  // chunked: not measured here
                    bodyLeft = contentLength
                    phase = .body
                    if bodyLeft == 0 { finishResponse(connection); if phase != .statusLine { return } }
                } else if lineLength > 15 && strncasecmp(UnsafeRawPointer(line).assumingMemoryBound(to: CChar.self), "content-length:", 15) == 0 {
                    var v = 0
                    for k in 15..<lineLength where line[k] >= 48 && line[k] <= 57 { v = v * 10 + Int(line[k] - 48) }
                    contentLength = v
                }
                lineLength = 0
            }
        }
        if state.intervalNanos == 0 { window.armWatchdog(connection, state: state) }
    }

    private mutating func finishResponse(_ connection: Connection) {
        phase = .statusLine
        if status != state.expectStatus { state.badStatus += 1 }
        if let expected = state.expectBodyLength {
            if expected != contentLength { state.corrupt += 1 }
        } else {
            state.expectBodyLength = contentLength
        }
        let now = nowNanos()
        state.complete(sentAt: window.didComplete(), now: now, bytes: responseBytes)
        responseBytes = 0
        if state.intervalNanos == 0 && !state.isStopping {
            let state = self.state
            _ = window.send(stamp: now) { _ in Self.write(state, connection) }
        }
    }

    mutating func timerFired(on connection: Connection) {
        let state = self.state
        window.timerFired(connection, state: state) { _ in Self.write(state, connection) }
    }

    mutating func closed(reason: CloseReason) {
        state.noteClosed(reason)
        window.deallocate()
        line.deallocate()
    }
}
