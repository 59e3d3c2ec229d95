// The C face of Debian's OpenSSL 3 (libssl-dev) for RingsideTLS: the headers, and inline wrappers for
// the macros Swift cannot import (they expand to SSL_CTX_ctrl / BIO_set_flags calls with casts).
#ifndef RINGSIDE_COPENSSL_SHIM_H
#define RINGSIDE_COPENSSL_SHIM_H
#include <openssl/ssl.h>
#include <openssl/err.h>
#include <openssl/bio.h>
#include <openssl/x509v3.h>
#include <openssl/pem.h>

static inline int rs_ssl_ctx_set_protocols(SSL_CTX *c, int min, int max) {
    return SSL_CTX_set_min_proto_version(c, min) == 1 && SSL_CTX_set_max_proto_version(c, max) == 1;
}
/// No renegotiation, no TLS-level compression, the server's cipher order; tickets as configured.
static inline void rs_ssl_ctx_harden(SSL_CTX *c, int tickets) {
    uint64_t o = SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION | SSL_OP_CIPHER_SERVER_PREFERENCE;
    if (!tickets) o |= SSL_OP_NO_TICKET;
    SSL_CTX_set_options(c, o);
    SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_SERVER);
}
static inline long rs_ssl_ctx_set_servername_callback(SSL_CTX *c, int (*cb)(SSL *, int *, void *), void *arg) {
    SSL_CTX_set_tlsext_servername_arg(c, arg);
    return SSL_CTX_set_tlsext_servername_callback(c, cb);
}
static inline void rs_bio_clear_retry(BIO *b) { BIO_clear_retry_flags(b); }
static inline void rs_bio_set_retry_read(BIO *b) { BIO_set_retry_read(b); }
static inline int rs_ssl_tlsext_err_ok(void) { return SSL_TLSEXT_ERR_OK; }
static inline int rs_ssl_tlsext_err_noack(void) { return SSL_TLSEXT_ERR_NOACK; }
static inline long rs_ssl_ctx_sess_hits(SSL_CTX *c) { return SSL_CTX_sess_hits(c); }
#endif
