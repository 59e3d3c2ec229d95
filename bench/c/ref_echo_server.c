/*
 * ref_echo_server.c - reference ("practical ceiling") io_uring echo server.
 *
 * Single thread, one io_uring (SINGLE_ISSUER|DEFER_TASKRUN when available),
 * multishot accept, multishot recv into a provided-buffer ring, and an echo
 * that sends the very buffer it received (no copy).  Per connection at most
 * one send is in flight; further received buffers are queued in order and
 * a buffer goes back to the buffer ring once its send has fully completed.
 *
 * Usage: ref_echo_server [--port N] [--buffers N] [--buf-size BYTES]
 *   --port 0 (default) picks a free port.  Binds 127.0.0.1 only.
 *   Defaults: --buffers 1024 (power of two) --buf-size 4096 (4 MiB in all).
 *   Prints "listening on 127.0.0.1:PORT backend=c-liburing" once ready.
 *   Exits 0 on SIGINT/SIGTERM.
 *
 * A recv that ends with -ENOBUFS (every buffer queued for sending) parks the
 * connection in a FIFO; parked connections are re-armed, oldest first, as
 * buffers come back.  A multishot recv that ends without IORING_CQE_F_MORE
 * for any other non-error reason is re-armed at once.  EOF: finish echoing
 * what is queued, then close.  Errors: cancel the recv, drop the queue, close.
 * Accepted sockets get TCP_NODELAY.
 *
 * REF_ECHO_STATS=1 in the environment prints counters to stderr on exit
 * (accepted, enobufs, rearms, short_sends).
 *
 * Built against liburing 2.3 (no io_uring_setup_buf_ring there, so the
 * buffer ring memory is allocated and registered by hand).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

/* ---- user_data packing: op kind in bits 32..39, fd in bits 0..31 ---- */
enum op_kind { OP_ACCEPT = 1, OP_RECV = 2, OP_SEND = 3, OP_SIGNAL = 4, OP_CANCEL = 5 };

static inline uint64_t pack_ud(enum op_kind op, int fd)
{
	return ((uint64_t)op << 32) | (uint32_t)fd;
}
static inline enum op_kind ud_op(uint64_t ud) { return (enum op_kind)((ud >> 32) & 0xff); }
static inline int ud_fd(uint64_t ud) { return (int)(uint32_t)ud; }

#define BGID 0

/* One node per provided buffer; used to chain a connection's send queue. */
struct bufnode {
	uint32_t len; /* bytes received into this buffer */
	uint32_t off; /* bytes already sent */
	int32_t next; /* next bid in this connection's queue, -1 = none */
};

struct conn {
	uint8_t open;          /* fd belongs to a live connection */
	uint8_t recv_armed;    /* a multishot recv is outstanding */
	uint8_t starved;       /* recv ended with -ENOBUFS, waiting for buffers */
	uint8_t send_inflight; /* a send for qhead is outstanding */
	uint8_t eof;           /* peer closed its write side (recv returned 0) */
	uint8_t dead;          /* error: drop queued data, close asap */
	int32_t qhead, qtail;  /* queue of received buffers to echo (bids) */
};

static struct io_uring ring;
static struct io_uring_buf_ring *br;
static unsigned char *buf_base;
static struct bufnode *nodes;
static unsigned nbufs = 1024, buf_size = 4096, br_mask;
static unsigned held;          /* buffers currently owned by userspace */
static unsigned returned_batch; /* buffers added to the ring, not yet advanced */
static struct conn *conns;
static int max_conns;
/* FIFO of connections whose recv ended with -ENOBUFS (each fd at most once:
 * its starved flag stays set, and it cannot be closed, until popped). */
static int *starved_q;
static unsigned starved_head, starved_len;
static struct {
	unsigned long long accepted, enobufs, short_sends, rearms;
} stats;
static int listen_fd = -1;
static int running = 1;

static void die(const char *what, int err)
{
	fprintf(stderr, "ref_echo_server: %s: %s\n", what, strerror(err));
	exit(1);
}

static struct io_uring_sqe *get_sqe(void)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&ring);
	while (!sqe) {
		int ret = io_uring_submit(&ring);
		if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY)
			die("io_uring_submit", -ret);
		sqe = io_uring_get_sqe(&ring);
	}
	return sqe;
}

