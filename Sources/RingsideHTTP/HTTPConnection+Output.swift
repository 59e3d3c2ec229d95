import Glibc
import Ringside

/// The response being sent, in order: the head (with the chunk-size line of a chunked body), the
/// in-memory body, the chunked ending, then a file body (`HTTPConnection.fileFD`).
struct Outgoing {
    var active = false
    /// 0: head, 1: body, 2: ending, 3: file.
    var part = 0
    /// Bytes of `part` already queued.
    var offset = 0
    var ending: StaticString = ""
    /// Whether part 1 (the in-memory body) is to be queued: not for HEAD, nor when a small body was
    /// appended to the head (`send`).
    var sendBody = true
    var closeAfter = false
    /// The largest write tried next: halved while the pool refuses, doubled after each success.
    var piece = Int.max
    /// Whether this response has been counted as deferred.
    var deferred = false
    /// Whether the pool-retry timer is armed (cancelled when the response completes, so it cannot
    /// fire into the next request's header deadline).
    var retryArmed = false
}

extension HTTPConnection {
    /// Composes the head of `res` and sends the response: at once when the send pool has room (the
    /// usual case: a few writes), else piece by piece as the pool and the peer allow.
    func send(_ res: inout HTTPResponse, _ meta: RequestMeta, _ connection: Connection) {
        if config.compression.enabled { encodeResponse(&res, meta) }  // HTTPCompression.swift
        let close = !meta.keepAlive || closing
        let chunked = res.chunked && res.bodyFile == nil && meta.version == .http11
        composeHead(res, meta, chunked: chunked, close: close)
        out = Outgoing(active: true, closeAfter: close)
        out.sendBody = !meta.isHead
        if out.sendBody && !chunked && res.bodyFile == nil && responseBody.count > 0 && responseBody.count <= 2048 {
            // A small body goes with the head: one write into the send chunks instead of two.
            responseHead.append(responseBody.bytes)
            out.sendBody = false
        }
        let isHead = meta.isHead
        if chunked && !isHead {
            out.ending = responseBody.count > 0 ? "\r\n0\r\n\r\n" : "0\r\n\r\n"
        }
        if let f = res.bodyFile {
            if isHead || f.size == 0 { closeFile(f.fd) } else {
                fileFD = f.fd; fileOffset = res.bodyFileOffset; fileEnd = res.bodyFileOffset + f.size
            }
        }
        pumpOutput(connection)
    }

    /// The head of a streamed response (HTTPResponseWriter) into `responseHead`.
    func composeStreamHead(_ res: borrowing HTTPResponse, _ meta: RequestMeta, chunked: Bool, close: Bool) {
        composeHead(res, meta, chunked: chunked, close: close, streamed: true)
    }

    private func composeHead(_ res: borrowing HTTPResponse, _ meta: RequestMeta, chunked: Bool, close: Bool, streamed: Bool = false) {
        let version = meta.version, isHead = meta.isHead
        let h = responseHead
        h.clear()
        if version == .http11 && res.status == 200 {
            h.append("HTTP/1.1 200 OK\r\nServer: ringside\r\nDate: ")  // the usual head: one copy, not five
        } else {
            h.append(version == .http10 ? "HTTP/1.0 " : "HTTP/1.1 ")
            h.append(decimal: res.status)
            h.append(" ")
            h.append(reasonPhrase(res.status))
            h.append("\r\nServer: ringside\r\nDate: ")
        }
        HTTPDate.append(to: h)
        h.append("\r\n")
        h.append(userHeaders.bytes)
        if res.status != 204 && res.status != 304 {
            if chunked {
                h.append("Transfer-Encoding: chunked\r\n")
            } else if !streamed {
                h.append("Content-Length: ")
                h.append(decimal: responseBody.count + (res.bodyFile?.size ?? 0))
                h.append("\r\n")
            }
        }
        if close { h.append("Connection: close\r\n") }
        else if version == .http10 { h.append("Connection: keep-alive\r\n") }
        h.append("\r\n")
        if chunked && !isHead && !streamed && responseBody.count > 0 {
            // One chunk with the whole body; its size line goes with the head.
            appendHex(responseBody.count, to: h)
            h.append("\r\n")
        }
    }

