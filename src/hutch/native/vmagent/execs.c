/* `hutch exec`: frames on the exec port, each exec's process, its windows of stdin and output. */
#include "agent.h"

struct exec execs[MAX_EXECS];

void send_frame(int type, int id, const void *data, uint32_t len)
{
	unsigned char head[8] = {(unsigned char)type, (unsigned char)id, 0, 0};
	memcpy(head + 4, &len, 4);
	if (exec_port < 0)
		return;
	write_all(exec_port, head, 8);
	if (len)
		write_all(exec_port, data, len);
}

int code_of(int status)
{
	return WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status);
}

int open_ns(pid_t pid, const char *kind)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/ns/%s", pid, kind);
	return open(path, O_RDONLY | O_CLOEXEC);
}

/* `hutch exec`: a process in the container's namespaces, set up like its pid 1. The agent itself enters
 * the container's pid namespace for the fork only, so the process is its child (it reaps it and reports
 * the exit code) and yet in the container's pid namespace. */
static void start_exec(int id, unsigned char *conf, uint32_t len, pid_t cpid, int self_pidns)
{
	static struct config c;
	struct exec *e = id > 0 && id < MAX_EXECS && !execs[id].used ? &execs[id] : NULL;
	int code = 125;
	uint32_t declared = 0;
	if (len >= 4)
		memcpy(&declared, conf, 4);
	if (!e || declared != len - 4 || parse_config(conf + 4, declared, &c) < 0) {
		send_frame(F_STDERR, id, "hutch: bad exec request\n", 24);
		send_frame(F_EXIT, id, &code, 4);
		return;
	}
	int in[2] = {-1, -1}, out[2] = {-1, -1}, err[2] = {-1, -1}, sock[2] = {-1, -1};
	int pidns = open_ns(cpid, "pid"), mnt = open_ns(cpid, "mnt"), uts = open_ns(cpid, "uts"),
	    ipc = open_ns(cpid, "ipc");
	if (c.tty)
		socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sock);
	else if (pipe2(in, O_CLOEXEC) < 0 || pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0)
		pidns = -1;
	pid_t pid = -1;
	if (pidns >= 0 && mnt >= 0 && setns(pidns, CLONE_NEWPID) == 0) {
		pid = fork();
		if (pid == 0) {
			if (setns(ipc, CLONE_NEWIPC) < 0 || setns(uts, CLONE_NEWUTS) < 0 || setns(mnt, CLONE_NEWNS) < 0)
				die(125, "joining the container's namespaces", NULL, errno);
			if (!c.tty) {
				dup2(in[0], 0), dup2(out[1], 1), dup2(err[1], 2);
			}
			start_process(&c, sock[1]);
		}
		setns(self_pidns, CLONE_NEWPID);
	}
	int fds[] = {pidns, mnt, uts, ipc, in[0], out[1], err[1], sock[1]};
	for (unsigned i = 0; i < sizeof(fds) / sizeof(fds[0]); i++)
		if (fds[i] >= 0)
			close(fds[i]);
	if (pid < 0) {
		send_frame(F_STDERR, id, "hutch: exec: cannot enter the container\n", 40);
		send_frame(F_EXIT, id, &code, 4);
		for (int *fd = (int[]){in[1], out[0], err[0], sock[0]}, k = 0; k < 4; k++)
			if (fd[k] >= 0)
				close(fd[k]);
		return;
	}
	*e = (struct exec){.used = 1, .pid = pid, .in = in[1], .out = out[0], .err = err[0], .master = -1,
			   .slot = -1, .out_credit = WINDOW};
	if (c.tty) {
		e->master = recv_fd(sock[0]); /* -1 when the child failed before its pty: it reports on stderr */
		e->in = e->master >= 0 ? dup(e->master) : -1;
		close(sock[0]);
	}
	/* why non-blocking: a process that does not read its stdin must not stop this loop (on a pty, the
	 * master's reads share the flag, and a read that finds nothing is retried at the next POLLIN). The
	 * first window is implicit (hutch/vm/frames.py's WINDOW): stdin flows while the process starts. */
	if (e->in >= 0)
		fcntl(e->in, F_SETFL, O_NONBLOCK);
	if (!c.tty)
		fcntl(e->in, F_SETPIPE_SZ, WINDOW);
}

