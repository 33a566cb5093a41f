/*
 * netprobe: a tiny static client/server for weir's cluster tests (the test
 * image, scripts/image.sh). It sends and receives exact amounts of traffic and
 * prints what it did, one `key=value` line per event, so a test can compare
 * the numbers with what weir counted.
 *
 *   netprobe serve PORT [IDLE_MS]
 *       TCP and UDP server on PORT (0.0.0.0). For each TCP connection it reads
 *       until EOF, replies "ok <bytes>\n" and prints
 *         tcp-recv from=IP:PORT bytes=N
 *       UDP datagrams are counted per sender; once a sender was idle IDLE_MS
 *       (default 1000) it prints
 *         udp-recv from=IP:PORT datagrams=N bytes=N
 *   netprobe udp-send IP PORT COUNT SIZE [GAP_US]
 *       sends COUNT datagrams of SIZE payload bytes (GAP_US between them,
 *       default 1000) from one socket; prints
 *         udp-send to=IP:PORT from=IP:PORT datagrams=N size=N bytes=N
 *   netprobe tcp-send IP PORT BYTES
 *       connects, writes BYTES, shuts down its write side, reads the reply;
 *       prints  tcp-send to=IP:PORT from=IP:PORT bytes=N reply="ok N"
 *       and fails (exit 1) unless the server confirms BYTES.
 *
 * Numeric IPv4 addresses only: static glibc has no usable name service.
 * Exit 0 on success, 1 on any error (with a message on stderr).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_CONNS 64
#define MAX_PEERS 256
#define BUF 65536

static void die(const char *what)
{
	fprintf(stderr, "netprobe: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void usage(void)
{
	fputs("usage: netprobe serve PORT [IDLE_MS]\n"
	      "       netprobe udp-send IP PORT COUNT SIZE [GAP_US]\n"
	      "       netprobe tcp-send IP PORT BYTES\n",
	      stderr);
	exit(2);
}

static unsigned long long num(const char *s, const char *what)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || *s == '\0' || *end != '\0' || *s == '-') {
		fprintf(stderr, "netprobe: bad %s: %s\n", what, s);
		exit(2);
	}
	return v;
}

static struct sockaddr_in addr(const char *ip, const char *port)
{
	struct sockaddr_in a;
	memset(&a, 0, sizeof a);
	a.sin_family = AF_INET;
	unsigned long long p = num(port, "port");
	if (p > 65535)
		usage();
	a.sin_port = htons((unsigned short)p);
	if (inet_pton(AF_INET, ip, &a.sin_addr) != 1) {
		fprintf(stderr, "netprobe: not an IPv4 address: %s\n", ip);
		exit(2);
	}
	return a;
}

static const char *fmt(const struct sockaddr_in *a, char *out, size_t n)
{
	char ip[INET_ADDRSTRLEN];
	inet_ntop(AF_INET, &a->sin_addr, ip, sizeof ip);
	snprintf(out, n, "%s:%u", ip, ntohs(a->sin_port));
	return out;
}

static long long now_ms(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (long long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

struct conn {
	int fd;
	struct sockaddr_in peer;
	unsigned long long bytes;
};

struct udp_peer {
	struct sockaddr_in peer;
	unsigned long long datagrams, bytes;
	long long last_ms;
	int used;
};

static int serve(int argc, char **argv)
{
	if (argc < 3 || argc > 4)
		usage();
	struct sockaddr_in a = addr("0.0.0.0", argv[2]);
	long long idle = argc == 4 ? (long long)num(argv[3], "IDLE_MS") : 1000;
	int one = 1;
	int tl = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	int us = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (tl < 0 || us < 0)
		die("socket");
	setsockopt(tl, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (bind(tl, (struct sockaddr *)&a, sizeof a) || listen(tl, 64))
		die("tcp bind/listen");
	if (bind(us, (struct sockaddr *)&a, sizeof a))
		die("udp bind");
	int rcvbuf = 4 << 20;
	setsockopt(us, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
	printf("serve port=%s\n", argv[2]);
	fflush(stdout);

	static struct conn conns[MAX_CONNS];
	static struct udp_peer peers[MAX_PEERS];
	static char buf[BUF];
	int nconn = 0;
	char s[64];
	for (;;) {
		struct pollfd p[2 + MAX_CONNS];
		p[0] = (struct pollfd){.fd = tl, .events = POLLIN};
		p[1] = (struct pollfd){.fd = us, .events = POLLIN};
		for (int i = 0; i < nconn; i++)
			p[2 + i] = (struct pollfd){.fd = conns[i].fd, .events = POLLIN};
		int timeout = -1;
		for (int i = 0; i < MAX_PEERS; i++)
			if (peers[i].used) {
				long long left = peers[i].last_ms + idle - now_ms();
				if (left < 0)
					left = 0;
				if (timeout < 0 || left < timeout)
					timeout = (int)left;
			}
		if (poll(p, 2 + nconn, timeout) < 0) {
			if (errno == EINTR)
				continue;
			die("poll");
		}
		if (p[0].revents & POLLIN) {
			struct conn c = {0};
			socklen_t l = sizeof c.peer;
			c.fd = accept4(tl, (struct sockaddr *)&c.peer, &l, SOCK_CLOEXEC);
			if (c.fd >= 0) {
				if (nconn < MAX_CONNS)
					conns[nconn++] = c;
				else
					close(c.fd);
			}
		}
		if (p[1].revents & POLLIN) {
			for (;;) {
				struct sockaddr_in from;
				socklen_t l = sizeof from;
				ssize_t n = recvfrom(us, buf, sizeof buf, MSG_DONTWAIT, (struct sockaddr *)&from, &l);
				if (n < 0)
					break;
				int slot = -1, free_slot = -1;
				for (int i = 0; i < MAX_PEERS; i++) {
					if (peers[i].used && peers[i].peer.sin_addr.s_addr == from.sin_addr.s_addr &&
					    peers[i].peer.sin_port == from.sin_port) {
						slot = i;
						break;
					}
					if (!peers[i].used && free_slot < 0)
						free_slot = i;
				}
				if (slot < 0) {
					if (free_slot < 0)
						continue;
					slot = free_slot;
					peers[slot] = (struct udp_peer){.peer = from, .used = 1};
				}
				peers[slot].datagrams++;
				peers[slot].bytes += (unsigned long long)n;
				peers[slot].last_ms = now_ms();
			}
		}
		for (int i = 0; i < nconn; i++) {
			if (!(p[2 + i].revents & (POLLIN | POLLHUP | POLLERR)))
				continue;
			ssize_t n = read(conns[i].fd, buf, sizeof buf);
			if (n > 0) {
				conns[i].bytes += (unsigned long long)n;
				continue;
			}
			if (n == 0) {
				char reply[64];
				int rl = snprintf(reply, sizeof reply, "ok %llu\n", conns[i].bytes);
				if (write(conns[i].fd, reply, (size_t)rl) < 0) {
					/* the client went away: still report what arrived */
				}
				printf("tcp-recv from=%s bytes=%llu\n", fmt(&conns[i].peer, s, sizeof s), conns[i].bytes);
			} else {
				printf("tcp-recv from=%s bytes=%llu error=%s\n", fmt(&conns[i].peer, s, sizeof s),
				       conns[i].bytes, strerror(errno));
			}
			fflush(stdout);
			close(conns[i].fd);
			conns[i] = conns[--nconn];
			/* the moved connection's revents are not in p[2 + i]; it is polled again next round */
			i = nconn;
		}
		long long t = now_ms();
		for (int i = 0; i < MAX_PEERS; i++)
			if (peers[i].used && t - peers[i].last_ms >= idle) {
				printf("udp-recv from=%s datagrams=%llu bytes=%llu\n", fmt(&peers[i].peer, s, sizeof s),
				       peers[i].datagrams, peers[i].bytes);
				fflush(stdout);
				peers[i].used = 0;
			}
	}
	return 0;
}