static void return_buffer(int bid)
{
	io_uring_buf_ring_add(br, buf_base + (size_t)bid * buf_size, buf_size,
			      (unsigned short)bid, br_mask, returned_batch);
	returned_batch++;
	held--;
}

static void arm_accept(void)
{
	struct io_uring_sqe *sqe = get_sqe();
	io_uring_prep_multishot_accept(sqe, listen_fd, NULL, NULL, SOCK_CLOEXEC);
	io_uring_sqe_set_data64(sqe, pack_ud(OP_ACCEPT, listen_fd));
}

static void arm_recv(int fd)
{
	struct io_uring_sqe *sqe = get_sqe();
	io_uring_prep_recv_multishot(sqe, fd, NULL, 0, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = BGID;
	io_uring_sqe_set_data64(sqe, pack_ud(OP_RECV, fd));
	conns[fd].recv_armed = 1;
}

static void submit_send(int fd)
{
	struct conn *c = &conns[fd];
	int bid = c->qhead;
	struct bufnode *n = &nodes[bid];
	struct io_uring_sqe *sqe = get_sqe();
	io_uring_prep_send(sqe, fd, buf_base + (size_t)bid * buf_size + n->off,
			   n->len - n->off, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, pack_ud(OP_SEND, fd));
	c->send_inflight = 1;
}

/* Return every queued buffer that is not owned by an in-flight send. */
static void drop_queue(struct conn *c)
{
	int bid = c->qhead;
	if (c->send_inflight && bid >= 0)
		bid = nodes[bid].next; /* head belongs to the in-flight send */
	else
		c->qhead = -1;
	while (bid >= 0) {
		int next = nodes[bid].next;
		return_buffer(bid);
		bid = next;
	}
	if (c->qhead >= 0) {
		nodes[c->qhead].next = -1;
		c->qtail = c->qhead;
	} else {
		c->qtail = -1;
	}
}

static void maybe_close(int fd)
{
	struct conn *c = &conns[fd];
	if (!c->open || c->recv_armed || c->starved || c->send_inflight)
		return;
	if (c->dead || (c->eof && c->qhead < 0)) {
		if (c->qhead >= 0)
			drop_queue(c);
		close(fd);
		c->open = 0;
	}
}

static void kill_conn(int fd)
{
	struct conn *c = &conns[fd];
	c->dead = 1; /* if starved, popping it off the starved queue closes it */
	drop_queue(c);
	if (c->recv_armed) {
		struct io_uring_sqe *sqe = get_sqe();
		io_uring_prep_cancel64(sqe, pack_ud(OP_RECV, fd), 0);
		io_uring_sqe_set_data64(sqe, pack_ud(OP_CANCEL, fd));
	}
	maybe_close(fd);
}

static void on_accept(struct io_uring_cqe *cqe)
{
	if (!(cqe->flags & IORING_CQE_F_MORE) && running)
		arm_accept();
	if (cqe->res < 0) {
		if (cqe->res != -ECANCELED)
			fprintf(stderr, "ref_echo_server: accept: %s\n", strerror(-cqe->res));
		return;
	}
	int fd = cqe->res;
	if (fd >= max_conns) {
		close(fd);
		return;
	}
	stats.accepted++;
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	struct conn *c = &conns[fd];
	memset(c, 0, sizeof(*c));
	c->open = 1;
	c->qhead = c->qtail = -1;
	arm_recv(fd);
}

static void on_recv(struct io_uring_cqe *cqe)
{
	int fd = ud_fd(cqe->user_data);
	struct conn *c = &conns[fd];
	int res = cqe->res;
	int more = cqe->flags & IORING_CQE_F_MORE;

	if (cqe->flags & IORING_CQE_F_BUFFER) {
		int bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
		held++;
		if (res <= 0 || c->dead || c->eof) {
			return_buffer(bid);
		} else {
			nodes[bid].len = (uint32_t)res;
			nodes[bid].off = 0;
			nodes[bid].next = -1;
			if (c->qtail >= 0)
				nodes[c->qtail].next = bid;
			else
				c->qhead = bid;
			c->qtail = bid;
			if (!c->send_inflight)
				submit_send(fd);
		}
	}
	if (more)
		return;

	c->recv_armed = 0;
	if (c->dead) {
		maybe_close(fd);
	} else if (res > 0) {
		arm_recv(fd); /* multishot ended without error (e.g. CQ overflow) */
	} else if (res == -ENOBUFS) {
		c->starved = 1;
		stats.enobufs++;
		starved_q[(starved_head + starved_len++) % (unsigned)max_conns] = fd;
	} else if (res == 0) {
		c->eof = 1; /* finish echoing what is queued, then close */
		maybe_close(fd);
	} else {
		kill_conn(fd);
	}
}

static void on_send(struct io_uring_cqe *cqe)
{
	int fd = ud_fd(cqe->user_data);
	struct conn *c = &conns[fd];
	int bid = c->qhead;
	c->send_inflight = 0;

	if (c->dead) {
		drop_queue(c); /* now also returns the head buffer */
		maybe_close(fd);
		return;
	}
	if (cqe->res < 0) {
		if (cqe->res == -EINTR || cqe->res == -EAGAIN) {
			submit_send(fd);
			return;
		}
		kill_conn(fd);
		return;
	}
	struct bufnode *n = &nodes[bid];
	n->off += (uint32_t)cqe->res;
	if (n->off < n->len) {
		stats.short_sends++;
		submit_send(fd); /* short send: send the rest */
		return;
	}
	c->qhead = n->next;
	if (c->qhead < 0)
		c->qtail = -1;
	return_buffer(bid);
	if (c->qhead >= 0)
		submit_send(fd);
	else
		maybe_close(fd);
}

static int setup_listener(int port)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		die("socket", errno);
	int one = 1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
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

static void usage(void)
{
	fprintf(stderr, "usage: ref_echo_server [--port N] [--buffers N(power of 2)] [--buf-size BYTES]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	int port = 0;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--port") && i + 1 < argc)
			port = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--buffers") && i + 1 < argc)
			nbufs = (unsigned)strtoul(argv[++i], NULL, 0);
		else if (!strcmp(argv[i], "--buf-size") && i + 1 < argc)
			buf_size = (unsigned)strtoul(argv[++i], NULL, 0);
		else
			usage();
	}
	if (port < 0 || port > 65535 || nbufs == 0 || nbufs > 32768 ||
	    (nbufs & (nbufs - 1)) || buf_size == 0)
		usage();

	signal(SIGPIPE, SIG_IGN);

	/* SIGINT/SIGTERM arrive through a signalfd polled by the ring: no race
	 * between checking a flag and blocking in io_uring_enter.  Block first,
	 * then reset the disposition (a background job may inherit SIG_IGN). */
	sigset_t mask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGTERM);
	if (sigprocmask(SIG_BLOCK, &mask, NULL) < 0)
		die("sigprocmask", errno);
	signal(SIGINT, SIG_DFL);
	signal(SIGTERM, SIG_DFL);
	int sfd = signalfd(-1, &mask, SFD_NONBLOCK | SFD_CLOEXEC);
	if (sfd < 0)
		die("signalfd", errno);

	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
		getrlimit(RLIMIT_NOFILE, &rl);
		max_conns = rl.rlim_cur > (1u << 20) ? (1 << 20) : (int)rl.rlim_cur;
	} else {
		max_conns = 1024;
	}
	conns = calloc((size_t)max_conns, sizeof(*conns));
	starved_q = calloc((size_t)max_conns, sizeof(*starved_q));
	if (!conns || !starved_q)
		die("calloc", ENOMEM);

	struct io_uring_params p;
	memset(&p, 0, sizeof(p));
	p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN |
		  IORING_SETUP_CQSIZE;
	p.cq_entries = 16384;
	int ret = io_uring_queue_init_params(2048, &ring, &p);
	if (ret == -EINVAL) {
		memset(&p, 0, sizeof(p));
		p.flags = IORING_SETUP_CQSIZE;
		p.cq_entries = 16384;
		ret = io_uring_queue_init_params(2048, &ring, &p);
		if (ret == -EINVAL) {
			memset(&p, 0, sizeof(p));
			ret = io_uring_queue_init_params(2048, &ring, &p);
		}
	}
	if (ret < 0)
		die("io_uring_queue_init_params", -ret);
	io_uring_register_ring_fd(&ring); /* optional optimisation */

	/* Provided buffer ring: ring memory must be page aligned. */
	size_t ring_bytes = (size_t)nbufs * sizeof(struct io_uring_buf);
	long page = sysconf(_SC_PAGESIZE);
	void *ring_mem = NULL;
	if (posix_memalign(&ring_mem, (size_t)page, ring_bytes) != 0)
		die("posix_memalign", ENOMEM);
	memset(ring_mem, 0, ring_bytes);
	br = ring_mem;
	void *bufs_mem = NULL;
	if (posix_memalign(&bufs_mem, (size_t)page, (size_t)nbufs * buf_size) != 0)
		die("posix_memalign", ENOMEM);
	buf_base = bufs_mem;
	nodes = calloc(nbufs, sizeof(*nodes));
	if (!nodes)
		die("calloc", ENOMEM);

	struct io_uring_buf_reg reg;
	memset(&reg, 0, sizeof(reg));
	reg.ring_addr = (uint64_t)(uintptr_t)br;
	reg.ring_entries = nbufs;
	reg.bgid = BGID;
	ret = io_uring_register_buf_ring(&ring, &reg, 0);
	if (ret < 0)
		die("io_uring_register_buf_ring", -ret);
	io_uring_buf_ring_init(br);
	br_mask = (unsigned)io_uring_buf_ring_mask(nbufs);
	for (unsigned i = 0; i < nbufs; i++)
		io_uring_buf_ring_add(br, buf_base + (size_t)i * buf_size, buf_size,
				      (unsigned short)i, br_mask, (int)i);
	io_uring_buf_ring_advance(br, (int)nbufs);

	listen_fd = setup_listener(port);
	struct sockaddr_in sa;
	socklen_t salen = sizeof(sa);
	if (getsockname(listen_fd, (struct sockaddr *)&sa, &salen) < 0)
		die("getsockname", errno);

	arm_accept();
	struct io_uring_sqe *sqe = get_sqe();
	io_uring_prep_poll_add(sqe, sfd, POLLIN);
	io_uring_sqe_set_data64(sqe, pack_ud(OP_SIGNAL, sfd));
	io_uring_submit(&ring);

	printf("listening on 127.0.0.1:%d backend=c-liburing\n", ntohs(sa.sin_port));
	fflush(stdout);

	while (running) {
		ret = io_uring_submit_and_wait(&ring, 1);
		if (ret < 0 && ret != -EINTR && ret != -ETIME && ret != -EAGAIN &&
		    ret != -EBUSY)
			die("io_uring_submit_and_wait", -ret);

		struct io_uring_cqe *cqe;
		unsigned head, seen = 0;
		io_uring_for_each_cqe(&ring, head, cqe) {
			seen++;
			switch (ud_op(cqe->user_data)) {
			case OP_ACCEPT: on_accept(cqe); break;
			case OP_RECV: on_recv(cqe); break;
			case OP_SEND: on_send(cqe); break;
			case OP_SIGNAL: running = 0; break;
			case OP_CANCEL: break;
			}
		}
		io_uring_cq_advance(&ring, seen);

		if (returned_batch) {
			io_uring_buf_ring_advance(br, (int)returned_batch);
			returned_batch = 0;
		}
		/* Re-arm connections that hit -ENOBUFS, oldest first, at most as
		 * many as there are buffers not held by userspace (an upper bound
		 * on what the kernel has; a wrong guess just gives another
		 * -ENOBUFS).  held == nbufs means every buffer is queued for
		 * sending, and a send completion will return one. */
		unsigned budget = nbufs - held;
		while (starved_len && budget) {
			int fd = starved_q[starved_head];
			starved_head = (starved_head + 1) % (unsigned)max_conns;
			starved_len--;
			struct conn *c = &conns[fd];
			c->starved = 0;
			if (c->open && !c->dead) {
				arm_recv(fd);
				stats.rearms++;
				budget--;
			} else {
				maybe_close(fd);
			}
		}
	}

	if (getenv("REF_ECHO_STATS"))
		fprintf(stderr, "ref_echo_server: accepted=%llu enobufs=%llu rearms=%llu short_sends=%llu\n",
			stats.accepted, stats.enobufs, stats.rearms, stats.short_sends);
	for (int fd = 0; fd < max_conns; fd++)
		if (conns[fd].open)
			close(fd);
	close(listen_fd);
	io_uring_queue_exit(&ring);
	close(sfd);
	free(conns);
	free(starved_q);
	free(nodes);
	free(bufs_mem);
	free(ring_mem);
	return 0;
}
