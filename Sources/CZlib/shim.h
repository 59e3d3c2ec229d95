// Thin C face of Debian's zlib (zlib1g-dev). Swift imports zlib's functions directly; only the
// init macros (which pass ZLIB_VERSION and sizeof(z_stream)) need a wrapper.
#ifndef RINGSIDE_CZLIB_SHIM_H
#define RINGSIDE_CZLIB_SHIM_H
#include <zlib.h>

static inline int rs_deflateInit2(z_streamp strm, int level, int windowBits, int memLevel, int strategy) {
    return deflateInit2(strm, level, Z_DEFLATED, windowBits, memLevel, strategy);
}

static inline int rs_inflateInit2(z_streamp strm, int windowBits) {
    return inflateInit2(strm, windowBits);
}
#endif
