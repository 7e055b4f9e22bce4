/* The container's process, from its terminal to exec, in runtime/init.py's order. */
#include "agent.h"

/* --- the final steps in the container, in runtime/init.py's order ------------------------------------- */

static int last_cap(void)
{
	char buf[16] = {0};
	int fd = open("/proc/sys/kernel/cap_last_cap", O_RDONLY | O_CLOEXEC), last = 40;
	if (fd >= 0) {
		if (read(fd, buf, sizeof(buf) - 1) > 0)
			last = atoi(buf);
		close(fd);
	}
	return last;
}

static int load_seccomp(const struct config *c)
{
	struct sock_fprog prog = {(unsigned short)(c->bpf_len / 8), (struct sock_filter *)c->bpf};
	if (c->seccomp_flags)
		return (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, c->seccomp_flags, &prog);
	return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0);
}

/* Bounding set dropped while CAP_SETPCAP is ours, ids switched with keep-caps, then the spec's sets. */
static void switch_user(const struct config *c)
{
	int last = last_cap();
	uint64_t valid = last >= 63 ? ~0ull : (1ull << (last + 1)) - 1;
	for (int n = 0; n <= last; n++)
		if (!(c->caps[0] & (1ull << n)) && prctl(PR_CAPBSET_DROP, n, 0, 0, 0) < 0)
			die(125, "dropping a capability from the bounding set", NULL, errno);
	prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0);
	gid_t groups[MAX_LIST];
	for (int i = 0; i < c->ngroups; i++)
		groups[i] = c->groups[i];
	if (setgroups((size_t)c->ngroups, groups) < 0)
		die(125, "setgroups", NULL, errno);
	if (setresgid(c->gid, c->gid, c->gid) < 0 || setresuid(c->uid, c->uid, c->uid) < 0)
		die(125, "switching to the container's user", NULL, errno);
	prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0);
	struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
	struct __user_cap_data_struct data[2];
	uint64_t eff = c->caps[1] & valid, perm = c->caps[2] & valid, inh = c->caps[3] & valid;
	data[0].effective = (uint32_t)eff, data[1].effective = (uint32_t)(eff >> 32);
	data[0].permitted = (uint32_t)perm, data[1].permitted = (uint32_t)(perm >> 32);
	data[0].inheritable = (uint32_t)inh, data[1].inheritable = (uint32_t)(inh >> 32);
	if (syscall(SYS_capset, &hdr, data) < 0)
		die(125, "capset", NULL, errno);
	prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
	for (int n = 0; n <= last; n++)
		if (c->caps[4] & (1ull << n))
			prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, n, 0, 0);
}

/* execvpe(3) searches the agent's PATH; the container's command is looked up in the container's. */
static void exec_command(const struct config *c)
{
	const char *path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
	for (int i = 0; i < c->envc; i++)
		if (!strncmp(c->envp[i], "PATH=", 5))
			path = c->envp[i] + 5;
	char **argv = (char **)c->argv, **envp = (char **)c->envp;
	if (strchr(argv[0], '/')) {
		execve(argv[0], argv, envp);
		die(errno == ENOENT ? 127 : 126, "exec ", argv[0], errno);
	}
	int denied = 0;
	char full[4096];
	for (const char *p = path;; p++) {
		const char *end = strchrnul(p, ':');
		int n = snprintf(full, sizeof(full), "%.*s%s%s", (int)(end - p), p, end == p ? "" : "/", argv[0]);
		if (n > 0 && n < (int)sizeof(full)) {
			execve(full, argv, envp);
			if (errno == EACCES)
				denied = 1;
			else if (errno != ENOENT && errno != ENOTDIR)
				die(126, "exec ", argv[0], errno);
		}
		if (!*end)
			break;
		p = end;
	}
	if (denied)
		die(126, "exec ", argv[0], EACCES);
	dprintf(2, "hutch: exec %s: executable file not found in $PATH\n", argv[0]);
	_exit(127);
}

