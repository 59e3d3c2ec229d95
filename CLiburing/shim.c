#define _GNU_SOURCE
#include "CLiburing.h"
#include <sys/resource.h>
#include <stdlib.h>
#include <sched.h>
#include <errno.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <string.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>

// ---- liburing loaded at run time (see CLiburing.h) ----
struct rs_liburing_table rs_liburing;
static pthread_once_t rs_liburing_once = PTHREAD_ONCE_INIT;
static int rs_liburing_status = -ELIBACC;
static char rs_liburing_why[512];

static void rs_liburing_open(void) {
    void *h = dlopen("liburing.so.2", RTLD_NOW | RTLD_LOCAL);
    if (h == NULL) {
        const char *e = dlerror();
        snprintf(rs_liburing_why, sizeof(rs_liburing_why), "%s", e ? e : "dlopen(liburing.so.2) failed");
        return;
    }
    struct rs_liburing_table t;
    // Each name must resolve; a liburing older than 2.2 lacks the buffer-ring and sparse-file calls.
#define RS_RESOLVE(field, name) \
    do { *(void **)(&t.field) = dlsym(h, name); \
         if (t.field == NULL) { snprintf(rs_liburing_why, sizeof(rs_liburing_why), \
             "liburing.so.2 lacks %s (liburing 2.2 or later is needed)", name); dlclose(h); return; } } while (0)
    RS_RESOLVE(queue_init, "io_uring_queue_init");
    RS_RESOLVE(queue_init_params, "io_uring_queue_init_params");
    RS_RESOLVE(queue_exit, "io_uring_queue_exit");
    RS_RESOLVE(get_probe_ring, "io_uring_get_probe_ring");
    RS_RESOLVE(free_probe, "io_uring_free_probe");
    RS_RESOLVE(register_ring_fd, "io_uring_register_ring_fd");
    RS_RESOLVE(register_buffers, "io_uring_register_buffers");
    RS_RESOLVE(unregister_buffers, "io_uring_unregister_buffers");
    RS_RESOLVE(register_files_sparse, "io_uring_register_files_sparse");
    RS_RESOLVE(register_buf_ring, "io_uring_register_buf_ring");
    RS_RESOLVE(unregister_buf_ring, "io_uring_unregister_buf_ring");
    RS_RESOLVE(submit, "io_uring_submit");
    RS_RESOLVE(submit_and_wait, "io_uring_submit_and_wait");
    RS_RESOLVE(submit_and_wait_timeout, "io_uring_submit_and_wait_timeout");
    RS_RESOLVE(peek_batch_cqe, "io_uring_peek_batch_cqe");
#undef RS_RESOLVE
    rs_liburing = t;
    rs_liburing_why[0] = 0;
    rs_liburing_status = 0;
}

int rs_liburing_load(void) {
    // RINGSIDE_TEST_NO_LIBURING=1 behaves as if liburing.so.2 were absent (tests of the epoll-only host).
    const char *force = getenv("RINGSIDE_TEST_NO_LIBURING");
    if (force != NULL && force[0] == '1') {
        snprintf(rs_liburing_why, sizeof(rs_liburing_why), "liburing.so.2: refused (RINGSIDE_TEST_NO_LIBURING=1)");
        return -ELIBACC;
    }
    pthread_once(&rs_liburing_once, rs_liburing_open);
    return rs_liburing_status;
}

const char *rs_liburing_error(void) { return rs_liburing_why; }

int rs_io_uring_setup_raw(unsigned entries, struct io_uring_params *p) {
    return (int)syscall(__NR_io_uring_setup, entries, p);
}

int rs_errno(void) { return errno; }
void rs_set_errno(int value) { errno = value; }

int rs_accept4(int fd, int flags) { return accept4(fd, NULL, NULL, flags); }
int rs_accept4_addr(int fd, struct sockaddr *addr, socklen_t *len, int flags) { return accept4(fd, addr, len, flags); }

uint64_t rs_memlock_limit(void) {
    struct rlimit r;
    if (getrlimit(RLIMIT_MEMLOCK, &r) != 0) return 0;
    return r.rlim_cur == RLIM_INFINITY ? UINT64_MAX : (uint64_t)r.rlim_cur;
}

uint64_t rs_raise_memlock_limit(uint64_t bytes) {
    struct rlimit r;
    if (getrlimit(RLIMIT_MEMLOCK, &r) != 0) return 0;
    if (r.rlim_cur != RLIM_INFINITY && r.rlim_cur < bytes) {
        rlim_t want = bytes;
        if (r.rlim_max != RLIM_INFINITY && want > r.rlim_max) want = r.rlim_max;
        r.rlim_cur = want;
        (void)setrlimit(RLIMIT_MEMLOCK, &r);
    }
    return rs_memlock_limit();
}

int rs_pin_to_cpu(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    return sched_setaffinity(0, sizeof(set), &set) == 0 ? 0 : -errno;
}

int rs_gettid(void) { return (int)syscall(SYS_gettid); }

static const struct linger rs_linger_zero = { 1, 0 };

void rs_prep_setsockopt(struct io_uring_sqe *sqe, int fd, int level, int optname, const void *optval, unsigned optlen) {
    memset(sqe, 0, sizeof(*sqe));
    sqe->opcode = IORING_OP_URING_CMD;
    sqe->fd = fd;
    sqe->cmd_op = 3;  /* SOCKET_URING_OP_SETSOCKOPT */
    sqe->addr = (uint64_t)(uint32_t)level | ((uint64_t)(uint32_t)optname << 32);  /* level, optname */
    sqe->file_index = optlen;                                                     /* optlen */
    sqe->addr3 = (uint64_t)(uintptr_t)optval;                                     /* optval */
}

