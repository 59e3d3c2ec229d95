import Glibc
import Ringside

extension HTTPServerConfiguration {
    /// Checks every field (call it before building handlers; `ringside serve` does).
    /// - Throws: `ConfigurationError` naming the first field found out of range; `spoolDirectory` must
    ///   be an existing directory this process may create files in.
    public func validate() throws(ConfigurationError) {
        func check(_ ok: Bool, _ field: String, _ problem: @autoclosure () -> String) throws(ConfigurationError) {
            if !ok { throw ConfigurationError(field: field, problem: problem()) }
        }
        try check(limits.maxRequestLine >= 16, "limits.maxRequestLine", "\(limits.maxRequestLine) must be at least 16")
        try check(limits.maxHeaderBytes >= limits.maxRequestLine, "limits.maxHeaderBytes",
                  "\(limits.maxHeaderBytes) must be at least limits.maxRequestLine (\(limits.maxRequestLine))")
        try check(limits.maxHeaderCount >= 1, "limits.maxHeaderCount", "\(limits.maxHeaderCount) must be at least 1")
        try check(limits.maxBodyBytes >= 0, "limits.maxBodyBytes", "\(limits.maxBodyBytes) is negative")
        try check(limits.maxChunkLine >= 1, "limits.maxChunkLine", "\(limits.maxChunkLine) must be at least 1")
        try check(spoolThreshold >= 0, "spoolThreshold", "\(spoolThreshold) is negative")
        try check(asyncBodyLimit >= 0, "asyncBodyLimit", "\(asyncBodyLimit) is negative")
        try check(maxPipelinedRequests >= 1, "maxPipelinedRequests", "\(maxPipelinedRequests) must be at least 1")
        try check(streamedBodyBuffer >= 1, "streamedBodyBuffer", "\(streamedBodyBuffer) must be at least 1")
        try check(headerTimeout > .zero, "headerTimeout", "\(headerTimeout) must be positive")
        try check(headerTimeout <= ServerConfiguration.maximumDuration, "headerTimeout",
                  "\(headerTimeout) is longer than 100 years")
        var st = stat()
        guard stat(spoolDirectory, &st) == 0 else {
            throw ConfigurationError(field: "spoolDirectory", problem: "'\(spoolDirectory)': \(Errno.current)")
        }
        try check(st.st_mode & S_IFMT == S_IFDIR, "spoolDirectory", "'\(spoolDirectory)' is not a directory")
        try check(access(spoolDirectory, W_OK | X_OK) == 0, "spoolDirectory",
                  "'\(spoolDirectory)': cannot create files there (\(Errno.current))")
    }
}
