import Glibc

/// A path template split into segments: `/users/{id}/files/**`.
///
/// - `{name}`: one non-empty segment, captured as parameter `name`;
/// - `*`: one non-empty segment, not captured;
/// - `**`: the rest of the path (zero or more segments), captured as parameter `**` (last segment only);
/// - anything else: a literal segment, compared byte for byte (matching runs on the raw, still
///   percent-encoded path, so `%2F` inside a parameter never splits it).
///
/// The segments are what follows the leading `/`, split on `/`: `/` is one empty segment, and a
/// trailing slash is significant (`/a/` is not `/a`).
enum RouteSegment: Equatable {
    case literal([UInt8])
    case parameter(String)
    case wildcard
    case catchAll

    static func parse(_ template: String) -> [RouteSegment] {
        precondition(template.hasPrefix("/"), "route path \"\(template)\" must start with /")
        let parts = template.utf8.dropFirst().split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false)
        var out: [RouteSegment] = []
        for (k, p) in parts.enumerated() {
            let s = String(decoding: p, as: UTF8.self)
            if s == "**" {
                precondition(k == parts.count - 1, "** must be the last segment of \"\(template)\"")
                out.append(.catchAll)
            } else if s == "*" {
                out.append(.wildcard)
            } else if s.hasPrefix("{") && s.hasSuffix("}") && s.count > 2 {
                out.append(.parameter(String(s.dropFirst().dropLast())))
            } else {
                out.append(.literal(Array(p)))
            }
        }
        return out
    }
}

/// Route matching on a trie of path segments: literal children are kept sorted and found by binary
/// search, so a lookup costs O(segments × log(siblings)) whatever the number of routes, and allocates
/// nothing (captures go to caller-provided storage).
///
/// Precedence at every level: a literal segment, then `{param}`, then `*`, then `**` (with
/// backtracking: `/users/me` beats `/users/{id}` for `me`, and `/users/{id}` still serves `/users/42`).
struct RouteTrie: Sendable {
    struct Node: Sendable {
        /// Sorted by bytes (memcmp order, shorter first on a common prefix).
        var literals: [(segment: [UInt8], node: Int32)] = []
        var parameter: Int32 = -1
        var wildcard: Int32 = -1
        var catchAll: Int32 = -1
        /// The routes ending here, by method.
        var methods: [(method: [UInt8], route: Int32)] = []
    }

    /// The largest number of captures a route may have.
    static let maxCaptures = 16

    private(set) var nodes: [Node] = [Node()]

    /// Adds `route` for `method` at `segments`. A second route for the same method and path replaces
    /// the first (the later registration wins).
    mutating func insert(method: [UInt8], segments: [RouteSegment], route: Int) {
        var n = 0
        var captures = 0
        for seg in segments {
            switch seg {
            case .literal(let bytes):
                let (found, at) = Self.search(nodes[n].literals, bytes)
                if found {
                    n = Int(nodes[n].literals[at].node)
                } else {
                    nodes.append(Node())
                    nodes[n].literals.insert((bytes, Int32(nodes.count - 1)), at: at)
                    n = nodes.count - 1
                }
            case .parameter:
                captures += 1
                n = child(n, \.parameter)
            case .wildcard:
                n = child(n, \.wildcard)
            case .catchAll:
                captures += 1
                n = child(n, \.catchAll)
            }
        }
        precondition(captures <= Self.maxCaptures, "a route may capture at most \(Self.maxCaptures) parameters")
        if let k = nodes[n].methods.firstIndex(where: { $0.method == method }) {
            nodes[n].methods[k].route = Int32(route)
        } else {
            nodes[n].methods.append((method, Int32(route)))
        }
    }

    private mutating func child(_ n: Int, _ key: WritableKeyPath<Node, Int32>) -> Int {
        if nodes[n][keyPath: key] < 0 {
            nodes.append(Node())
            nodes[n][keyPath: key] = Int32(nodes.count - 1)
        }
        return Int(nodes[n][keyPath: key])
    }

    /// Binary search of `bytes` among sorted literals: (found, index or insertion point).
    private static func search(_ literals: [(segment: [UInt8], node: Int32)], _ bytes: [UInt8]) -> (Bool, Int) {
        bytes.withUnsafeBytes { search(literals, $0) }
    }

    @inline(__always)
    private static func search(_ literals: [(segment: [UInt8], node: Int32)], _ key: UnsafeRawBufferPointer) -> (Bool, Int) {
        var lo = 0, hi = literals.count
        while lo < hi {
            let mid = (lo + hi) / 2
            let c = literals[mid].segment.withUnsafeBytes { compare($0, key) }
            if c == 0 { return (true, mid) }
            if c < 0 { lo = mid + 1 } else { hi = mid }
        }
        return (false, lo)
    }

