/*
 * echoload.c - load generator for TCP echo servers (single thread, epoll).
 *
 * echoload --target 127.0.0.1:PORT [--connections N] [--size BYTES]
 *          [--duration SECONDS] [--warmup SECONDS] [--pipeline DEPTH]
 *          [--server-pid PID] [--connect-timeout SECONDS]
 *
 * All connections are established first, then the load starts.  Each
 * connection keeps DEPTH messages of SIZE bytes outstanding (DEPTH=1 is
 * ping-pong) and verifies every echoed byte.  Message (conn, seq) consists of
 * a 16-byte stamp (seq, conn id, hash) followed by a slice of a random pool
 * at an offset derived from (conn, seq), so every message differs.
 *
 * Messages completing after the warm-up are counted; latency (first send
 * attempt to last echoed byte) goes into a log-linear histogram.  The run
 * hard-stops at warmup+duration.  With --server-pid, utime+stime of that
 * process are read from /proc/PID/stat exactly at the start and end of the
 * measured window, so server CPU per message covers the same window as msgs.
 *
 * Output: one line of key=value pairs on stdout.  Exit 1 if errors > 0
 * (byte mismatch, unexpected EOF/reset, connect failure), 2 on usage error.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
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

#define HDR 16
#define POOL_SIZE (1u << 20)
#define SUB_BITS 6
#define SUB (1u << SUB_BITS)
#define NBUCKETS (64 * SUB)

struct conn {
	int fd;
	uint32_t id;
	int dead;
	int want_out;         /* EPOLLOUT registered */
	uint64_t send_seq;    /* next message to generate */
	uint64_t recv_seq;    /* next message expected back */
	uint32_t recv_off;    /* bytes of message recv_seq already verified */
	uint32_t exp_pool_off; /* pool offset of message recv_seq */
	uint8_t exp_hdr[HDR]; /* stamp of message recv_seq */
	uint8_t *sbuf;        /* unsent bytes live in sbuf[s_off..s_len) */
	uint32_t s_off, s_len;
	uint64_t *ts;         /* send time (ns) per outstanding message, [depth] */
};

static uint8_t *pool;
static uint32_t msg_size = 64, depth = 1;
static int nconns = 1;
static double duration = 10.0, warmup = 1.0, connect_timeout = 10.0;
static struct conn *conns;
static int epfd;
static int measuring, stopping;
static uint64_t msgs, errors, mismatch_reports;
static uint64_t hist[NBUCKETS];
static uint64_t lat_max;
static int alive;

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint64_t mix64(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdull;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ull;
	x ^= x >> 33;
	return x;
}

/* Stamp and pool offset for message (conn id, seq). */
static void msg_params(uint32_t id, uint64_t seq, uint8_t hdr[HDR], uint32_t *pool_off)
{
	uint64_t h = mix64(((uint64_t)id << 40) ^ seq ^ 0x9e3779b97f4a7c15ull);
	uint32_t check = (uint32_t)(h >> 32);
	memcpy(hdr, &seq, 8);
	memcpy(hdr + 8, &id, 4);
	memcpy(hdr + 12, &check, 4);
	*pool_off = (uint32_t)(h % POOL_SIZE);
}

static void build_msg(uint8_t *dst, uint32_t id, uint64_t seq)
{
	uint8_t hdr[HDR];
	uint32_t off;
	msg_params(id, seq, hdr, &off);
	uint32_t h = msg_size < HDR ? msg_size : HDR;
	memcpy(dst, hdr, h);
	if (msg_size > HDR)
		memcpy(dst + HDR, pool + off + HDR, msg_size - HDR);
}

static unsigned bucket_of(uint64_t v)
{
	if (v < 2 * SUB)
		return (unsigned)v;
	unsigned msb = 63u - (unsigned)__builtin_clzll(v);
	unsigned shift = msb - SUB_BITS;
	unsigned idx = (shift + 1) * SUB + (unsigned)(v >> shift) - SUB;
	return idx < NBUCKETS ? idx : NBUCKETS - 1;
}

static void bucket_range(unsigned idx, uint64_t *lo, uint64_t *hi)
{
	if (idx < 2 * SUB) {
		*lo = *hi = idx;
		return;
	}
	unsigned shift = idx / SUB - 1;
	uint64_t m = idx % SUB + SUB;
	*lo = m << shift;
	*hi = ((m + 1) << shift) - 1;
}

