/* The container's root, built step by step in its mount namespace (hutch/vm/script.py makes the steps). */
#include "agent.h"

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

int load_modules(const char *listing)
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

int etc_file(const unsigned char *v, uint32_t len)
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

static const char *or_null(const char *s)
{
	return *s ? s : NULL;
}

void build_root(const struct config *c)
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
