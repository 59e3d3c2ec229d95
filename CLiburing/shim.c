#define _GNU_SOURCE
#include "CLiburing.h"
#include <sys/resource.h>
#include <sched.h>
#include <errno.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <string.h>

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

void rs_prep_set_linger_zero(struct io_uring_sqe *sqe, int fd) {
    memset(sqe, 0, sizeof(*sqe));
    sqe->opcode = IORING_OP_URING_CMD;
    sqe->fd = fd;
    sqe->cmd_op = 3;  /* SOCKET_URING_OP_SETSOCKOPT */
    sqe->addr = (uint64_t)SOL_SOCKET | ((uint64_t)SO_LINGER << 32);  /* level, optname */
    sqe->file_index = sizeof(rs_linger_zero);                         /* optlen */
    sqe->addr3 = (uint64_t)(uintptr_t)&rs_linger_zero;                /* optval */
}
