// An HTTP/1.1 service embedding Ringside: buffered routes, a streaming upload route, a chunked
// response. Run: swift run -c release ringside-http-example --port 8080
//   curl localhost:8080/hello?name=you
//   curl --data-binary @bigfile localhost:8080/upload
import Glibc
import Ringside
import RingsideHTTP

/// Counts and checksums an upload as it arrives (nothing is buffered or spooled).
struct UploadCounter: HTTPStreamingHandler {
    var bytes = 0
    var sum: UInt64 = 0
    mutating func head(_ request: borrowing HTTPRequest) {}
    mutating func body(_ chunk: UnsafeRawBufferPointer) {
        bytes += chunk.count
        for b in chunk { sum = sum &* 31 &+ UInt64(b) }
    }
    mutating func end(_ response: inout HTTPResponse) {
        response.setHeader("Content-Type", "text/plain")
        response.chunked = true
        response.write("received \(bytes) bytes, checksum \(sum)\n")
    }
}

var router = HTTPRouter()
router.get("/plaintext") { _, res in
    res.setHeader("Content-Type", "text/plain")
    res.write("Hello, World!")
}
router.get("/hello") { req, res in
    // The query is the part of the target after "?".
    let target = req.target.string
    let name = target.split(separator: "=", maxSplits: 1).dropFirst().first.map(String.init) ?? "world"
    res.setHeader("Content-Type", "text/plain")
    res.write("hello, \(name)\n")
}
router.stream("POST", "/upload") { UploadCounter() }

var port = 8080
if let i = CommandLine.arguments.firstIndex(of: "--port"), i + 1 < CommandLine.arguments.count {
    port = Int(CommandLine.arguments[i + 1]) ?? port
}
signal(SIGPIPE, SIG_IGN)
var blocked = sigset_t()
sigemptyset(&blocked)
sigaddset(&blocked, SIGINT)
sigaddset(&blocked, SIGTERM)
pthread_sigmask(SIG_BLOCK, &blocked, nil)

let server = try RingsideServer.start(configuration: ServerConfiguration(host: "127.0.0.1", port: port, backend: .auto),
                                      handler: HTTPServer.handler(router: router))
print("listening on 127.0.0.1:\(server.port) backend=\(server.backend)")
fflush(nil)
var sig: Int32 = 0
sigwait(&blocked, &sig)
try server.shutdown()
