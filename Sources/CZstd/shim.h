// Thin C face of Debian's libzstd (libzstd-dev): the streaming API (ZSTD_CStream / ZSTD_DStream,
// ZSTD_compressStream2, ZSTD_decompressStream) is imported as it is.
#ifndef RINGSIDE_CZSTD_SHIM_H
#define RINGSIDE_CZSTD_SHIM_H
#include <zstd.h>
#include <zstd_errors.h>
#endif
