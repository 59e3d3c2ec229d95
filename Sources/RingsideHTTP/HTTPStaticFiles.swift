import Glibc
import Ringside

/// A directory served by ``HTTPRouter/files(_:root:)``: opened once when the route is registered
/// (`O_PATH | O_DIRECTORY`) and shared by every loop; every file is opened relative to it with
/// `openat2(RESOLVE_BENEATH)`, so nothing outside it can be reached, whatever the request says.
public final class StaticFileRoot: Sendable {
    /// The directory's descriptor (closed when the last router holding it goes).
    let fd: Int32
    /// The directory as given.
    public let path: String
    /// Open files by request path (shared by the loops): a hit is served without an open, statx or
    /// close. An entry is trusted for `cacheValidity`, then opened and inspected again (a file replaced
    /// or changed meanwhile is seen then, like nginx's `open_file_cache_valid`).
    private let cache = PthreadMutex([String: CachedStaticFile]())
    static let cacheValidity: UInt64 = 1000  // ms
    static let cacheEntries = 1024
    /// Files up to this size are cached with their bytes (read once per validity period through the
    /// loop's file operations), so a hit is answered from memory like any written body: no file
    /// operation and no second trip round the loop per request. At most `cacheEntries` x this.
    static let contentCacheLimit = 16 * 1024

    init(path: String) throws(StaticFilesError) {
        let fd = Glibc.open(path, 0o10000000 /* O_PATH */ | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw StaticFilesError(path: path, errno: errno) }
        self.fd = fd
        self.path = path
    }

    deinit { _ = Glibc.close(fd) }

    /// The cached open file for `path`, if still valid.
    func cached(_ path: String, now: UInt64) -> CachedStaticFile? {
        cache.withLock { c in
            guard let e = c[path], now < e.validUntil else { return nil }
            return e
        }
    }

    /// Remembers `file` for `path` (an entry it replaces closes its descriptor once its last response
    /// is sent). At the size limit the expired entries go first, else all.
    func store(_ path: String, _ file: CachedStaticFile, now: UInt64) {
        cache.withLock { c in
            if c.count >= Self.cacheEntries && c[path] == nil {
                c = c.filter { now < $0.value.validUntil }
                if c.count >= Self.cacheEntries { c.removeAll() }
            }
            c[path] = file
        }
    }
}

/// An open static file with what its responses need, shared by the responses that send it.
///
/// Owns `fd`: it is closed when the last reference goes (the cache's, or that of the last response
/// still sending it). That close(2) of a read-only regular file runs on the thread dropping the
/// reference, a loop thread; it never waits for I/O.
final class CachedStaticFile: Sendable {
    let fd: Int32
    let size: Int
    let validators: StaticValidators
    let contentType: String
    let validUntil: UInt64
    /// The file's bytes, for files up to `contentCacheLimit` (read when the entry was made).
    let contents: [UInt8]?

    init(fd: Int32, status: FileStatus, name: String, validUntil: UInt64, contents: [UInt8]? = nil) {
        self.fd = fd
        size = status.size
        validators = StaticValidators(status)
        contentType = HTTPStaticPath.contentType(for: name)
        self.validUntil = validUntil
        self.contents = contents
    }

    deinit { _ = Glibc.close(fd) }
}

/// A static-file root that could not be opened.
public struct StaticFilesError: Error, CustomStringConvertible {
    public let path: String
    public let errno: Int32
    public var description: String { "cannot serve files from '\(path)': \(Errno(rawValue: errno))" }
}

