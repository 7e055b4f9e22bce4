"""Starting one more process inside a running container (``hutch exec``), from the caller's side.

The container already exists, so nothing is built: the new process joins what the container's init made.
It joins the init's cgroup while it can still see the host's /sys/fs/cgroup, then its namespaces through
/proc/<pid>/ns/*, the mount namespace last (after it, host paths are gone), and from there it follows the
init's own steps (``runtime.init``): capabilities, seccomp, no-new-privileges, rlimits and the user from the
container's spec, resolved in the container's own /etc/passwd, and the same error-pipe protocol as
``runtime.spawn`` to tell the caller whether the exec happened.

The pid namespace cannot be joined by the process itself (setns(CLONE_NEWPID) only affects children), so the
caller joins it for its next child around the fork, exactly as ``spawn`` does with unshare. The new process
is therefore not pid 1 of the container: if the container's init dies, the kernel kills it with the rest.
"""

from __future__ import annotations

# why every import is at the top: after joining the container's mount namespace the host's Python library
# is out of reach, so nothing may be imported lazily on the child's path.
import gc
import os
import signal
import socket

from hutch.errors import HutchError
from hutch.linux import syscalls as sc
from hutch.runtime import process as setup
from hutch.runtime import seccomp
from hutch.runtime.init import NAMESPACE_FLAGS
from hutch.runtime.process import InitError
from hutch.runtime.spawn import ContainerProcess, await_exec, fork_in_pid_namespace

# OCI namespace type -> the name of its file in /proc/<pid>/ns.
_PROC_NS = {
    "ipc": "ipc",
    "uts": "uts",
    "network": "net",
    "cgroup": "cgroup",
    "pid": "pid",
    "mount": "mnt",
    "user": "user",
}


def spawn_exec(
    spec: dict,
    init_pid: int,
    *,
    cgroup: object | None = None,
    stdio: tuple[int, int, int] = (0, 1, 2),
    die_with_parent: bool = False,
    seccomp_program: bytes | None = None,
) -> ContainerProcess:
    """Fork a process into the namespaces of ``init_pid`` and wait until it has exec'd ``spec["process"]``.

    ``spec`` is the container's spec with ``process`` already adjusted for this exec (args, env, cwd,
    terminal, user annotation). ``console`` of the result is the pty master when ``process.terminal``.
    """
    # why open before fork: the fds pin the namespaces, so a container that stops meanwhile makes the join
    # fail cleanly instead of racing with pid reuse.
    ns_fds = _open_namespaces(spec, init_pid)
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    parent_sock = child_sock = None
    try:
        if spec["process"].get("terminal"):
            parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid = _fork_into_pidns(ns_fds.get("pid"))
        if pid == 0:
            os.close(read_end)
            if parent_sock is not None:
                parent_sock.close()
            _child(spec, ns_fds, cgroup, write_end, child_sock, stdio, die_with_parent, seccomp_program)
    except BaseException:
        os.close(read_end)
        if parent_sock is not None:
            parent_sock.close()
        raise
    finally:
        os.close(write_end)
        if child_sock is not None:
            child_sock.close()
        for fd in ns_fds.values():
            os.close(fd)
    return await_exec(pid, read_end, parent_sock)


