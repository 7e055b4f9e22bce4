/* The agent's loop: the container's stdio and pty, control lines, reaping, execs; then power-off. */
#include "agent.h"

/* Copy what `from` has (at most `limit` bytes) into `to`, or as frames of `type`; how many bytes, or -1 at
 * EOF or error (EIO: the pty's last slave closed). */
ssize_t pump(int from, int to, int type, int id, uint64_t limit)
{
	static char buf[1 << 16];
	ssize_t n = read(from, buf, limit < sizeof(buf) ? (size_t)limit : sizeof(buf));
	if (n < 0 && (errno == EINTR || errno == EAGAIN))
		return 0;
	if (n <= 0)
		return -1;
	if (type)
		send_frame(type, id, buf, (uint32_t)n);
	else
		write_all(to, buf, (size_t)n);
	return n;
}

/* With -t: input from the stdin port to the pty's master (`from`: read more first; -1: only flush). The
 * port is read only when the queue is empty, so a program that stops reading its terminal holds the
 * host's stdin back through virtio-serial instead of blocking this loop. */
static void tty_input(struct container *k, int from)
{
	if (from >= 0) {
		ssize_t n = read(from, k->queue, sizeof(k->queue));
		if (n <= 0 && !(n < 0 && (errno == EINTR || errno == EAGAIN))) {
			close(k->in), k->in = -1; /* stdin's end: the terminal stays, as with docker run -t */
			return;
		}
		k->head = 0, k->queued = n > 0 ? (size_t)n : 0;
	}
	while (k->queued && k->master >= 0) {
		ssize_t n = write(k->master, k->queue + k->head, k->queued);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			return;
		if (n <= 0) {
			k->queued = 0; /* the terminal is gone: the master's read sees it too */
			return;
		}
		k->head += (size_t)n, k->queued -= (size_t)n;
	}
}

/* "signal N" goes to the container's pid 1, "winch ROWS COLS" to its pty (kept for a pty still to come). */
static void control_line(struct container *k, const char *line)
{
	int a, b;
	if (sscanf(line, "signal %d", &a) == 1)
		kill(k->pid, a);
	else if (sscanf(line, "winch %d %d", &a, &b) == 2) {
		uint16_t rc[2] = {(uint16_t)a, (uint16_t)b};
		memcpy(k->winsize, rc, 4), k->have_winsize = 1;
		set_winsize(k->master, k->winsize);
	}
}

static void read_control(struct container *k)
{
	static char line[256];
	static size_t used;
	ssize_t got = read(ctl, line + used, sizeof(line) - 1 - used);
	if (got <= 0) {
		ctl = -1; /* the host went away: QEMU is being killed */
		return;
	}
	used += (size_t)got;
	line[used] = 0;
	char *nl, *start = line;
	while ((nl = strchr(start, '\n'))) {
		*nl = 0;
		control_line(k, start);
		start = nl + 1;
	}
	used = strlen(start);
	memmove(line, start, used);
	if (used == sizeof(line) - 1)
		used = 0; /* an overlong line: dropped */
}

static void reap(int sigfd, struct container *k)
{
	struct signalfd_siginfo si;
	while (read(sigfd, &si, sizeof(si)) > 0)
		;
	int status;
	pid_t pid;
	while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
		if (pid == k->pid)
			k->status = status, k->reaped = 1;
		for (int i = 1; i < MAX_EXECS; i++)
			if (execs[i].used && execs[i].pid == pid) {
				execs[i].reaped = 1, execs[i].code = code_of(status);
				exec_done_if_finished(i, &execs[i]);
			}
	}
}

