// ConnectionState.swift (a symlink to the engine's own file, compiled into this target because the
// type is internal to Ringside) names CloseReason and ServerStats, which are Ringside's public API; a
// module-wide import makes them visible to it without editing the engine file.
@_exported import Ringside
