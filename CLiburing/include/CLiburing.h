// CLiburing: the thin C face of liburing for Swift.
//
// Swift calls liburing's `static inline` helpers (io_uring_get_sqe, io_uring_prep_*, io_uring_buf_ring_*)
// directly through the Clang importer. This header only adds:
//  - constants that newer kernels have and liburing 2.3 (Debian 12) lacks, each to be used only after a
//    runtime probe (io_uring_params.features or the opcode probe) says the kernel has it;
//  - named constants for macros Swift cannot import (those built from enum bit positions);
//  - tiny accessors for sqe fields that live in anonymous unions.
#ifndef RINGSIDE_CLIBURING_H
#define RINGSIDE_CLIBURING_H

// System headers first, with the default feature macros the Swift Glibc module was built with:
// liburing.h defines _XOPEN_SOURCE, which would otherwise give types like fd_set a second,
// incompatible definition in this module.
#include <stdint.h>
#include <sys/select.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/stat.h>
#include <sys/mman.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <signal.h>
#include <fcntl.h>
#include <time.h>
#include <liburing.h>

// ---- Feature bits newer than liburing 2.3 (io_uring_params.features). Probe before use. ----
enum {
    /// 6.3: io_uring_register() accepts a registered ring fd.
    RS_IORING_FEAT_REG_REG_RING = (1U << 13),
    /// 6.10: recv/send bundles.
    RS_IORING_FEAT_RECVSEND_BUNDLE = (1U << 14),
    /// 6.12: min-timeout waits.
    RS_IORING_FEAT_MIN_TIMEOUT = (1U << 15),
};

// ---- Zero-copy sends (IORING_OP_SEND_ZC, 6.0; usage reporting 6.2). Probe before use. ----
enum {
    /// sqe->ioprio flag (6.2): the notification CQE's res reports whether the kernel copied after all.
    RS_IORING_SEND_ZC_REPORT_USAGE = (1U << 3),
};
/// Set in a SEND_ZC notification's res (with REPORT_USAGE) when the data was copied, at least partly.
#define RS_IORING_NOTIF_USAGE_ZC_COPIED 0x80000000u

/// Prepares IORING_OP_SEND_ZC of `len` bytes at `buf`, which must lie in registered buffer `buf_index`
/// (IORING_RECVSEND_FIXED_BUF), with IORING_SEND_ZC_REPORT_USAGE. Filled by hand so it does not depend on
/// the liburing headers' helpers (2.3 lacks the usage flag): opcode, fd, addr, len, msg_flags, ioprio
/// (zc flags) and buf_index. The first CQE carries the result (IORING_CQE_F_MORE set when a
/// notification follows); the notification (IORING_CQE_F_NOTIF, same user_data) says the kernel no
/// longer reads the buffer.
void rs_prep_send_zc_fixed(struct io_uring_sqe *sqe, int fd, const void *buf, unsigned len, int msg_flags,
                           uint16_t buf_index);

// ---- sqe flags (liburing defines them from enum bit positions, which Swift cannot import). ----
enum {
    RS_IOSQE_FIXED_FILE = IOSQE_FIXED_FILE,
    RS_IOSQE_IO_LINK = IOSQE_IO_LINK,
    RS_IOSQE_IO_HARDLINK = IOSQE_IO_HARDLINK,
    RS_IOSQE_ASYNC = IOSQE_ASYNC,
    RS_IOSQE_BUFFER_SELECT = IOSQE_BUFFER_SELECT,
    RS_IOSQE_CQE_SKIP_SUCCESS = IOSQE_CQE_SKIP_SUCCESS,
};

/// Selects provided-buffer group `bgid` for this sqe (the field sits in an anonymous union).
static inline void rs_sqe_set_buf_group(struct io_uring_sqe *sqe, uint16_t bgid) {
    sqe->buf_group = bgid;
}

/// sqe->ioprio flag for IORING_OP_RECV with buffer select (6.10, IORING_FEAT_RECVSEND_BUNDLE): one
/// completion may carry several provided buffers, consecutive in the ring from the one it names.
enum { RS_IORING_RECVSEND_BUNDLE = (1U << 4) };

/// Caps the total bytes a multishot IORING_OP_RECV delivers before it ends (IORING_RECV_MSHOT_LIM,
/// Linux 6.16+: the kernel reads `optlen`, which shares its union with `file_index` in liburing 2.3's
/// sqe). Older kernels reject a non-zero value with -EINVAL.
static inline void rs_sqe_set_recv_total_limit(struct io_uring_sqe *sqe, uint32_t bytes) {
    sqe->file_index = bytes;
}

/// Ring-level state the kernel publishes in the SQ ring flags.
static inline unsigned rs_sq_flags(const struct io_uring *ring) {
    return IO_URING_READ_ONCE(*ring->sq.kflags);
}

