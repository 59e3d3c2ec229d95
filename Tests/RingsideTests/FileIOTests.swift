import Foundation
import Glibc
import Testing
@testable import Ringside
import RingsideProtocols

/// A handler that runs a file script when a client sends a command line, and answers with the outcome.
/// Commands: `roundtrip PATH`, `full` (writes to /dev/full), `fifo PATH` (reads a FIFO, stalls until
/// someone writes), `beneath DIR` (opens DIR/../x with RESOLVE_BENEATH), anything else is echoed.
struct FileScriptHandler: ConnectionHandler {
    var line: [UInt8] = []

    /// The memory a script's operations read into and write from: it must stay valid until their
    /// completions run, which can be after the connection closed (a stop cancels pending operations
    /// once the connections are gone), so every completion closure holds it and the last one frees it.
    final class Buffer {
        let p = UnsafeMutableRawBufferPointer.allocate(byteCount: 256 << 10, alignment: 64)
        deinit { p.deallocate() }
    }

    mutating func received(_ bytes: ReceivedBytes, on connection: Connection) {
        line += bytes.bytes
        guard let nl = line.firstIndex(of: 10) else { return }
        let command = String(decoding: line[..<nl], as: UTF8.self)
        line.removeAll()
        let parts = command.split(separator: " ", maxSplits: 1).map(String.init)
        let files = connection.files
        func reply(_ s: String) { try? connection.write(Array((s + "\n").utf8)) }
        let box = Buffer()
        switch parts[0] {
        case "roundtrip":
            let data = (0..<(200 << 10)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
            box.p.copyBytes(from: data)
            files.open(parts[1], flags: O_RDWR | O_CREAT | O_TRUNC, mode: 0o600) { r in
                guard case .success(let fd) = r else { reply("open failed \(r)"); return }
                files.write(fd, from: UnsafeRawBufferPointer(rebasing: box.p[..<data.count]), at: 0) { w in
                    guard case .success(let n) = w, n == data.count else { reply("write \(w)"); return }
                    files.sync(fd, dataOnly: true) { s in
                        guard case .success = s else { reply("sync \(s)"); return }
                        files.stat(fd) { st in
                            guard case .success(let status) = st, status.size == data.count, status.isRegularFile else { reply("stat \(st)"); return }
                            box.p.initializeMemory(as: UInt8.self, repeating: 0)
                            files.read(fd, into: UnsafeMutableRawBufferPointer(rebasing: box.p[..<data.count]), at: 0) { rd in
                                let same = Array(box.p[..<data.count]) == data
                                files.close(fd) { c in
                                    reply(rd == .success(data.count) && same && (try? c.get()) != nil ? "ok \(status.size)" : "read \(rd) same=\(same) close=\(c)")
                                }
                            }
                        }
                    }
                }
            }
        case "full":
            files.open("/dev/full", flags: O_WRONLY) { r in
                guard case .success(let fd) = r else { reply("open failed \(r)"); return }
                files.write(fd, from: UnsafeRawBufferPointer(rebasing: box.p[..<4096]), at: -1) { w in
                    files.close(fd) { _ in reply(w == .failure(FileError(errno: ENOSPC)) ? "ENOSPC" : "unexpected \(w)") }
                }
            }
        case "fifo":
            files.open(parts[1], flags: O_RDWR) { r in  // O_RDWR: the open does not wait for a writer
                guard case .success(let fd) = r else { reply("open failed \(r)"); return }
                files.read(fd, into: UnsafeMutableRawBufferPointer(rebasing: box.p[..<64]), at: -1) { rd in
                    switch rd {
                    case .success(let n): reply("fifo " + String(decoding: box.p[..<n], as: UTF8.self))
                    case .failure(let e): reply("fifo error \(e.errno)")
                    }
                    files.close(fd)
                }
            }
        case "beneath":
            files.open(parts[1], flags: O_RDONLY | O_DIRECTORY) { r in
                guard case .success(let dir) = r else { reply("open failed \(r)"); return }
                files.open("../etc/passwd", in: dir, beneath: true) { e in
                    files.open("inside", in: dir, beneath: true) { ok in
                        if case .success(let fd) = ok { files.close(fd) }
                        files.close(dir)
                        reply("escape=\((try? e.get()) == nil ? "refused \(e)" : "OPENED") inside=\((try? ok.get()) != nil)")
                    }
                }
            }
        default:
            reply(command)
        }
    }
}

/// Issue 12's engine file API on both backends: ring operations (io_uring) or the helper pool (epoll),
/// never a blocking file syscall on the loop.
@Suite(.serialized) struct FileIOTests {
    private func temp() -> String {
        let dir = NSTemporaryDirectory() + "ringside-files-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        mkdir(dir, 0o700)
        return dir
    }

