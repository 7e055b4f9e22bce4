/* `hutch top`: the processes of the container's pid namespace, read from the guest's /proc. */
#include "agent.h"

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
void list_processes(int id, pid_t cpid)
{
	enum { MAX = 4096 };
	static struct { int pid, inner, parent, uid; } procs[MAX];
	static char out[1 << 16], status[4096], stat[1024], cmd[1024];
	char ns[64], link[64], path[64];
	snprintf(path, sizeof(path), "/proc/%d/ns/pid", cpid);
	ssize_t nslen = readlink(path, ns, sizeof(ns) - 1);
	DIR *dir = opendir("/proc");
	size_t used = 0;
	int n = 0;
	struct dirent *d;
	/* the processes of the namespace first: the parents' pids are mapped into it from this list */
	while (dir && nslen > 0 && (d = readdir(dir)) != NULL && n < MAX) {
		int pid = atoi(d->d_name);
		snprintf(path, sizeof(path), "/proc/%d/ns/pid", pid);
		ssize_t got = pid > 0 ? readlink(path, link, sizeof(link) - 1) : -1;
		if (got != nslen || memcmp(link, ns, (size_t)nslen) != 0 ||
		    read_proc(pid, "status", status, sizeof(status)) < 0)
			continue;
		const char *uid = status_field(status, "Uid:"), *parent = status_field(status, "PPid:");
		char *nspid = (char *)status_field(status, "NSpid:"), *end = nspid ? strchr(nspid, '\n') : NULL;
		if (end)
			*end = 0;
		const char *last = nspid ? strrchr(nspid, '\t') : NULL; /* the innermost namespace's pid */
		procs[n].pid = pid, procs[n].inner = last ? atoi(last + 1) : pid;
		procs[n].parent = parent ? atoi(parent) : 0, procs[n++].uid = uid ? atoi(uid) : -1;
	}
	if (dir)
		closedir(dir);
	for (int i = 0; i < n && used < sizeof(out) - 2200; i++) {
		int ppid = 0; /* 0: a parent outside the namespace (the agent) */
		unsigned long utime = 0, stime = 0;
		if (read_proc(procs[i].pid, "stat", stat, sizeof(stat)) < 0)
			continue; /* exited meanwhile */
		for (int j = 0; j < n; j++)
			if (procs[j].pid == procs[i].parent)
				ppid = procs[j].inner;
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
		ssize_t len = read_proc(procs[i].pid, "cmdline", cmd, sizeof(cmd));
		for (ssize_t k = 0; k < len; k++)
			if (cmd[k] == 0 || cmd[k] == '\n')
				cmd[k] = ' ';
		while (len > 0 && cmd[len - 1] == ' ')
			cmd[--len] = 0;
		if (len <= 0 && open_paren && close_paren) {
			*close_paren = 0;
			snprintf(cmd, sizeof(cmd), "[%s]", open_paren + 1);
		}
		used += (size_t)snprintf(out + used, sizeof(out) - used, "%d\t%d\t%d\t%lu\t%s\n", procs[i].uid,
					 procs[i].inner, ppid, utime + stime, cmd);
	}
	send_frame(F_STDOUT, id, out, (uint32_t)used);
	int code = nslen > 0 ? 0 : 1;
	send_frame(F_EXIT, id, &code, 4);
}