/// The kernel's count of completions it had to drop (only non-zero without IORING_FEAT_NODROP or
/// when the overflow list could not be allocated).
static inline unsigned rs_cq_overflow_count(const struct io_uring *ring) {
    return IO_URING_READ_ONCE(*ring->cq.koverflow);
}

/// Raw io_uring_setup(2), so setup failures can be classified (ENOSYS, EPERM, ENOMEM, EINVAL).
int rs_io_uring_setup_raw(unsigned entries, struct io_uring_params *p);

/// accept4(2) without address (declared only under _GNU_SOURCE, which this header cannot set).
int rs_accept4(int fd, int flags);

/// accept4(2) that also returns the peer's address.
int rs_accept4_addr(int fd, struct sockaddr *addr, socklen_t *len, int flags);

/// RLIMIT_MEMLOCK soft limit in bytes; UINT64_MAX when unlimited, 0 if it cannot be read.
uint64_t rs_memlock_limit(void);

/// Tries to raise RLIMIT_MEMLOCK's soft limit to `bytes` (capped at the hard limit). Returns the new
/// soft limit.
uint64_t rs_raise_memlock_limit(uint64_t bytes);

/// Pins the calling thread (and threads it creates later) to one CPU. Returns 0 or -errno.
int rs_pin_to_cpu(int cpu);

/// Prepares setsockopt(SOL_SOCKET, SO_LINGER, {1, 0}) through IORING_OP_URING_CMD
/// (SOCKET_URING_OP_SETSOCKOPT, Linux 6.7+; liburing 2.3 has no helper, so the sqe is filled by hand:
/// cmd_op overlays `off`, level/optname overlay `addr`, optlen overlays `file_index`, optval overlays
/// `addr3`). A close after it resets the connection (RST) and discards unsent data, which is what an
/// abort means; it is the only way to reach a direct descriptor's socket options. The option value is
/// a constant in static storage (read by the kernel at issue time).
void rs_prep_set_linger_zero(struct io_uring_sqe *sqe, int fd);

/// Prepares setsockopt(level, optname, optval, optlen) through IORING_OP_URING_CMD, filled as
/// `rs_prep_set_linger_zero`. `optval` must stay valid until the completion.
void rs_prep_setsockopt(struct io_uring_sqe *sqe, int fd, int level, int optname, const void *optval, unsigned optlen);

/// openat2(2) (RESOLVE_BENEATH and friends in `resolve`); returns the descriptor or -errno.
int rs_openat2(int dirfd, const char *path, uint64_t flags, uint64_t mode, uint64_t resolve);

/// What a file operation's statx reports (decoded from the kernel's struct statx, which this header
/// cannot define: liburing.h declares it incomplete).
struct rs_file_status {
    uint64_t size;
    int64_t mtime_sec;
    uint32_t mtime_nsec;
    uint32_t mode;
    uint64_t inode;
    uint64_t device;
};
/// preadv2(2) with RWF_NOWAIT of one buffer: answers from the page cache or fails with EAGAIN,
/// never blocks. Returns the count or -errno.
long rs_pread_nowait(int fd, void *buf, unsigned long count, int64_t offset);
/// The same for a vector of buffers.
long rs_preadv_nowait(int fd, const struct iovec *iov, int count, int64_t offset);
/// preadv(2) (blocking; helper threads only); bytes read or -errno.
long rs_preadv(int fd, const struct iovec *iov, int count, int64_t offset);

/// Bytes a statx buffer needs (sizeof(struct statx)).
unsigned long rs_statx_buffer_size(void);
/// statx(2) of an open descriptor (AT_EMPTY_PATH, STATX_BASIC_STATS) into `buf`; 0 or -errno.
int rs_statx_fd(int fd, void *buf);
/// Prepares the same statx as an io_uring operation.
void rs_prep_statx_fd(struct io_uring_sqe *sqe, int fd, void *buf);
/// Decodes a statx buffer.
void rs_statx_decode(const void *buf, struct rs_file_status *out);

/// The calling thread's kernel id (gettid(2)).
int rs_gettid(void);

/// errno accessors (errno is a macro over a thread-local function call).
int rs_errno(void);
void rs_set_errno(int value);

/// Submits what is queued and waits, with io_uring_enter(2) called directly (liburing 2.3 has no
/// min-wait call): waits for `wait_nr` completions; `timeout_ns` >= 0 bounds the whole wait (-1: none);
/// `min_wait_usec` > 0 (Linux 6.12+, IORING_FEAT_MIN_TIMEOUT; probe first) returns as soon as at least
/// one completion is ready once that much time has passed, so a wait for a batch cannot hold a lone
/// completion back for longer. Returns the number submitted or -errno (ETIME on timeout).
int rs_submit_and_wait_batch(struct io_uring *ring, unsigned wait_nr, int64_t timeout_ns, uint32_t min_wait_usec);

