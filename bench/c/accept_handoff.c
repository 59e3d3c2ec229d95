/*
 * accept_handoff.c - SO_REUSEPORT-per-ring vs one acceptor ring + MSG_RING
 * hand-off, measured with the same tiny echo protocol.
 *
 * Server modes (bind 127.0.0.1 only, print "listening on 127.0.0.1:PORT"
 * once every ring is ready, exit 0 on SIGINT/SIGTERM):
 *
 *   accept_handoff --mode reuseport --workers N [--port P] [--slots S]
 *     N threads, each with its own ring and its own SO_REUSEPORT listener on
 *     the same port.  Each ring: multishot accept *direct* (IORING_FILE_INDEX_ALLOC
 *     into its own sparse registered file table), then per connection
 *     recv -> send back -> recv ... on the fixed file; recv == 0 (peer
 *     closed) or an error -> IORING_OP_CLOSE of the fixed slot.
 *
 *   accept_handoff --mode handoff --workers N [--port P] [--slots S]
 *     One acceptor thread/ring with one plain listener: multishot accept
 *     direct into the acceptor's sparse file table, then for every accepted
 *     slot s, worker ring i (round robin) gets the file with
 *       SQE1: IORING_OP_MSG_RING, IORING_MSG_SEND_FD (filled by hand, see
 *             send_fd_sqe(); liburing 2.3 has no io_uring_prep_msg_ring_fd):
 *               fd         = worker ring fd
 *               addr       = IORING_MSG_SEND_FD      (msg_ring command)
 *               addr3      = s                        (source fixed slot)
 *               file_index = IORING_FILE_INDEX_ALLOC  (target allocates a slot)
 *               off        = user_data of the worker's CQE (res = new slot)
 *               len = 0, msg_ring_flags = 0
 *             flags IOSQE_IO_LINK | IOSQE_CQE_SKIP_SUCCESS
 *       SQE2: IORING_OP_CLOSE of fixed slot s in the acceptor's table
 *             (io_uring_prep_close_direct), IOSQE_CQE_SKIP_SUCCESS.
 *     The link makes the close run only after the file has been installed in
 *     the worker's table (MSG_RING takes its own file reference).  Workers
 *     serve exactly as in reuseport mode (same code), they just get their
 *     slots from a MSG_RING CQE instead of an accept CQE.
 *
 *   All rings: IORING_SETUP_SINGLE_ISSUER|IORING_SETUP_DEFER_TASKRUN, falling
 *   back to no flags on EINVAL.  Listeners have TCP_NODELAY (inherited by the
 *   accepted sockets).  ACCEPT_HANDOFF_STATS=1 prints per-ring counters to
 *   stderr on exit.
 *
 * Client modes (single thread, epoll, pin it with taskset):
 *
 *   accept_handoff --mode connect --target 127.0.0.1:PORT [--concurrency K]
 *                  [--duration S] [--warmup S] [--size B] [--src-addrs M]
 *                  [--server-pid PID]
 *     K connectors in a closed loop: socket, connect, send SIZE bytes, read
 *     SIZE bytes back (verified), close, start the next one.  Sources are
 *     spread over 127.0.1.1 .. 127.0.1.M (IP_BIND_ADDRESS_NO_PORT) so the
 *     ephemeral port range / TIME_WAIT never limits the rate.
 *
 *   accept_handoff --mode pingpong --target 127.0.0.1:PORT [--concurrency C] ...
 *     C persistent connections (established before the warm-up), each doing
 *     ping-pong of SIZE bytes (verified).
 *
 *   Only completions after the warm-up are counted; the run hard-stops at
 *   warmup+duration.  With --server-pid, utime+stime of the server process
 *   (all threads) are read from /proc/PID/stat exactly at the start and end
 *   of the measured window.  Output: one key=value line on stdout.  Exit 1
 *   if errors > 0, 2 on usage error.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define MAX_WORKERS 64
#define BUFSZ 512

static void die(const char *what, int err)
{
	fprintf(stderr, "accept_handoff: %s: %s\n", what, strerror(err));
	exit(1);
}

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ======================================================================
 * Server
 * ==================================================================== */

