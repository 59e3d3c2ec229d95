// The OpenAPI example's handlers: one implementation of the generated `APIProtocol`, served by
// Ringside (Examples/OpenAPIService/Server, through RingsideOpenAPI) and by Hummingbird
// (bench/Sources/openapi-hummingbird, through swift-openapi-hummingbird) for the side-by-side bench.
//
// Generated/ is swift-openapi-generator 1.14.3's output for ../openapi.yaml, committed so that
// builds do not need the generator. To regenerate after editing openapi.yaml (build the generator
// outside the repository, e.g. in /tmp/oagen, from apple/swift-openapi-generator 1.14.3):
//
//   swift-openapi-generator generate --mode types --mode server --access-modifier public \
//       --output-directory Examples/OpenAPIService/ItemsService/Generated Examples/OpenAPIService/openapi.yaml
import HTTPTypes
import OpenAPIRuntime
import Synchronization

/// The item store behind the example's operations (in memory; items 1...3 exist at start).
public final class ItemsHandler: APIProtocol {
    /// The largest download served (bytes); larger sizes answer 400.
    public static let maxDownload = 1 << 30

    private let store = Mutex<(items: [Int: Components.Schemas.Item], nextID: Int)>(([:], 1))

    /// A store with the three seed items: `1 apple [fruit]`, `2 avocado [fruit, green]`, `3 bread []`.
    public init() {
        store.withLock { s in
            for (name, tags) in [("apple", ["fruit"]), ("avocado", ["fruit", "green"]), ("bread", [])] {
                s.items[s.nextID] = .init(id: s.nextID, name: name, tags: tags)
                s.nextID += 1
            }
        }
    }

    /// `GET /items?prefix=&limit=`: the items whose name starts with `prefix`, in id order, at most `limit`.
    public func listItems(_ input: Operations.listItems.Input) async throws -> Operations.listItems.Output {
        var items = store.withLock { Array($0.items.values) }.sorted { $0.id < $1.id }
        if let prefix = input.query.prefix { items = items.filter { $0.name.hasPrefix(prefix) } }
        if let limit = input.query.limit { items = Array(items.prefix(max(limit, 0))) }
        return .ok(.init(body: .json(items)))
    }

    /// `POST /items`: stores a new item, answers 201 with it.
    public func createItem(_ input: Operations.createItem.Input) async throws -> Operations.createItem.Output {
        guard case .json(let new) = input.body else { return .undocumented(statusCode: 415, .init()) }
        let item = store.withLock { s in
            let item = Components.Schemas.Item(id: s.nextID, name: new.name, tags: new.tags ?? [])
            s.items[s.nextID] = item
            s.nextID += 1
            return item
        }
        return .created(.init(body: .json(item)))
    }

    /// `GET /items/{id}`: the item, or 404 with a problem body.
    public func getItem(_ input: Operations.getItem.Input) async throws -> Operations.getItem.Output {
        let id = input.path.id
        guard let item = store.withLock({ $0.items[id] }) else {
            return .notFound(.init(body: .json(.init(message: "no item \(id)"))))
        }
        return .ok(.init(body: .json(item)))
    }

    /// `GET /blob/{size}`: `size` bytes, the byte at offset i being i mod 251, produced 16 KiB at a
    /// time as the transport asks for them (nothing is built ahead of the connection's pace).
    public func download(_ input: Operations.download.Input) async throws -> Operations.download.Output {
        let size = input.path.size
        guard size >= 0, size <= Self.maxDownload else { return .undocumented(statusCode: 400, .init()) }
        return .ok(.init(body: .binary(HTTPBody(PatternBytes(size: size), length: .known(Int64(size)),
                                                iterationBehavior: .single))))
    }

    /// `POST /echo`: the request body streamed back as it arrives.
    public func echo(_ input: Operations.echo.Input) async throws -> Operations.echo.Output {
        guard case .binary(let body) = input.body else { return .undocumented(statusCode: 415, .init()) }
        return .ok(.init(body: .binary(body)))
    }
}

/// `size` bytes of the download pattern (byte i is i mod 251), in 16 KiB pieces made on demand.
public struct PatternBytes: AsyncSequence, Sendable {
    /// A piece of the pattern.
    public typealias Element = ArraySlice<UInt8>
    /// The total number of bytes.
    public let size: Int
    /// The pattern's first `size` bytes.
    public init(size: Int) { self.size = size }
    /// An iterator from offset 0.
    public func makeAsyncIterator() -> Iterator { Iterator(size: size) }

    /// Makes the next piece when asked.
    public struct Iterator: AsyncIteratorProtocol {
        let size: Int
        var offset = 0
        /// The next piece (at most 16 KiB); nil after `size` bytes.
        public mutating func next() async throws -> ArraySlice<UInt8>? {
            guard offset < size else { return nil }
            let n = Swift.min(16 * 1024, size - offset)
            let start = offset
            offset += n
            return ArraySlice((start..<start + n).map { UInt8($0 % 251) })
        }
    }

    /// The byte at `offset` (for checks).
    public static func byte(at offset: Int) -> UInt8 { UInt8(offset % 251) }
}
