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
import os
import signal
import struct

from hutch.errors import HutchError
from hutch.linux import syscalls as sc
from hutch.runtime import process as setup
from hutch.runtime import rootfs, seccomp
from hutch.runtime.process import USER_ANNOTATION, InitError

NAMESPACE_FLAGS = {
    "mount": sc.CLONE_NEWNS,
    "uts": sc.CLONE_NEWUTS,
    "ipc": sc.CLONE_NEWIPC,
    "network": sc.CLONE_NEWNET,
    "cgroup": sc.CLONE_NEWCGROUP,
    "pid": sc.CLONE_NEWPID,
    "user": sc.CLONE_NEWUSER,
}
__all__ = ["NAMESPACE_FLAGS", "USER_ANNOTATION", "InitArgs", "InitError", "run"]
_SIOCSIFFLAGS = 0x8914
_IFF_UP, _IFF_LOOPBACK, _IFF_RUNNING = 0x1, 0x8, 0x40


class InitArgs:
    """What the parent hands the init process across fork."""

    __slots__ = (
        "spec",
        "rootfs",
        "overlay",
        "cgroup_joined_fd",
        "error_fd",
        "console_socket",
        "stdio",
        "die_with_parent",
        "seccomp_program",
        "userns_fd",
        "cgroup",
    )

    def __init__(
        self,
        spec: dict,
        rootfs: str,
        overlay: rootfs.OverlayRoot | None,
        cgroup_joined_fd: int | None,
        error_fd: int,
        console_socket: object | None,
        stdio: tuple[int, int, int],
        die_with_parent: bool,
        seccomp_program: bytes | None = None,
        userns_fd: int | None = None,
        cgroup: object | None = None,
    ) -> None:
        self.spec = spec
        self.rootfs = rootfs
        self.overlay = overlay
        self.cgroup_joined_fd = cgroup_joined_fd
        self.error_fd = error_fd
        self.console_socket = console_socket
        self.stdio = stdio
        self.die_with_parent = die_with_parent
        self.seccomp_program = seccomp_program
        self.userns_fd = userns_fd
        self.cgroup = cgroup  # set when this process joins its cgroup itself (see spawn)


def run(args: InitArgs) -> None:
    """Set the container up and exec its command; never returns."""
    # why: a garbage collection here would touch every object and copy the parent's pages for nothing; the
    # process execs (or exits) in a few milliseconds anyway.
    gc.disable()
    try:
        _setup_and_exec(args)
    except InitError as err:
        setup.report(args.error_fd, err.code, str(err))
    except OSError as err:
        setup.report(args.error_fd, 125, str(err))
    except BaseException as err:  # noqa: BLE001 - anything escaping here must still end this process
        setup.report(args.error_fd, 125, f"container init: {err.__class__.__name__}: {err}")
    os._exit(125)


def _setup_and_exec(args: InitArgs) -> None:
    spec = args.spec
    process = spec["process"]
    # why: until exec, /proc/1/exe of this process is the host's Python; non-dumpable means nothing in the
    # container can open or ptrace it to overwrite the host binary (CVE-2019-5736). exec resets it.
    sc.prctl(sc.PR_SET_DUMPABLE, 0)
    if args.cgroup is not None:
        _join_cgroup(args.cgroup)
    setup.set_stdio(args.stdio)
    os.setsid()
    _enter_namespaces(spec.get("linux", {}).get("namespaces", []))
    _build_rootfs(args)
    if spec.get("hostname"):
        sc.sethostname(spec["hostname"])
    if process.get("terminal"):
        setup.attach_console(args.console_socket)
    _wait_for_cgroup(args.cgroup_joined_fd)
    setup.set_rlimits(process.get("rlimits", []))
    if args.userns_fd is not None:
        # Last of the host root's work: from here on we are the container's root, with capabilities only in
        # its user namespace (which owns none of the other namespaces).
        sc.setns(args.userns_fd, sc.CLONE_NEWUSER)
        os.close(args.userns_fd)
    cwd = process.get("cwd", "/")
    # Docker creates a missing working directory (owned by root) rather than failing.
    os.makedirs(cwd, mode=0o755, exist_ok=True)
    seccomp_filter = spec.get("linux", {}).get("seccomp")
    no_new_privs = bool(process.get("noNewPrivileges"))
    if seccomp_filter and not no_new_privs:
        # why here: without no_new_privs only a holder of CAP_SYS_ADMIN may load a filter, and the uid switch
        # drops it; everything after this point (setres[ug]id, capset, chdir, exec) the profile allows.
        seccomp.load(seccomp_filter, args.seccomp_program)
    user = setup.switch_user(spec)
    env = list(process.get("env", []))
    if not any(item.startswith("HOME=") for item in env):
        env.append(f"HOME={user.home}")
    setup.enter_cwd(cwd)
    if process.get("noNewPrivileges"):
        sc.prctl(sc.PR_SET_NO_NEW_PRIVILEGES, 1)
    setup.close_extra_fds(args.error_fd)
    setup.reset_signals()
    if seccomp_filter and no_new_privs:
        seccomp.load(seccomp_filter, args.seccomp_program)  # as late as possible: fewer of our calls pass it
    if args.die_with_parent:
        # why: a foreground container must not outlive the hutch that is waiting for it; set last because a
        # uid change clears it.
        sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
    setup.exec_command(process["args"], env)


def _host_root(mappings: list[dict]) -> int:
    for m in mappings:
        if m["containerID"] == 0:
            return m["hostID"]
    raise InitError(125, "the user namespace does not map the container's root (uid 0)")


def _join_cgroup(cgroup) -> None:
    """Move this process into the container's cgroup, before anything of the container's runs."""
    try:
        cgroup.add_process(0)
    except HutchError as err:
        raise InitError(125, str(err)) from err


def _wait_for_cgroup(fd: int | None) -> None:
    """Block until the parent has moved us into the container's cgroup (see ``spawn``); EOF means it could
    not, and the container must not start outside its limits."""
    if fd is None:
        return
    joined = os.read(fd, 1)
    os.close(fd)
    if joined != b"1":
        raise InitError(125, "the container could not be placed in its cgroup")


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
        elif kind not in ("pid", "user"):  # the user namespace was made by the parent: joined last
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
    if args.userns_fd is not None and args.overlay is not None:
        # The root directory of the merged tree is the upper dir's: it must belong to the container's root.
        root_uid = _host_root(linux.get("uidMappings", []))
        root_gid = _host_root(linux.get("gidMappings", []))
        for path in (args.overlay.upper,):
            os.chown(path, root_uid, root_gid)
    rootfs.mount_root(args.rootfs, args.overlay, flag, args.userns_fd)
    for entry in spec.get("mounts", []):
        rootfs.mount_entry(args.rootfs, entry)
    rootfs.create_default_devices(args.rootfs)
    rootfs.create_spec_devices(args.rootfs, linux.get("devices", []))
    rootfs.mask_paths(args.rootfs, linux.get("maskedPaths", []), linux.get("readonlyPaths", []))
    rootfs.pivot_into(args.rootfs)
    if spec.get("root", {}).get("readonly"):
        rootfs.remount_root_readonly()
