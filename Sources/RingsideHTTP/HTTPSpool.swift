import Glibc
import Ringside

/// Request bodies above `spoolThreshold` go to an unlinked temporary file in `spoolDirectory`.
/// Any failure to create or write it answers 507 (ENOSPC, EDQUOT) or 500 with `Connection: close`,
/// once: the route handler is never called with a truncated body.
extension HTTPConnection {
    /// Opens the spool file; false (and answered) when it cannot be created.
    func openSpool(_ connection: Connection) -> Bool {
        var template = Array("\(config.spoolDirectory)/ringside-body-XXXXXX".utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        guard fd >= 0 else {
            spoolFailed(Errno.current, "creating a file in \(config.spoolDirectory)", connection)
            return false
        }
        template.withUnsafeBufferPointer { _ = unlink($0.baseAddress!) }
        spoolFD = fd
        spoolSize = 0
        return true
    }

    /// Appends `bytes` to the spool file; false (and answered) when they cannot all be written.
    func writeSpool(_ bytes: UnsafeRawBufferPointer, _ connection: Connection) -> Bool {
        var off = 0
        while off < bytes.count {
            let n = Glibc.write(spoolFD, bytes.baseAddress! + off, bytes.count - off)
            if n < 0 {
                let e = Errno.current
                if e == .interrupted { continue }
                spoolFailed(e, "writing the spool file", connection)
                return false
            }
            // write(2) returns 0 only for a zero-length request; guard anyway so a stuck file fails.
            if n == 0 { spoolFailed(Errno(rawValue: EIO), "writing the spool file", connection); return false }
            off += n
        }
        spoolSize += bytes.count
        return true
    }

    private func spoolFailed(_ e: Errno, _ what: String, _ connection: Connection) {
        config.stats.count(.spool)
        if spoolFD >= 0 { _ = Glibc.close(spoolFD); spoolFD = -1 }
        let full = e.rawValue == ENOSPC || e.rawValue == EDQUOT
        fail(status: full ? 507 : 500, reason: "request body could not be stored (\(what): \(e))", connection)
    }
}
