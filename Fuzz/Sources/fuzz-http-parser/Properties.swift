import FuzzSupport
import RingsideHTTP

func propertyFailedHTTP(_ message: String, file: StaticString = #file, line: UInt = #line) -> Never {
    propertyFailed(message, file: file, line: line)
}

/// Statuses `HTTPParseError` documents.
let allowedStatuses: Set<Int> = [400, 413, 414, 431, 501, 505]

func isTChar(_ b: UInt8) -> Bool {
    switch b {
    case 0x30...0x39, 0x41...0x5A, 0x61...0x7A: true
    default: Array("!#$%&'*+-.^_`|~".utf8).contains(b)
    }
}

func isFieldVChar(_ b: UInt8) -> Bool { (b > 0x20 && b < 0x7F) || b >= 0x80 }

func lowered(_ b: [UInt8]) -> [UInt8] { b.map { $0 >= 0x41 && $0 <= 0x5A ? $0 | 0x20 : $0 } }

/// A field section (head or trailers) is well formed and within the limits.
func checkFields(_ fields: [Field], _ limits: HTTPLimits, what: String) {
    if fields.count > limits.maxHeaderCount {
        propertyFailedHTTP("\(what): \(fields.count) fields > maxHeaderCount \(limits.maxHeaderCount)")
    }
    for f in fields {
        if f.name.isEmpty || !f.name.allSatisfy(isTChar) { propertyFailedHTTP("\(what): bad name \(hex(f.name))") }
        if !f.value.allSatisfy({ isFieldVChar($0) || $0 == 0x20 || $0 == 0x09 }) {
            propertyFailedHTTP("\(what): bad value \(hex(f.value))")
        }
        if let first = f.value.first, let last = f.value.last,
           !isFieldVChar(first) || !isFieldVChar(last) {
            propertyFailedHTTP("\(what): value not OWS-trimmed \(hex(f.value))")
        }
    }
    // Lower bound of the section's size (values are trimmed, so the real one is at least this).
    let size = fields.reduce(2) { $0 + $1.name.count + 1 + $1.value.count + 2 }
    if size > limits.maxHeaderBytes { propertyFailedHTTP("\(what): \(size) bytes > maxHeaderBytes") }
}

/// A head handed to the sink is valid and within the limits.
func checkHead(_ h: Head, _ limits: HTTPLimits) {
    if h.method.isEmpty || !h.method.allSatisfy(isTChar) { propertyFailedHTTP("bad method \(hex(h.method))") }
    if h.target.isEmpty || !h.target.allSatisfy({ $0 > 0x20 && $0 != 0x7F }) {
        propertyFailedHTTP("bad target \(hex(h.target))")
    }
    let line = h.method.count + 1 + h.target.count + 1 + 8
    if line > limits.maxRequestLine { propertyFailedHTTP("request line \(line) > maxRequestLine") }
    checkFields(h.fields, limits, what: "head")
    let headSize = line + 2 + h.fields.reduce(2) { $0 + $1.name.count + 1 + $1.value.count + 2 }
    if headSize > limits.maxHeaderBytes { propertyFailedHTTP("head \(headSize) bytes > maxHeaderBytes") }
    let hosts = h.fields.filter { lowered($0.name) == Array("host".utf8) }.count
    if hosts > 1 || (hosts == 0 && h.version == .http11) { propertyFailedHTTP("\(hosts) Host fields accepted") }
    if h.isChunked && h.contentLength != nil { propertyFailedHTTP("both chunked and Content-Length") }
    if h.isChunked && h.version == .http10 { propertyFailedHTTP("chunked HTTP/1.0 accepted") }
    if let cl = h.contentLength, cl < 0 || cl > limits.maxBodyBytes {
        propertyFailedHTTP("Content-Length \(cl) outside 0...maxBodyBytes")
    }
    if h.expectsContinue && h.version != .http11 { propertyFailedHTTP("expectsContinue on HTTP/1.0") }
}

/// The event stream is `(head body* end)*` then at most one incomplete request, and each request's
/// body agrees with its framing and the limits.
func checkEvents(_ events: [Event], _ limits: HTTPLimits, complete error: HTTPParseError?) {
    var current: Head?
    var bodyBytes = 0
    for e in events {
        switch e {
        case .head(let h):
            if current != nil { propertyFailedHTTP("head inside a request") }
            checkHead(h, limits)
            current = h
            bodyBytes = 0
        case .body(let b):
            guard let h = current else { propertyFailedHTTP("body outside a request") }
            bodyBytes += b.count
            if !h.isChunked && bodyBytes > (h.contentLength ?? 0) { propertyFailedHTTP("body beyond Content-Length") }
            if bodyBytes > limits.maxBodyBytes { propertyFailedHTTP("body beyond maxBodyBytes") }
        case .end(let trailers):
            guard let h = current else { propertyFailedHTTP("end outside a request") }
            if !h.isChunked && bodyBytes != (h.contentLength ?? 0) { propertyFailedHTTP("short fixed body") }
            if let trailers {
                if !h.isChunked { propertyFailedHTTP("trailers without chunked") }
                if trailers.isEmpty { propertyFailedHTTP("empty trailers not nil") }
                checkFields(trailers, limits, what: "trailers")
            }
            current = nil
        }
    }
    if let error, !allowedStatuses.contains(error.status) {
        propertyFailedHTTP("rejection with status \(error.status) (\(error.reason))")
    }
}
