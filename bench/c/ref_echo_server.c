/*
 * ref_echo_server.c - reference ("practical ceiling") io_uring echo server.
 *
 * Single thread, one io_uring (SINGLE_ISSUER|DEFER_TASKRUN when available),
 * multishot accept, multishot recv into a provided-buffer ring, and an echo
 * that sends the very buffer it received (no copy).  Per connection at most
 * one send is in flight; further received buffers are queued in order and
 * a buffer goes back to the buffer ring once its send has fully completed.
 *
 * Usage: ref_echo_server [--port N] [--buffers N] [--buf-size BYTES] [--inc | --http]
 *   --port 0 (default) picks a free port.  Binds 127.0.0.1 only.
 *   Defaults: --buffers 1024 (power of two) --buf-size 4096 (4 MiB in all).
 *   --inc registers the buffer ring with IOU_PBUF_RING_INC (Linux 6.12+;
 *   exits 1 if the kernel refuses it).  The defaults stay as they are, so
 *   an A/B run changes one thing at a time, but larger buffers are the
 *   point of INC: e.g. --inc --buffers 64 --buf-size 65536 (same 4 MiB).
 *   Prints "listening on 127.0.0.1:PORT backend=c-liburing" once ready,
 *   followed by " inc=1 buffers=N buf_size=N" with --inc.
 *   Exits 0 on SIGINT/SIGTERM.
 *
 * A recv that ends with -ENOBUFS (every buffer queued for sending) parks the
 * connection in a FIFO; parked connections are re-armed, oldest first, as
 * buffers come back.  A multishot recv that ends without IORING_CQE_F_MORE
 * for any other non-error reason is re-armed at once.  EOF: finish echoing
 * what is queued, then close.  Errors: cancel the recv, drop the queue, close.
 * Accepted sockets get TCP_NODELAY.
 *
 * --inc (incremental consumption): a recv takes the buffer at the ring head
 * but consumes only the bytes it received; the kernel advances that ring
 * entry's addr/len itself, so the next recv, on any connection, continues
 * right behind it in the same buffer.  The CQE gives bid and res only, so
 * userspace tracks per bid how many bytes the kernel has consumed (the data
 * of a CQE starts there).  IORING_CQE_F_BUF_MORE on a CQE means the kernel
 * keeps filling that buffer; the first CQE for a bid without it means the
 * kernel is done with it.  One buffer thus holds messages of several
 * connections, so the send queues are made of per-message nodes (bid,
 * offset, length) taken from a free list (grown by doubling if it runs
 * dry), and a buffer goes back to the ring only when (a) the kernel is done
 * with it and (b) no queued or in-flight send points into it (per-bid
 * reference count).  A CQE with a buffer but res <= 0 consumed nothing: the
 * ring entry was not advanced, the buffer is still the kernel's whatever
 * BUF_MORE says (kernels without the fix for liburing issue #1553 post an
 * EOF res=0 CQE with the buffer but without BUF_MORE), so it is ignored.
 * (Seen on 6.18: EOF, -ECONNRESET and -ENOBUFS recv CQEs carry no buffer.)
 * "held" counts buffers the kernel is done with and that are not back in
 * the ring yet, in both modes, which keeps the -ENOBUFS re-arm budget right.
 *
 * --http: the floor for HTTP/1.1 keep-alive /plaintext on this kernel, not
 * an HTTP server.  Each request head is counted by its "\r\n\r\n" (a four-
 * state scan carried across receives; no parsing, no routing, bodies not
 * understood), its buffer goes straight back to the ring, and each request
 * is answered with the 133 bytes Ringside's /plaintext answers with (Date
 * included, "Server: ref-http"), sent from a static pattern of 32 copies
 * (pipelined requests: up to 32 answers per send; one send in flight per
 * connection, short sends continue).  The Date is rewritten in the pattern
 * when the second changes (checked once per loop iteration); a send still
 * in flight across that rewrite may carry a mix of two dates.  Measures what
 * the kernel work of the same request/response traffic costs with next to
 * no user space: ringload compare and bench/http-wrk.sh take it as a peer.
 * Checked by bench/c/check_http_floor.py.
 *
 * REF_ECHO_STATS=1 in the environment prints counters to stderr on exit
 * (accepted, enobufs, rearms, short_sends, recycled = buffers given back to
 * the ring; with --inc also buf_more = recv CQEs that left their buffer to
 * the kernel, msg_nodes = size the message node pool reached, held =
 * buffers out of the ring at exit, 0 once every connection is gone).
 *
 * Built against liburing 2.3 (no io_uring_setup_buf_ring there, so the
 * buffer ring memory is allocated and registered by hand; no INC constants
 * either, so they are defined below).
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
#include <time.h>
#include <unistd.h>

/* Incremental buffer consumption (Linux 6.12), missing from liburing 2.3.
 * Defined after the include: newer headers make IOU_PBUF_RING_INC an enum
 * constant (same value), which a macro defined earlier would clobber. */
