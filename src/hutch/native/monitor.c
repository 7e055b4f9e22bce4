/*
 * hutch-monitor: what stays behind for each detached container (the role conmon plays for Podman).
 *
 * A Python process costs several MiB of private memory; this program costs a few hundred KiB, which is what
 * lets a host carry hundreds of idle containers. It is exec'd by the hutch process that forked the
 * container's init, so it is that init's parent and the only one who can learn its exit status.
 *
 * It does four things and nothing else:
 *   - copies the container's stdout and stderr (or its pty) into a log in the CRI format
 *     ("<RFC3339Nano> <stdout|stderr> <F|P> <bytes>"), rotating it at a size cap;
 *   - serves an attach socket ("attach" in its working directory) for `hutch attach`, framed like Docker's
 *     attach stream: 8-byte header {stream, 0, 0, 0, big-endian length}. Clients send stream 0 (stdin;
 *     an empty frame closes the container's stdin) and stream 9 (4 bytes: rows, cols; resizes the pty);
 *   - reaps the init and writes its raw wait status to "exit" atomically (temp file, fsync, rename);
 *   - execs the command after "--" (hutch's finisher: cgroup removal, the record, restart policy).
 * If it is killed, the container runs on; the record is reconciled from "exit" or from the missing process.
 *
 * Usage: hutch-monitor -p PID -o FD [-e FD] [-i FD] [-t] [-s MAX_SIZE] [-n MAX_FILES] -- FINISHER...
 * run in the container's directory. All paths are relative to it: socket paths must fit in 108 bytes.
 *
 * Copy mode, for a container in the foreground (its hutch reaps it): without -p, the monitor only copies
 * -o/-e into the log and on to -T/-U (the user's terminal or pipe), and exits when both streams end.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "fullio.h"

#define LOG_NAME "container.log"
#define MAX_CLIENTS 16
#define CHUNK 16384

struct client {
	int fd;
	unsigned char buf[8 + CHUNK];
	size_t used;
};

static int log_fd = -1;
static long long log_size, max_size;
static int max_files = 1;
static struct client clients[MAX_CLIENTS];
static int stdin_fd = -1, console = 0, out_fd = -1;
static int tee_fd[3] = {-1, -1, -1}; /* by stream: where a foreground container's output goes on to */

static void die(const char *what)
{
	dprintf(2, "hutch-monitor: %s: %s\n", what, strerror(errno));
	_exit(1);
}