/* user_data: op in bits 32..39, slot in bits 0..31 */
enum op {
	OP_ACCEPT = 1, OP_RECV, OP_SEND, OP_CLOSE, OP_HANDOFF_IN, OP_STOP,
	OP_MSG_OUT, OP_SRC_CLOSE
};
static inline uint64_t ud(enum op op, unsigned slot) { return ((uint64_t)op << 32) | slot; }
static inline enum op ud_op(uint64_t u) { return (enum op)((u >> 32) & 0xff); }
static inline unsigned ud_slot(uint64_t u) { return (unsigned)(uint32_t)u; }

struct conn {
	uint32_t len, off; /* bytes received / already echoed */
	uint8_t open;
};

struct ring_ctx {
	int id;
	struct io_uring ring;
	int ring_fd;     /* the fd other rings target with MSG_RING */
	int listen_fd;   /* -1 for handoff workers */
	int is_acceptor; /* handoff acceptor: accept + pass, no serving */
	int running;
	struct conn *conns;
	unsigned char *bufs; /* slots * BUFSZ */
	unsigned long long accepted, handed_in, handed_out, closed, errors, rr;
	pthread_t thr;
};

static unsigned nslots = 8192;
static int nworkers = 1;
static int handoff_mode;
static struct ring_ctx workers[MAX_WORKERS];
static struct ring_ctx acceptor;
static pthread_barrier_t ready_barrier;
static int use_defer = 1;

static struct io_uring_sqe *get_sqe(struct ring_ctx *c)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&c->ring);
	while (!sqe) {
		int ret = io_uring_submit(&c->ring);
		if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY)
			die("io_uring_submit", -ret);
		sqe = io_uring_get_sqe(&c->ring);
	}
	return sqe;
}

static void ring_init(struct ring_ctx *c)
{
	struct io_uring_params p;
	int ret = -EINVAL;
	if (use_defer) {
		memset(&p, 0, sizeof(p));
		p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN |
			  IORING_SETUP_CQSIZE;
		p.cq_entries = 8192;
		ret = io_uring_queue_init_params(1024, &c->ring, &p);
	}
	if (ret == -EINVAL) {
		memset(&p, 0, sizeof(p));
		p.flags = IORING_SETUP_CQSIZE;
		p.cq_entries = 8192;
		ret = io_uring_queue_init_params(1024, &c->ring, &p);
	}
	if (ret < 0)
		die("io_uring_queue_init_params", -ret);
	c->ring_fd = c->ring.ring_fd;
	ret = io_uring_register_files_sparse(&c->ring, nslots);
	if (ret < 0)
		die("io_uring_register_files_sparse", -ret);
	ret = io_uring_register_ring_fd(&c->ring); /* optional optimisation */
	if (ret < 0 && ret != -EINVAL)
		fprintf(stderr, "accept_handoff: io_uring_register_ring_fd: %s (ignored)\n", strerror(-ret));
}

static void arm_accept(struct ring_ctx *c)
{
	struct io_uring_sqe *sqe = get_sqe(c);
	io_uring_prep_multishot_accept_direct(sqe, c->listen_fd, NULL, NULL, 0);
	io_uring_sqe_set_data64(sqe, ud(OP_ACCEPT, 0));
}

static void arm_recv(struct ring_ctx *c, unsigned slot)
{
	struct io_uring_sqe *sqe = get_sqe(c);
	io_uring_prep_recv(sqe, (int)slot, c->bufs + (size_t)slot * BUFSZ, BUFSZ, 0);
	sqe->flags |= IOSQE_FIXED_FILE;
	io_uring_sqe_set_data64(sqe, ud(OP_RECV, slot));
}

static void arm_send(struct ring_ctx *c, unsigned slot)
{
	struct conn *k = &c->conns[slot];
	struct io_uring_sqe *sqe = get_sqe(c);
	io_uring_prep_send(sqe, (int)slot, c->bufs + (size_t)slot * BUFSZ + k->off,
			   k->len - k->off, MSG_NOSIGNAL);
	sqe->flags |= IOSQE_FIXED_FILE;
	io_uring_sqe_set_data64(sqe, ud(OP_SEND, slot));
}

static void close_slot(struct ring_ctx *c, unsigned slot, enum op op)
{
	struct io_uring_sqe *sqe = get_sqe(c);
	io_uring_prep_close_direct(sqe, slot);
	io_uring_sqe_set_data64(sqe, ud(op, slot));
}