def _open_namespaces(spec: dict, init_pid: int) -> dict[str, int]:
    """An O_CLOEXEC fd per namespace the container has, keyed by OCI type."""
    fds: dict[str, int] = {}
    try:
        for ns in spec.get("linux", {}).get("namespaces", []):
            kind = ns["type"]
            if kind not in _PROC_NS:
                raise HutchError(f"exec into a container with a {kind} namespace is not supported")
            fds[kind] = os.open(f"/proc/{init_pid}/ns/{_PROC_NS[kind]}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        for fd in fds.values():
            os.close(fd)
        raise HutchError(f"cannot join the namespaces of container process {init_pid}: {err.strerror}")
    except BaseException:
        for fd in fds.values():
            os.close(fd)
        raise
    return fds


def _fork_into_pidns(pidns_fd: int | None) -> int:
    """The child is a member of the container's pid namespace (not its pid 1) from its first instruction."""
    if pidns_fd is None:
        return os.fork()
    return fork_in_pid_namespace(lambda: sc.setns(pidns_fd, sc.CLONE_NEWPID))


def _child(
    spec: dict,
    ns_fds: dict[str, int],
    cgroup,
    error_fd: int,
    console_socket,
    stdio: tuple[int, int, int],
    die_with_parent: bool,
    seccomp_program: bytes | None,
) -> None:
    """Set the process up and exec; never returns (failures go to ``error_fd`` as in ``runtime.init``)."""
    gc.disable()  # as in init.run: the process execs within milliseconds; a collection only copies pages
    try:
        _setup_and_exec(
            spec, ns_fds, cgroup, error_fd, console_socket, stdio, die_with_parent, seccomp_program
        )
    except InitError as err:
        setup.report(error_fd, err.code, str(err))
    except (OSError, HutchError) as err:
        setup.report(error_fd, 125, str(err))
    except BaseException as err:  # noqa: BLE001 - anything escaping here must still end this process
        setup.report(error_fd, 125, f"exec: {err.__class__.__name__}: {err}")
    os._exit(125)


def _setup_and_exec(
    spec: dict,
    ns_fds: dict[str, int],
    cgroup,
    error_fd: int,
    console_socket,
    stdio: tuple[int, int, int],
    die_with_parent: bool,
    seccomp_program: bytes | None,
) -> None:
    process = spec["process"]
    # why first: until exec, /proc/<pid>/exe of this process is the host's Python and the process is visible
    # in the container's pid namespace; non-dumpable keeps the container from opening it (CVE-2019-5736).
    sc.prctl(sc.PR_SET_DUMPABLE, 0)
    setup.set_stdio(stdio)
    os.setsid()
    if cgroup is not None:
        cgroup.add_process(0)  # why before setns: the container's mount namespace hides the host's cgroupfs
    _join_namespaces(ns_fds)
    if process.get("terminal"):
        setup.attach_console(console_socket)  # /dev/ptmx is now the container's: its own devpts instance
    setup.set_rlimits(process.get("rlimits", []))
    if "user" in ns_fds:
        # Last, as the init does: joining it gives up every capability over the other namespaces.
        sc.setns(ns_fds["user"], sc.CLONE_NEWUSER)
    seccomp_filter = spec.get("linux", {}).get("seccomp")
    no_new_privs = bool(process.get("noNewPrivileges"))
    if seccomp_filter and not no_new_privs:
        seccomp.load(seccomp_filter, seccomp_program)  # while we still hold CAP_SYS_ADMIN, as init does
    user = setup.switch_user(spec)
    env = list(process.get("env", []))
    if not any(item.startswith("HOME=") for item in env):
        env.append(f"HOME={user.home}")
    # Unlike run, a missing working directory is an error (Docker's exec does not create it).
    setup.enter_cwd(process.get("cwd", "/"))
    if no_new_privs:
        sc.prctl(sc.PR_SET_NO_NEW_PRIVILEGES, 1)
    setup.close_extra_fds(error_fd)
    setup.reset_signals()
    if seccomp_filter and no_new_privs:
        seccomp.load(seccomp_filter, seccomp_program)
    if die_with_parent:
        sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)  # last: the uid switch clears it
    setup.exec_command(process["args"], env)


def _join_namespaces(ns_fds: dict[str, int]) -> None:
    """setns into each of the container's namespaces; pid is already ours (born into it), mount goes last."""
    for kind, fd in ns_fds.items():
        if kind not in ("pid", "mount", "user"):
            sc.setns(fd, NAMESPACE_FLAGS[kind])
    if "mount" in ns_fds:
        sc.setns(ns_fds["mount"], sc.CLONE_NEWNS)
        # why: setns(CLONE_NEWNS) moves root and cwd to the namespace's root, which after the init's
        # pivot_root is the container's root; chdir("/") makes sure no host directory stays our cwd.
        os.chdir("/")