    private func part(_ k: Int) -> UnsafeRawBufferPointer {
        switch k {
        case 0: responseHead.bytes
        case 1: out.sendBody ? responseBody.bytes : UnsafeRawBufferPointer(start: nil, count: 0)
        default: UnsafeRawBufferPointer(start: out.ending.utf8Start, count: out.ending.utf8CodeUnitCount)
        }
    }

    /// Queues as much of the response as the pool and the watermark allow; called again on `writable`
    /// (the queue drained below the low watermark) or by the retry timer (the pool had no room).
    func pumpOutput(_ connection: Connection) {
        guard out.active else { return }
        if out.part == 0 && out.offset == 0 && fileFD >= 0 && fileOffset < fileEnd && responseBody.count == 0
            && out.ending.utf8CodeUnitCount == 0 && !fileReadInFlight && !connection.isBackpressured {
            // A file response with nothing between head and file: the head goes with the file's first
            // piece, in one send.
            do throws(WriteError) {
                try connection.sendFile(fileFD, at: Int64(fileOffset), count: fileEnd - fileOffset,
                                        prefix: responseHead.bytes) { r in self.fileSent(r) }
                out.part = 3
                fileReadInFlight = true
                fileHeadInFlight = true
                return
            } catch {
                if error == .closed { config.stats.count(.cutOff); return endResponse(connection, cutOff: true) }
                // The pool is short: the head goes alone below, the file after it.
            }
        }
        while out.part < 3 {
            let bytes = part(out.part)
            if out.offset >= bytes.count { out.part += 1; out.offset = 0; continue }
            switch writeSome(UnsafeRawBufferPointer(rebasing: bytes[out.offset...]), connection) {
            case .wrote(let n): out.offset += n
            case .wait: return
            case .closed: config.stats.count(.cutOff); return endResponse(connection, cutOff: true)
            }
        }
        if fileFD >= 0 && fileOffset < fileEnd {
            // The file body: read by the loop's file operations straight into send chunks, one
            // piece at a time; `fileSent` continues.
            if fileReadInFlight || connection.isBackpressured { return }  // `writable` resumes
            do throws(WriteError) {
                try connection.sendFile(fileFD, at: Int64(fileOffset), count: fileEnd - fileOffset) { r in
                    self.fileSent(r)
                }
                fileReadInFlight = true
                return
            } catch {
                if error == .closed { config.stats.count(.cutOff); return endResponse(connection, cutOff: true) }
                if !out.deferred { out.deferred = true; config.stats.count(.deferred) }
                connection.setTimer(after: .milliseconds(1))  // no send chunk free: retry
                out.retryArmed = true
                return
            }
        }
        endResponse(connection, cutOff: false)
    }

    /// A piece of the file body was queued (or not): go on with the next.
    private func fileSent(_ r: Result<Int, SendFileError>) {
        fileReadInFlight = false
        let headWasInFlight = fileHeadInFlight
        fileHeadInFlight = false
        if fileToCloseAfterRead >= 0 {  // that response was given up while the read was in flight
            closeFile(fileToCloseAfterRead)
            fileToCloseAfterRead = -1
            if out.active, let connection { pumpOutput(connection) }  // a later response's file waits
            return
        }
        guard out.active, let connection else { return }
        switch r {
        case .success(let n) where n > 0:
            fileOffset += n
            pumpOutput(connection)
        case .success, .failure(.file):
            // The file ended early or failed: the promised Content-Length cannot be met.
            config.stats.count(.fileRead)
            connection.abort()
            endResponse(connection, cutOff: true)
        case .failure(.closed):
            config.stats.count(.cutOff)
            endResponse(connection, cutOff: true)
        case .failure(.bufferPoolExhausted):
            // A layered connection (TLS) had no room: nothing was queued, the same range goes again.
            if headWasInFlight { out.part = 0; out.offset = 0 }
            if !out.deferred { out.deferred = true; config.stats.count(.deferred) }
            connection.setTimer(after: .milliseconds(1))
            out.retryArmed = true
        }
    }