static void conn_start(struct ring_ctx *c, unsigned slot)
{
	if (slot >= nslots)
		die("slot out of range", ERANGE);
	struct conn *k = &c->conns[slot];
	if (k->open)
		die("slot reused while open", EBUSY);
	k->open = 1;
	k->len = k->off = 0;
	arm_recv(c, slot);
}

static void conn_end(struct ring_ctx *c, unsigned slot)
{
	c->conns[slot].open = 0;
	close_slot(c, slot, OP_CLOSE);
}

/*
 * Pass fixed slot `slot` of the acceptor's table to ring `target_fd`.
 * Field meanings per io_uring/msg_ring.c (__io_msg_ring_prep):
 *   user_data = sqe->off, len = sqe->len, cmd = sqe->addr,
 *   src_fd = sqe->addr3 (index in the *source* fixed table),
 *   dst_fd = sqe->file_index (target slot + 1, or IORING_FILE_INDEX_ALLOC),
 *   flags = sqe->msg_ring_flags; buf_index and personality must be 0;
 *   IORING_MSG_SEND_FD requires len == 0.
 * The worker's CQE: user_data = off, res = slot installed (with ALLOC).
 */
static void send_fd_sqe(struct io_uring_sqe *sqe, int target_fd, unsigned slot,
			uint64_t target_user_data)
{
	io_uring_prep_rw(IORING_OP_MSG_RING, sqe, target_fd, NULL, 0, target_user_data);
	sqe->addr = IORING_MSG_SEND_FD;
	sqe->addr3 = slot;
	sqe->file_index = IORING_FILE_INDEX_ALLOC;
	sqe->msg_ring_flags = 0;
}

static void hand_off(struct ring_ctx *a, unsigned slot)
{
	/* both SQEs of the link must go into the same submission */
	if (io_uring_sq_space_left(&a->ring) < 2) {
		int ret = io_uring_submit(&a->ring);
		if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY)
			die("io_uring_submit", -ret);
	}
	struct ring_ctx *w = &workers[a->rr++ % (unsigned)nworkers];
	struct io_uring_sqe *sqe = get_sqe(a);
	send_fd_sqe(sqe, w->ring_fd, slot, ud(OP_HANDOFF_IN, 0));
	sqe->flags |= IOSQE_IO_LINK | IOSQE_CQE_SKIP_SUCCESS;
	io_uring_sqe_set_data64(sqe, ud(OP_MSG_OUT, slot));
	sqe = get_sqe(a);
	io_uring_prep_close_direct(sqe, slot);
	sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
	io_uring_sqe_set_data64(sqe, ud(OP_SRC_CLOSE, slot));
	a->handed_out++;
}