static int udp_send(int argc, char **argv)
{
	if (argc < 6 || argc > 7)
		usage();
	struct sockaddr_in to = addr(argv[2], argv[3]), me;
	unsigned long long count = num(argv[4], "COUNT"), size = num(argv[5], "SIZE");
	unsigned long long gap = argc == 7 ? num(argv[6], "GAP_US") : 1000;
	if (size > BUF)
		usage();
	static char buf[BUF];
	memset(buf, 'w', sizeof buf);
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&to, sizeof to))
		die("udp connect");
	socklen_t l = sizeof me;
	getsockname(fd, (struct sockaddr *)&me, &l);
	unsigned long long sent = 0;
	for (unsigned long long i = 0; i < count; i++) {
		if (send(fd, buf, size, 0) != (ssize_t)size)
			die("udp send");
		sent++;
		if (gap && i + 1 < count)
			usleep((useconds_t)gap);
	}
	char s1[64], s2[64];
	printf("udp-send to=%s from=%s datagrams=%llu size=%llu bytes=%llu\n", fmt(&to, s1, sizeof s1),
	       fmt(&me, s2, sizeof s2), sent, size, sent * size);
	return 0;
}

static int tcp_send(int argc, char **argv)
{
	if (argc != 5)
		usage();
	struct sockaddr_in to = addr(argv[2], argv[3]), me;
	unsigned long long total = num(argv[4], "BYTES"), done = 0;
	static char buf[BUF];
	memset(buf, 'w', sizeof buf);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&to, sizeof to))
		die("tcp connect");
	socklen_t l = sizeof me;
	getsockname(fd, (struct sockaddr *)&me, &l);
	while (done < total) {
		size_t chunk = total - done < BUF ? (size_t)(total - done) : BUF;
		ssize_t n = write(fd, buf, chunk);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			die("tcp write");
		}
		done += (unsigned long long)n;
	}
	if (shutdown(fd, SHUT_WR))
		die("tcp shutdown");
	char reply[64];
	size_t got = 0;
	for (;;) {
		ssize_t n = read(fd, reply + got, sizeof reply - 1 - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			die("tcp read");
		if (n == 0 || (got += (size_t)n) == sizeof reply - 1)
			break;
	}
	reply[got] = '\0';
	reply[strcspn(reply, "\n")] = '\0';
	char s1[64], s2[64], want[64];
	printf("tcp-send to=%s from=%s bytes=%llu reply=\"%s\"\n", fmt(&to, s1, sizeof s1), fmt(&me, s2, sizeof s2),
	       done, reply);
	snprintf(want, sizeof want, "ok %llu", total);
	if (strcmp(reply, want) != 0) {
		fprintf(stderr, "netprobe: server confirmed \"%s\", expected \"%s\"\n", reply, want);
		return 1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc < 2)
		usage();
	if (!strcmp(argv[1], "serve"))
		return serve(argc, argv);
	if (!strcmp(argv[1], "udp-send"))
		return udp_send(argc, argv);
	if (!strcmp(argv[1], "tcp-send"))
		return tcp_send(argc, argv);
	usage();
}