static int send_fd(int sock, int fd)
{
	char byte = 't', cbuf[CMSG_SPACE(sizeof(int))] = {0};
	struct iovec iov = {&byte, 1};
	struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof(cbuf)};
	struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
	cm->cmsg_level = SOL_SOCKET, cm->cmsg_type = SCM_RIGHTS, cm->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(cm), &fd, sizeof(int));
	return sendmsg(sock, &msg, 0) < 0 ? -1 : 0;
}

int recv_fd(int sock)
{
	char byte, cbuf[CMSG_SPACE(sizeof(int))] = {0};
	struct iovec iov = {&byte, 1};
	struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof(cbuf)};
	if (recvmsg(sock, &msg, MSG_CMSG_CLOEXEC) <= 0)
		return -1;
	struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
	int fd = -1;
	if (cm && cm->cmsg_type == SCM_RIGHTS)
		memcpy(&fd, CMSG_DATA(cm), sizeof(int));
	return fd;
}

/* A pty from the container's own devpts (its /dev/ptmx): the slave becomes our terminal, the master goes
 * to the agent over `sock`. why inside: a pty of another devpts instance would not resolve to a name. */
static void take_terminal(int sock)
{
	int master = open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC), unlock = 0;
	unsigned int n;
	char name[32];
	if (master < 0 || ioctl(master, TIOCSPTLCK, &unlock) < 0 || ioctl(master, TIOCGPTN, &n) < 0)
		die(125, "opening a pty in the container", NULL, errno);
	snprintf(name, sizeof(name), "/dev/pts/%u", n);
	int slave = open(name, O_RDWR | O_NOCTTY);
	if (slave < 0 || send_fd(sock, master) < 0)
		die(125, "pty ", name, errno);
	close(master);
	if (ioctl(slave, TIOCSCTTY, 0) < 0)
		die(125, "making the pty our terminal", NULL, errno);
	for (int fd = 0; fd < 3; fd++)
		dup2(slave, fd);
	if (slave > 2)
		close(slave);
}

/* Everything from the terminal to exec, as root inside the container's namespaces and root; never returns. */
void start_process(const struct config *c, int tty_sock)
{
	setsid();
	if (c->tty)
		take_terminal(tty_sock);
	for (int i = 0; i < c->nrlimits; i++) {
		struct rlimit r = {c->rlimits[i].soft, c->rlimits[i].hard};
		if (setrlimit((int)c->rlimits[i].resource, &r) < 0)
			die(125, "setrlimit", NULL, errno);
	}
	/* why here without no_new_privs: loading a filter then needs CAP_SYS_ADMIN, which the uid switch drops;
	 * the profile allows every call from here to exec. */
	if (c->bpf_len && !c->nnp && load_seccomp(c) < 0)
		die(125, "loading the seccomp filter", NULL, errno);
	switch_user(c);
	if (chdir(c->cwd) < 0)
		die(125, "working directory ", c->cwd, errno);
	char here[8];
	if (!getcwd(here, sizeof(here)) && errno != ERANGE)
		die(125, "working directory outside the container: ", c->cwd, errno);
	if (c->nnp && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
		die(125, "no_new_privs", NULL, errno);
	/* No fd of the agent's reaches the command beyond stdio. */
	if (syscall(SYS_close_range, 3, ~0u, 0) < 0)
		for (int fd = 3; fd < 1024; fd++)
			close(fd);
	sigset_t none;
	sigemptyset(&none);
	for (int sig = 1; sig < NSIG; sig++)
		signal(sig, SIG_DFL);
	sigprocmask(SIG_SETMASK, &none, NULL);
	if (c->bpf_len && c->nnp && load_seccomp(c) < 0) /* as late as possible: fewer of our calls pass it */
		die(125, "loading the seccomp filter", NULL, errno);
	exec_command(c);
}