static void on_cqe(struct ring_ctx *c, struct io_uring_cqe *cqe)
{
	unsigned slot = ud_slot(cqe->user_data);
	int res = cqe->res;
	switch (ud_op(cqe->user_data)) {
	case OP_ACCEPT:
		if (!(cqe->flags & IORING_CQE_F_MORE) && c->running)
			arm_accept(c);
		if (res < 0) {
			if (res != -ECANCELED) {
				fprintf(stderr, "accept_handoff: ring %d: accept: %s\n", c->id, strerror(-res));
				c->errors++;
			}
			return;
		}
		c->accepted++;
		if (c->is_acceptor)
			hand_off(c, (unsigned)res);
		else
			conn_start(c, (unsigned)res);
		return;
	case OP_HANDOFF_IN:
		/* posted by the acceptor's MSG_RING: res = slot in our table */
		if (res < 0) {
			fprintf(stderr, "accept_handoff: ring %d: handoff cqe: %s\n", c->id, strerror(-res));
			c->errors++;
			return;
		}
		c->handed_in++;
		conn_start(c, (unsigned)res);
		return;
	case OP_MSG_OUT: /* only failures post a CQE (CQE_SKIP_SUCCESS) */
		if (res < 0) {
			fprintf(stderr, "accept_handoff: acceptor: MSG_RING SEND_FD: %s\n", strerror(-res));
			c->errors++;
		}
		return;
	case OP_SRC_CLOSE:
		if (res == -ECANCELED) {
			/* MSG_RING failed, link broken: close the source slot now */
			close_slot(c, slot, OP_SRC_CLOSE);
		} else if (res < 0) {
			fprintf(stderr, "accept_handoff: acceptor: close slot %u: %s\n", slot, strerror(-res));
			c->errors++;
		}
		return;
	case OP_RECV: {
		struct conn *k = &c->conns[slot];
		if (res > 0) {
			k->len = (uint32_t)res;
			k->off = 0;
			arm_send(c, slot);
		} else {
			if (res < 0 && res != -ECONNRESET) {
				fprintf(stderr, "accept_handoff: ring %d: recv: %s\n", c->id, strerror(-res));
				c->errors++;
			}
			conn_end(c, slot);
		}
		return;
	}
	case OP_SEND: {
		struct conn *k = &c->conns[slot];
		if (res < 0) {
			if (res != -ECONNRESET && res != -EPIPE) {
				fprintf(stderr, "accept_handoff: ring %d: send: %s\n", c->id, strerror(-res));
				c->errors++;
			}
			conn_end(c, slot);
			return;
		}
		k->off += (uint32_t)res;
		if (k->off < k->len)
			arm_send(c, slot); /* short send */
		else
			arm_recv(c, slot);
		return;
	}
	case OP_CLOSE:
		if (res < 0) {
			fprintf(stderr, "accept_handoff: ring %d: close slot %u: %s\n", c->id, slot, strerror(-res));
			c->errors++;
		} else {
			c->closed++;
		}
		return;
	case OP_STOP:
		c->running = 0;
		return;
	}
	fprintf(stderr, "accept_handoff: ring %d: unexpected cqe user_data=%llx res=%d\n",
		c->id, (unsigned long long)cqe->user_data, res);
	c->errors++;
}

static void *ring_thread(void *arg)
{
	struct ring_ctx *c = arg;
	ring_init(c); /* in this thread: SINGLE_ISSUER binds the ring to its creator */
	if (!c->is_acceptor) {
		c->conns = calloc(nslots, sizeof(*c->conns));
		c->bufs = malloc((size_t)nslots * BUFSZ);
		if (!c->conns || !c->bufs)
			die("calloc", ENOMEM);
	}
	c->running = 1;
	if (c->listen_fd >= 0)
		arm_accept(c);
	int ret = io_uring_submit(&c->ring);
	if (ret < 0)
		die("io_uring_submit", -ret);
	/* every ring fd is published before anyone sends to it */
	pthread_barrier_wait(&ready_barrier);

	while (c->running) {
		ret = io_uring_submit_and_wait(&c->ring, 1);
		if (ret < 0 && ret != -EINTR && ret != -ETIME && ret != -EAGAIN && ret != -EBUSY)
			die("io_uring_submit_and_wait", -ret);
		struct io_uring_cqe *cqe;
		unsigned head, seen = 0;
		io_uring_for_each_cqe(&c->ring, head, cqe) {
			seen++;
			on_cqe(c, cqe);
		}
		io_uring_cq_advance(&c->ring, seen);
	}
	return NULL;
}

static int make_listener(int port, int reuseport)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		die("socket", errno);
	int one = 1;
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0)
		die("setsockopt SO_REUSEADDR", errno);
	if (reuseport && setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0)
		die("setsockopt SO_REUSEPORT", errno);
	if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0)
		die("setsockopt TCP_NODELAY", errno);
	struct sockaddr_in sa;
	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_port = htons((uint16_t)port);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		die("bind", errno);
	if (listen(fd, 4096) < 0)
		die("listen", errno);
	return fd;
}

static int local_port(int fd)
{
	struct sockaddr_in sa;
	socklen_t len = sizeof(sa);
	if (getsockname(fd, (struct sockaddr *)&sa, &len) < 0)
		die("getsockname", errno);
	return ntohs(sa.sin_port);
}

