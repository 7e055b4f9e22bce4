/* Shared by hutch's C programs (monitor.c, vmagent/): a write that finishes or fails, EINTR retried. */
#ifndef HUTCH_FULLIO_H
#define HUTCH_FULLIO_H
#include <errno.h>
#include <unistd.h>

static inline int write_all(int fd, const void *data, size_t len)
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
#endif