static double percentile_us(double p)
{
	uint64_t total = 0;
	for (unsigned i = 0; i < NBUCKETS; i++)
		total += hist[i];
	if (!total)
		return 0.0;
	uint64_t rank = (uint64_t)(p * (double)total + 0.999999);
	if (rank < 1)
		rank = 1;
	uint64_t cum = 0;
	for (unsigned i = 0; i < NBUCKETS; i++) {
		cum += hist[i];
		if (cum >= rank) {
			uint64_t lo, hi;
			bucket_range(i, &lo, &hi);
			double mid = ((double)lo + (double)hi) / 2.0;
			if (mid > (double)lat_max)
				mid = (double)lat_max;
			return mid / 1000.0;
		}
	}
	return (double)lat_max / 1000.0;
}

static void set_events(struct conn *c, int out)
{
	if (c->want_out == out)
		return;
	struct epoll_event ev = { .events = EPOLLIN | (out ? EPOLLOUT : 0), .data.u32 = c->id };
	if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0) {
		perror("echoload: epoll_ctl");
		exit(1);
	}
	c->want_out = out;
}

static void conn_fail(struct conn *c, const char *what, int err)
{
	if (c->dead)
		return;
	if (!stopping) {
		errors++;
		if (mismatch_reports++ < 10)
			fprintf(stderr, "echoload: conn %u: %s%s%s\n", c->id, what,
				err ? ": " : "", err ? strerror(err) : "");
	}
	c->dead = 1;
	alive--;
	epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	c->fd = -1;
}

/* Send whatever is pending; returns 0, or -1 if the connection failed. */
static int flush(struct conn *c)
{
	while (c->s_off < c->s_len) {
		ssize_t n = send(c->fd, c->sbuf + c->s_off, c->s_len - c->s_off, MSG_NOSIGNAL);
		if (n > 0) {
			c->s_off += (uint32_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			set_events(c, 1);
			return 0;
		}
		conn_fail(c, "send", n < 0 ? errno : 0);
		return -1;
	}
	c->s_off = c->s_len = 0;
	set_events(c, 0);
	return 0;
}

/* Top up the pipeline to DEPTH outstanding messages and send them. */
static int fill(struct conn *c, uint64_t now)
{
	if (stopping)
		return 0;
	uint64_t outstanding = c->send_seq - c->recv_seq;
	if (outstanding >= depth)
		return 0;
	if (c->s_off > 0) { /* compact unsent bytes to the front */
		memmove(c->sbuf, c->sbuf + c->s_off, c->s_len - c->s_off);
		c->s_len -= c->s_off;
		c->s_off = 0;
	}
	while (outstanding < depth) {
		build_msg(c->sbuf + c->s_len, c->id, c->send_seq);
		c->s_len += msg_size;
		c->ts[c->send_seq % depth] = now;
		c->send_seq++;
		outstanding++;
	}
	return flush(c);
}

static void expect_next(struct conn *c)
{
	c->recv_off = 0;
	msg_params(c->id, c->recv_seq, c->exp_hdr, &c->exp_pool_off);
}

/* Verify n received bytes; returns number of messages completed or -1. */
static int consume(struct conn *c, const uint8_t *p, size_t n, uint64_t now)
{
	int completed = 0;
	while (n > 0) {
		if (c->recv_seq >= c->send_seq) {
			conn_fail(c, "received more bytes than were sent", 0);
			return -1;
		}
		uint32_t want = msg_size - c->recv_off;
		uint32_t take = n < want ? (uint32_t)n : want;
		uint32_t o = c->recv_off;
		const uint8_t *q = p;
		uint32_t left = take;
		if (o < HDR) {
			uint32_t hl = HDR - o;
			if (hl > left)
				hl = left;
			if (memcmp(q, c->exp_hdr + o, hl) != 0)
				goto mismatch;
			q += hl;
			o += hl;
			left -= hl;
		}
		if (left && memcmp(q, pool + c->exp_pool_off + o, left) != 0)
			goto mismatch;
		c->recv_off += take;
		p += take;
		n -= take;
		if (c->recv_off == msg_size) {
			if (measuring) {
				uint64_t lat = now - c->ts[c->recv_seq % depth];
				hist[bucket_of(lat)]++;
				if (lat > lat_max)
					lat_max = lat;
				msgs++;
			}
			c->recv_seq++;
			completed++;
			expect_next(c);
		}
	}
	return completed;
mismatch:
	{
		/* locate the first differing byte of this message for the report */
		uint32_t take = n < msg_size - c->recv_off ? (uint32_t)n : msg_size - c->recv_off;
		uint32_t at = c->recv_off;
		unsigned got = 0, exp = 0;
		for (uint32_t k = 0; k < take; k++, at++) {
			uint8_t e = at < HDR ? c->exp_hdr[at] : pool[c->exp_pool_off + at];
			if (p[k] != e) {
				got = p[k];
				exp = e;
				break;
			}
		}
		char what[200];
		snprintf(what, sizeof(what),
			 "echoed bytes differ from sent bytes: message seq %" PRIu64
			 " byte %u of %u: got 0x%02x expected 0x%02x",
			 c->recv_seq, at, msg_size, got, exp);
		conn_fail(c, what, 0);
	}
	return -1;
}

static int parse_target(const char *t, struct sockaddr_in *sa)
{
	char host[64];
	const char *colon = strrchr(t, ':');
	if (!colon || (size_t)(colon - t) >= sizeof(host))
		return -1;
	memcpy(host, t, (size_t)(colon - t));
	host[colon - t] = 0;
	if (!strcmp(host, "localhost"))
		strcpy(host, "127.0.0.1");
	memset(sa, 0, sizeof(*sa));
	sa->sin_family = AF_INET;
	if (inet_pton(AF_INET, host, &sa->sin_addr) != 1)
		return -1;
	long port = strtol(colon + 1, NULL, 10);
	if (port <= 0 || port > 65535)
		return -1;
	sa->sin_port = htons((uint16_t)port);
	return 0;
}

static int connect_one(const struct sockaddr_in *sa, uint64_t deadline)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (connect(fd, (const struct sockaddr *)sa, sizeof(*sa)) == 0)
		return fd;
	if (errno != EINPROGRESS) {
		int e = errno;
		close(fd);
		return -e;
	}
	for (;;) {
		uint64_t now = now_ns();
		if (now >= deadline) {
			close(fd);
			return -ETIMEDOUT;
		}
		struct pollfd pfd = { .fd = fd, .events = POLLOUT };
		int ms = (int)((deadline - now) / 1000000ull) + 1;
		int r = poll(&pfd, 1, ms);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			int e = errno;
			close(fd);
			return -e;
		}
		if (r == 0)
			continue;
		int err = 0;
		socklen_t len = sizeof(err);
		getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
		if (err) {
			close(fd);
			return -err;
		}
		return fd;
	}
}

