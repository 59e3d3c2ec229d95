import RingsideHTTP

/// One parser event, with the bytes copied out (views are valid only during the sink call).
/// Consecutive body events are merged: piece boundaries may split a body differently.
enum Event: Equatable {
    case head(Head)
    case body([UInt8])
    case end(trailers: [Field]?)
}

struct Field: Equatable {
    var name: [UInt8]
    var value: [UInt8]
}

struct Head: Equatable {
    var method: [UInt8]
    var target: [UInt8]
    var version: HTTPVersion
    var keepAlive: Bool
    var contentLength: Int?
    var isChunked: Bool
    var expectsContinue: Bool
    var fields: [Field]
}

func bytes(_ b: HTTPBytes) -> [UInt8] { Array(b.buffer) }

func fields(of view: HTTPRequestHead) -> [Field] {
    (0..<view.headerCount).map { Field(name: bytes(view.name(at: $0)), value: bytes(view.value(at: $0))) }
}

/// Records every event.
struct Recorder: HTTPParserSink {
    var events: [Event] = []

    mutating func requestHead(_ head: HTTPRequestHead) {
        events.append(.head(Head(
            method: bytes(head.method), target: bytes(head.target), version: head.version,
            keepAlive: head.keepAlive, contentLength: head.contentLength, isChunked: head.isChunked,
            expectsContinue: head.expectsContinue, fields: fields(of: head))))
    }

    mutating func requestBody(_ bytes: UnsafeRawBufferPointer) {
        if bytes.isEmpty { propertyFailedHTTP("empty requestBody event") }
        if case .body(let sofar) = events.last {
            events[events.count - 1] = .body(sofar + Array(bytes))
        } else {
            events.append(.body(Array(bytes)))
        }
    }

    mutating func requestEnd(trailers: HTTPRequestHead?) {
        guard let trailers else { return events.append(.end(trailers: nil)) }
        if !trailers.method.buffer.isEmpty || !trailers.target.buffer.isEmpty {
            propertyFailedHTTP("trailer view with a method or target")
        }
        if trailers.contentLength != nil || trailers.isChunked || trailers.expectsContinue {
            propertyFailedHTTP("trailer view with framing flags")
        }
        events.append(.end(trailers: fields(of: trailers)))
    }
}

/// What a whole parse produced.
struct Outcome: Equatable {
    var events: [Event]
    var error: HTTPParseError?
}
