import HTTPTypes
import Ringside

// swift-http-types (`HTTPTypes`) as the HTTP layer's currency: conversions between the ecosystem's
// `HTTPTypes.HTTPRequest` / `HTTPTypes.HTTPResponse` / `HTTPFields` and Ringside's own request and
// response types. The borrowed, allocation-free synchronous path keeps its views; converting is
// opt-in and costs what building the HTTPTypes values costs (measured in bench/, see README).
//
// Names: RingsideHTTP's synchronous `HTTPRequest` / `HTTPResponse` predate this file and keep their
// names; in a file that imports both modules, spell the ecosystem's as `HTTPTypes.HTTPRequest`.

extension HTTPHeaderFields {
    /// The fields of `fields`, in order (names as sent: `HTTPField.Name.rawName`).
    public init(_ fields: HTTPFields) {
        self.init()
        for field in fields {
            let name = field.name.rawName
            field.withUnsafeBytesOfValue { value in
                var n = name
                n.withUTF8 { add(UnsafeRawBufferPointer($0), UnsafeRawBufferPointer(value)) }
            }
        }
    }
}

extension HTTPFields {
    /// The fields of `fields`, in order. A field whose name is not a valid token is left out (the
    /// parser never produces one); values are taken leniently (NUL, CR, LF become spaces).
    public init(_ fields: HTTPHeaderFields) {
        self.init()
        reserveCapacity(fields.count)
        fields.forEachRaw { name, value in
            guard let n = HTTPField.Name(String(decoding: name, as: UTF8.self)) else { return }
            append(HTTPField(name: n, lenientValue: value))
        }
    }
}

extension HTTPServerRequest {
    /// The request's head as an `HTTPTypes.HTTPRequest`: method, path (the request-target as sent,
    /// with its query), `authority` from the `Host` field (which is then not among `headerFields`, as
    /// in swift-http-types' own HTTP/1 conversions), and the other header fields in order.
    ///
    /// Built on each access (a few allocations: the fields' storage and the strings that do not fit
    /// inline); keep the value if you read it more than once.
    public var httpRequest: HTTPTypes.HTTPRequest {
        var fields = HTTPFields()
        fields.reserveCapacity(headers.count)
        var authority: String? = nil
        headers.forEachRaw { name, value in
            if authority == nil && HTTPBytes(name).equalsIgnoringCase("host") {
                authority = String(decoding: value, as: UTF8.self)
                return
            }
            guard let n = HTTPField.Name(String(decoding: name, as: UTF8.self)) else { return }
            fields.append(HTTPField(name: n, lenientValue: value))
        }
        // The parser accepts only token methods, which HTTPTypes accepts too; a hand-made request with
        // an invalid method (tests) reads as GET rather than failing.
        let m = HTTPTypes.HTTPRequest.Method(method) ?? .get
        return HTTPTypes.HTTPRequest(method: m, scheme: nil, authority: authority, path: target, headerFields: fields)
    }
}

extension HTTPServerResponse {
    /// A response with the status and header fields of `response` and `body`.
    ///
    /// As for every async response, the engine frames the body itself: `Content-Length` and
    /// `Transfer-Encoding` fields in `response` are not sent.
    public init(_ response: HTTPTypes.HTTPResponse, body: [UInt8] = []) {
        self.init(status: response.status.code, headers: HTTPHeaderFields(response.headerFields), body: body)
    }

    /// The status and header fields as an `HTTPTypes.HTTPResponse` (the body is ``body``).
    public var httpResponse: HTTPTypes.HTTPResponse {
        HTTPTypes.HTTPResponse(status: .init(code: status), headerFields: HTTPFields(headers))
    }
}

extension HTTPResponseWriter {
    /// Sends the head of `response` (status and header fields); see
    /// ``writeHead(status:headers:contentLength:)``.
    public func writeHead(_ response: HTTPTypes.HTTPResponse, contentLength: Int? = nil) async throws {
        try await writeHead(status: response.status.code, headers: HTTPHeaderFields(response.headerFields),
                            contentLength: contentLength)
    }
}

extension RingsideHTTP.HTTPRequest {
    /// The borrowed request's head copied into an `HTTPTypes.HTTPRequest` (method, request-target as
    /// `path`, `authority` from `Host`, the other fields in order). This allocates (the fields'
    /// storage, and strings that do not fit inline): the synchronous path stays allocation-free only
    /// as long as it reads the borrowed views (``header(_:)``, ``headerName(at:)``) instead.
    public var httpRequest: HTTPTypes.HTTPRequest {
        var fields = HTTPFields()
        fields.reserveCapacity(headerCount)
        var authority: String? = nil
        for i in 0..<headerCount {
            let name = headerName(at: i), value = headerValue(at: i)
            if authority == nil && name.equalsIgnoringCase("host") {
                authority = value.string
                continue
            }
            guard let n = HTTPField.Name(name.string) else { continue }
            fields.append(HTTPField(name: n, lenientValue: value.buffer))
        }
        let m = HTTPTypes.HTTPRequest.Method(method.string) ?? .get
        return HTTPTypes.HTTPRequest(method: m, scheme: nil, authority: authority, path: target.string, headerFields: fields)
    }
}

extension RingsideHTTP.HTTPResponse {
    /// Sets the status of `response` and appends its header fields (in order) to the response being
    /// filled. Appending copies bytes into the connection's header buffer: no allocation once that
    /// buffer has grown to its working size (the `HTTPTypes.HTTPResponse` value itself is built by the
    /// caller; build it once, e.g. as a `static let`, to keep a route allocation-free).
    public mutating func apply(_ response: HTTPTypes.HTTPResponse) {
        status = response.status.code
        setHeaders(response.headerFields)
    }

    /// Appends `fields` (in order) as header lines. Fields that the engine writes itself
    /// (`Content-Length`, `Transfer-Encoding`) are sent as given: leave them out.
    public mutating func setHeaders(_ fields: HTTPFields) {
        for field in fields {
            var name = field.name.rawName
            name.withUTF8 { n in
                field.withUnsafeBytesOfValue { v in
                    appendHeader(UnsafeRawBufferPointer(n), UnsafeRawBufferPointer(v))
                }
            }
        }
    }
}
