/*
 * hutch-vmagent: the init of a microVM guest, the initramfs's /init (see hutch/vm/initramfs.py).
 *
 * It boots the guest's userland in system calls (mounts /proc, /sys, /dev and the overlay's tmpfs, loads
 * the modules the initramfs lists, finds the virtio-serial ports), then gives a container in a VM the same
 * set-up a namespace container gets from hutch/runtime/init.py: the root built with system calls,
 * supplementary groups, rlimits, the capability sets, no_new_privs and the seccomp filter (classic BPF
 * compiled on the host: guest and host are both x86_64). It then stays as the guest's init to forward
 * signals, relay a pty (-t), run `hutch exec` requests, report the exit status and power off.
 *
 * Control port, host -> guest: the stage (u32 length + set-up records: the container's /proc, /sys and
 * /dev under /stage, and its seccomp filter; see hutch/vm/script.py stage_records), which the container's
 * pid 1 builds before this program says "ready" (a template is saved there: a clone has it); then, read
 * by that pid 1 itself, a config (u32 length + records, see hutch/vm/agentconf.py: the root's set-up
 * steps, eth0's settings, the process); then, read here, lines "signal N" and "winch ROWS COLS". Guest -> host:
 * "ready", "up" (or "fail WHY") once the root is mounted, and "exit N".
 * Exec port ("hutch.exec"): frames {u8 type, u8 id, u16 0, u32 length} + payload (see hutch/vm/frames.py).
 * Each exec's stdin and output flow in windows of WINDOW bytes (CREDIT frames), so one process that stops
 * reading or one client that stops taking output never blocks this loop: nothing here blocks but the
 * writes to the exec port, which the host always drains.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <dirent.h>
#include <grp.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/openat2.h>
#include <linux/rtnetlink.h>
#include <linux/seccomp.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/reboot.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

enum { T_ARG = 1, T_ENV, T_CWD, T_UID, T_GID, T_GROUP, T_RLIMIT, T_CAPS, T_NNP, T_SECCOMP, T_SECCOMP_FLAGS,
       T_TTY, T_ROOT, T_MKDIR, T_MOUNT, T_WRITE, T_DEVICES, T_HOSTNAME, T_MODULES, T_MASK,
       T_READONLY, T_MKNOD, T_LINK, T_ADDRESS, T_ROUTE };
enum { F_START = 1, F_STDIN, F_SIGNAL, F_WINCH, F_STDOUT, F_STDERR, F_EXIT, F_CREDIT, F_HOSTS, F_PS };

#define MAX_LIST 256
#define MAX_STEPS 256
#define MAX_EXECS 256 /* indexed by the frame id: 1-255 (0 is for frames to the agent itself) */
#define WINDOW (128u << 10) /* per exec: stdin bytes the host may have in flight to us, output bytes we may;
				      * the host's side is hutch/vm/frames.py's WINDOW */

struct rlim { uint32_t resource, pad; uint64_t soft, hard; };

struct config {
	char *argv[MAX_LIST + 1], *envp[MAX_LIST + 1], *cwd, *root;
	int argc, envc, ngroups, nrlimits, nnp, tty, has_caps;
	uint32_t uid, gid, groups[MAX_LIST], seccomp_flags;
	struct rlim rlimits[16];
	uint64_t caps[5]; /* bounding, effective, permitted, inheritable, ambient */
	unsigned char *bpf;
	uint32_t bpf_len;
	struct step { uint32_t tag, len; unsigned char *value; } steps[MAX_STEPS]; /* the root's set-up */
	int nsteps;
};

/* An exec: its stdin queue holds what the process has not taken yet, queue[head..tail), at most WINDOW
 * bytes (the host sends no more than we credited); `slot` is its first entry in this round's poll set. */
struct exec {
	int used, pid, in, out, err, master, reaped, code, eof, slot;
	uint32_t head, tail, owed; /* owed: taken by the process, not yet credited */
	uint64_t out_credit;
	unsigned char *queue;
};

static int ctl = -1, exec_port = -1; /* the control port, once boot() has found it */
static struct exec execs[MAX_EXECS];

static void say(const char *fmt, const char *a, int err)
{
	dprintf(2, "hutch: %s%s%s%s\n", fmt, a ? a : "", err ? ": " : "", err ? strerror(err) : "");
}