extension HTTPRouter {
    /// Serves the files under directory `root` at `prefix` (e.g. `router.files("/static", root: "/srv/www")`
    /// answers `GET /static/css/site.css` with `/srv/www/css/site.css`), GET and HEAD.
    ///
    /// Files are opened, inspected and read by the loop's file operations (io_uring ring operations,
    /// or epoll's helper threads): nothing blocks the loop. Responses carry `Content-Type` (by
    /// extension), `Last-Modified`, a strong `ETag` (inode, size, modification time) and
    /// `Accept-Ranges: bytes`; `If-None-Match` / `If-Modified-Since` answer 304; one `Range` answers
    /// 206 or 416 (`If-Range` honoured; several ranges get the whole file, 200). A directory answers
    /// its `index.html` (a path without the trailing slash is redirected, 301), else 403: no listings.
    ///
    /// Refused and never opened (404): a path with `.` or `..` segments, empty segments, hidden names
    /// (starting with `.`), NUL or backslash bytes, invalid percent-escapes or invalid UTF-8, once
    /// decoded (so `%2e%2e` and `%2f` are refused like their plain forms). What is opened goes through
    /// `RESOLVE_BENEATH`: a symbolic link pointing outside the root answers 403. Anything but a regular
    /// file (a FIFO, a device) answers 403.
    /// - Throws: ``StaticFilesError`` when `root` cannot be opened as a directory.
    public mutating func files(_ prefix: String, root: String) throws(StaticFilesError) {
        precondition(prefix.hasPrefix("/") && !prefix.hasSuffix("/"), "static prefix \"\(prefix)\" must start and not end with /")
        let dir = try StaticFileRoot(path: root)
        add("GET", prefix + "/**", .staticFiles(dir))
        add("HEAD", prefix + "/**", .staticFiles(dir))
        add("GET", prefix, .staticFiles(dir))
        add("HEAD", prefix, .staticFiles(dir))
    }
}

/// The request path of a static file, checked and decoded.
public enum HTTPStaticPath {
    /// The relative path to open for the raw (percent-encoded) part of a request path after the static
    /// prefix, or nil when it must be refused (see ``HTTPRouter/files(_:root:)`` for the rules). The
    /// result has no leading slash, no empty, `.` or `..` segments; "" is the root; a trailing slash is
    /// kept (a directory was asked for).
    public static func normalize(_ raw: UnsafeRawBufferPointer) -> String? {
        guard raw.count <= 4096 else { return nil }
        var decoded: [UInt8] = []
        decoded.reserveCapacity(raw.count)
        var i = 0
        while i < raw.count {
            var b = raw[i]
            if b == UInt8(ascii: "%") {
                guard i + 2 < raw.count, let h = hexValue(raw[i + 1]), let l = hexValue(raw[i + 2]) else { return nil }
                b = h << 4 | l
                i += 3
            } else {
                i += 1
            }
            if b == 0 || b == UInt8(ascii: "\\") { return nil }
            decoded.append(b)
        }
        // Segments: none empty (a trailing slash aside), none `.`/`..` or hidden.
        var start = 0
        for k in 0...decoded.count {
            guard k == decoded.count || decoded[k] == UInt8(ascii: "/") else { continue }
            let length = k - start
            if length == 0 {
                if !(k == decoded.count && k > 0) && !(decoded.isEmpty) { return nil }  // "a//b", "/a"
            } else if decoded[start] == UInt8(ascii: ".") {
                return nil  // ".", "..", ".git", ".env"
            }
            start = k + 1
        }
        guard let s = String(validating: decoded, as: UTF8.self) else { return nil }
        return s
    }

    private static func hexValue(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): c - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): c - UInt8(ascii: "A") + 10
        default: nil
        }
    }

    /// The `Content-Type` for a file name, by extension (`application/octet-stream` when unknown).
    public static func contentType(for name: String) -> String {
        guard let dot = name.lastIndex(of: "."), !name[dot...].contains("/") else { return "application/octet-stream" }
        switch name[name.index(after: dot)...].lowercased() {
        case "html", "htm": return "text/html; charset=utf-8"
        case "css": return "text/css; charset=utf-8"
        case "js", "mjs": return "text/javascript; charset=utf-8"
        case "json", "map": return "application/json"
        case "txt", "text", "log": return "text/plain; charset=utf-8"
        case "md": return "text/markdown; charset=utf-8"
        case "csv": return "text/csv; charset=utf-8"
        case "xml": return "application/xml"
        case "svg": return "image/svg+xml"
        case "png": return "image/png"
        case "jpg", "jpeg": return "image/jpeg"
        case "gif": return "image/gif"
        case "webp": return "image/webp"
        case "avif": return "image/avif"
        case "ico": return "image/x-icon"
        case "wasm": return "application/wasm"
        case "pdf": return "application/pdf"
        case "zip": return "application/zip"
        case "gz": return "application/gzip"
        case "tar": return "application/x-tar"
        case "mp4": return "video/mp4"
        case "webm": return "video/webm"
        case "mp3": return "audio/mpeg"
        case "woff": return "font/woff"
        case "woff2": return "font/woff2"
        case "ttf": return "font/ttf"
        case "otf": return "font/otf"
        default: return "application/octet-stream"
        }
    }
}