    /// Closes a file descriptor through the loop's file operations (no close(2) on the loop thread).
    func closeFile(_ fd: Int32) {
        guard fd >= 0 else { return }
        if !heldFiles.isEmpty, let k = heldFiles.firstIndex(where: { $0.fd == fd }) {
            heldFiles.remove(at: k)  // a cached static file: the cache (or the last holder) closes it
            return
        }
        if let connection { connection.files.close(fd) } else { _ = Glibc.close(fd) }
    }

    enum Progress { case wrote(Int), wait, closed }

    /// Queues a non-empty prefix of `bytes`: all of them when the pool has room, else the largest
    /// halving that fits. `.wait`: nothing fits now (the pool is empty: a 1 ms timer retries) or the queue
    /// is above the high watermark (`writable` resumes).
    private func writeSome(_ bytes: UnsafeRawBufferPointer, _ connection: Connection) -> Progress {
        if connection.isBackpressured { return .wait }
        var n = min(bytes.count, out.piece)
        while true {
            do throws(WriteError) {
                try connection.write(UnsafeRawBufferPointer(rebasing: bytes[0..<n]))
                out.piece = out.piece > Int.max / 2 ? Int.max : out.piece * 2
                return .wrote(n)
            } catch {
                if error == .closed { return .closed }
                if !out.deferred { out.deferred = true; config.stats.count(.deferred) }
                if n > 1 { n /= 2; out.piece = n; continue }
                connection.setTimer(after: .milliseconds(1))
                out.retryArmed = true
                return .wait
            }
        }
    }

    /// The response is queued whole (or cut off: the connection is closing): close if it said so, else
    /// go on with stashed input.
    func endResponse(_ connection: Connection, cutOff: Bool) {
        out.active = false
        finishFile()
        if out.retryArmed { out.retryArmed = false; connection.cancelTimer() }
        if cutOff { closing = true; cancelPending(); return }
        if out.closeAfter { closing = true; cancelPending(); connection.close(); return }
        // The next response in request order, if it is ready (async routes).
        if flushPending(connection) { return }
        resumeAfterDeferred(connection)
    }

    /// Nothing is being sent and nothing waits for file operations: reading resumes and stashed input
    /// is parsed.
    func resumeAfterDeferred(_ connection: Connection) {
        guard !out.active, !deferred, !halted else { return }
        if pending.count >= config.maxPipelinedRequests { return }  // reading resumes when one is answered
        if readingPaused { readingPaused = false; connection.resumeReading() }
        if stash.count > 0 {
            // Feed what arrived meanwhile (copy out first: feeding may stash again).
            let pending = [UInt8](stash.bytes)
            stash.clear()
            pending.withUnsafeBytes { received($0, connection) }
        }
    }

    func finishFile() {
        if fileReadInFlight { fileToCloseAfterRead = fileFD } else { closeFile(fileFD) }
        fileFD = -1
        fileOffset = 0; fileEnd = 0
    }

    private func appendHex(_ v: Int, to b: ByteBuffer) {
        var digits: (UInt64, UInt64) = (0, 0)
        withUnsafeMutableBytes(of: &digits) { d in
            var n = v, i = 16
            repeat { i -= 1; d[i] = hexDigit(n & 15); n >>= 4 } while n > 0 && i > 0
            b.append(UnsafeRawBufferPointer(rebasing: d[i..<16]))
        }
    }
}

@inline(__always) private func hexDigit(_ v: Int) -> UInt8 { v < 10 ? UInt8(48 + v) : UInt8(87 + v) }
