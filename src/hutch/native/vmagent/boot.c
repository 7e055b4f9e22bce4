/* The guest's init from the kernel's first exec: mounts, modules and ports, in system calls. */
#include "agent.h"

int find_port(const char *wanted)
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
void boot(void)
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