/// What a static response depends on, from the file's status.
struct StaticValidators: Sendable {
    let etag: String
    let lastModified: String
    let modifiedSeconds: Int64

    init(_ s: FileStatus) {
        etag = "\"\(String(s.inode, radix: 16))-\(String(s.size, radix: 16))-\(String(s.modificationSeconds, radix: 16))\(String(s.modificationNanoseconds, radix: 16))\""
        modifiedSeconds = s.modificationSeconds
        lastModified = Self.format(s.modificationSeconds)
    }

    static func format(_ seconds: Int64) -> String {
        var t = time_t(seconds)
        var tmv = tm()
        gmtime_r(&t, &tmv)
        var out = [UInt8](repeating: 0, count: 40)
        let n = out.withUnsafeMutableBufferPointer { p in
            p.baseAddress!.withMemoryRebound(to: CChar.self, capacity: 40) { strftime($0, 40, "%a, %d %b %Y %H:%M:%S GMT", &tmv) }
        }
        return String(decoding: out[0..<n], as: UTF8.self)
    }

    /// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) as seconds since the epoch; nil if malformed.
    static func parse(_ s: String) -> Int64? {
        let b = Array(s.utf8)
        guard b.count == 29, b[3] == UInt8(ascii: ","), b[4] == 32, b[7] == 32, b[11] == 32, b[16] == 32,
              b[19] == UInt8(ascii: ":"), b[22] == UInt8(ascii: ":"), b[25] == 32,
              String(decoding: b[26...], as: UTF8.self) == "GMT" else { return nil }
        func num(_ r: Range<Int>) -> Int32? {
            var v: Int32 = 0
            for k in r { guard b[k] >= 48 && b[k] <= 57 else { return nil }; v = v * 10 + Int32(b[k] - 48) }
            return v
        }
        let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
        guard let day = num(5..<7), let year = num(12..<16), let h = num(17..<19), let m = num(20..<22),
              let sec = num(23..<25), let month = months.firstIndex(of: String(decoding: b[8..<11], as: UTF8.self)),
              day >= 1, day <= 31, h < 24, m < 60, sec < 61 else { return nil }
        var tmv = tm()
        tmv.tm_year = year - 1900; tmv.tm_mon = Int32(month); tmv.tm_mday = day
        tmv.tm_hour = h; tmv.tm_min = m; tmv.tm_sec = sec
        return Int64(timegm(&tmv))
    }

    /// `If-None-Match`: whether one of the listed tags (weak comparison) or `*` matches.
    func noneMatchHits(_ header: String) -> Bool {
        for item in header.split(separator: ",") {
            var tag = item.trimmingSpaces
            if tag == "*" { return true }
            if tag.hasPrefix("W/") { tag = String(tag.dropFirst(2)) }
            if tag == etag { return true }
        }
        return false
    }
}

/// The byte range a `Range` header asks of a file of `size` bytes.
enum StaticRange: Equatable {
    /// No usable range (absent, malformed, several ranges): the whole file, 200.
    case whole
    /// Bytes `start..<end`, 206.
    case part(Int, Int)
    /// Outside the file, 416.
    case unsatisfiable

    init(_ header: String?, size: Int) {
        guard let h = header?.trimmingSpaces, h.hasPrefix("bytes=") else { self = .whole; return }
        let spec = h.dropFirst(6)
        guard !spec.contains(","), let dash = spec.firstIndex(of: "-") else { self = .whole; return }
        let first = spec[..<dash].trimmingSpaces, last = spec[spec.index(after: dash)...].trimmingSpaces
        func number(_ s: String) -> Int? { s.allSatisfy(\.isASCIIDigit) && !s.isEmpty && s.count < 19 ? Int(s) : nil }
        if first.isEmpty {
            guard let n = number(last) else { self = .whole; return }
            self = n == 0 || size == 0 ? .unsatisfiable : .part(max(0, size - n), size)
            return
        }
        guard let a = number(first) else { self = .whole; return }
        if last.isEmpty { self = a < size ? .part(a, size) : .unsatisfiable; return }
        guard let b = number(last), b >= a else { self = .whole; return }
        self = a < size ? .part(a, min(b + 1, size)) : .unsatisfiable
    }
}

