/* The container's pid 1: its stage before "ready", its config, clock and root after. */
#include "agent.h"

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
 * there is a terminal, moves the staged mounts in (the config's first steps), finishes the root, sets up
 * the network card, if any, and enters the root. */
void container_child(unsigned char *stage, uint32_t stage_len, int staged, int tty_sock)
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

/* The container's pid 1 (see container_child), with stdio on the ports (or, with a terminal, on its pty
 * once made, whose master comes back over k->tty_sock: made for every container, as the config that says
 * whether there is a terminal comes later). */
pid_t spawn_container(unsigned char *stage, uint32_t stage_len, struct container *k, int err,
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
