/* stopreader: clients that send echo traffic and never read (for the kernel matrix's non-reading check).
 *
 *   stopreader PORT COUNT PUSH-SECONDS LIMIT-SECONDS
 *
 * Opens COUNT connections to 127.0.0.1:PORT with a 4 KiB receive buffer, pushes bytes into each
 * (non-blocking) for PUSH-SECONDS without ever reading, then waits until the server has cut every one
 * off, judged without reading: the client socket left ESTABLISHED (reset or FIN seen) or reports an
 * error/hang-up, or the server's end of it is no longer ESTABLISHED in /proc/net/tcp (a close with
 * unsent output parks it in FIN_WAIT1 behind the zero window). Prints one line; exits 0 when every
 * connection was cut off within LIMIT-SECONDS of the start, 1 otherwise, 2 on a usage or set-up error.
 * Built static by scripts/kernel-matrix/run.sh.
 */
#define _GNU_SOURCE /* POLLRDHUP */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS 256

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Whether the server still holds the connection whose client end is `client_port` as ESTABLISHED. */
static int server_established(int server_port, int client_port) {
    FILE *f = fopen("/proc/net/tcp", "r");
    if (!f) return 1;
    char line[512];
    int found = 0;
    if (!fgets(line, sizeof line, f)) { fclose(f); return 1; }
    while (fgets(line, sizeof line, f)) {
        unsigned lport, rport, state;
        if (sscanf(line, " %*d: %*8x:%4x %*8x:%4x %2x", &lport, &rport, &state) != 3) continue;
        if ((int)lport == server_port && (int)rport == client_port && state == 1) { found = 1; break; }
    }
    fclose(f);
    return found;
}

/* Whether the client end shows the server's cut-off (reset, FIN, error) without reading. */
static int client_cut(int fd) {
    struct tcp_info ti;
    socklen_t len = sizeof ti;
    if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) == 0 && ti.tcpi_state != 1 /* TCP_ESTABLISHED */)
        return 1;
    struct pollfd p = {.fd = fd, .events = POLLRDHUP};
    return poll(&p, 1, 0) > 0 && (p.revents & (POLLERR | POLLHUP | POLLRDHUP));
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: stopreader PORT COUNT PUSH-SECONDS LIMIT-SECONDS\n");
        return 2;
    }
    int port = atoi(argv[1]), n = atoi(argv[2]);
    double push = atof(argv[3]), limit = atof(argv[4]);
    if (port <= 0 || n <= 0 || n > MAX_CONNS) { fprintf(stderr, "stopreader: bad arguments\n"); return 2; }
    int fds[MAX_CONNS], lports[MAX_CONNS];
    double cut_at[MAX_CONNS];
    long long sent[MAX_CONNS];
    double t0 = now();
    for (int i = 0; i < n; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        int rcv = 4096;
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof rcv);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
        a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
            fprintf(stderr, "stopreader: connect: %s\n", strerror(errno));
            return 2;
        }
        struct sockaddr_in l;
        socklen_t ll = sizeof l;
        getsockname(fd, (struct sockaddr *)&l, &ll);
        lports[i] = ntohs(l.sin_port);
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        fds[i] = fd; cut_at[i] = -1; sent[i] = 0;
    }
    static char chunk[65536];
    memset(chunk, 'D', sizeof chunk);
    while (now() - t0 < push) {
        int progressed = 0;
        for (int i = 0; i < n; i++) {
            if (cut_at[i] >= 0) continue;
            ssize_t k = send(fds[i], chunk, sizeof chunk, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (k > 0) { sent[i] += k; progressed = 1; }
            else if (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK) cut_at[i] = now() - t0;
        }
        if (!progressed) usleep(5000);
    }
    double stuck = now() - t0;
    int remaining = n;
    while (now() - t0 < limit) {
        remaining = 0;
        for (int i = 0; i < n; i++) {
            if (cut_at[i] >= 0) continue;
            if (client_cut(fds[i]) || !server_established(port, lports[i])) cut_at[i] = now() - t0;
            else remaining++;
        }
        if (remaining == 0) break;
        usleep(20000);
    }
    long long total = 0;
    double last = 0;
    for (int i = 0; i < n; i++) {
        total += sent[i];
        if (cut_at[i] > last) last = cut_at[i];
        close(fds[i]);
    }
    printf("non-readers=%d pushed=%lldKiB stuck_at=%.1fs cut_off=%d/%d last_cut=%.1fs limit=%.0fs\n",
           n, total / 1024, stuck, n - remaining, n, last, limit);
    return remaining == 0 ? 0 : 1;
}