#ifndef IOU_PBUF_RING_INC
#define IOU_PBUF_RING_INC 2          /* io_uring_buf_reg flags */
#endif
#ifndef IORING_CQE_F_BUF_MORE
#define IORING_CQE_F_BUF_MORE (1U << 4) /* kernel keeps filling this bid */
#endif

/* ---- user_data packing: op kind in bits 32..39, fd in bits 0..31 ---- */
enum op_kind { OP_ACCEPT = 1, OP_RECV = 2, OP_SEND = 3, OP_SIGNAL = 4, OP_CANCEL = 5 };

static inline uint64_t pack_ud(enum op_kind op, int fd)
{
	return ((uint64_t)op << 32) | (uint32_t)fd;
}
static inline enum op_kind ud_op(uint64_t ud) { return (enum op_kind)((ud >> 32) & 0xff); }
static inline int ud_fd(uint64_t ud) { return (int)(uint32_t)ud; }

#define BGID 0

/* One node per provided buffer; used to chain a connection's send queue
 * (without --inc; with it, see struct msgnode). */
struct bufnode {
	uint32_t len; /* bytes received into this buffer */
	uint32_t off; /* bytes already sent */
	int32_t next; /* next bid in this connection's queue, -1 = none */
};

/* --inc: state of one provided buffer. */
struct incbuf {
	uint32_t consumed; /* bytes the kernel put into it since it was added */
	uint32_t refs;     /* message nodes (queued or in flight) pointing in */
	uint8_t kdone;     /* a CQE without BUF_MORE was seen: kernel is done */
};

/* --inc: one received chunk queued for echoing, in buffer bid at
 * [start, start + len); also the free-list link. */
struct msgnode {
	uint32_t start; /* offset of the chunk in its buffer */
	uint32_t len;   /* bytes received */
	uint32_t off;   /* bytes already sent */
	uint16_t bid;
	int32_t next;   /* next node in the queue / free list, -1 = none */
};

struct conn {
	uint8_t open;          /* fd belongs to a live connection */
	uint8_t recv_armed;    /* a multishot recv is outstanding */
	uint8_t starved;       /* recv ended with -ENOBUFS, waiting for buffers */
	uint8_t send_inflight; /* a send for qhead is outstanding */
	uint8_t eof;           /* peer closed its write side (recv returned 0) */
	uint8_t dead;          /* error: drop queued data, close asap */
	int32_t qhead, qtail;  /* queue to echo: bids, with --inc msgnode ids */
	/* --http: terminator bytes matched so far (0-3), answers owed and not yet
	 * in a send, and the bytes of the send in flight (its pattern offset). */
	uint8_t crlf;
	uint32_t owed;
	uint32_t out_pos, out_left;
};

static struct io_uring ring;
static struct io_uring_buf_ring *br;
static unsigned char *buf_base;
static struct bufnode *nodes;
static unsigned nbufs = 1024, buf_size = 4096, br_mask;
static unsigned held;          /* buffers currently owned by userspace */
static int inc;                /* --inc: IOU_PBUF_RING_INC buffer ring */
static int http;               /* --http: answer request heads (see top) */
#define HTTP_REPEAT 32
static const char http_head[] = "HTTP/1.1 200 OK\r\nServer: ref-http\r\nDate: ";
static const char http_tail[] = "\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nHello, World!";
#define HTTP_DATE_LEN 29
#define HTTP_RESP_LEN (sizeof(http_head) - 1 + HTTP_DATE_LEN + sizeof(http_tail) - 1)
static char http_pattern[HTTP_RESP_LEN * HTTP_REPEAT];
static time_t http_second = -1;
static struct incbuf *incbufs; /* --inc: [nbufs] */
static struct msgnode *msgs;   /* --inc: node pool, linked by index */
static unsigned nmsgs;
static int32_t msg_free = -1;  /* free list of msgs */
static unsigned returned_batch; /* buffers added to the ring, not yet advanced */
static struct conn *conns;
static int max_conns;
/* FIFO of connections whose recv ended with -ENOBUFS (each fd at most once:
 * its starved flag stays set, and it cannot be closed, until popped). */