extension Character {
    fileprivate var isASCIIDigit: Bool { isASCII && isNumber }
}

extension StringProtocol {
    fileprivate var trimmingSpaces: String {
        var s = Substring(self)
        while s.first == " " || s.first == "\t" { s = s.dropFirst() }
        while s.last == " " || s.last == "\t" { s = s.dropLast() }
        return String(s)
    }
}

// MARK: serving

extension HTTPConnection {
    /// Answers the current request from static root `root`: opens, inspects and reads the file through
    /// the loop's file operations, then sends (parsing waits meanwhile: `deferred`).
    func serveStatic(_ root: StaticFileRoot, _ connection: Connection) {
        // The part after the prefix: the `**` capture, or nothing (the prefix itself).
        let raw: UnsafeRawBufferPointer = head.capture("**")?.buffer ?? UnsafeRawBufferPointer(start: nil, count: 0)
        let prefixOnly = head.capture("**") == nil
        guard let relative = HTTPStaticPath.normalize(raw) else {
            return answerStatic(404, "not found", connection)
        }
        if prefixOnly {  // "/static": the directory, asked without its slash
            return redirectStatic(connection)
        }
        if let hit = root.cached(relative, now: staticClock()) {
            return sendStatic(hit, connection)
        }
        deferred = true
        openStatic(root, relative.isEmpty ? "." : relative, relative, index: false, connection)
    }

