"""The container's first process, between fork and exec.

It runs as pid 1 of the new pid namespace, in a forked copy of the caller, and never returns: it either
execs the container's command or reports why it could not over the error pipe and exits. The order of the
steps matters and each is explained where it happens.
"""

from __future__ import annotations

# why every import is at the top: after pivot_root the host's Python library is out of reach, so nothing
# may be imported lazily on the init's path.
import fcntl
import gc
import json
import os
import resource
import signal
import struct
import termios

from hutch.linux import syscalls as sc
from hutch.runtime import capabilities, rootfs, seccomp
from hutch.runtime.users import ExecUser, resolve_user

NAMESPACE_FLAGS = {
    "mount": sc.CLONE_NEWNS,
    "uts": sc.CLONE_NEWUTS,
    "ipc": sc.CLONE_NEWIPC,
    "network": sc.CLONE_NEWNET,
    "cgroup": sc.CLONE_NEWCGROUP,
    "pid": sc.CLONE_NEWPID,
    "user": sc.CLONE_NEWUSER,
}
USER_ANNOTATION = "io.hutch.user"
# unlockpt(3) and ptsname(3) as ioctls (asm-generic/ioctls.h); Python's termios does not export them.
_TIOCSPTLCK = 0x40045431
_TIOCGPTN = 0x80045430
_SIOCSIFFLAGS = 0x8914
_IFF_UP, _IFF_LOOPBACK, _IFF_RUNNING = 0x1, 0x8, 0x40
_RESET_SIGNALS = (
    signal.SIGPIPE,
    signal.SIGXFSZ,
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGCHLD,
    signal.SIGWINCH,
)


class InitArgs:
    """What the parent hands the init process across fork."""

    __slots__ = (
        "spec",
        "rootfs",
        "overlay",
        "cgroup",
        "error_fd",
        "console_socket",
        "stdio",
        "die_with_parent",
        "seccomp_program",
    )

    def __init__(
        self,
        spec: dict,
        rootfs: str,
        overlay: rootfs.OverlayRoot | None,
        cgroup: object | None,
        error_fd: int,
        console_socket: object | None,
        stdio: tuple[int, int, int],
        die_with_parent: bool,
        seccomp_program: bytes | None = None,
    ) -> None:
        self.spec = spec
        self.rootfs = rootfs
        self.overlay = overlay
        self.cgroup = cgroup
        self.error_fd = error_fd
        self.console_socket = console_socket
        self.stdio = stdio
        self.die_with_parent = die_with_parent
        self.seccomp_program = seccomp_program