int main(int argc, char **argv)
{
	(void)argc, (void)argv; /* the kernel passes init its command line's leftovers: none are ours */
	if (getpid() != 1) {
		dprintf(2, "hutch-vmagent: the guest's init, started by its kernel only\n");
		return 2;
	}
	boot();
	struct container k = {.master = -1, .tty_sock = -1};
	k.in = find_port("hutch.stdin");
	k.out = find_port("hutch.stdout");
	int err = find_port("hutch.stderr"), started[2];
	if (k.in < 0 || k.out < 0 || err < 0)
		fail("opening the stdio ports");
	sigset_t chld;
	sigemptyset(&chld);
	sigaddset(&chld, SIGCHLD);
	sigprocmask(SIG_BLOCK, &chld, NULL);
	int sigfd = signalfd(-1, &chld, SFD_CLOEXEC | SFD_NONBLOCK);
	int self_pidns = open("/proc/self/ns/pid", O_RDONLY | O_CLOEXEC);
	/* started: an exec must join the container once its root is "/"; before, it would see the initramfs.
	 * The child's copy of the write end closes when it execs the command (close-on-exec): EOF means started.
	 * staged: the child's byte once its stage is built, then one once it has read its config. */
	int staged[2];
	if (pipe2(started, O_CLOEXEC) < 0 || pipe2(staged, O_CLOEXEC) < 0)
		fail("pipe");
	uint32_t stage_len;
	unsigned char *stage = read_block(ctl, &stage_len);
	if (!stage)
		fail("read the stage");
	k.pid = spawn_container(stage, stage_len, &k, err, &chld, staged[1]);
	/* Held, never closed: when the container's pid 1 exits, its mount namespace would otherwise be torn
	 * down (every mount of the container undone) before its parent could reap it and report the exit;
	 * the guest is reset right after, so nothing needs undoing. */
	(void)open_ns(k.pid, "mnt");
	close(err);
	close(started[1]);
	close(staged[1]);
	char byte = 0;
	if (read(staged[0], &byte, 1) != 1)
		fail("staging the container's /proc, /sys and /dev");
	/* before "ready" too: after it, on a clone, the agent would take the only vCPU from the container's
	 * start with a walk of sysfs */
	exec_port = find_port("hutch.exec");
	/* "ready": booted and waiting for a container. A template is saved at this point, with this program
	 * and the container's pid 1 (staged, waiting for its config) blocked in their reads: a restored clone
	 * starts here, and its first steps after the restore are the container's own. */
	dprintf(ctl, "ready\n");
	/* The container's pid 1 reads its config from the control port; until it says it has (or dies: EOF,
	 * reported as its exit below), the port is not ours to read. */
	if (read(staged[0], &byte, 1) != 1 || byte != 't') {
		close(k.in), k.in = -1;
		close(k.tty_sock), k.tty_sock = -1;
	}
	close(staged[0]);
	size_t frames_used = 0;
	static unsigned char frames[1 << 20];
	for (;;) {
		if (k.reaped && k.master < 0 && k.tty_sock < 0) {
			dprintf(ctl, "exit %d\n", code_of(k.status));
			power_off();
		}
		static struct pollfd p[8 + 4 * MAX_EXECS];
		int n = 0;
		p[n++] = (struct pollfd){ctl, POLLIN, 0};
		p[n++] = (struct pollfd){sigfd, POLLIN, 0};
		p[n++] = (struct pollfd){started[0] < 0 ? exec_port : started[0], POLLIN, 0};
		p[n++] = (struct pollfd){k.tty_sock, POLLIN, 0};
		p[n++] = (struct pollfd){k.master, (short)(POLLIN | (k.queued ? POLLOUT : 0)), 0};
		p[n++] = (struct pollfd){k.master >= 0 && !k.queued ? k.in : -1, POLLIN, 0};
		n = exec_poll_set(p, n);
		if (poll(p, (nfds_t)n, -1) < 0)
			continue;
		if (p[0].revents)
			read_control(&k);
		if (p[1].revents)
			reap(sigfd, &k);
		if (p[2].revents && started[0] >= 0) {
			char byte;
			if (read(started[0], &byte, 1) <= 0)
				close(started[0]), started[0] = -1;
		} else if (p[2].revents) {
			ssize_t got = read(exec_port, frames + frames_used, sizeof(frames) - frames_used);
			if (got > 0)
				frames_used = handle_frames(frames, frames_used + (size_t)got, k.pid, self_pidns);
			if (frames_used == sizeof(frames))
				frames_used = 0; /* a frame larger than the buffer: dropped */
		}
		if (p[3].revents) {
			k.master = recv_fd(k.tty_sock); /* -1 if the child failed before its pty */
			close(k.tty_sock), k.tty_sock = -1;
			if (k.master >= 0 && k.have_winsize)
				set_winsize(k.master, k.winsize);
			if (k.master >= 0)
				fcntl(k.master, F_SETFL, O_NONBLOCK); /* see tty_input */
		}
		if (p[4].revents & POLLOUT)
			tty_input(&k, -1);
		if ((p[4].revents & ~POLLOUT) && pump(k.master, k.out, 0, 0, sizeof(k.queue)) < 0)
			close(k.master), k.master = -1;
		if (p[5].revents && k.master >= 0)
			tty_input(&k, k.in);
		exec_serve(p);
	}
}