static int server_main(int port)
{
	signal(SIGPIPE, SIG_IGN);
	sigset_t mask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGTERM);
	/* block before creating threads: only sigwait() below sees them */
	if (pthread_sigmask(SIG_BLOCK, &mask, NULL) != 0)
		die("pthread_sigmask", errno);
	signal(SIGINT, SIG_DFL);
	signal(SIGTERM, SIG_DFL);

	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}

	int nthreads = nworkers + (handoff_mode ? 1 : 0);
	int ret = pthread_barrier_init(&ready_barrier, NULL, (unsigned)nthreads + 1);
	if (ret != 0)
		die("pthread_barrier_init", ret);

	for (int i = 0; i < nworkers; i++) {
		workers[i].id = i;
		workers[i].listen_fd = -1;
		if (!handoff_mode) {
			workers[i].listen_fd = make_listener(port, 1);
			if (port == 0)
				port = local_port(workers[i].listen_fd);
		}
	}
	if (handoff_mode) {
		acceptor.id = nworkers;
		acceptor.is_acceptor = 1;
		acceptor.listen_fd = make_listener(port, 0);
		port = local_port(acceptor.listen_fd);
	}
	for (int i = 0; i < nworkers; i++) {
		ret = pthread_create(&workers[i].thr, NULL, ring_thread, &workers[i]);
		if (ret != 0)
			die("pthread_create", ret);
	}
	if (handoff_mode) {
		ret = pthread_create(&acceptor.thr, NULL, ring_thread, &acceptor);
		if (ret != 0)
			die("pthread_create", ret);
	}
	pthread_barrier_wait(&ready_barrier);

	printf("listening on 127.0.0.1:%d backend=c-%s workers=%d\n", port,
	       handoff_mode ? "handoff" : "reuseport", nworkers);
	fflush(stdout);

	int sig = 0;
	do {
		ret = sigwait(&mask, &sig);
	} while (ret == EINTR);
	if (ret != 0)
		die("sigwait", ret);

	/* Stop: a MSG_RING data message to every ring from a control ring. */
	struct io_uring ctl;
	ret = io_uring_queue_init(8, &ctl, 0);
	if (ret < 0)
		die("io_uring_queue_init", -ret);
	struct ring_ctx *all[MAX_WORKERS + 1];
	int nall = 0;
	for (int i = 0; i < nworkers; i++)
		all[nall++] = &workers[i];
	if (handoff_mode)
		all[nall++] = &acceptor;
	for (int i = 0; i < nall; i++) {
		struct io_uring_sqe *sqe = io_uring_get_sqe(&ctl);
		if (!sqe)
			die("io_uring_get_sqe", EBUSY);
		io_uring_prep_msg_ring(sqe, all[i]->ring_fd, 0, ud(OP_STOP, 0), 0);
		ret = io_uring_submit(&ctl);
		if (ret < 0)
			die("io_uring_submit", -ret);
		struct io_uring_cqe *cqe;
		ret = io_uring_wait_cqe(&ctl, &cqe);
		if (ret < 0)
			die("io_uring_wait_cqe", -ret);
		if (cqe->res < 0)
			die("msg_ring stop", -cqe->res);
		io_uring_cqe_seen(&ctl, cqe);
	}
	unsigned long long errs = 0;
	for (int i = 0; i < nall; i++) {
		ret = pthread_join(all[i]->thr, NULL);
		if (ret != 0)
			die("pthread_join", ret);
		errs += all[i]->errors;
		if (getenv("ACCEPT_HANDOFF_STATS"))
			fprintf(stderr, "accept_handoff: ring %d%s: accepted=%llu handed_out=%llu handed_in=%llu closed=%llu errors=%llu\n",
				all[i]->id, all[i]->is_acceptor ? " (acceptor)" : "",
				all[i]->accepted, all[i]->handed_out, all[i]->handed_in,
				all[i]->closed, all[i]->errors);
		io_uring_queue_exit(&all[i]->ring);
		if (all[i]->listen_fd >= 0)
			close(all[i]->listen_fd);
		free(all[i]->conns);
		free(all[i]->bufs);
	}
	io_uring_queue_exit(&ctl);
	if (errs)
		fprintf(stderr, "accept_handoff: %llu server errors\n", errs);
	return 0;
}

/* ======================================================================
 * Client
 * ==================================================================== */

enum cstate { C_IDLE, C_CONNECTING, C_WAIT_REPLY };

struct cconn {
	int fd;
	enum cstate st;
	uint32_t got;     /* reply bytes verified */
	uint64_t seq;     /* message number (content seed) */
	uint64_t t_start; /* connect() (connect mode) or send (pingpong) */
};