    private func staticClock() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC_COARSE, &ts)
        return UInt64(ts.tv_sec) * 1000 + UInt64(ts.tv_nsec) / 1_000_000
    }

    private func openStatic(_ root: StaticFileRoot, _ path: String, _ relative: String, index: Bool, _ connection: Connection) {
        let files = connection.files
        files.open(path, in: root.fd, flags: O_RDONLY | O_NONBLOCK | O_NOCTTY, beneath: true) { r in
            guard self.deferred, !self.closing, let connection = self.connection else {
                if case .success(let fd) = r { files.close(fd) }
                return
            }
            switch r {
            case .failure(let e):
                switch e.errno {
                case ENOENT, ENOTDIR, ENAMETOOLONG:
                    if index { self.answerStatic(403, "directory listing refused", connection) }
                    else { self.answerStatic(404, "not found", connection) }
                case EXDEV, ELOOP, EACCES, EPERM: self.answerStatic(403, "forbidden", connection)
                case EMFILE, ENFILE, EBUSY, EAGAIN: self.answerStatic(503, "busy: \(e)", connection)
                default: self.answerStatic(500, "cannot open the file: \(e)", connection)
                }
            case .success(let fd):
                files.stat(fd) { st in
                    guard self.deferred, !self.closing, let connection = self.connection else { files.close(fd); return }
                    switch st {
                    case .failure(let e):
                        files.close(fd)
                        self.answerStatic(500, "cannot inspect the file: \(e)", connection)
                    case .success(let status) where status.isDirectory && !index:
                        files.close(fd)
                        if !relative.isEmpty && !relative.hasSuffix("/") { return self.redirectStatic(connection) }
                        self.openStatic(root, relative + "index.html", relative, index: true, connection)
                    case .success(let status) where status.isRegularFile:
                        if status.size > 0 && status.size <= StaticFileRoot.contentCacheLimit {
                            return self.readSmallStatic(root, fd, status, path, relative, connection)
                        }
                        let now = self.staticClock()
                        let file = CachedStaticFile(fd: fd, status: status, name: path, validUntil: now + StaticFileRoot.cacheValidity)
                        root.store(relative, file, now: now)
                        self.sendStatic(file, connection)
                    case .success:
                        files.close(fd)
                        self.answerStatic(403, "not a regular file", connection)
                    }
                }
            }
        }
    }

    /// Reads a small file whole (one file operation) and caches it with its bytes; a short read (the
    /// file changed under us) caches it without them, so it is sent from the descriptor as usual.
    private func readSmallStatic(_ root: StaticFileRoot, _ fd: Int32, _ status: FileStatus, _ path: String,
                                 _ relative: String, _ connection: Connection) {
        let files = connection.files
        // Invariant: `buffer` lives until the read's completion (which always runs, ECANCELED at a stop).
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: status.size, alignment: 16)
        files.read(fd, into: buffer, at: 0) { r in
            defer { buffer.deallocate() }
            guard self.deferred, !self.closing, let connection = self.connection else { files.close(fd); return }
            switch r {
            case .failure(let e):
                files.close(fd)
                self.answerStatic(500, "cannot read the file: \(e)", connection)
            case .success(let n):
                let now = self.staticClock()
                let contents = n == status.size ? [UInt8](UnsafeRawBufferPointer(buffer)) : nil
                let file = CachedStaticFile(fd: fd, status: status, name: path,
                                            validUntil: now + StaticFileRoot.cacheValidity, contents: contents)
                root.store(relative, file, now: now)
                self.sendStatic(file, connection)
            }
        }
    }

    /// Sends `file` (200, 206, 304 or 416 by the request's validators and range). The response holds
    /// the file until it is sent (`heldFiles`).
    private func sendStatic(_ file: CachedStaticFile, _ connection: Connection) {
        let v = file.validators
        func header(_ n: StaticString) -> String? { head.value(forName: n).map { String(decoding: $0.buffer, as: UTF8.self) } }
        var res = HTTPResponse(headers: userHeaders, body: responseBody)
        res.setHeader("ETag", v.etag)
        res.setHeader("Last-Modified", v.lastModified)
        var notModified = false
        if let inm = header("If-None-Match") {
            notModified = v.noneMatchHits(inm)
        } else if let ims = header("If-Modified-Since").flatMap(StaticValidators.parse) {
            notModified = v.modifiedSeconds <= ims
        }
        if notModified {
            res.status = 304
            return finishStatic(&res, connection)
        }
        res.setHeader("Accept-Ranges", "bytes")
        var range = isHead ? StaticRange.whole : StaticRange(header("Range"), size: file.size)
        if range != .whole, let ifRange = header("If-Range")?.trimmingSpaces,
           ifRange.hasPrefix("W/") || (ifRange != v.etag && ifRange != v.lastModified) {
            range = .whole  // the client's copy is not this one: the whole file
        }
        switch range {
        case .unsatisfiable:
            res.status = 416
            res.setHeader("Content-Range", "bytes */\(file.size)")
            return finishStatic(&res, connection)
        case .part(let a, let b):
            res.status = 206
            res.setHeader("Content-Range", "bytes \(a)-\(b - 1)/\(file.size)")
            if let bytes = file.contents {
                bytes.withUnsafeBytes { res.write(UnsafeRawBufferPointer(rebasing: $0[a..<b])) }
            } else {
                res.bodyFile = (file.fd, b - a)
                res.bodyFileOffset = a
            }
        case .whole:
            if let bytes = file.contents { res.write(bytes) } else { res.bodyFile = (file.fd, file.size) }
        }
        res.setHeader("Content-Type", file.contentType)
        if file.contents != nil {
            res.compressible = false  // the bytes of the file the ETag names
        } else {
            heldFiles.append(file)  // `closeFile` lets go of it instead of closing the descriptor
        }
        finishStatic(&res, connection)
    }

    private func redirectStatic(_ connection: Connection) {
        var res = HTTPResponse(headers: userHeaders, body: responseBody)
        res.status = 301
        let path = String(decoding: pathPart(head.slice(head.target).buffer), as: UTF8.self)
        res.setHeader("Location", path + "/")
        finishStatic(&res, connection)
    }

    private func answerStatic(_ status: Int, _ text: String, _ connection: Connection) {
        var res = HTTPResponse(headers: userHeaders, body: responseBody)
        res.status = status
        res.setHeader("Content-Type", "text/plain")
        res.write(text)
        res.write("\n")
        finishStatic(&res, connection)
    }

    /// Sends a static response (or queues it behind earlier async answers) and goes on with the input.
    private func finishStatic(_ res: inout HTTPResponse, _ connection: Connection) {
        deferred = false
        if pending.isEmpty {
            send(&res, meta, connection)
        } else {
            enqueueReady(res, meta)
            if !keepAlive { stopParsing = true }
        }
        resumeAfterDeferred(connection)
    }
}