static int *starved_q;
static unsigned starved_head, starved_len;
static struct {
	unsigned long long accepted, enobufs, short_sends, rearms, recycled;
	unsigned long long buf_more;
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
	stats.recycled++;
}

/* --inc: a buffer goes back to the ring (whole, at its base) only once the
 * kernel is done with it and no queued or in-flight send points into it. */
static void inc_maybe_recycle(int bid)
{
	struct incbuf *b = &incbufs[bid];
	if (!b->kdone || b->refs)
		return;
	b->kdone = 0;
	b->consumed = 0;
	return_buffer(bid);
}

static int32_t msg_alloc(void)
{
	if (msg_free < 0) {
		/* Nodes are linked by index, so moving the pool is safe; but
		 * no msgnode pointer may be held across this call. */
		if (nmsgs > INT32_MAX / 2)
			die("msg_alloc", ENOMEM);
		unsigned n = nmsgs * 2;
		struct msgnode *m = realloc(msgs, (size_t)n * sizeof(*m));
		if (!m)
			die("realloc", ENOMEM);
		msgs = m;
		for (unsigned i = n; i-- > nmsgs;) {
			msgs[i].next = msg_free;
			msg_free = (int32_t)i;
		}
		nmsgs = n;
	}
	int32_t m = msg_free;
	msg_free = msgs[m].next;
	return m;
}

