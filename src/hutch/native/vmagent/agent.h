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
 * steps, eth0's settings, the process) and, once it has said "up", "time NANOSECONDS" (the host's clock);
 * then, read here, lines "signal N" and "winch ROWS COLS". Guest -> host: "ready", "up" (or "fail WHY")
 * once the root is mounted, and "exit N".
 * Exec port ("hutch.exec"): frames {u8 type, u8 id, u16 0, u32 length} + payload (see hutch/vm/frames.py).
 * Each exec's stdin and output flow in windows of WINDOW bytes (CREDIT frames), so one process that stops
 * reading or one client that stops taking output never blocks this loop: nothing here blocks but the
 * writes to the exec port, which the host always drains.
 *
 * Files: boot.c (init), config.c (records), container.c (the container's pid 1), root.c (its root's steps),
 * netlink.c (its network card), process.c (its process), execs.c (hutch exec), ps.c (hutch top), io.c,
 * main.c (the loop). hutch/native compiles them into one static program.
 */
#ifndef HUTCH_VMAGENT_H
#define HUTCH_VMAGENT_H
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

#include "../fullio.h"

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

extern int ctl, exec_port; /* the control port, once boot() has found it; the exec port */
extern struct exec execs[MAX_EXECS];

/* What the agent's loop tracks about the container's own process. */
struct container {
	pid_t pid;
	int status, reaped, master, tty_sock, in, out;
	unsigned char winsize[4], have_winsize;
	char queue[16384]; /* with -t: input read from the stdin port that the pty has not taken yet */
	size_t head, queued;
};

#define ETC_DIR "/rw/etc"


/* io.c */
void power_off(void);
void fail(const char *what);
unsigned char *read_block(int fd, uint32_t *len);
void child_fail(const char *what, int err);
void die(int code, const char *what, const char *arg, int err);

/* config.c */
int parse_records(unsigned char *buf, uint32_t len, struct config *c);
int parse_config(unsigned char *buf, uint32_t len, struct config *c);
void receive_config(struct config *c);

/* process.c */
int recv_fd(int sock);
void start_process(const struct config *c, int tty_sock);

/* root.c */
int load_modules(const char *listing);
int etc_file(const unsigned char *v, uint32_t len);
void build_root(const struct config *c);

/* netlink.c */
int link_up(const unsigned char *v);
int add_address(const unsigned char *v);
int add_default_route(const unsigned char *v);

/* container.c */
void container_child(unsigned char *stage, uint32_t stage_len, int staged, int tty_sock);
pid_t spawn_container(unsigned char *stage, uint32_t stage_len, struct container *k, int err,
			     const sigset_t *blocked, int staged);

/* execs.c */
void send_frame(int type, int id, const void *data, uint32_t len);
int code_of(int status);
int open_ns(pid_t pid, const char *kind);
void exec_done_if_finished(int id, struct exec *e);
void set_winsize(int fd, const unsigned char *rc);
size_t handle_frames(unsigned char *buf, size_t used, pid_t cpid, int self_pidns);
int exec_poll_set(struct pollfd *p, int n);
void exec_serve(const struct pollfd *p);

/* ps.c */
void list_processes(int id, pid_t cpid);

/* boot.c */
int find_port(const char *wanted);
void boot(void);

/* main.c */
ssize_t pump(int from, int to, int type, int id, uint64_t limit);

#endif