/* utime+stime (clock ticks) of pid from /proc/PID/stat, or -1. */
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

/* System-wide busy and steal ticks (USER_HZ) from the "cpu" line of /proc/stat. */
static int sys_ticks(unsigned long long *busy, unsigned long long *steal)
{
	FILE *f = fopen("/proc/stat", "r");
	if (!f)
		return -1;
	unsigned long long v[8] = { 0 };
	int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2],
		       &v[3], &v[4], &v[5], &v[6], &v[7]);
	fclose(f);
	if (n < 8)
		return -1;
	/* user nice system idle iowait irq softirq steal (guest is inside user) */
	*busy = v[0] + v[1] + v[2] + v[5] + v[6];
	*steal = v[7];
	return 0;
}

static double cpu_secs(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
	       (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static void usage(void)
{
	fprintf(stderr,
		"usage: echoload --target 127.0.0.1:PORT [--connections N] [--size BYTES]\n"
		"                [--duration S] [--warmup S] [--pipeline DEPTH]\n"
		"                [--server-pid PID] [--connect-timeout S]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	const char *target = NULL;
	int server_pid = 0;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (i + 1 >= argc)
			usage();
		const char *v = argv[++i];
		if (!strcmp(a, "--target")) target = v;
		else if (!strcmp(a, "--connections")) nconns = atoi(v);
		else if (!strcmp(a, "--size")) msg_size = (uint32_t)strtoul(v, NULL, 10);
		else if (!strcmp(a, "--duration")) duration = atof(v);
		else if (!strcmp(a, "--warmup")) warmup = atof(v);
		else if (!strcmp(a, "--pipeline")) depth = (uint32_t)strtoul(v, NULL, 10);
		else if (!strcmp(a, "--server-pid")) server_pid = atoi(v);
		else if (!strcmp(a, "--connect-timeout")) connect_timeout = atof(v);
		else usage();
	}
	struct sockaddr_in sa;
	if (!target || parse_target(target, &sa) < 0) {
		fprintf(stderr, "echoload: --target HOST:PORT (IPv4) required\n");
		usage();
	}
	if (nconns < 1 || msg_size < 1 || msg_size > (1u << 24) || depth < 1 ||
	    depth > 4096 || duration <= 0 || warmup < 0 || connect_timeout <= 0)
		usage();
	if ((double)nconns * depth * msg_size > 1024.0 * 1024 * 1024) {
		fprintf(stderr, "echoload: connections*pipeline*size exceeds 1 GiB\n");
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);

	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}

	pool = malloc(POOL_SIZE + (size_t)msg_size);
	conns = calloc((size_t)nconns, sizeof(*conns));
	if (!pool || !conns) {
		fprintf(stderr, "echoload: out of memory\n");
		return 2;
	}
	uint64_t x = 0x243f6a8885a308d3ull;
	for (size_t i = 0; i < POOL_SIZE + (size_t)msg_size; i++) {
		x ^= x << 13; x ^= x >> 7; x ^= x << 17;
		pool[i] = (uint8_t)(x >> 24);
	}

	epfd = epoll_create1(EPOLL_CLOEXEC);
	if (epfd < 0) {
		perror("echoload: epoll_create1");
		return 2;
	}

	/* Phase 1: connect everything. */
	uint64_t t_conn0 = now_ns();
	uint64_t conn_deadline = t_conn0 + (uint64_t)(connect_timeout * 1e9);
	int connect_errors = 0;
	for (int i = 0; i < nconns; i++) {
		struct conn *c = &conns[i];
		c->id = (uint32_t)i;
		c->fd = -1;
		c->dead = 1;
		c->sbuf = malloc((size_t)depth * msg_size);
		c->ts = calloc(depth, sizeof(*c->ts));
		if (!c->sbuf || !c->ts) {
			fprintf(stderr, "echoload: out of memory\n");
			return 2;
		}
		int fd = connect_one(&sa, conn_deadline);
		if (fd < 0) {
			if (connect_errors++ < 5)
				fprintf(stderr, "echoload: connect %s (conn %d): %s\n", target, i,
					strerror(-fd));
			continue;
		}
		c->fd = fd;
		c->dead = 0;
		alive++;
		struct epoll_event ev = { .events = EPOLLIN, .data.u32 = (uint32_t)i };
		if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
			perror("echoload: epoll_ctl");
			return 2;
		}
		expect_next(c);
	}
	double connect_ms = (double)(now_ns() - t_conn0) / 1e6;
	if (connect_errors) {
		errors += (uint64_t)connect_errors;
		printf("msgs=0 secs=0.00 msgs_per_sec=0.0 mb_per_sec=0.00 p50_us=0.0 p90_us=0.0 "
		       "p99_us=0.0 p999_us=0.0 max_us=0.0 errors=%" PRIu64 " client_cpu_pct=0.0 "
		       "connections=%d size=%u pipeline=%u connect_ms=%.1f connect_errors=%d\n",
		       errors, nconns, msg_size, depth, connect_ms, connect_errors);
		return 1;
	}

	/* Phase 2: load. */
	uint64_t t_start = now_ns();
	uint64_t t_warm_end = t_start + (uint64_t)(warmup * 1e9);
	uint64_t t_end = t_warm_end + (uint64_t)(duration * 1e9);
	uint64_t t_meas0 = 0, t_meas1 = 0;
	double cpu0 = 0, cpu1 = 0;
	long long sticks0 = -1, sticks1 = -1;
	unsigned long long busy0 = 0, busy1 = 0, steal0 = 0, steal1 = 0;
	int sys_ok0 = -1, sys_ok1 = -1;

	if (warmup <= 0) {
		measuring = 1;
		t_meas0 = now_ns();
		cpu0 = cpu_secs();
		sticks0 = proc_ticks(server_pid);
		sys_ok0 = sys_ticks(&busy0, &steal0);
	}
	for (int i = 0; i < nconns; i++)
		fill(&conns[i], now_ns());

	size_t rcap = (size_t)depth * msg_size;
	if (rcap < 65536)
		rcap = 65536;
	if (rcap > (1u << 20))
		rcap = 1u << 20;
	uint8_t *rbuf = malloc(rcap);
	struct epoll_event *evs = calloc(1024, sizeof(*evs));
	if (!rbuf || !evs) {
		fprintf(stderr, "echoload: out of memory\n");
		return 2;
	}

	for (;;) {
		uint64_t now = now_ns();
		if (!measuring && now >= t_warm_end) {
			measuring = 1;
			t_meas0 = now;
			cpu0 = cpu_secs();
			sticks0 = proc_ticks(server_pid);
			sys_ok0 = sys_ticks(&busy0, &steal0);
		}
		if (now >= t_end)
			break;
		if (alive == 0)
			break;
		uint64_t next = measuring ? t_end : t_warm_end;
		int timeout = (int)((next - now + 999999) / 1000000);
		int n = epoll_wait(epfd, evs, 1024, timeout);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			perror("echoload: epoll_wait");
			return 2;
		}
		for (int i = 0; i < n; i++) {
			struct conn *c = &conns[evs[i].data.u32];
			if (c->dead)
				continue;
			uint32_t e = evs[i].events;
			if (e & EPOLLOUT) {
				if (flush(c) < 0)
					continue;
			}
			if (e & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
				ssize_t r = recv(c->fd, rbuf, rcap, 0);
				if (r > 0) {
					uint64_t t = now_ns();
					int done = consume(c, rbuf, (size_t)r, t);
					if (done > 0)
						fill(c, t);
				} else if (r == 0) {
					conn_fail(c, "unexpected EOF from server", 0);
				} else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
					conn_fail(c, "recv", errno);
				}
			}
		}
	}
	t_meas1 = now_ns();
	cpu1 = cpu_secs();
	sticks1 = proc_ticks(server_pid);
	sys_ok1 = sys_ticks(&busy1, &steal1);
	if (!measuring) { /* ended before warm-up finished (all conns dead) */
		t_meas0 = t_meas1;
		cpu0 = cpu1;
		sticks0 = sticks1;
		busy0 = busy1;
		steal0 = steal1;
		sys_ok0 = sys_ok1;
	}
	stopping = 1;
	for (int i = 0; i < nconns; i++) {
		if (conns[i].fd >= 0)
			close(conns[i].fd);
	}

	double secs = (double)(t_meas1 - t_meas0) / 1e9;
	double rate = secs > 0 ? (double)msgs / secs : 0.0;
	double mbps = rate * msg_size / 1e6;
	double cpu_pct = secs > 0 ? (cpu1 - cpu0) / secs * 100.0 : 0.0;
	printf("msgs=%" PRIu64 " secs=%.3f msgs_per_sec=%.1f mb_per_sec=%.2f p50_us=%.1f p90_us=%.1f "
	       "p99_us=%.1f p999_us=%.1f max_us=%.1f errors=%" PRIu64 " client_cpu_pct=%.1f "
	       "connections=%d size=%u pipeline=%u connect_ms=%.1f",
	       msgs, secs, rate, mbps, percentile_us(0.50), percentile_us(0.90),
	       percentile_us(0.99), percentile_us(0.999), (double)lat_max / 1000.0, errors,
	       cpu_pct, nconns, msg_size, depth, connect_ms);
	long hz = sysconf(_SC_CLK_TCK);
	double server_s = 0.0;
	if (server_pid > 0 && sticks0 >= 0 && sticks1 >= 0)
		server_s = (double)(sticks1 - sticks0) / (double)hz;
	if (sys_ok0 == 0 && sys_ok1 == 0 && secs > 0) {
		/* CPU used by anything other than this client and the server
		 * (other processes, softirq outside both): interference flag.
		 * Tick-sampled, so only indicative (+-1 tick per CPU). */
		double busy_s = (double)(busy1 - busy0) / (double)hz;
		double other = (busy_s - server_s - (cpu1 - cpu0)) / secs * 100.0;
		if (other < 0)
			other = 0;
		printf(" other_cpu_pct=%.1f steal_pct=%.1f", other,
		       (double)(steal1 - steal0) / (double)hz / secs * 100.0);
	}
	if (server_pid > 0) {
		if (sticks0 >= 0 && sticks1 >= 0) {
			long long d = sticks1 - sticks0;
			double cpu_s = (double)d / (double)hz;
			printf(" server_ticks=%lld clk_tck=%ld server_cpu_pct=%.1f server_cpu_us_per_msg=%.3f",
			       d, hz, secs > 0 ? cpu_s / secs * 100.0 : 0.0,
			       msgs ? cpu_s * 1e6 / (double)msgs : 0.0);
		} else {
			printf(" server_ticks=NA clk_tck=%ld server_cpu_pct=NA server_cpu_us_per_msg=NA", hz);
		}
	}
	printf("\n");
	fflush(stdout);
	return errors ? 1 : 0;
}