static uint32_t msg_size = 64;
static int concurrency = 50, n_src = 16;
static double duration = 5.0, warmup = 1.0;
static struct sockaddr_in target;
static int epfd;
static unsigned long long ops, errors, lat_sum_ns, lat_max_ns, started_total;
static int measuring;
static unsigned rr_src;

static void fill_msg(uint8_t *p, uint64_t seq)
{
	uint64_t x = seq * 0x9e3779b97f4a7c15ull + 0x1234567ull;
	for (uint32_t i = 0; i < msg_size; i++) {
		x ^= x >> 29; x *= 0xbf58476d1ce4e5b9ull; x ^= x >> 32;
		p[i] = (uint8_t)x;
	}
}

static long long proc_ticks(int pid)
{
	if (pid <= 0)
		return -1;
	char path[64], buf[2048];
	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = 0;
	char *p = strrchr(buf, ')');
	if (!p)
		return -1;
	unsigned long long ut, st;
	if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
		return -1;
	return (long long)(ut + st);
}

static void cfail(struct cconn *c, const char *what, int err)
{
	if (errors < 10)
		fprintf(stderr, "accept_handoff: client: %s: %s\n", what, strerror(err));
	errors++;
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
	c->st = C_IDLE;
}

static int csend(struct cconn *c)
{
	uint8_t m[BUFSZ];
	fill_msg(m, c->seq);
	ssize_t n = send(c->fd, m, msg_size, MSG_NOSIGNAL);
	if (n == (ssize_t)msg_size)
		return 1;
	if (n < 0 && (errno == EAGAIN || errno == ENOTCONN))
		return 0; /* not connected yet: wait for EPOLLOUT */
	cfail(c, "send", n < 0 ? errno : EIO);
	return -1;
}

static void cstart(struct cconn *c)
{
	c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (c->fd < 0) {
		cfail(c, "socket", errno);
		return;
	}
	int one = 1;
	if (setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) < 0 ||
	    setsockopt(c->fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one)) < 0) {
		cfail(c, "setsockopt", errno);
		return;
	}
	struct sockaddr_in src;
	memset(&src, 0, sizeof(src));
	src.sin_family = AF_INET;
	src.sin_addr.s_addr = htonl(0x7f000100u + 1 + (rr_src++ % (unsigned)n_src));
	if (bind(c->fd, (struct sockaddr *)&src, sizeof(src)) < 0) {
		cfail(c, "bind", errno);
		return;
	}
	struct epoll_event ev = { .events = EPOLLIN | EPOLLOUT | EPOLLET, .data.ptr = c };
	if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0) {
		cfail(c, "epoll_ctl", errno);
		return;
	}
	c->t_start = now_ns();
	c->seq = started_total++;
	c->got = 0;
	if (connect(c->fd, (struct sockaddr *)&target, sizeof(target)) < 0 && errno != EINPROGRESS) {
		cfail(c, "connect", errno);
		return;
	}
	c->st = C_CONNECTING;
	int r = csend(c); /* loopback usually completes the handshake inside connect() */
	if (r == 1)
		c->st = C_WAIT_REPLY;
}

static void cdone(struct cconn *c, int connect_mode)
{
	uint64_t t = now_ns();
	if (measuring) {
		ops++;
		uint64_t l = t - c->t_start;
		lat_sum_ns += l;
		if (l > lat_max_ns)
			lat_max_ns = l;
	}
	if (connect_mode) {
		close(c->fd);
		c->fd = -1;
		c->st = C_IDLE;
	} else {
		c->seq += 0x100000000ull;
		c->got = 0;
		c->t_start = t;
		if (csend(c) != 1 && c->fd >= 0)
			cfail(c, "send (pingpong)", EAGAIN);
	}
}

static void cread(struct cconn *c, int connect_mode)
{
	uint8_t m[BUFSZ], exp[BUFSZ];
	for (;;) {
		ssize_t n = recv(c->fd, m, msg_size - c->got, 0);
		if (n < 0) {
			if (errno == EAGAIN)
				return;
			cfail(c, "recv", errno);
			return;
		}
		if (n == 0) {
			cfail(c, "recv: unexpected EOF", EPIPE);
			return;
		}
		fill_msg(exp, c->seq);
		if (memcmp(m, exp + c->got, (size_t)n) != 0) {
			cfail(c, "recv: echoed bytes differ", EBADMSG);
			return;
		}
		c->got += (uint32_t)n;
		if (c->got == msg_size) {
			cdone(c, connect_mode);
			if (connect_mode || c->fd < 0)
				return;
		}
	}
}