/* Drop message node m (already unlinked) and its reference on its buffer. */
static void msg_release(int32_t m)
{
	int bid = msgs[m].bid;
	msgs[m].next = msg_free;
	msg_free = m;
	incbufs[bid].refs--;
	inc_maybe_recycle(bid);
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

/* The send queue holds bids (struct bufnode) or, with --inc, message node ids
 * (struct msgnode); these accessors are the only places that tell them apart. */
static int32_t q_next(int32_t h) { return inc ? msgs[h].next : nodes[h].next; }
static void q_set_next(int32_t h, int32_t v)
{
	if (inc)
		msgs[h].next = v;
	else
		nodes[h].next = v;
}
/* Where queue entry h's unsent bytes start, how many remain, and its sent count. */
static unsigned char *q_data(int32_t h)
{
	if (inc)
		return buf_base + (size_t)msgs[h].bid * buf_size + msgs[h].start + msgs[h].off;
	return buf_base + (size_t)h * buf_size + nodes[h].off;
}
static uint32_t *q_off(int32_t h) { return inc ? &msgs[h].off : &nodes[h].off; }
static uint32_t q_len(int32_t h) { return inc ? msgs[h].len : nodes[h].len; }
/* Queue entry h is done with: its buffer (or its reference on one) goes back. */
static void q_release(int32_t h)
{
	if (inc)
		msg_release(h);
	else
		return_buffer(h);
}

static void submit_send(int fd)
{
	struct conn *c = &conns[fd];
	int32_t h = c->qhead;
	struct io_uring_sqe *sqe = get_sqe();
	io_uring_prep_send(sqe, fd, q_data(h), q_len(h) - *q_off(h), MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, pack_ud(OP_SEND, fd));
	c->send_inflight = 1;
}

/* Release every queued entry that is not owned by an in-flight send. */
static void drop_queue(struct conn *c)
{
	int32_t h = c->qhead;
	if (c->send_inflight && h >= 0)
		h = q_next(h); /* head belongs to the in-flight send */
	else
		c->qhead = -1;
	while (h >= 0) {
		int32_t next = q_next(h);
		q_release(h);
		h = next;
	}
	if (c->qhead >= 0) {
		q_set_next(c->qhead, -1);
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
	if (c->dead || (c->eof && c->qhead < 0 && c->owed == 0)) {
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
	c->owed = 0;
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

/* --inc: recv CQE of fd that carries buffer bid. */
static void inc_recv_buffer(int fd, int bid, int res, int buf_more)
{
	struct conn *c = &conns[fd];
	struct incbuf *b = &incbufs[bid];

	/* res <= 0 consumed nothing: the kernel did not advance the ring
	 * entry and still owns the buffer, BUF_MORE or not (see top). */
	if (res <= 0)
		return;
	/* CQEs of one bid come in the order the kernel consumed the bytes
	 * (deferred completions are flushed before an aux CQE is posted). */
	if (b->kdone || (uint64_t)b->consumed + (uint32_t)res > buf_size) {
		fprintf(stderr, "ref_echo_server: --inc: bid %d: res %d after %u bytes (done %d)\n",
			bid, res, b->consumed, b->kdone);
		abort();
	}
	uint32_t start = b->consumed;
	b->consumed += (uint32_t)res; /* always: even a dead conn's bytes count */
	if (buf_more) {
		stats.buf_more++;
	} else {
		b->kdone = 1;
		held++;
	}
	if (c->dead || c->eof) {
		inc_maybe_recycle(bid);
		return;
	}
	int32_t m = msg_alloc();
	struct msgnode *n = &msgs[m];
	n->start = start;
	n->len = (uint32_t)res;
	n->off = 0;
	n->bid = (uint16_t)bid;
	n->next = -1;
	b->refs++;
	if (c->qtail >= 0)
		msgs[c->qtail].next = m;
	else
		c->qhead = m;
	c->qtail = m;
	if (!c->send_inflight)
		submit_send(fd);
}

/* --http: (re)writes the Date of every copy in the pattern when the second
 * changed since the last call. */
static void http_date_refresh(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME_COARSE, &ts);
	if (ts.tv_sec == http_second)
		return;
	http_second = ts.tv_sec;
	struct tm tmv;
	gmtime_r(&ts.tv_sec, &tmv);
	char date[HTTP_DATE_LEN + 1];
	strftime(date, sizeof(date), "%a, %d %b %Y %H:%M:%S GMT", &tmv);
	for (int i = 0; i < HTTP_REPEAT; i++) {
		char *r = http_pattern + (size_t)i * HTTP_RESP_LEN;
		memcpy(r, http_head, sizeof(http_head) - 1);
		memcpy(r + sizeof(http_head) - 1, date, HTTP_DATE_LEN);
		memcpy(r + sizeof(http_head) - 1 + HTTP_DATE_LEN, http_tail, sizeof(http_tail) - 1);
	}
}

/* --http: sends the rest of the send in flight, or up to HTTP_REPEAT owed answers. */
static void http_send(int fd)
{
	struct conn *c = &conns[fd];
	if (c->out_left == 0) {
		uint32_t k = c->owed < HTTP_REPEAT ? c->owed : HTTP_REPEAT;
		c->owed -= k;
		c->out_pos = 0;
		c->out_left = k * (uint32_t)HTTP_RESP_LEN;
	}
	struct io_uring_sqe *sqe = get_sqe();
	io_uring_prep_send(sqe, fd, http_pattern + c->out_pos, c->out_left, MSG_NOSIGNAL);
	io_uring_sqe_set_data64(sqe, pack_ud(OP_SEND, fd));
	c->send_inflight = 1;
}

/* --http: counts the request heads ending in data[0..len) (state in c->crlf). */
static uint32_t http_count(struct conn *c, const unsigned char *data, uint32_t len)
{
	uint32_t n = 0;
	uint8_t st = c->crlf;
	for (uint32_t i = 0; i < len; i++) {
		unsigned char b = data[i];
		if (b == (st & 1 ? '\n' : '\r'))
			st++;
		else
			st = b == '\r';
		if (st == 4) {
			n++;
			st = 0;
		}
	}
	c->crlf = st;
	return n;
}

static void on_recv(struct io_uring_cqe *cqe)
{
	int fd = ud_fd(cqe->user_data);
	struct conn *c = &conns[fd];
	int res = cqe->res;
	int more = cqe->flags & IORING_CQE_F_MORE;

	if ((cqe->flags & IORING_CQE_F_BUFFER) && http) {
		int bid = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
		held++;
		if (res > 0 && !c->dead && !c->eof) {
			c->owed += http_count(c, buf_base + (size_t)bid * buf_size, (uint32_t)res);
			if (c->owed && !c->send_inflight)
				http_send(fd);
		}
		return_buffer(bid);
	} else if ((cqe->flags & IORING_CQE_F_BUFFER) && inc) {
		inc_recv_buffer(fd, (int)(cqe->flags >> IORING_CQE_BUFFER_SHIFT), res,
				cqe->flags & IORING_CQE_F_BUF_MORE);
	} else if (cqe->flags & IORING_CQE_F_BUFFER) {
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
	int32_t h = c->qhead;
	c->send_inflight = 0;

	if (c->dead) {
		drop_queue(c); /* now also releases the head entry */
		maybe_close(fd);
		return;
	}
	if (cqe->res < 0) {
		if (cqe->res == -EINTR || cqe->res == -EAGAIN) {
			if (http)
				http_send(fd);
			else
				submit_send(fd);
			return;
		}
		kill_conn(fd);
		return;
	}
	if (http) {
		c->out_pos += (uint32_t)cqe->res;
		c->out_left -= (uint32_t)cqe->res;
		if (c->out_left)
			stats.short_sends++;
		if (c->out_left || c->owed)
			http_send(fd);
		else
			maybe_close(fd);
		return;
	}
	*q_off(h) += (uint32_t)cqe->res;
	if (*q_off(h) < q_len(h)) {
		stats.short_sends++;
		submit_send(fd); /* short send: send the rest */
		return;
	}
	c->qhead = q_next(h);
	if (c->qhead < 0)
		c->qtail = -1;
	q_release(h);
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
	fprintf(stderr, "usage: ref_echo_server [--port N] [--buffers N(power of 2)] [--buf-size BYTES] [--inc | --http]\n");
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
		else if (!strcmp(argv[i], "--inc"))
			inc = 1;
		else if (!strcmp(argv[i], "--http"))
			http = 1;
		else
			usage();
	}
	if (port < 0 || port > 65535 || nbufs == 0 || nbufs > 32768 ||
	    (nbufs & (nbufs - 1)) || buf_size == 0 || (inc && http))
		usage();
	if (http)
		http_date_refresh();

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
	if (inc) {
		incbufs = calloc(nbufs, sizeof(*incbufs));
		nmsgs = nbufs * 8; /* grows by doubling if it runs dry */
		msgs = malloc((size_t)nmsgs * sizeof(*msgs));
		if (!incbufs || !msgs)
			die("malloc", ENOMEM);
		for (unsigned i = nmsgs; i-- > 0;) {
			msgs[i].next = msg_free;
			msg_free = (int32_t)i;
		}
	}

	struct io_uring_buf_reg reg;
	memset(&reg, 0, sizeof(reg));
	reg.ring_addr = (uint64_t)(uintptr_t)br;
	reg.ring_entries = nbufs;
	reg.bgid = BGID;
	if (inc) {
#ifdef IO_URING_VERSION_MAJOR
		reg.flags = IOU_PBUF_RING_INC; /* liburing >= 2.4 */
#else
		reg.pad = IOU_PBUF_RING_INC; /* the kernel's "flags" */
#endif
	}
	ret = io_uring_register_buf_ring(&ring, &reg, 0);
	if (ret < 0 && inc) {
		fprintf(stderr, "ref_echo_server: --inc: registering the buffer ring with IOU_PBUF_RING_INC failed: %s%s\n",
			strerror(-ret),
			ret == -EINVAL ? " (incremental buffer consumption needs Linux 6.12+)" : "");
		exit(1);
	}
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

	if (inc)
		printf("listening on 127.0.0.1:%d backend=c-liburing inc=1 buffers=%u buf_size=%u\n",
		       ntohs(sa.sin_port), nbufs, buf_size);
	else
		printf("listening on 127.0.0.1:%d backend=c-liburing%s\n", ntohs(sa.sin_port), http ? " http=1" : "");
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
		if (http)
			http_date_refresh();

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

	if (getenv("REF_ECHO_STATS") && inc)
		fprintf(stderr, "ref_echo_server: accepted=%llu enobufs=%llu rearms=%llu short_sends=%llu recycled=%llu buf_more=%llu msg_nodes=%u held=%u\n",
			stats.accepted, stats.enobufs, stats.rearms, stats.short_sends,
			stats.recycled, stats.buf_more, nmsgs, held);
	else if (getenv("REF_ECHO_STATS"))
		fprintf(stderr, "ref_echo_server: accepted=%llu enobufs=%llu rearms=%llu short_sends=%llu recycled=%llu\n",
			stats.accepted, stats.enobufs, stats.rearms, stats.short_sends,
			stats.recycled);
	for (int fd = 0; fd < max_conns; fd++)
		if (conns[fd].open)
			close(fd);
	close(listen_fd);
	io_uring_queue_exit(&ring);
	close(sfd);
	free(conns);
	free(starved_q);
	free(nodes);
	free(incbufs);
	free(msgs);
	free(bufs_mem);
	free(ring_mem);
	return 0;
}
