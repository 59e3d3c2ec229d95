import Glibc
import Ringside

/// A request body being stored in an unlinked temporary file (`O_TMPFILE` in `spoolDirectory`)
/// through the loop's file operations: the open and every write complete asynchronously (io_uring:
/// ring operations; epoll: the helper threads), so a slow disk never stalls the loop.
///
/// Bytes are copied into `fill`; when it holds `writeSize` bytes (or the body ended) it becomes the
/// buffer in flight and is written while `fill` takes the next bytes. When `fill` reaches the limit
/// while a write is still in flight, reading pauses until the write completes (backpressure), so the
/// memory held per upload stays near 2 x `writeSize` plus what the engine holds after the pause.
final class SpoolFile {
    static let writeSize = 128 * 1024
    /// -1 until the open completes.
    var fd: Int32 = -1
    /// Bytes of body taken (written or still buffered).
    var size = 0
    /// Bytes written to the file (the offset of the next write).
    var written = 0
    var fill = ByteBuffer(capacity: SpoolFile.writeSize)
    var flight = ByteBuffer(capacity: SpoolFile.writeSize)
    /// Bytes of `flight` written so far (a short write continues from here).
    var flightDone = 0
    var writing = false
    /// Reading is paused for this file.
    var paused = false
    /// Set at the end of the body: runs once every byte is in the file.
    var onStored: (() -> Void)? = nil

    var isStored: Bool { fd >= 0 && !writing && fill.count == 0 }
}

/// Any failure to create or write the spool file answers 507 (ENOSPC, EDQUOT) or 500 with
/// `Connection: close`, once: the route handler is never called with a truncated body.
extension HTTPConnection {
    /// Starts creating the spool file; the body's bytes are buffered meanwhile.
    func openSpool(_ connection: Connection) {
        let s = SpoolFile()
        spool = s
        connection.files.open(config.spoolDirectory, flags: O_RDWR | 0o20200000 /* O_TMPFILE */, mode: 0o600) { r in
            guard self.spool === s else {  // the request was abandoned meanwhile
                if case .success(let fd) = r { connection.files.close(fd) }
                return
            }
            switch r {
            case .success(let fd):
                s.fd = fd
                self.pumpSpool(s, connection)
            case .failure(let e):
                self.spoolFailed(e.errno, "creating a file in \(self.config.spoolDirectory)", connection)
            }
        }
    }

    /// Takes body bytes for the spool file.
    func appendSpool(_ bytes: UnsafeRawBufferPointer, _ connection: Connection) {
        guard let s = spool else { return }
        s.fill.append(bytes)
        s.size += bytes.count
        pumpSpool(s, connection)
        if s.fill.count >= SpoolFile.writeSize && s.writing && !s.paused {
            s.paused = true
            connection.pauseReading()
        }
    }

    /// Writes what is buffered when no write is in flight; reports the body stored when it is.
    func pumpSpool(_ s: SpoolFile, _ connection: Connection) {
        guard spool === s, s.fd >= 0, !s.writing else { return }
        if s.fill.count >= SpoolFile.writeSize || (s.onStored != nil && s.fill.count > 0) {
            // The full buffer goes in flight; `fill` (now empty) takes the next bytes.
            (s.fill, s.flight) = (s.flight, s.fill)
        }
        if s.flight.count == 0 {
            if s.isStored, let stored = s.onStored { s.onStored = nil; stored() }
            return
        }
        writeFlight(s, connection)
    }

    private func writeFlight(_ s: SpoolFile, _ connection: Connection) {
        s.writing = true
        let rest = UnsafeRawBufferPointer(rebasing: s.flight.bytes[s.flightDone...])
        connection.files.write(s.fd, from: rest, at: Int64(s.written)) { r in
            guard self.spool === s else { return }  // abandoned: the descriptor was closed already
            switch r {
            case .failure(let e):
                s.writing = false
                self.spoolFailed(e.errno, "writing the spool file", connection)
            case .success(0):
                s.writing = false
                self.spoolFailed(EIO, "writing the spool file (no progress)", connection)
            case .success(let n):
                s.written += n
                s.flightDone += n
                if s.flightDone < s.flight.count { return self.writeFlight(s, connection) }  // short write
                s.writing = false
                s.flight.clear()
                s.flightDone = 0
                if s.paused && s.fill.count < SpoolFile.writeSize {
                    s.paused = false
                    if !self.readingPaused && !self.bodyPaused { connection.resumeReading() }
                }
                self.pumpSpool(s, connection)
            }
        }
    }

    /// Closes and forgets the spool file (unless `keep`: it became a response's body).
    func dropSpool(_ connection: Connection?, keep: Bool = false) {
        guard let s = spool else { return }
        spool = nil
        if s.paused, let connection, !readingPaused, !bodyPaused { connection.resumeReading() }
        if s.fd >= 0 && !keep {
            if let connection { connection.files.close(s.fd) } else { _ = Glibc.close(s.fd) }
        }
    }

    private func spoolFailed(_ e: Int32, _ what: String, _ connection: Connection) {
        config.stats.count(.spool)
        dropSpool(connection)
        let full = e == ENOSPC || e == EDQUOT
        deferred = false  // a route waiting for the body is not called
        fail(status: full ? 507 : 500, reason: "request body could not be stored (\(what): \(Errno(rawValue: e)))", connection)
    }
}