static int client_main(int connect_mode, int server_pid)
{
	signal(SIGPIPE, SIG_IGN);
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	epfd = epoll_create1(EPOLL_CLOEXEC);
	if (epfd < 0)
		die("epoll_create1", errno);
	struct cconn *cs = calloc((size_t)concurrency, sizeof(*cs));
	if (!cs)
		die("calloc", ENOMEM);
	for (int i = 0; i < concurrency; i++)
		cs[i].fd = -1;

	if (!connect_mode) {
		/* establish all persistent connections first (bounded: 20 s) */
		uint64_t dl = now_ns() + 20000000000ull;
		for (int i = 0; i < concurrency; i++) {
			cs[i].seq = (uint64_t)i;
			cstart(&cs[i]);
			if (cs[i].fd < 0)
				break;
		}
		struct epoll_event evs[256];
		for (;;) {
			int pending = 0;
			for (int i = 0; i < concurrency; i++)
				if (cs[i].fd >= 0 && cs[i].st != C_WAIT_REPLY)
					pending++;
			if (!pending || now_ns() > dl || errors)
				break;
			int n = epoll_wait(epfd, evs, 256, 100);
			for (int j = 0; j < n; j++) {
				struct cconn *c = evs[j].data.ptr;
				if (c->fd >= 0 && c->st == C_CONNECTING && csend(c) == 1)
					c->st = C_WAIT_REPLY;
			}
		}
		for (int i = 0; i < concurrency; i++)
			if (cs[i].fd < 0 || cs[i].st != C_WAIT_REPLY) {
				fprintf(stderr, "accept_handoff: client: could not establish %d connections\n", concurrency);
				return 1;
			}
	}

	uint64_t t0 = now_ns();
	uint64_t t_meas = t0 + (uint64_t)(warmup * 1e9);
	uint64_t t_end = t_meas + (uint64_t)(duration * 1e9);
	long long srv0 = -1, srv1 = -1;
	struct rusage ru0, ru1;
	uint64_t m0 = 0, m1 = 0;
	if (connect_mode)
		for (int i = 0; i < concurrency; i++)
			cstart(&cs[i]);

	struct epoll_event evs[256];
	for (;;) {
		uint64_t t = now_ns();
		if (!measuring && t >= t_meas) {
			srv0 = proc_ticks(server_pid);
			getrusage(RUSAGE_SELF, &ru0);
			m0 = now_ns();
			measuring = 1;
		}
		if (t >= t_end) {
			srv1 = proc_ticks(server_pid);
			getrusage(RUSAGE_SELF, &ru1);
			m1 = now_ns();
			break;
		}
		int timeout_ms = (int)(((measuring ? t_end : t_meas) - t) / 1000000) + 1;
		int n = epoll_wait(epfd, evs, 256, timeout_ms);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			die("epoll_wait", errno);
		}
		for (int j = 0; j < n; j++) {
			struct cconn *c = evs[j].data.ptr;
			if (c->fd < 0)
				continue;
			if (c->st == C_CONNECTING) {
				if (evs[j].events & (EPOLLERR | EPOLLHUP)) {
					int err = 0;
					socklen_t el = sizeof(err);
					getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
					cfail(c, "connect (async)", err ? err : ECONNRESET);
				} else {
					int r = csend(c);
					if (r == 1)
						c->st = C_WAIT_REPLY;
				}
			}
			if (c->fd >= 0 && c->st == C_WAIT_REPLY && (evs[j].events & (EPOLLIN | EPOLLERR | EPOLLHUP)))
				cread(c, connect_mode);
			/* closed loop: next connection right away (a failed
			 * persistent connection just stays dead: counted in errors) */
			if (connect_mode && c->fd < 0)
				cstart(c);
		}
		if (errors > 1000)
			break;
	}
	for (int i = 0; i < concurrency; i++)
		if (cs[i].fd >= 0)
			close(cs[i].fd);

	double secs = (double)(m1 - m0) / 1e9;
	long tck = sysconf(_SC_CLK_TCK);
	double cli_cpu = (double)(ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec + ru1.ru_stime.tv_sec - ru0.ru_stime.tv_sec) +
			 (double)(ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec + ru1.ru_stime.tv_usec - ru0.ru_stime.tv_usec) / 1e6;
	printf("mode=%s concurrency=%d size=%u secs=%.3f ops=%llu ops_per_sec=%.0f lat_avg_us=%.1f lat_max_us=%.1f client_cpu_pct=%.1f",
	       connect_mode ? "connect" : "pingpong", concurrency, msg_size, secs, ops,
	       secs > 0 ? (double)ops / secs : 0.0, ops ? (double)lat_sum_ns / (double)ops / 1e3 : 0.0,
	       (double)lat_max_ns / 1e3, secs > 0 ? 100.0 * cli_cpu / secs : 0.0);
	if (server_pid > 0 && srv0 >= 0 && srv1 >= 0) {
		double s = (double)(srv1 - srv0) / (double)tck;
		printf(" server_ticks=%lld server_cpu_pct=%.1f server_cpu_us_per_op=%.3f",
		       srv1 - srv0, secs > 0 ? 100.0 * s / secs : 0.0, ops ? s * 1e6 / (double)ops : 0.0);
	}
	printf(" errors=%llu\n", errors);
	fflush(stdout);
	return errors ? 1 : 0;
}

