/* The records the host sends (hutch/vm/agentconf.py): a stage's set-up steps or a process's config. */
#include "agent.h"

/* The config: records {u32 tag, u32 length, bytes}; strings arrive NUL-terminated. A process's config
 * needs a command; the stage (set-up steps only) is parsed with parse_steps. */
int parse_records(unsigned char *buf, uint32_t len, struct config *c)
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

int parse_config(unsigned char *buf, uint32_t len, struct config *c)
{
	return parse_records(buf, len, c) < 0 || !c->argc ? -1 : 0;
}

/* The config, read by the container's pid 1 straight from the control port (the agent reads nothing from
 * it until told, see container_child). */
void receive_config(struct config *c)
{
	uint32_t len;
	unsigned char *raw = read_block(ctl, &len);
	if (!raw || parse_config(raw, len, c) < 0 || !c->root)
		child_fail("bad container config", 0);
}