    @inline(__always)
    private static func compare(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer) -> Int32 {
        let n = min(a.count, b.count)
        if n > 0 {
            let c = memcmp(a.baseAddress!, b.baseAddress!, n)
            if c != 0 { return c }
        }
        return a.count == b.count ? 0 : (a.count < b.count ? -1 : 1)
    }

    enum Lookup { case route(Int), methodNotAllowed, notFound }

    /// Matches `path` (raw, starting with `/`) and `method`; captures (byte ranges of `path`) are
    /// written to `captures` in template order, their number to `captureCount`. HEAD falls back to GET.
    /// A template that matches the path but not the method does not stop the search (`OPTIONS /**`
    /// still serves `OPTIONS /a` when only `GET /a` is literal); none for the method: 405.
    func match(method: UnsafeRawBufferPointer, path: UnsafeRawBufferPointer,
               captures: UnsafeMutablePointer<(Int32, Int32)>, captureCount: inout Int) -> Lookup {
        captureCount = 0
        guard path.count > 0, path[0] == UInt8(ascii: "/") else { return .notFound }
        var pathSeen = false
        if let r = walk(0, method, path, 1, captures, &captureCount, &pathSeen) { return .route(r) }
        captureCount = 0
        return pathSeen ? .methodNotAllowed : .notFound
    }

    /// The route of node `n` for `method` (HEAD: else GET); notes in `pathSeen` that a route ends here.
    @inline(__always)
    private func route(_ n: Int, _ method: UnsafeRawBufferPointer, _ pathSeen: inout Bool) -> Int? {
        let methods = nodes[n].methods
        guard !methods.isEmpty else { return nil }
        pathSeen = true
        for m in methods where m.method.count == method.count {
            if m.method.withUnsafeBytes({ Self.compare($0, method) }) == 0 { return Int(m.route) }
        }
        if method.count == 4 && memcmpBytes(method.baseAddress, "HEAD", 4) {
            for m in methods where m.method.count == 3 && m.method.withUnsafeBytes({ memcmpBytes($0.baseAddress, "GET", 3) }) {
                return Int(m.route)
            }
        }
        return nil
    }

    /// The literal child of node `n` named `segment`, if any.
    @inline(__always)
    private func literalChild(_ n: Int, _ segment: UnsafeRawBufferPointer) -> Int? {
        guard !nodes[n].literals.isEmpty else { return nil }
        let (found, at) = Self.search(nodes[n].literals, segment)
        return found ? Int(nodes[n].literals[at].node) : nil
    }

    /// The route ending a match of `path[pos...]` from node `n`, or nil. `pos` is the start of the
    /// current segment (`path.count + 1`: no segment left).
    private func walk(_ n: Int, _ method: UnsafeRawBufferPointer, _ path: UnsafeRawBufferPointer, _ pos: Int,
                      _ captures: UnsafeMutablePointer<(Int32, Int32)>, _ count: inout Int, _ pathSeen: inout Bool) -> Int? {
        // Only the node's trivial fields are kept across the recursive calls (a copy of the node would
        // retain its two arrays around each of them, per request).
        let parameter = nodes[n].parameter, wildcard = nodes[n].wildcard, catchAll = nodes[n].catchAll
        if pos > path.count {
            if let r = route(n, method, &pathSeen) { return r }
            // `**` also matches an empty rest.
            if catchAll >= 0, count < Self.maxCaptures, let r = route(Int(catchAll), method, &pathSeen) {
                captures[count] = (Int32(path.count), Int32(path.count)); count += 1
                return r
            }
            return nil
        }
        var end = pos
        while end < path.count && path[end] != UInt8(ascii: "/") { end += 1 }
        let segment = UnsafeRawBufferPointer(rebasing: path[pos..<end])
        if let child = literalChild(n, segment),
           let r = walk(child, method, path, end + 1, captures, &count, &pathSeen) { return r }
        if end > pos {
            if parameter >= 0 && count < Self.maxCaptures {
                let saved = count
                captures[count] = (Int32(pos), Int32(end)); count += 1
                if let r = walk(Int(parameter), method, path, end + 1, captures, &count, &pathSeen) { return r }
                count = saved
            }
            if wildcard >= 0, let r = walk(Int(wildcard), method, path, end + 1, captures, &count, &pathSeen) { return r }
        }
        if catchAll >= 0, count < Self.maxCaptures, let r = route(Int(catchAll), method, &pathSeen) {
            captures[count] = (Int32(pos), Int32(path.count)); count += 1
            return r
        }
        return nil
    }
}