// ---- liburing's exported functions, loaded at run time ----
//
// The engine does not link liburing: a binary that serves only on epoll (a host without liburing, a
// container whose seccomp profile refuses io_uring) must start without it. liburing.so.2 is opened with
// dlopen the first time a ring is set up (rs_liburing_load), and its exported functions are called
// through this table. liburing's static inline helpers (io_uring_get_sqe, io_uring_prep_*, ...) are
// compiled into the caller and need no library. Invariant: every rs_io_uring_* wrapper below except the
// two queue_init ones is called only on a ring that one of those set up, i.e. after a successful load,
// so the pointers are non-null; the queue_init wrappers load first and return -ELIBACC when liburing
// cannot be loaded (rs_liburing_error() says why).
struct rs_liburing_table {
    int (*queue_init)(unsigned, struct io_uring *, unsigned);
    int (*queue_init_params)(unsigned, struct io_uring *, struct io_uring_params *);
    void (*queue_exit)(struct io_uring *);
    struct io_uring_probe *(*get_probe_ring)(struct io_uring *);
    void (*free_probe)(struct io_uring_probe *);
    int (*register_ring_fd)(struct io_uring *);
    int (*register_buffers)(struct io_uring *, const struct iovec *, unsigned);
    int (*unregister_buffers)(struct io_uring *);
    int (*register_files_sparse)(struct io_uring *, unsigned);
    int (*register_buf_ring)(struct io_uring *, struct io_uring_buf_reg *, unsigned);
    int (*unregister_buf_ring)(struct io_uring *, int);
    int (*submit)(struct io_uring *);
    int (*submit_and_wait)(struct io_uring *, unsigned);
    int (*submit_and_wait_timeout)(struct io_uring *, struct io_uring_cqe **, unsigned,
                                   struct __kernel_timespec *, sigset_t *);
    unsigned (*peek_batch_cqe)(struct io_uring *, struct io_uring_cqe **, unsigned);
};
extern struct rs_liburing_table rs_liburing;

/// Opens liburing.so.2 and resolves the table (once; thread-safe). 0 on success, -ELIBACC if the
/// library or one of its functions is missing.
int rs_liburing_load(void);
/// Why rs_liburing_load failed (dlerror's text), or "" after a success.
const char *rs_liburing_error(void);

static inline int rs_io_uring_queue_init(unsigned entries, struct io_uring *ring, unsigned flags) {
    int r = rs_liburing_load();
    return r != 0 ? r : rs_liburing.queue_init(entries, ring, flags);
}
static inline int rs_io_uring_queue_init_params(unsigned entries, struct io_uring *ring, struct io_uring_params *p) {
    int r = rs_liburing_load();
    return r != 0 ? r : rs_liburing.queue_init_params(entries, ring, p);
}
static inline void rs_io_uring_queue_exit(struct io_uring *ring) { rs_liburing.queue_exit(ring); }
static inline struct io_uring_probe *rs_io_uring_get_probe_ring(struct io_uring *ring) { return rs_liburing.get_probe_ring(ring); }
static inline void rs_io_uring_free_probe(struct io_uring_probe *p) { rs_liburing.free_probe(p); }
static inline int rs_io_uring_register_ring_fd(struct io_uring *ring) { return rs_liburing.register_ring_fd(ring); }
static inline int rs_io_uring_register_buffers(struct io_uring *ring, const struct iovec *iov, unsigned n) { return rs_liburing.register_buffers(ring, iov, n); }
static inline int rs_io_uring_unregister_buffers(struct io_uring *ring) { return rs_liburing.unregister_buffers(ring); }
static inline int rs_io_uring_register_files_sparse(struct io_uring *ring, unsigned n) { return rs_liburing.register_files_sparse(ring, n); }
static inline int rs_io_uring_register_buf_ring(struct io_uring *ring, struct io_uring_buf_reg *reg, unsigned flags) { return rs_liburing.register_buf_ring(ring, reg, flags); }
static inline int rs_io_uring_unregister_buf_ring(struct io_uring *ring, int bgid) { return rs_liburing.unregister_buf_ring(ring, bgid); }
static inline int rs_io_uring_submit(struct io_uring *ring) { return rs_liburing.submit(ring); }
static inline int rs_io_uring_submit_and_wait(struct io_uring *ring, unsigned n) { return rs_liburing.submit_and_wait(ring, n); }
static inline int rs_io_uring_submit_and_wait_timeout(struct io_uring *ring, struct io_uring_cqe **cqe, unsigned n,
                                                     struct __kernel_timespec *ts, sigset_t *sigmask) {
    return rs_liburing.submit_and_wait_timeout(ring, cqe, n, ts, sigmask);
}
static inline unsigned rs_io_uring_peek_batch_cqe(struct io_uring *ring, struct io_uring_cqe **cqes, unsigned n) {
    return rs_liburing.peek_batch_cqe(ring, cqes, n);
}

#endif