static void open_log(void)
{
	struct stat st;
	log_fd = open(LOG_NAME, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
	if (log_fd < 0)
		die("open " LOG_NAME);
	log_size = fstat(log_fd, &st) == 0 ? st.st_size : 0;
}

/* log -> log.1 -> ... -> log.(max_files-1); the oldest falls off. Readers follow the inode. */
static void rotate(void)
{
	char from[64], to[64];
	close(log_fd);
	if (max_files <= 1) {
		unlink(LOG_NAME);
	} else {
		for (int i = max_files - 1; i >= 1; i--) {
			snprintf(to, sizeof to, LOG_NAME ".%d", i);
			if (i == 1)
				snprintf(from, sizeof from, LOG_NAME);
			else
				snprintf(from, sizeof from, LOG_NAME ".%d", i - 1);
			rename(from, to);
		}
	}
	open_log();
}

static void flush_records(const char *out, size_t used)
{
	if (used && write_all(log_fd, out, used) == 0)
		log_size += (long long)used;
}

/* One record per line of the chunk; a chunk that does not end in a newline ends with a partial record.
 * Records are batched into one write, and the file rotates between records so none exceeds max_size. */
static void log_chunk(const char *stream, const char *data, size_t len)
{
	static char out[2 * CHUNK + 4096];
	char stamp[48];
	struct timespec ts;
	struct tm tm;
	size_t used = 0;

	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	size_t slen = strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(stamp + slen, sizeof stamp - slen, ".%09ldZ", ts.tv_nsec);

	while (len) {
		const char *nl = memchr(data, '\n', len);
		size_t line = nl ? (size_t)(nl - data) : len;
		size_t record = strlen(stamp) + strlen(stream) + 4 + line + 1;
		if (max_size > 0 && log_size + (long long)(used + record) > max_size && log_size + (long long)used > 0) {
			flush_records(out, used);
			used = 0;
			rotate();
		} else if (used + record > sizeof out) {
			flush_records(out, used);
			used = 0;
		}
		if (record > sizeof out) { /* cannot happen: a read is at most CHUNK bytes */
			line = sizeof out - record + line - 1;
		}
		int head = snprintf(out + used, sizeof out - used, "%s %s %c ", stamp, stream, nl ? 'F' : 'P');
		used += (size_t)head;
		memcpy(out + used, data, line);
		used += line;
		out[used++] = '\n';
		if (nl)
			line++;
		data += line;
		len -= line;
	}
	flush_records(out, used);
}

static void drop_client(struct client *c)
{
	close(c->fd);
	c->fd = -1;
	c->used = 0;
}

static void broadcast(int stream, const char *data, size_t len)
{
	unsigned char head[8] = {(unsigned char)stream, 0, 0, 0, (unsigned char)(len >> 24),
				 (unsigned char)(len >> 16), (unsigned char)(len >> 8), (unsigned char)len};
	for (int i = 0; i < MAX_CLIENTS; i++) {
		struct client *c = &clients[i];
		if (c->fd < 0)
			continue;
		/* A client that cannot keep up is dropped rather than allowed to stall the container's output. */
		if (send(c->fd, head, 8, MSG_NOSIGNAL | MSG_DONTWAIT | MSG_MORE) != 8 ||
		    send(c->fd, data, len, MSG_NOSIGNAL | MSG_DONTWAIT) != (ssize_t)len)
			drop_client(c);
	}
}

/* Returns 0 at end of stream. */
static int pump(int fd, int stream)
{
	char buf[CHUNK];
	ssize_t n = read(fd, buf, sizeof buf);
	if (n < 0 && (errno == EINTR || errno == EAGAIN))
		return 1;
	if (n <= 0) /* EIO on a pty whose last writer closed it is its end of stream too */
		return 0;
	log_chunk(stream == 2 ? "stderr" : "stdout", buf, (size_t)n);
	if (tee_fd[stream] >= 0 && write_all(tee_fd[stream], buf, (size_t)n) != 0)
		tee_fd[stream] = -1; /* the reader went away (| head): keep logging */
	broadcast(stream, buf, (size_t)n);
	return 1;
}

static void client_frames(struct client *c)
{
	for (;;) {
		if (c->used < 8)
			return;
		uint32_t len = (uint32_t)c->buf[4] << 24 | (uint32_t)c->buf[5] << 16 | (uint32_t)c->buf[6] << 8 |
			       c->buf[7];
		if (len > CHUNK) {
			drop_client(c);
			return;
		}
		if (c->used < 8 + len)
			return;
		if (c->buf[0] == 0 && len == 0 && stdin_fd >= 0 && !console) {
			close(stdin_fd);
			stdin_fd = -1;
		} else if (c->buf[0] == 0 && stdin_fd >= 0) {
			write_all(stdin_fd, c->buf + 8, len);
		} else if (c->buf[0] == 9 && len == 4 && console) {
			struct winsize ws = {.ws_row = (unsigned short)(c->buf[8] << 8 | c->buf[9]),
					     .ws_col = (unsigned short)(c->buf[10] << 8 | c->buf[11])};
			ioctl(out_fd, TIOCSWINSZ, &ws);
		}
		memmove(c->buf, c->buf + 8 + len, c->used - 8 - len);
		c->used -= 8 + len;
	}
}

static void write_exit(int status)
{
	char text[32];
	int n = snprintf(text, sizeof text, "%d\n", status);
	int fd = open("exit.tmp", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
	if (fd < 0)
		die("open exit.tmp");
	if (write_all(fd, text, (size_t)n) || fsync(fd) || close(fd) || rename("exit.tmp", "exit"))
		die("write exit");
}

int main(int argc, char **argv)
{
	pid_t pid = 0;
	int err_fd = -1, opt;
	while ((opt = getopt(argc, argv, "p:o:e:i:ts:n:T:U:")) != -1) {
		switch (opt) {
		case 'p': pid = (pid_t)atoi(optarg); break;
		case 'o': out_fd = atoi(optarg); break;
		case 'e': err_fd = atoi(optarg); break;
		case 'i': stdin_fd = atoi(optarg); break;
		case 't': console = 1; break;
		case 's': max_size = atoll(optarg); break;
		case 'n': max_files = atoi(optarg); break;
		case 'T': tee_fd[1] = atoi(optarg); break;
		case 'U': tee_fd[2] = atoi(optarg); break;
		default: return 2;
		}
	}
	if (pid == 0 && out_fd >= 0) { /* copy mode */
		signal(SIGPIPE, SIG_IGN);
		if (max_files < 1)
			max_files = 1;
		open_log();
		while (out_fd >= 0 || err_fd >= 0) {
			struct pollfd fds[2] = {{.fd = out_fd, .events = POLLIN}, {.fd = err_fd, .events = POLLIN}};
			if (poll(fds, 2, -1) < 0 && errno != EINTR)
				die("poll");
			if (out_fd >= 0 && fds[0].revents && !pump(out_fd, 1)) {
				close(out_fd);
				out_fd = -1;
			}
			if (err_fd >= 0 && fds[1].revents && !pump(err_fd, 2)) {
				close(err_fd);
				err_fd = -1;
			}
		}
		return 0;
	}
	if (pid <= 0 || out_fd < 0 || optind >= argc) {
		dprintf(2, "usage: hutch-monitor -p PID -o FD [-e FD] [-i FD] [-t] [-s SIZE] [-n FILES] -- CMD...\n");
		return 2;
	}
	if (max_files < 1)
		max_files = 1;

	sigset_t mask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGCHLD);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	int sfd = signalfd(-1, &mask, SFD_CLOEXEC | SFD_NONBLOCK);
	if (sfd < 0)
		die("signalfd");
	signal(SIGPIPE, SIG_IGN);
	signal(SIGHUP, SIG_IGN);
	signal(SIGINT, SIG_IGN);

	open_log();
	for (int i = 0; i < MAX_CLIENTS; i++)
		clients[i].fd = -1;
	unlink("attach");
	int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	struct sockaddr_un addr = {.sun_family = AF_UNIX, .sun_path = "attach"};
	if (lfd < 0 || bind(lfd, (struct sockaddr *)&addr, sizeof addr) || listen(lfd, 8))
		die("attach socket");
	fcntl(out_fd, F_SETFD, FD_CLOEXEC);
	if (err_fd >= 0)
		fcntl(err_fd, F_SETFD, FD_CLOEXEC);
	if (stdin_fd >= 0)
		fcntl(stdin_fd, F_SETFD, FD_CLOEXEC);

	int status = -1, exited = 0;
	time_t drain_until = 0;
	/* The init may already be gone: signals before the mask was set are not queued, so look first. */
	if (waitpid(pid, &status, WNOHANG) == pid) {
		exited = 1;
		drain_until = time(NULL) + 2;
	}
	for (;;) {
		struct pollfd fds[4 + MAX_CLIENTS];
		int n = 0, at_out = -1, at_err = -1;
		fds[n++] = (struct pollfd){.fd = sfd, .events = POLLIN};
		fds[n++] = (struct pollfd){.fd = lfd, .events = POLLIN};
		if (out_fd >= 0) {
			at_out = n;
			fds[n++] = (struct pollfd){.fd = out_fd, .events = POLLIN};
		}
		if (err_fd >= 0) {
			at_err = n;
			fds[n++] = (struct pollfd){.fd = err_fd, .events = POLLIN};
		}
		int first_client = n;
		for (int i = 0; i < MAX_CLIENTS; i++)
			fds[n++] = (struct pollfd){.fd = clients[i].fd, .events = POLLIN};

		if (out_fd < 0 && err_fd < 0 && exited)
			break;
		/* Output held open by a process that escaped the container's end is not worth waiting for. */
		if (exited && time(NULL) > drain_until)
			break;
		if (poll(fds, (nfds_t)n, exited ? 200 : -1) < 0 && errno != EINTR)
			die("poll");

		if (fds[0].revents) {
			struct signalfd_siginfo si;
			while (read(sfd, &si, sizeof si) > 0)
				;
			int st;
			pid_t got;
			while ((got = waitpid(-1, &st, WNOHANG)) > 0) {
				if (got == pid) {
					status = st;
					exited = 1;
					drain_until = time(NULL) + 2;
				}
			}
		}
		if (fds[1].revents & POLLIN) {
			int cfd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
			int slot = -1;
			for (int i = 0; i < MAX_CLIENTS && cfd >= 0; i++)
				if (clients[i].fd < 0) {
					slot = i;
					break;
				}
			if (slot < 0 && cfd >= 0)
				close(cfd);
			else if (cfd >= 0)
				clients[slot].fd = cfd;
		}
		if (at_out >= 0 && fds[at_out].revents && !pump(out_fd, 1)) {
			close(out_fd);
			out_fd = -1;
		}
		if (at_err >= 0 && fds[at_err].revents && !pump(err_fd, 2)) {
			close(err_fd);
			err_fd = -1;
		}
		for (int i = 0; i < MAX_CLIENTS; i++) {
			struct client *c = &clients[i];
			if (c->fd < 0 || !fds[first_client + i].revents)
				continue;
			ssize_t got = read(c->fd, c->buf + c->used, sizeof c->buf - c->used);
			if (got <= 0) {
				drop_client(c);
				continue;
			}
			c->used += (size_t)got;
			client_frames(c);
		}
	}

	write_exit(status);
	unlink("attach");
	for (int i = 0; i < MAX_CLIENTS; i++)
		if (clients[i].fd >= 0)
			close(clients[i].fd);
	close(log_fd);
	execvp(argv[optind], argv + optind);
	die("exec finisher");
}
