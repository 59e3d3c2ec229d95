import Logging

/// What every connection of a PROXY-protocol listener shares: the trusted proxies, the header deadline,
/// the logger. Created once per server; each handler keeps a reference (one retain per connection).
@usableFromInline final class ProxyProtocolPolicy: Sendable {
    let trusted: [AddressRange]
    let headerTimeout: Duration
    let maximumHeaderLength: Int
    let logger: Logger

    init(_ c: ProxyProtocolConfiguration, logger: Logger) {
        trusted = c.trustedProxies
        headerTimeout = c.headerTimeout
        maximumHeaderLength = c.maximumHeaderLength
        self.logger = logger
    }

    func trusts(_ ip: IPAddress) -> Bool { trusted.contains { $0.contains(ip) } }

    /// A warning for a refused connection: the first 10 of a kind per loop, then every 1000th (the
    /// counter is in `ServerStats` either way), so a flood cannot flood the log.
    func warn(_ what: @autoclosure () -> String, peer: PeerAddress, count: Int) {
        guard count <= 10 || count % 1000 == 0 else { return }
        logger.warning("PROXY protocol: closing the connection from \(peer): \(what()) (count \(count) on this loop)")
    }
}

/// The PROXY protocol in front of a handler: a pre-handler phase that consumes the header (trusted
/// proxies), or watches for a header where none is allowed (everyone else), before the wrapped handler
/// is opened with the client's address as ``Connection/peerAddress`` and, only then, counted against
/// ``ServerConfiguration/maxConnectionsPerAddress``. After that every call is passed through.
///
/// Uses the connection's timer for the header deadline while the wrapped handler is not open yet (so
/// it never competes with the handler's own timer).
@usableFromInline struct ProxyProtocolHandler<H: ConnectionHandler>: ConnectionHandler {
    @usableFromInline static var requiresAuthentication: Bool { H.requiresAuthentication }

    private enum Stage: UInt8 {
        /// A trusted proxy: waiting for the header; the wrapped handler is not open.
        case awaitingHeader
        /// An untrusted peer: open, but its first bytes are checked for a header signature.
        case watching
        /// Open: everything passes through.
        case open
        /// Refused: waiting for the close; nothing reaches the wrapped handler.
        case refused
    }

    private var inner: H
    private let policy: ProxyProtocolPolicy
    private var stage: Stage = .open
    private var innerOpened = false
    /// Bytes of an untrusted peer's first bytes checked so far (.watching).
    private var watched: UInt8 = 0
    private var watchBuffer: (UInt64, UInt64) = (0, 0)
    private var parser: ProxyHeaderParser

    @usableFromInline init(_ inner: H, policy: ProxyProtocolPolicy) {
        self.inner = inner
        self.policy = policy
        parser = ProxyHeaderParser(maximumLength: policy.maximumHeaderLength)
    }

    @usableFromInline mutating func opened(on connection: Connection) {
        // Outbound connections, or a peer address the backend did not get: nothing to check.
        guard let peer = connection.peerAddress else { openInner(connection); return }
        if policy.trusts(peer.ip) {
            stage = .awaitingHeader
            connection.setTimer(after: policy.headerTimeout)
        } else {
            stage = .watching
            guard admit(peer, connection) else { stage = .refused; return }
            openInner(connection)
        }
    }

    @usableFromInline @inline(__always) mutating func received(_ bytes: ReceivedBytes, on connection: Connection) {
        switch stage {
        case .open: inner.received(bytes, on: connection)
        case .awaitingHeader: header(bytes, connection)
        case .watching: watch(bytes, connection)
        case .refused: break
        }
    }

    @usableFromInline mutating func inputClosed(on connection: Connection) {
        switch stage {
        case .awaitingHeader:
            refuse(connection, \.proxyHeadersRejected, "the input ended before the header was complete")
        case .open, .watching: inner.inputClosed(on: connection)
        case .refused: break
        }
    }