class InitError(Exception):
    """A set-up failure, carrying the exit code the parent should report (125, 126 or 127)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def run(args: InitArgs) -> None:
    """Set the container up and exec its command; never returns."""
    # why: a garbage collection here would touch every object and copy the parent's pages for nothing; the
    # process execs (or exits) in a few milliseconds anyway.
    gc.disable()
    try:
        _setup_and_exec(args)
    except InitError as err:
        _report(args.error_fd, err.code, str(err))
    except OSError as err:
        _report(args.error_fd, 125, str(err))
    except BaseException as err:  # noqa: BLE001 - anything escaping here must still end this process
        _report(args.error_fd, 125, f"container init: {err.__class__.__name__}: {err}")
    os._exit(125)


def _report(fd: int, code: int, message: str) -> None:
    try:
        os.write(fd, json.dumps({"code": code, "message": message}).encode())
    finally:
        os._exit(code)


def _setup_and_exec(args: InitArgs) -> None:
    spec = args.spec
    process = spec["process"]
    # why: until exec, /proc/1/exe of this process is the host's Python; non-dumpable means nothing in the
    # container can open or ptrace it to overwrite the host binary (CVE-2019-5736). exec resets it.
    sc.prctl(sc.PR_SET_DUMPABLE, 0)
    _set_stdio(args.stdio)
    os.setsid()
    if args.cgroup is not None:
        args.cgroup.add_process(0)
    _enter_namespaces(spec.get("linux", {}).get("namespaces", []))
    _build_rootfs(args)
    if spec.get("hostname"):
        sc.sethostname(spec["hostname"])
    if process.get("terminal"):
        _attach_console(args.console_socket)
    cwd = process.get("cwd", "/")
    # Docker creates a missing working directory (owned by root) rather than failing.
    os.makedirs(cwd, mode=0o755, exist_ok=True)
    _set_rlimits(process.get("rlimits", []))
    seccomp_filter = spec.get("linux", {}).get("seccomp")
    no_new_privs = bool(process.get("noNewPrivileges"))
    if seccomp_filter and not no_new_privs:
        # why here: without no_new_privs only a holder of CAP_SYS_ADMIN may load a filter, and the uid switch
        # drops it; everything after this point (setres[ug]id, capset, chdir, exec) the profile allows.
        seccomp.load(seccomp_filter, args.seccomp_program)
    user = _switch_user(spec)
    env = list(process.get("env", []))
    if not any(item.startswith("HOME=") for item in env):
        env.append(f"HOME={user.home}")
    _enter_cwd(cwd)
    if process.get("noNewPrivileges"):
        sc.prctl(sc.PR_SET_NO_NEW_PRIVILEGES, 1)
    _close_extra_fds(args.error_fd)
    _reset_signals()
    if seccomp_filter and no_new_privs:
        seccomp.load(seccomp_filter, args.seccomp_program)  # as late as possible: fewer of our calls pass it
    if args.die_with_parent:
        # why: a foreground container must not outlive the hutch that is waiting for it; set last because a
        # uid change clears it.
        sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
    _exec(process["args"], env)


def _set_stdio(stdio: tuple[int, int, int]) -> None:
    for target, fd in enumerate(stdio):
        if fd != target:
            os.dup2(fd, target)


def _enter_namespaces(namespaces: list[dict]) -> None:
    """Join namespaces given by path, then unshare the rest (the pid namespace was made by the parent)."""
    flags = 0
    for ns in namespaces:
        kind = ns["type"]
        if kind not in NAMESPACE_FLAGS:
            raise InitError(125, f"unknown namespace type {kind!r}")
        if ns.get("path"):
            fd = os.open(ns["path"], os.O_RDONLY | os.O_CLOEXEC)
            try:
                sc.setns(fd, NAMESPACE_FLAGS[kind])
            finally:
                os.close(fd)
        elif kind != "pid":
            flags |= NAMESPACE_FLAGS[kind]
    if flags:
        sc.unshare(flags)
    if flags & sc.CLONE_NEWNET:
        _loopback_up()


def _loopback_up() -> None:
    """A new network namespace starts with ``lo`` down; Docker brings it up so 127.0.0.1 works.

    SIOCSIFFLAGS on any socket in the namespace is enough; no netlink library is needed for one flag.
    """
    ifreq = struct.pack("16sH14x", b"lo", _IFF_UP | _IFF_LOOPBACK | _IFF_RUNNING)
    fd = sc.socket(sc.AF_INET, sc.SOCK_DGRAM | sc.SOCK_CLOEXEC)
    try:
        fcntl.ioctl(fd, _SIOCSIFFLAGS, ifreq)
    finally:
        os.close(fd)


def _build_rootfs(args: InitArgs) -> None:
    spec = args.spec
    linux = spec.get("linux", {})
    propagation = {"private": sc.MS_PRIVATE, "slave": sc.MS_SLAVE, "shared": sc.MS_SHARED}
    flag = propagation.get(linux.get("rootfsPropagation", "").lstrip("r"), sc.MS_PRIVATE) | sc.MS_REC
    rootfs.mount_root(args.rootfs, args.overlay, flag)
    for entry in spec.get("mounts", []):
        rootfs.mount_entry(args.rootfs, entry)
    rootfs.create_default_devices(args.rootfs)
    rootfs.create_spec_devices(args.rootfs, linux.get("devices", []))
    rootfs.mask_paths(args.rootfs, linux.get("maskedPaths", []), linux.get("readonlyPaths", []))
    rootfs.pivot_into(args.rootfs)
    if spec.get("root", {}).get("readonly"):
        rootfs.remount_root_readonly()


def _attach_console(sock) -> None:
    """Open a pty from the container's own devpts, hand the master to the parent, make the slave our tty.

    why inside the container: a pty from the host's devpts would show host paths and let the container reach
    the host's pts instance.
    """
    master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    fcntl.ioctl(master, _TIOCSPTLCK, b"\0\0\0\0")
    slave_name = _ptsname(master)
    slave = os.open(slave_name, os.O_RDWR | os.O_NOCTTY)
    if sock is not None:
        # SCM_RIGHTS by hand (SOL_SOCKET = SCM_RIGHTS = 1): the socket module is not imported on this path.
        sock.sendmsg([b"console"], [(1, 1, struct.pack("i", master))])
        sock.close()
    os.close(master)
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    for target in range(3):
        os.dup2(slave, target)
    if slave > 2:
        os.close(slave)


def _ptsname(master: int) -> str:
    number = struct.unpack("I", fcntl.ioctl(master, _TIOCGPTN, b"\0\0\0\0"))[0]
    return f"/dev/pts/{number}"


def _set_rlimits(rlimits: list[dict]) -> None:
    """Apply ``--ulimit`` while still root; the engine has already refused limits above our own hard limit
    when we lack CAP_SYS_RESOURCE, so a failure here names the limit and the reason."""
    for limit in rlimits:
        kind = limit["type"]
        number = getattr(resource, kind, None)
        if number is None:
            raise InitError(125, f"unknown rlimit {kind}")
        soft, hard = (_rlim(limit["soft"]), _rlim(limit["hard"]))
        try:
            resource.setrlimit(number, (soft, hard))
        except (ValueError, OSError) as err:
            raise InitError(125, f"cannot set {kind} to {soft}:{hard}: {err}")


def _rlim(value: int) -> int:
    return resource.RLIM_INFINITY if value >= 2**63 - 1 else value


def _switch_user(spec: dict) -> ExecUser:
    """Resolve the user in the container's own files, drop the bounding set, switch ids, set capabilities."""
    process = spec["process"]
    user_spec = spec.get("annotations", {}).get(USER_ANNOTATION)
    caps = dict(process.get("capabilities") or {})
    if user_spec is not None:
        user = resolve_user(user_spec, _read("/etc/passwd"), _read("/etc/group"))
        if user.uid != 0:
            # Docker gives a non-root user no effective or permitted capabilities; the bounding set stays.
            caps = {"bounding": caps.get("bounding", [])}
    else:
        spec_user = process.get("user", {})
        user = ExecUser(spec_user.get("uid", 0), spec_user.get("gid", 0), spec_user.get("additionalGids", []))
    last = sc.last_cap()
    # The bounding set can only be dropped while we still hold CAP_SETPCAP, i.e. before the uid switch;
    # keep-caps carries the permitted set across it so the final sets can be chosen afterwards.
    capabilities.drop_bounding(caps, last)
    sc.prctl(sc.PR_SET_KEEPCAPS, 1)
    os.setgroups(user.groups)
    os.setresgid(user.gid, user.gid, user.gid)
    os.setresuid(user.uid, user.uid, user.uid)
    sc.prctl(sc.PR_SET_KEEPCAPS, 0)
    capabilities.set_process_sets(caps, last)
    return user


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _enter_cwd(cwd: str) -> None:
    """chdir, then check we really are inside the container's root (CVE-2024-21626: a leaked host fd as cwd).

    getcwd(3) fails with ENOENT, or returns a path not starting with "/", when the directory is not reachable
    from our root."""
    try:
        os.chdir(cwd)
    except FileNotFoundError:
        raise InitError(125, f"working directory {cwd!r} does not exist in the container")
    except OSError as err:
        raise InitError(125, f"cannot enter working directory {cwd!r}: {err.strerror}")
    try:
        inside = os.getcwd().startswith("/")
    except OSError:
        inside = False
    if not inside:
        raise InitError(125, f"working directory {cwd!r} is outside the container root")


def _close_extra_fds(keep: int) -> None:
    """No fd of hutch's may reach the container beyond stdio (the error pipe is close-on-exec)."""
    os.closerange(3, keep)
    os.closerange(keep + 1, 65536)


def _reset_signals() -> None:
    """Python ignores SIGPIPE and SIGXFSZ and installs handlers; an ignored signal survives exec, so the
    container would inherit it. Restore defaults and unblock everything."""
    for sig in _RESET_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def _exec(argv: list[str], env: list[str]) -> None:
    if not argv:
        raise InitError(125, "no command specified")
    environ = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    try:
        os.execvpe(argv[0], argv, environ)
    except FileNotFoundError:
        raise InitError(127, f"exec {argv[0]!r}: executable file not found in $PATH")
    except PermissionError:
        raise InitError(126, f"exec {argv[0]!r}: permission denied")
    except OSError as err:
        code = 126 if err.errno in (8, 21) else 125  # ENOEXEC, EISDIR
        raise InitError(code, f"exec {argv[0]!r}: {err.strerror}")