static int write_all(int fd, const void *data, size_t len)
{
	const char *p = data;
	while (len) {
		ssize_t n = write(fd, p, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static int read_all(int fd, void *data, size_t len)
{
	char *p = data;
	while (len) {
		ssize_t n = read(fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* An immediate reset after the sync (with -no-reboot, QEMU exits): a power-off first shuts every device
 * down and powers off through ACPI, ~40 ms more under TCG, with nothing left to save. A virtio-serial write
 * has returned only once QEMU took the bytes, so "exit N" is out. The power-off stays as the fallback. */
static void power_off(void)
{
	int fd;

	sync();
	fd = open("/proc/sysrq-trigger", O_WRONLY | O_CLOEXEC);
	if (fd >= 0) {
		(void)write(fd, "b", 1);
		close(fd);
	}
	reboot(RB_POWER_OFF);
	_exit(1);
}

static void fail(const char *what)
{
	dprintf(ctl, "fail %s\n", what);
	dprintf(1, "hutch-init: %s\n", what); /* the console log, which the host shows */
	power_off();
}

/* The config: records {u32 tag, u32 length, bytes}; strings arrive NUL-terminated. A process's config
 * needs a command; the stage (set-up steps only) is parsed with parse_steps. */
static int parse_records(unsigned char *buf, uint32_t len, struct config *c)
{
	memset(c, 0, sizeof(*c));
	c->cwd = "/";
	for (uint32_t off = 0; off + 8 <= len;) {
		uint32_t tag, n;
		memcpy(&tag, buf + off, 4);
		memcpy(&n, buf + off + 4, 4);
		unsigned char *v = buf + off + 8;
		if (n > len - off - 8)
			return -1;
		off += 8 + n;
		switch (tag) {
		case T_ARG: if (c->argc < MAX_LIST) c->argv[c->argc++] = (char *)v; break;
		case T_ENV: if (c->envc < MAX_LIST) c->envp[c->envc++] = (char *)v; break;
		case T_CWD: c->cwd = (char *)v; break;
		case T_ROOT: c->root = (char *)v; break;
		case T_UID: memcpy(&c->uid, v, 4); break;
		case T_GID: memcpy(&c->gid, v, 4); break;
		case T_GROUP: if (c->ngroups < MAX_LIST) memcpy(&c->groups[c->ngroups++], v, 4); break;
		case T_RLIMIT: if (c->nrlimits < 16) memcpy(&c->rlimits[c->nrlimits++], v, sizeof(struct rlim)); break;
		case T_CAPS: memcpy(c->caps, v, sizeof(c->caps)); c->has_caps = 1; break;
		case T_NNP: c->nnp = 1; break;
		case T_TTY: c->tty = 1; break;
		case T_SECCOMP: c->bpf = v; c->bpf_len = n; break;
		case T_SECCOMP_FLAGS: memcpy(&c->seccomp_flags, v, 4); break;
		case T_MKDIR: case T_MOUNT: case T_WRITE: case T_DEVICES: case T_HOSTNAME: case T_MODULES: case T_MASK:
		case T_READONLY: case T_MKNOD: case T_LINK: case T_ADDRESS: case T_ROUTE:
			if (c->nsteps == MAX_STEPS)
				return -1;
			c->steps[c->nsteps++] = (struct step){tag, n, v};
			break;
		}
	}
	return 0;
}

static int parse_config(unsigned char *buf, uint32_t len, struct config *c)
{
	return parse_records(buf, len, c) < 0 || !c->argc ? -1 : 0;
}

static unsigned char *read_block(int fd, uint32_t *len)
{
	if (read_all(fd, len, 4) < 0 || *len > (64u << 20))
		return NULL;
	unsigned char *buf = malloc(*len + 1);
	if (!buf || read_all(fd, buf, *len) < 0)
		return NULL;
	buf[*len] = 0;
	return buf;
}

/* Why a failure here is a "fail" line: before "up" the host is not relaying stderr yet. */
static void child_fail(const char *what, int err)
{
	dprintf(ctl, "fail %s%s%s\n", what, err ? ": " : "", err ? strerror(err) : "");
	_exit(125);
}

/* The config, read by the container's pid 1 straight from the control port (the agent reads nothing from
 * it until told, see container_child). */
static void receive_config(struct config *c)
{
	uint32_t len;
	unsigned char *raw = read_block(ctl, &len);
	if (!raw || parse_config(raw, len, c) < 0 || !c->root)
		child_fail("bad container config", 0);
}

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

static void die(int code, const char *what, const char *arg, int err)
{
	say(what, arg, err);
	_exit(code);
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

static int recv_fd(int sock)
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
static void start_process(const struct config *c, int tty_sock)
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

/* --- the container's root, built in its mount namespace (hutch/vm/script.py makes the steps) -------- */

static int mkdir_p(const char *path)
{
	char buf[4096];
	if (snprintf(buf, sizeof(buf), "%s", path) >= (int)sizeof(buf))
		return -1;
	for (char *p = buf + 1;; p++) {
		if (*p == '/' || !*p) {
			char was = *p;
			*p = 0;
			if (mkdir(buf, 0755) < 0 && errno != EEXIST)
				return -1;
			if (!(*p = was))
				return 0;
		}
	}
}

/* Docker's standard /dev (a fresh tmpfs): its nodes are 0666 whatever the umask. */
static int make_devices(const char *dir)
{
	static const struct { const char *name; unsigned major, minor; } nodes[] = {
		{"null", 1, 3}, {"zero", 1, 5}, {"full", 1, 7}, {"random", 1, 8}, {"urandom", 1, 9}, {"tty", 5, 0}};
	static const char *links[][2] = {{"ptmx", "pts/ptmx"}, {"fd", "/proc/self/fd"}, {"stdin", "/proc/self/fd/0"},
					 {"stdout", "/proc/self/fd/1"}, {"stderr", "/proc/self/fd/2"}};
	char path[4096];
	for (unsigned i = 0; i < sizeof(nodes) / sizeof(nodes[0]); i++) {
		snprintf(path, sizeof(path), "%s/%s", dir, nodes[i].name);
		if (mknod(path, S_IFCHR | 0666, makedev(nodes[i].major, nodes[i].minor)) < 0 || chmod(path, 0666) < 0)
			return -1;
	}
	for (unsigned i = 0; i < sizeof(links) / sizeof(links[0]); i++) {
		snprintf(path, sizeof(path), "%s/%s", dir, links[i][0]);
		if (symlink(links[i][1], path) < 0)
			return -1;
	}
	for (const char **sub = (const char *[]){"pts", "shm", "mqueue", NULL}; *sub; sub++) {
		snprintf(path, sizeof(path), "%s/%s", dir, *sub);
		if (mkdir(path, 0755) < 0)
			return -1;
	}
	return 0;
}

static int load_modules(const char *listing)
{
	char names[4096] = {0}, path[300];
	int fd = open(listing, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || read(fd, names, sizeof(names) - 1) < 0)
		return -1;
	close(fd);
	for (char *name = strtok(names, "\n"); name; name = strtok(NULL, "\n")) {
		snprintf(path, sizeof(path), "/lib/modules/%s", name);
		int mod = open(path, O_RDONLY | O_CLOEXEC);
		if (mod < 0 || (syscall(SYS_finit_module, mod, "", 0) < 0 && errno != EEXIST))
			return -1;
		close(mod);
	}
	return 0;
}

/* An engine-made /etc file (hosts, hostname, resolv.conf) as Docker makes them: a file of its own bind-mounted
 * over the image's, so it stays writable in a --read-only root and the host's /etc/hosts updates land there.
 * {root, path in it, content}: the content goes to ETC_DIR (the guest's tmpfs, outside the root); the image's
 * file, or a symlink in its place, is found with RESOLVE_IN_ROOT (nothing in the image can point the mount
 * outside the root) and made a regular file if it is not one. Skipped for an image without /etc. */
#define ETC_DIR "/rw/etc"

static int etc_file(const unsigned char *v, uint32_t len)
{
	const char *root = (const char *)v, *rel = root + strlen(root) + 1, *name = strrchr(rel, '/');
	const unsigned char *data = (const unsigned char *)rel + strlen(rel) + 1;
	char dir[256], source[300], target[64];
	if (!name || (size_t)(name - rel) >= sizeof(dir))
		return errno = EINVAL, -1;
	snprintf(dir, sizeof(dir), "%.*s", (int)(name - rel), rel);
	snprintf(source, sizeof(source), ETC_DIR "/%s", name + 1);
	struct open_how how = {.flags = O_PATH | O_DIRECTORY | O_CLOEXEC,
			       .resolve = RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS};
	int rootfd = open(root, O_PATH | O_DIRECTORY | O_CLOEXEC), rc = -1, fd;
	int parent = rootfd < 0 ? -1 : (int)syscall(SYS_openat2, rootfd, dir, &how, sizeof(how));
	if (parent < 0) {
		rc = rootfd < 0 ? -1 : 0; /* no such directory in the image: no file */
		goto out;
	}
	if ((mkdir(ETC_DIR, 0755) < 0 && errno != EEXIST) ||
	    (fd = open(source, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644)) < 0)
		goto out;
	if (write_all(fd, data, (uint32_t)(v + len - data)) < 0 || close(fd) < 0)
		goto out;
	struct stat st;
	if (fstatat(parent, name + 1, &st, AT_SYMLINK_NOFOLLOW) == 0 && !S_ISREG(st.st_mode) &&
	    unlinkat(parent, name + 1, S_ISDIR(st.st_mode) ? AT_REMOVEDIR : 0) < 0)
		goto out;
	fd = openat(parent, name + 1, O_RDONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0644);
	if (fd < 0)
		goto out;
	snprintf(target, sizeof(target), "/proc/self/fd/%d", fd);
	rc = mount(source, target, NULL, MS_BIND, NULL);
	close(fd);
out:
	for (int *f = (int[]){rootfd, parent}, i = 0; i < 2; i++)
		if (f[i] >= 0)
			close(f[i]);
	return rc;
}

/* Docker's masked and read-only paths (under the /proc and /sys just mounted: nothing of the container's
 * has run yet to redirect them; /dev/null is still the initramfs's here). */
static int mask_or_protect(uint32_t tag, const char *path)
{
	struct stat st;
	if (lstat(path, &st) < 0)
		return 0;
	if (tag == T_MASK)
		return S_ISDIR(st.st_mode) ? mount("tmpfs", path, "tmpfs", MS_RDONLY, "mode=755")
					   : mount("/dev/null", path, NULL, MS_BIND, NULL);
	if (mount(path, path, NULL, MS_BIND | MS_REC, NULL) < 0)
		return -1;
	return mount(NULL, path, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
}

/* A --device node: {u32 mode, major, minor, uid, gid} + path; one already there (a standard node) is
 * replaced, as Docker does. The mode is set again after mknod: the umask applies to mknod's. */
static int make_node(const unsigned char *v, uint32_t len)
{
	uint32_t f[5];
	if (len < sizeof(f) + 1)
		return -1;
	memcpy(f, v, sizeof(f));
	const char *path = (const char *)v + sizeof(f);
	if (unlink(path) < 0 && errno != ENOENT)
		return -1;
	if (mknod(path, S_IFCHR | (f[0] & 07777), makedev(f[1], f[2])) < 0 || chmod(path, f[0] & 07777) < 0)
		return -1;
	return chown(path, f[3], f[4]);
}

/* --- the guest's network card, over rtnetlink: what `ip link/addr/route` would do, without a busybox
 * fork and exec per command (each ~25 ms under TCG). One request at a time, each acknowledged. ----------- */

struct nl_request {
	struct nlmsghdr h;
	union { struct ifinfomsg link; struct ifaddrmsg addr; struct rtmsg route; };
	unsigned char attrs[64];
};

static void nl_attr(struct nl_request *r, unsigned short type, const void *data, unsigned short len)
{
	struct rtattr *a = (struct rtattr *)((char *)r + NLMSG_ALIGN(r->h.nlmsg_len));
	a->rta_type = type;
	a->rta_len = RTA_LENGTH(len);
	memcpy(RTA_DATA(a), data, len);
	r->h.nlmsg_len = NLMSG_ALIGN(r->h.nlmsg_len) + RTA_ALIGN(a->rta_len);
}

static int nl_send(struct nl_request *r)
{
	int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE), rc = -1, saved;
	struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
	char reply[1024];
	r->h.nlmsg_flags |= NLM_F_REQUEST | NLM_F_ACK;
	r->h.nlmsg_seq = 1;
	if (fd < 0 || sendto(fd, r, r->h.nlmsg_len, 0, (struct sockaddr *)&kernel, sizeof(kernel)) < 0)
		goto out;
	for (;;) {
		ssize_t n = recv(fd, reply, sizeof(reply), 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			goto out;
		for (struct nlmsghdr *h = (struct nlmsghdr *)reply; NLMSG_OK(h, n); h = NLMSG_NEXT(h, n))
			if (h->nlmsg_type == NLMSG_ERROR) {
				int err = ((struct nlmsgerr *)NLMSG_DATA(h))->error;
				errno = -err;
				rc = err ? -1 : 0;
				goto out;
			}
	}
out:
	saved = errno;
	if (fd >= 0)
		close(fd);
	errno = saved;
	return rc;
}

static int if_index(const char *name)
{
	int index = (int)if_nametoindex(name);
	if (!index)
		errno = ENODEV;
	return index;
}

/* {u32 mtu (0: keep), u8 mac[6] (all zero: keep), u16 0} + name: set them, then bring the link up. A
 * template clone's card comes back with the template's MAC, hence the MAC here (virtio-net passes it on
 * to QEMU's receive filter). */
static int link_up(const unsigned char *v)
{
	static const unsigned char keep[6];
	uint32_t mtu;
	memcpy(&mtu, v, 4);
	struct nl_request r = {.h = {.nlmsg_len = NLMSG_LENGTH(sizeof(struct ifinfomsg)), .nlmsg_type = RTM_NEWLINK}};
	if (!(r.link.ifi_index = if_index((const char *)v + 12)))
		return -1;
	r.link.ifi_flags = r.link.ifi_change = IFF_UP;
	if (mtu)
		nl_attr(&r, IFLA_MTU, &mtu, 4);
	if (memcmp(v + 4, keep, 6))
		nl_attr(&r, IFLA_ADDRESS, v + 4, 6);
	return nl_send(&r);
}

/* {u8 address[4], u8 broadcast[4], u8 prefixlen, u8 0[3]} + name */
static int add_address(const unsigned char *v)
{
	struct nl_request r = {.h = {.nlmsg_len = NLMSG_LENGTH(sizeof(struct ifaddrmsg)), .nlmsg_type = RTM_NEWADDR,
				     .nlmsg_flags = NLM_F_CREATE | NLM_F_EXCL}};
	if (!(r.addr.ifa_index = (uint32_t)if_index((const char *)v + 12)))
		return -1;
	r.addr.ifa_family = AF_INET;
	r.addr.ifa_prefixlen = v[8];
	nl_attr(&r, IFA_LOCAL, v, 4);
	nl_attr(&r, IFA_ADDRESS, v, 4);
	nl_attr(&r, IFA_BROADCAST, v + 4, 4);
	return nl_send(&r);
}

/* {u8 gateway[4]}: the default route */
static int add_default_route(const unsigned char *v)
{
	struct nl_request r = {.h = {.nlmsg_len = NLMSG_LENGTH(sizeof(struct rtmsg)), .nlmsg_type = RTM_NEWROUTE,
				     .nlmsg_flags = NLM_F_CREATE | NLM_F_EXCL}};
	r.route.rtm_family = AF_INET;
	r.route.rtm_table = RT_TABLE_MAIN;
	r.route.rtm_protocol = RTPROT_BOOT;
	r.route.rtm_scope = RT_SCOPE_UNIVERSE;
	r.route.rtm_type = RTN_UNICAST;
	nl_attr(&r, RTA_GATEWAY, v, 4);
	return nl_send(&r);
}

static const char *or_null(const char *s)
{
	return *s ? s : NULL;
}

static void build_root(const struct config *c)
{
	for (int i = 0; i < c->nsteps; i++) {
		const struct step *st = &c->steps[i];
		const char *v = (const char *)st->value;
		int rc = 0;
		if (st->tag == T_MKDIR)
			rc = mkdir_p(v);
		else if (st->tag == T_MOUNT) {
			uint64_t flags;
			memcpy(&flags, v, 8);
			const char *type = v + 8, *source = type + strlen(type) + 1, *target = source + strlen(source) + 1;
			const char *data = target + strlen(target) + 1;
			rc = mount(or_null(source), target, or_null(type), flags, or_null(data));
			v = target;
		} else if (st->tag == T_WRITE) {
			rc = etc_file(st->value, st->len);
			v += strlen(v) + 1;
		} else if (st->tag == T_DEVICES)
			rc = make_devices(v);
		else if (st->tag == T_HOSTNAME)
			rc = sethostname(v, strlen(v));
		else if (st->tag == T_MODULES)
			rc = load_modules(v);
		else if (st->tag == T_MASK || st->tag == T_READONLY)
			rc = mask_or_protect(st->tag, v);
		else if (st->tag == T_MKNOD) {
			rc = make_node(st->value, st->len);
			v += 20;
		} else if (st->len < 13 && (st->tag == T_LINK || st->tag == T_ADDRESS))
			rc = -1, errno = EINVAL;
		else if (st->tag == T_LINK) {
			rc = link_up(st->value);
			v += 12;
		} else if (st->tag == T_ADDRESS) {
			rc = add_address(st->value);
			v += 12;
		} else if (st->tag == T_ROUTE) {
			rc = st->len == 4 ? add_default_route(st->value) : (errno = EINVAL, -1);
			v = "the default route";
		}
		if (rc < 0)
			die(125, "setting up the container's root: ", v, errno);
	}
}

/* --- the container's pid 1 -------------------------------------------------------------------------- */

/* The host's clock, its answer to "up" ("time NANOSECONDS"), set before the command runs: a clone's clocks
 * resume where its template's stood when it was saved, so without it the container would see the date
 * of its template's build. */
static void take_clock(void)
{
	char line[64], *end;
	size_t n = 0;
	while (n < sizeof(line) - 1 && read(ctl, line + n, 1) == 1 && line[n] != '\n')
		n++;
	line[n] = 0;
	if (strncmp(line, "time ", 5) != 0)
		die(125, "no clock from the host: ", line, 0);
	unsigned long long ns = strtoull(line + 5, &end, 10);
	if (*end || ns == 0)
		die(125, "no clock from the host: ", line, 0);
	struct timespec now = {(time_t)(ns / 1000000000ull), (long)(ns % 1000000000ull)};
	if (clock_settime(CLOCK_REALTIME, &now) < 0)
		die(125, "setting the clock", NULL, errno);
}

/* Pid 1 of the container's new pid, mount, uts and ipc namespaces, made before "ready": it first builds the
 * stage (the container's /proc, /sys and /dev with Docker's masks, under /stage: the steps the host sent
 * first) and reports it on `staged`, so a template holds this process, its namespaces and those mounts,
 * and a clone skips that work (under TCG every kernel path a clone runs is translated anew: the clone and
 * the mounts cost ~100 ms after a restore). Then it reads the container's config from the control port
 * itself (one wake-up fewer than through the agent), mounts the image's disk under the overlay, says
 * "up", takes the host's clock, tells the agent on `staged` that the port is the agent's again and whether
 * there is a terminal, moves the staged mounts in (the config's first steps), finishes the root, sets up the network card, if
 * any, and enters the root. */
static void container_child(unsigned char *stage, uint32_t stage_len, int staged, int tty_sock)
{
	static struct config st, c;
	if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
		die(125, "making the mounts private", NULL, errno);
	if (parse_records(stage, stage_len, &st) < 0)
		die(125, "bad stage", NULL, 0);
	build_root(&st);
	if (write(staged, "s", 1) != 1)
		_exit(125);
	receive_config(&c);
	c.bpf = st.bpf, c.bpf_len = st.bpf_len, c.seccomp_flags = st.seccomp_flags; /* the filter is staged */
	if (mount("/dev/vda", "/lower", "erofs", MS_RDONLY, NULL) < 0)
		child_fail("mount root disk", errno);
	if (mount("overlay", c.root, "overlay", 0, "lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work") < 0)
		child_fail("overlay", errno);
	dprintf(ctl, "up\n");
	take_clock();
	if (write(staged, c.tty ? "t" : "n", 1) != 1)
		_exit(125);
	close(staged);
	build_root(&c);
	/* why MS_MOVE + chroot, not pivot_root: the old root is the initramfs (rootfs), which pivot_root
	 * refuses; moving the new root over it in this private namespace hides the initramfs the same way. */
	if (chdir(c.root) < 0 || mount(c.root, "/", NULL, MS_MOVE, NULL) < 0 || chroot(".") < 0 || chdir("/") < 0)
		die(125, "entering the container's root ", c.root, errno);
	start_process(&c, tty_sock);
}

static void send_frame(int type, int id, const void *data, uint32_t len)
{
	unsigned char head[8] = {(unsigned char)type, (unsigned char)id, 0, 0};
	memcpy(head + 4, &len, 4);
	if (exec_port < 0)
		return;
	write_all(exec_port, head, 8);
	if (len)
		write_all(exec_port, data, len);
}

static int code_of(int status)
{
	return WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status);
}

static int open_ns(pid_t pid, const char *kind)
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

static void exec_done_if_finished(int id, struct exec *e)
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

static void set_winsize(int fd, const unsigned char *rc)
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

/* One /proc file of `pid` into `buf` (NUL-terminated; at most `size` - 1 bytes); its length, or -1. */
static ssize_t read_proc(int pid, const char *name, char *buf, size_t size)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/%s", pid, name);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t got = read(fd, buf, size - 1);
	close(fd);
	if (got >= 0)
		buf[got] = 0;
	return got;
}

/* The value after `key` in a /proc/PID/status text ("Uid:\t0\t0..." -> "0\t0..."), or NULL. */
static const char *status_field(const char *status, const char *key)
{
	const char *at = strstr(status, key);
	return at ? at + strlen(key) : NULL;
}

/* `hutch top`: the processes of the container's pid namespace (`cpid`'s), one line each, "uid pid ppid
 * ticks command", with the pids as the container sees them (its own ps would show the same), as STDOUT
 * frames for `id` and an EXIT; the host formats them. The agent, the guest's init, is outside. */
static void list_processes(int id, pid_t cpid)
{
	char ns[64], link[64], path[64];
	snprintf(path, sizeof(path), "/proc/%d/ns/pid", cpid);
	ssize_t nslen = readlink(path, ns, sizeof(ns) - 1);
	DIR *dir = opendir("/proc");
	static char out[1 << 16], status[4096], stat[1024], cmd[1024];
	static int guest_pid[4096], inner_pid[4096];
	size_t used = 0;
	int n = 0;
	struct dirent *d;
	/* a first pass maps the guest's pids to the container's, for the parents */
	while (dir && nslen > 0 && (d = readdir(dir)) != NULL && n < 4096) {
		int pid = atoi(d->d_name);
		snprintf(path, sizeof(path), "/proc/%d/ns/pid", pid);
		ssize_t got = pid > 0 ? readlink(path, link, sizeof(link) - 1) : -1;
		if (got != nslen || memcmp(link, ns, (size_t)nslen) != 0 || read_proc(pid, "status", status, sizeof(status)) < 0)
			continue;
		char *nspid = (char *)status_field(status, "NSpid:"), *end = nspid ? strchr(nspid, '\n') : NULL;
		if (end)
			*end = 0;
		const char *last = nspid ? strrchr(nspid, '\t') : NULL; /* the innermost namespace's pid */
		guest_pid[n] = pid, inner_pid[n++] = last ? atoi(last + 1) : pid;
	}
	for (int i = 0; i < n && used < sizeof(out) - 2200; i++) {
		int pid = guest_pid[i], ppid = 0;
		unsigned long utime = 0, stime = 0;
		if (read_proc(pid, "status", status, sizeof(status)) < 0 || read_proc(pid, "stat", stat, sizeof(stat)) < 0)
			continue; /* exited meanwhile */
		const char *uid = status_field(status, "Uid:"), *pp = status_field(status, "PPid:");
		int parent = pp ? atoi(pp) : 0;
		for (int j = 0; j < n; j++)
			if (guest_pid[j] == parent)
				ppid = inner_pid[j];
		char *close_paren = strrchr(stat, ')'), *open_paren = strchr(stat, '(');
		/* after ") ": state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime */
		char *field = close_paren ? close_paren + 2 : NULL;
		for (int f = 0; f < 11 && field; f++)
			if ((field = strchr(field, ' ')) != NULL)
				field++;
		if (field) {
			utime = strtoul(field, &field, 10);
			stime = strtoul(field, NULL, 10);
		}
		ssize_t len = read_proc(pid, "cmdline", cmd, sizeof(cmd));
		for (ssize_t k = 0; k < len; k++)
			if (cmd[k] == 0 || cmd[k] == '\n')
				cmd[k] = ' ';
		while (len > 0 && cmd[len - 1] == ' ')
			cmd[--len] = 0;
		if (len <= 0 && open_paren && close_paren) {
			*close_paren = 0;
			snprintf(cmd, sizeof(cmd), "[%s]", open_paren + 1);
		}
		used += (size_t)snprintf(out + used, sizeof(out) - used, "%d\t%d\t%d\t%lu\t%s\n",
					 uid ? atoi(uid) : -1, inner_pid[i], ppid, utime + stime, cmd);
	}
	if (dir)
		closedir(dir);
	send_frame(F_STDOUT, id, out, (uint32_t)used);
	int code = nslen > 0 ? 0 : 1;
	send_frame(F_EXIT, id, &code, 4);
}

/* Frames from the host's exec port; `buf` holds what has arrived, the complete frames are consumed. */
static size_t handle_frames(unsigned char *buf, size_t used, pid_t cpid, int self_pidns)
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

static int find_port(const char *wanted)
{
	/* port names reach the guest asynchronously after the ports appear: look for up to 10 s */
	for (int tries = 0; tries < 5000; tries++) {
		DIR *d = opendir("/sys/class/virtio-ports");
		struct dirent *ent;
		while (d && (ent = readdir(d))) {
			char path[300], name[64] = {0};
			snprintf(path, sizeof(path), "/sys/class/virtio-ports/%s/name", ent->d_name);
			int fd = open(path, O_RDONLY | O_CLOEXEC);
			if (fd < 0)
				continue;
			ssize_t n = read(fd, name, sizeof(name) - 1);
			close(fd);
			if (n > 0 && name[n - 1] == '\n')
				name[n - 1] = 0;
			if (!strcmp(name, wanted)) {
				snprintf(path, sizeof(path), "/dev/%s", ent->d_name);
				closedir(d);
				return open(path, O_RDWR | O_CLOEXEC);
			}
		}
		if (d)
			closedir(d);
		usleep(2000);
	}
	return -1;
}

/* --- the guest's init, from the kernel's first exec (this program is the initramfs's /init) ------------ */

static int cmdline_has(const char *cmdline, const char *word)
{
	char padded[64];
	snprintf(padded, sizeof(padded), " %s ", word);
	return strstr(cmdline, padded) != NULL;
}

/* Before the host can hear of a failure (no control port yet), it goes to the console, which QEMU writes
 * to the console log the host shows when the guest does not come up. */
static void boot_fail(const char *what)
{
	dprintf(1, "hutch-init: %s: %s\n", what, strerror(errno));
	power_off();
}

/* What a busybox script did before, in system calls: under TCG each exec of busybox (sh, mount,
 * modprobe, sleep) cost a cold boot tens of milliseconds. Mount the kernel's filesystems and the tmpfs for
 * the overlay's upper layer; answer hutch's KVM probe; load the modules (the initramfs lists them in
 * dependency order: a network card's driver only with `hutch.net`); find the control port. */
static void boot(void)
{
	static const struct { const char *type, *target, *data; unsigned long flags; } fs[] = {
		{"proc", "/proc", NULL, MS_NOSUID | MS_NOEXEC | MS_NODEV},
		{"sysfs", "/sys", NULL, MS_NOSUID | MS_NOEXEC | MS_NODEV},
		{"devtmpfs", "/dev", NULL, MS_NOSUID},
		{"tmpfs", "/rw", "mode=0755", 0},
	};
	for (unsigned i = 0; i < sizeof(fs) / sizeof(fs[0]); i++)
		if (mount(fs[i].type, fs[i].target, fs[i].type, fs[i].flags, fs[i].data) < 0)
			boot_fail(fs[i].target);
	char cmdline[4096] = " ";
	int fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
	ssize_t n = fd < 0 ? -1 : read(fd, cmdline + 1, sizeof(cmdline) - 3);
	if (n < 0)
		boot_fail("/proc/cmdline");
	close(fd);
	cmdline[n + 1] = 0;
	for (char *p = cmdline; *p; p++)
		if (*p == '\n')
			*p = ' ';
	strcat(cmdline, " ");
	/* hutch's KVM probe: reaching this line is the proof the accelerator runs this kernel */
	if (cmdline_has(cmdline, "hutch.probe")) {
		dprintf(1, "hutch-probe-ok\n");
		power_off();
	}
	if (load_modules("/modules") < 0 || (cmdline_has(cmdline, "hutch.net") && load_modules("/modules.net") < 0))
		boot_fail("loading the kernel modules");
	/* a mark in the kernel log (below the console's quiet level) for bench/vm.py's phases */
	fd = open("/dev/kmsg", O_WRONLY | O_CLOEXEC);
	if (fd >= 0)
		dprintf(fd, "hutch-init: modules loaded\n"), close(fd);
	if ((ctl = find_port("hutch.ctl")) < 0)
		boot_fail("the control port");
	if (mkdir("/rw/upper", 0755) < 0 || mkdir("/rw/work", 0755) < 0)
		boot_fail("/rw");
}

/* Copy what `from` has (at most `limit` bytes) into `to`, or as frames of `type`; how many bytes, or -1 at
 * EOF or error (EIO: the pty's last slave closed). */
static ssize_t pump(int from, int to, int type, int id, uint64_t limit)
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

/* What the agent's loop tracks about the container's own process. */
struct container {
	pid_t pid;
	int status, reaped, master, tty_sock, in, out;
	unsigned char winsize[4], have_winsize;
	char queue[16384]; /* with -t: input read from the stdin port that the pty has not taken yet */
	size_t head, queued;
};

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

/* This round's poll entries for the running execs, after the `n` already in `p`: output while the client
 * has credit for it, the stdin pipe (or pty) while bytes wait for it. Only live execs take entries. */
static int exec_poll_set(struct pollfd *p, int n)
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
static void exec_serve(const struct pollfd *p)
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

/* The container's pid 1 (see container_child), with stdio on the ports (or, with a terminal, on its pty
 * once made, whose master comes back over k->tty_sock: made for every container, as the config that says
 * whether there is a terminal comes later). */
static pid_t spawn_container(unsigned char *stage, uint32_t stage_len, struct container *k, int err,
			     const sigset_t *blocked, int staged)
{
	int pair[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) < 0)
		fail("socketpair");
	pid_t pid = (pid_t)syscall(SYS_clone, CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | SIGCHLD,
				   NULL, NULL, NULL, NULL);
	if (pid == 0) {
		sigprocmask(SIG_UNBLOCK, blocked, NULL);
		close(pair[0]);
		dup2(k->in, 0);
		dup2(k->out, 1);
		dup2(err, 2);
		container_child(stage, stage_len, staged, pair[1]);
	}
	if (pid < 0)
		fail("clone");
	close(pair[1]);
	k->tty_sock = pair[0];
	return pid;
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
