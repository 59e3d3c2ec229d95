import Synchronization

/// Failure counters of an HTTP server, shared by every connection of the handlers built from one
/// ``HTTPServerConfiguration`` (copies of a configuration share the same counters). Each counted event
/// also reached the client (an error status or a closed connection); the counters make them visible.
public final class HTTPServerStats: Sendable {
    private let spool = Atomic<Int>(0)
    private let continueWrite = Atomic<Int>(0)
    private let deferred = Atomic<Int>(0)
    private let fileRead = Atomic<Int>(0)
    private let cutOff = Atomic<Int>(0)
    private let overflow = Atomic<Int>(0)
    private let compressed = Atomic<Int>(0)
    private let decodeLimit = Atomic<Int>(0)
    private let decodeFailure = Atomic<Int>(0)

    public init() {}

    /// Request bodies that could not be spooled (the temporary file could not be created or written:
    /// answered 507 for ENOSPC/EDQUOT, else 500, with `Connection: close`; the route handler was not called).
    public var spoolFailures: Int { spool.load(ordering: .relaxed) }
    /// `100 Continue` interim responses that could not be queued (the connection was closed).
    public var continueWriteFailures: Int { continueWrite.load(ordering: .relaxed) }
    /// Responses that did not fit the free send pool at once and were streamed as chunks came free.
    public var responsesDeferred: Int { deferred.load(ordering: .relaxed) }
    /// File bodies that could not be read to the end (the connection was aborted mid-response).
    public var fileReadFailures: Int { fileRead.load(ordering: .relaxed) }
    /// Responses cut off because the connection closed under them (the peer reset, or the engine closed it).
    public var responsesCutOff: Int { cutOff.load(ordering: .relaxed) }
    /// Connections aborted because pipelined input kept arriving beyond the stash limit while a response
    /// was still being sent.
    public var pipelineOverflows: Int { overflow.load(ordering: .relaxed) }

    /// Responses sent with a content coding (``HTTPCompressionConfiguration``).
    public var responsesCompressed: Int { compressed.load(ordering: .relaxed) }
    /// Request bodies refused with 413 because they decoded to more than the cap.
    public var decodedBodiesOverLimit: Int { decodeLimit.load(ordering: .relaxed) }
    /// Request bodies refused with 415 (an unsupported Content-Encoding) or 400 (corrupt, truncated).
    public var decodeFailures: Int { decodeFailure.load(ordering: .relaxed) }

    enum Event { case spool, continueWrite, deferred, fileRead, cutOff, overflow, compressed, decodeLimit, decodeFailure }

    func count(_ e: Event) {
        switch e {
        case .spool: spool.add(1, ordering: .relaxed)
        case .continueWrite: continueWrite.add(1, ordering: .relaxed)
        case .deferred: deferred.add(1, ordering: .relaxed)
        case .fileRead: fileRead.add(1, ordering: .relaxed)
        case .cutOff: cutOff.add(1, ordering: .relaxed)
        case .overflow: overflow.add(1, ordering: .relaxed)
        case .compressed: compressed.add(1, ordering: .relaxed)
        case .decodeLimit: decodeLimit.add(1, ordering: .relaxed)
        case .decodeFailure: decodeFailure.add(1, ordering: .relaxed)
        }
    }
}