static struct exec *exec_by_id(int id)
{
	return id > 0 && id < MAX_EXECS && execs[id].used ? &execs[id] : NULL;
}

void exec_done_if_finished(int id, struct exec *e)
{
	if (e->used && e->reaped && e->out < 0 && e->err < 0 && e->master < 0) {
		send_frame(F_EXIT, id, &e->code, 4);
		if (e->in >= 0)
			close(e->in);
		free(e->queue);
		*e = (struct exec){.used = 0};
	}
}

/* `n` more bytes of stdin may come for exec `id`: the process took them (or they were dropped). Sent
 * in quarters of the window, or once the queue is empty: a process reading 4 KiB at a time would
 * otherwise cost a frame each way per 4 KiB (through two Python relays on the host). */
static void credit(int id, struct exec *e, uint32_t n)
{
	e->owed += n;
	if (e->owed && (e->owed >= WINDOW / 4 || e->head == e->tail)) {
		send_frame(F_CREDIT, id, &e->owed, 4);
		e->owed = 0;
	}
}

/* How much of data[0..len) the process's stdin takes now, without blocking; all of it once its stdin is
 * gone (EPIPE: it closed it; EIO: its terminal went): the rest is dropped. */
static uint32_t feed(struct exec *e, const unsigned char *data, uint32_t len)
{
	uint32_t done = 0;
	while (done < len && e->in >= 0) {
		ssize_t n = write(e->in, data + done, len - done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			return done;
		if (n <= 0)
			close(e->in), e->in = -1;
		else
			done += (uint32_t)n;
	}
	return len;
}

/* The queue onwards as far as the process takes it, credited back; then EOF once the queue is empty. */
static void flush_stdin(int id, struct exec *e)
{
	uint32_t n = feed(e, e->queue + e->head, e->tail - e->head);
	e->head += n;
	if (e->head == e->tail)
		e->head = e->tail = 0; /* the buffer stays until the exec ends: no malloc per frame */
	credit(id, e, n);
	if (e->eof && e->in >= 0 && e->head == e->tail) {
		if (e->master < 0)
			close(e->in), e->in = -1;
		else if (write(e->in, "\004", 1) == 1) /* EOF on a terminal: ^D, and the terminal stays */
			e->eof = 0;
	}
}

/* A STDIN frame (empty: EOF): straight to the process if nothing waits, the rest to its queue, for which
 * the host's credit guarantees the room. */
static void stdin_frame(int id, struct exec *e, const unsigned char *data, uint32_t len)
{
	uint32_t taken = e->head == e->tail ? feed(e, data, len) : 0;
	data += taken, len -= taken;
	if (!len && !taken)
		e->eof = 1;
	else if (len && (e->tail - e->head + len > WINDOW || (!e->queue && !(e->queue = malloc(WINDOW)))))
		taken += len; /* the host overran its credit: dropped */
	else if (len) {
		if (e->tail + len > WINDOW) {
			memmove(e->queue, e->queue + e->head, e->tail - e->head);
			e->tail -= e->head, e->head = 0;
		}
		memcpy(e->queue + e->tail, data, len);
		e->tail += len;
	}
	credit(id, e, taken);
	flush_stdin(id, e);
}

void set_winsize(int fd, const unsigned char *rc)
{
	struct winsize ws = {0};
	uint16_t rows, cols;
	memcpy(&rows, rc, 2), memcpy(&cols, rc + 2, 2);
	ws.ws_row = rows, ws.ws_col = cols;
	if (fd >= 0)
		ioctl(fd, TIOCSWINSZ, &ws);
}

/* The host's new /etc/hosts for the container (its peers on a user network changed): written in place into
 * the file under ETC_DIR that the container's /etc/hosts is a bind mount of (see etc_file), which is
 * outside the container's root, so nothing the container does to its own /etc can redirect the write; in
 * place, so the mount keeps the file (and a --read-only root is no obstacle). No file there: the image has
 * no /etc, and no hosts file to update. */
static void update_hosts(const unsigned char *data, uint32_t len)
{
	int fd = open(ETC_DIR "/hosts", O_WRONLY | O_TRUNC | O_NOFOLLOW | O_CLOEXEC);
	if (fd >= 0)
		write_all(fd, data, len), close(fd);
}

/* Frames from the host's exec port; `buf` holds what has arrived, the complete frames are consumed. */
size_t handle_frames(unsigned char *buf, size_t used, pid_t cpid, int self_pidns)
{
	size_t off = 0;
	while (used - off >= 8) {
		uint32_t len, n = 0;
		memcpy(&len, buf + off + 4, 4);
		if (used - off - 8 < len)
			break;
		int type = buf[off], id = buf[off + 1];
		unsigned char *data = buf + off + 8;
		struct exec *e = exec_by_id(id);
		if (len == 4)
			memcpy(&n, data, 4);
		if (type == F_START)
			start_exec(id, data, len, cpid, self_pidns);
		else if (type == F_HOSTS && id == 0)
			update_hosts(data, len);
		else if (type == F_PS && id != 0 && !e)
			list_processes(id, cpid);
		else if (e && type == F_STDIN)
			stdin_frame(id, e, data, len);
		else if (e && type == F_CREDIT && len == 4) /* the client took n bytes of output */
			e->out_credit = e->out_credit + n > UINT32_MAX ? UINT32_MAX : e->out_credit + n;
		else if (e && type == F_SIGNAL && len == 4)
			kill(e->pid, (int)n);
		else if (e && type == F_WINCH && len == 4)
			set_winsize(e->master, data);
		off += 8 + len;
	}
	memmove(buf, buf + off, used - off);
	return used - off;
}

/* This round's poll entries for the running execs, after the `n` already in `p`: output while the client
 * has credit for it, the stdin pipe (or pty) while bytes wait for it. Only live execs take entries. */
int exec_poll_set(struct pollfd *p, int n)
{
	for (int i = 1; i < MAX_EXECS; i++) {
		struct exec *e = &execs[i];
		if (!e->used)
			continue;
		int room = e->out_credit > 0; /* why not just no POLLIN: a hung-up pipe would still wake us */
		e->slot = n;
		p[n++] = (struct pollfd){room ? e->out : -1, POLLIN, 0};
		p[n++] = (struct pollfd){room ? e->err : -1, POLLIN, 0};
		p[n++] = (struct pollfd){room ? e->master : -1, POLLIN, 0};
		p[n++] = (struct pollfd){e->head < e->tail || e->eof ? e->in : -1, POLLOUT, 0};
	}
	return n;
}

/* Output of each exec as frames (within its credit), its queued stdin onwards, EXIT once all is done. */
void exec_serve(const struct pollfd *p)
{
	for (int i = 1; i < MAX_EXECS; i++) {
		struct exec *e = &execs[i];
		if (!e->used || e->slot < 0)
			continue; /* free, or started after this round's poll set was made */
		const struct pollfd *q = &p[e->slot];
		int *fds[] = {&e->out, &e->err, &e->master};
		for (int j = 0; j < 3; j++) {
			if (!q[j].revents || *fds[j] < 0 || !e->out_credit)
				continue;
			ssize_t n = pump(*fds[j], -1, j == 1 ? F_STDERR : F_STDOUT, i, e->out_credit);
			if (n < 0) {
				if (j == 2 && e->in >= 0)
					close(e->in), e->in = -1; /* the pty's dup */
				close(*fds[j]), *fds[j] = -1;
			} else
				e->out_credit -= (uint64_t)n;
		}
		if (q[3].revents)
			flush_stdin(i, e);
		exec_done_if_finished(i, e);
	}
}
