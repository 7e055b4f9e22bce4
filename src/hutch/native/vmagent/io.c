/* Writes and reads that finish, and the ways out: power-off, a "fail" line, an exit with a message. */
#include "agent.h"

int ctl = -1, exec_port = -1;

static void say(const char *fmt, const char *a, int err)
{
	dprintf(2, "hutch: %s%s%s%s\n", fmt, a ? a : "", err ? ": " : "", err ? strerror(err) : "");
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
void power_off(void)
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

void fail(const char *what)
{
	dprintf(ctl, "fail %s\n", what);
	dprintf(1, "hutch-init: %s\n", what); /* the console log, which the host shows */
	power_off();
}

unsigned char *read_block(int fd, uint32_t *len)
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
void child_fail(const char *what, int err)
{
	dprintf(ctl, "fail %s%s%s\n", what, err ? ": " : "", err ? strerror(err) : "");
	_exit(125);
}

void die(int code, const char *what, const char *arg, int err)
{
	say(what, arg, err);
	_exit(code);
}