    private func ask(_ c: TestClient, _ line: String) throws -> String {
        try c.send(Array((line + "\n").utf8))
        var out: [UInt8] = []
        while out.last != 10 { out += try c.receive(exactly: 1) }
        return String(decoding: out.dropLast(), as: UTF8.self)
    }

    @Test(arguments: allBackends) func writeSyncStatReadClose(_ backend: BackendKind) throws {
        let dir = temp()
        defer { unlink(dir + "/f"); rmdir(dir) }
        try withServer(backend, handler: { FileScriptHandler() }) { server in
            let c = try TestClient(port: server.port)
            #expect(try ask(c, "roundtrip \(dir)/f") == "ok \(200 << 10)")
            // And the bytes are on disk, as written.
            let disk = try Data(contentsOf: URL(fileURLWithPath: dir + "/f"))
            #expect(Array(disk) == (0..<(200 << 10)).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) })
        }
    }

    @Test(arguments: allBackends) func aFullDiskReachesTheCallerAsENOSPC(_ backend: BackendKind) throws {
        try withServer(backend, handler: { FileScriptHandler() }) { server in
            let c = try TestClient(port: server.port)
            #expect(try ask(c, "full") == "ENOSPC")
        }
    }

    @Test(arguments: allBackends) func beneathRefusesAnEscape(_ backend: BackendKind) throws {
        let dir = temp()
        _ = FileManager.default.createFile(atPath: dir + "/inside", contents: Data("x".utf8))
        defer { unlink(dir + "/inside"); rmdir(dir) }
        try withServer(backend, handler: { FileScriptHandler() }) { server in
            let c = try TestClient(port: server.port)
            let answer = try ask(c, "beneath \(dir)")
            #expect(answer.hasPrefix("escape=refused") && answer.contains("errno \(EXDEV)") && answer.hasSuffix("inside=true"), "\(answer)")
        }
    }

    /// A read stalled on a FIFO (nobody writes) parks only that request: the same loop keeps echoing for
    /// another client; the read completes when the FIFO gets data.
    @Test(arguments: allBackends) func aStalledFileReadDoesNotStallTheLoop(_ backend: BackendKind) throws {
        let dir = temp()
        let fifo = dir + "/fifo"
        mkfifo(fifo, 0o600)
        defer { unlink(fifo); rmdir(dir) }
        try withServer(backend, handler: { FileScriptHandler() }) { server in
            let stalled = try TestClient(port: server.port)
            try stalled.send(Array("fifo \(fifo)\n".utf8))
            usleep(100_000)
            let other = try TestClient(port: server.port)
            var worst = 0.0
            for k in 0..<200 {
                let t = Date()
                #expect(try ask(other, "hello \(k)") == "hello \(k)")
                worst = max(worst, Date().timeIntervalSince(t))
            }
            #expect(worst < 0.5, "an echo took \(worst) s while a file read was stalled")
            let w = open(fifo, O_WRONLY | O_NONBLOCK)
            #expect(w >= 0)
            _ = Glibc.write(w, "ping", 4)
            Glibc.close(w)
            var out: [UInt8] = []
            while out.last != 10 { out += try stalled.receive(exactly: 1) }
            #expect(String(decoding: out.dropLast(), as: UTF8.self) == "fifo ping")
        }
    }

    /// Stopping the server with a file read still stalled: the read completes with ECANCELED and the
    /// stop finishes (no hang, nothing leaked).
    @Test(arguments: allBackends) func aStopCancelsAStalledRead(_ backend: BackendKind) throws {
        let dir = temp()
        let fifo = dir + "/fifo"
        mkfifo(fifo, 0o600)
        defer { unlink(fifo); rmdir(dir) }
        let start = Date()
        try withServer(backend, configure: { $0.drainTimeout = .milliseconds(300) }, handler: { FileScriptHandler() }) { server in
            let stalled = try TestClient(port: server.port)
            try stalled.send(Array("fifo \(fifo)\n".utf8))
            usleep(200_000)
        }
        #expect(Date().timeIntervalSince(start) < 5)
    }
}