/* ====================================================================== */

static void usage(void)
{
	fprintf(stderr,
		"usage: accept_handoff --mode reuseport|handoff [--workers N] [--port P] [--slots S] [--no-defer]\n"
		"       accept_handoff --mode connect|pingpong --target 127.0.0.1:PORT [--concurrency K]\n"
		"                      [--duration S] [--warmup S] [--size B] [--src-addrs M] [--server-pid PID]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	const char *mode = NULL, *tgt = NULL;
	int port = 0, server_pid = 0;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		if (!strcmp(a, "--no-defer")) { use_defer = 0; continue; }
		if (!v)
			usage();
		i++;
		if (!strcmp(a, "--mode")) mode = v;
		else if (!strcmp(a, "--workers")) nworkers = atoi(v);
		else if (!strcmp(a, "--port")) port = atoi(v);
		else if (!strcmp(a, "--slots")) nslots = (unsigned)strtoul(v, NULL, 0);
		else if (!strcmp(a, "--target")) tgt = v;
		else if (!strcmp(a, "--concurrency")) concurrency = atoi(v);
		else if (!strcmp(a, "--duration")) duration = atof(v);
		else if (!strcmp(a, "--warmup")) warmup = atof(v);
		else if (!strcmp(a, "--size")) msg_size = (uint32_t)atoi(v);
		else if (!strcmp(a, "--src-addrs")) n_src = atoi(v);
		else if (!strcmp(a, "--server-pid")) server_pid = atoi(v);
		else usage();
	}
	if (!mode)
		usage();
	if (!strcmp(mode, "reuseport") || !strcmp(mode, "handoff")) {
		handoff_mode = !strcmp(mode, "handoff");
		if (nworkers < 1 || nworkers > MAX_WORKERS || port < 0 || port > 65535 ||
		    nslots < 16 || nslots > (1u << 20))
			usage();
		return server_main(port);
	}
	if (!strcmp(mode, "connect") || !strcmp(mode, "pingpong")) {
		if (!tgt || concurrency < 1 || duration <= 0 || duration > 3600 || warmup < 0 ||
		    warmup > 600 || msg_size < 1 || msg_size > BUFSZ || n_src < 1 || n_src > 250)
			usage();
		/* load tests target 127.0.0.1 only */
		const char *colon = strrchr(tgt, ':');
		if (!colon || (size_t)(colon - tgt) != 9 || strncmp(tgt, "127.0.0.1", 9) != 0)
			usage();
		int p = atoi(colon + 1);
		if (p <= 0 || p > 65535)
			usage();
		memset(&target, 0, sizeof(target));
		target.sin_family = AF_INET;
		target.sin_port = htons((uint16_t)p);
		target.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		return client_main(!strcmp(mode, "connect"), server_pid);
	}
	usage();
	return 2;
}