void rs_prep_set_linger_zero(struct io_uring_sqe *sqe, int fd) {
    rs_prep_setsockopt(sqe, fd, SOL_SOCKET, SO_LINGER, &rs_linger_zero, sizeof(rs_linger_zero));
}

void rs_prep_send_zc_fixed(struct io_uring_sqe *sqe, int fd, const void *buf, unsigned len, int msg_flags,
                           uint16_t buf_index) {
    memset(sqe, 0, sizeof(*sqe));
    sqe->opcode = IORING_OP_SEND_ZC;
    sqe->fd = fd;
    sqe->addr = (uint64_t)(uintptr_t)buf;
    sqe->len = len;
    sqe->msg_flags = (uint32_t)msg_flags;
    sqe->ioprio = IORING_RECVSEND_FIXED_BUF | RS_IORING_SEND_ZC_REPORT_USAGE;
    sqe->buf_index = buf_index;
}

// liburing 2.3's internal flag for a registered ring fd (src/int_flags.h: INT_FLAG_REG_RING = 1).
#define RS_INT_FLAG_REG_RING 1

// Publishes the SQEs prepared since the last flush to the kernel (liburing 2.3's __io_uring_flush_sq,
// which it does not export). Invariant: called only on the loop thread that owns the ring (no SQPOLL).
static unsigned rs_flush_sq(struct io_uring *ring) {
    struct io_uring_sq *sq = &ring->sq;
    unsigned tail = sq->sqe_tail;
    if (sq->sqe_head != tail) {
        sq->sqe_head = tail;
        io_uring_smp_store_release(sq->ktail, tail);
    }
    return tail - *sq->khead;
}

int rs_submit_and_wait_batch(struct io_uring *ring, unsigned wait_nr, int64_t timeout_ns, uint32_t min_wait_usec) {
    unsigned to_submit = rs_flush_sq(ring);
    unsigned flags = IORING_ENTER_GETEVENTS;
    int fd = ring->ring_fd;
    if (ring->int_flags & RS_INT_FLAG_REG_RING) {
        flags |= IORING_ENTER_REGISTERED_RING;
        fd = ring->enter_ring_fd;
    }
    long r;
    if (timeout_ns < 0 && min_wait_usec == 0) {
        r = syscall(__NR_io_uring_enter, fd, to_submit, wait_nr, flags, NULL, (size_t)0);
    } else {
        struct __kernel_timespec ts;
        struct io_uring_getevents_arg arg;
        memset(&arg, 0, sizeof(arg));
        arg.pad = min_wait_usec;  // min_wait_usec in kernels 6.12+ (the field liburing 2.3 calls pad)
        if (timeout_ns >= 0) {
            ts.tv_sec = timeout_ns / 1000000000;
            ts.tv_nsec = timeout_ns % 1000000000;
            arg.ts = (uint64_t)(uintptr_t)&ts;
        }
        r = syscall(__NR_io_uring_enter, fd, to_submit, wait_nr, flags | IORING_ENTER_EXT_ARG, &arg, sizeof(arg));
    }
    return r < 0 ? -errno : (int)r;
}

int rs_openat2(int dirfd, const char *path, uint64_t flags, uint64_t mode, uint64_t resolve) {
    struct open_how how;
    memset(&how, 0, sizeof(how));
    how.flags = flags;
    how.mode = mode;
    how.resolve = resolve;
    long r = syscall(SYS_openat2, dirfd, path, &how, sizeof(how));
    return r < 0 ? -errno : (int)r;
}

unsigned long rs_statx_buffer_size(void) { return sizeof(struct statx); }

void rs_statx_decode(const void *buf, struct rs_file_status *out) {
    const struct statx *st = buf;
    out->size = st->stx_size;
    out->mtime_sec = st->stx_mtime.tv_sec;
    out->mtime_nsec = st->stx_mtime.tv_nsec;
    out->mode = st->stx_mode;
    out->inode = st->stx_ino;
    out->device = ((uint64_t)st->stx_dev_major << 32) | st->stx_dev_minor;
}

int rs_statx_fd(int fd, void *buf) {
    long r = syscall(SYS_statx, fd, "", AT_EMPTY_PATH, STATX_BASIC_STATS, buf);
    return r < 0 ? -errno : 0;
}

void rs_prep_statx_fd(struct io_uring_sqe *sqe, int fd, void *buf) {
    io_uring_prep_statx(sqe, fd, "", AT_EMPTY_PATH, STATX_BASIC_STATS, buf);
}

long rs_pread_nowait(int fd, void *buf, unsigned long count, int64_t offset) {
    struct iovec iov = { buf, count };
    ssize_t r = preadv2(fd, &iov, 1, offset, RWF_NOWAIT);
    return r < 0 ? -errno : (long)r;
}

long rs_preadv_nowait(int fd, const struct iovec *iov, int count, int64_t offset) {
    ssize_t r = preadv2(fd, iov, count, offset, RWF_NOWAIT);
    return r < 0 ? -errno : (long)r;
}

long rs_preadv(int fd, const struct iovec *iov, int count, int64_t offset) {
    ssize_t r = preadv(fd, iov, count, offset);
    return r < 0 ? -errno : (long)r;
}