    @usableFromInline mutating func writable(on connection: Connection) { if innerOpened { inner.writable(on: connection) } }

    @usableFromInline mutating func timerFired(on connection: Connection) {
        if stage == .awaitingHeader {
            let timeout = policy.headerTimeout
            refuse(connection, \.proxyHeaderTimeouts, "no complete header within \(timeout.compactDescription)")
        } else if innerOpened {
            inner.timerFired(on: connection)
        }
    }

    /// The wrapped handler learns of the close only if it was opened.
    @usableFromInline mutating func closed(reason: CloseReason) { if innerOpened { inner.closed(reason: reason) } }

    // MARK: phases

    private mutating func openInner(_ connection: Connection) {
        if stage != .watching { stage = .open }
        innerOpened = true
        inner.opened(on: connection)
    }

    /// Counts the (now known) client address against the per-address cap; refuses the connection when
    /// it is over (counted in `connectionsRefusedPerAddress`).
    private func admit(_ peer: PeerAddress, _ connection: Connection) -> Bool {
        let core = connection.core
        guard let key = core.admitAddressKey((peer.ip.high, peer.ip.low)) else {
            connection.abort()
            return false
        }
        core.noteAddress(connection.slot, key)
        return true
    }

    private mutating func header(_ bytes: ReceivedBytes, _ connection: Connection) {
        let progress: ProxyHeaderParser.Progress
        do { progress = try parser.parse(bytes.bytes) } catch {
            refuse(connection, \.proxyHeadersRejected, "\(error)")
            return
        }
        guard case .complete(let header, let consumed) = progress else { return }
        connection.cancelTimer()
        connection.core.counters.proxyHeadersAccepted += 1
        if case .proxied(let source, _) = header { connection.core.setPeer(connection.slot, source) }
        guard admit(connection.peerAddress!, connection) else { stage = .refused; return }
        openInner(connection)
        if consumed < bytes.count && connection.isOpen {
            let rest = UnsafeRawBufferPointer(rebasing: bytes.bytes[consumed...])
            inner.received(ReceivedBytes(bytes: rest, chunk: bytes.chunk, offset: bytes.offset + Int32(consumed)), on: connection)
        }
    }

    /// An untrusted peer's first bytes go straight to the wrapped handler, unless they turn out to be a
    /// header signature (12 bytes for v2, `PROXY ` for v1): then the connection is closed.
    private mutating func watch(_ bytes: ReceivedBytes, _ connection: Connection) {
        var k = Int(watched)
        withUnsafeMutableBytes(of: &watchBuffer) { seen in
            var i = 0
            while i < bytes.count && k < 12 { seen[k] = bytes.bytes[i]; k += 1; i += 1 }
        }
        watched = UInt8(k)
        let (possible, complete) = withUnsafeBytes(of: watchBuffer) { seen in
            let possible = ProxyHeaderParser.couldBeHeader(UnsafeRawBufferPointer(rebasing: seen[0 ..< k]))
            // A signature is complete at 6 bytes for v1 ("PROXY "), at 12 for v2.
            return (possible, possible && (k >= 12 || (k >= 6 && seen[0] == 0x50)))
        }
        if complete {
            stage = .refused
            let core = connection.core
            core.counters.proxyHeadersUntrusted += 1
            policy.warn("a PROXY header from an address that is not a trusted proxy", peer: connection.peerAddress!,
                        count: core.counters.proxyHeadersUntrusted)
            connection.abort()
            return
        }
        if !possible { stage = .open }
        inner.received(bytes, on: connection)
    }

    private mutating func refuse(_ connection: Connection, _ counter: WritableKeyPath<ServerStats, Int>, _ why: @autoclosure () -> String) {
        stage = .refused
        connection.cancelTimer()
        connection.core.counters[keyPath: counter] += 1
        let count = connection.core.counters[keyPath: counter]
        if let peer = connection.peerAddress { policy.warn(why(), peer: peer, count: count) }
        connection.abort()
    }
}
