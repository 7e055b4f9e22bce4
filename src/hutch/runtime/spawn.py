"""Starting a container's init process from the caller's side.

One fork, no helper binary: the caller makes the pid namespace for its *next child* with
``unshare(CLONE_NEWPID)``, forks (the child becomes pid 1 of the new namespace), then joins its own pid
namespace again with ``setns`` so that later forks of the caller are unaffected. The child does everything
else (``runtime.init``). A close-on-exec pipe tells the caller whether the exec happened: EOF means it did,
a JSON record means set-up failed and why.
"""

from __future__ import annotations

import json
import os
import signal

from hutch.errors import CommandNotExecutable, CommandNotFound, HutchError
from hutch.linux import syscalls as sc

TYPE_CHECKING = False
if TYPE_CHECKING:
    from hutch.runtime.rootfs import OverlayRoot


class ContainerProcess:
    """The running init process as the caller sees it; ``console`` is the pty master with ``terminal``."""

    __slots__ = ("pid", "console")

    def __init__(self, pid: int, console: int | None = None) -> None:
        self.pid = pid
        self.console = console


def spawn(
    spec: dict,
    rootfs: str,
    *,
    overlay: OverlayRoot | None = None,
    cgroup: object | None = None,
    stdio: tuple[int, int, int] = (0, 1, 2),
    die_with_parent: bool = False,
    seccomp_program: bytes | None = None,
) -> ContainerProcess:
    """Fork the container's init and wait until it has exec'd its command (or failed to).

    Who moves the child into its cgroup: a cgroup.procs write waits for an RCU grace period inside the
    kernel (10-30 ms here). Where the manager says a process moves itself cheaply (v1: through ``tasks``,
    see ``V1Manager.add_process``) the child does so first thing, before any set-up; otherwise the parent
    does it, overlapping the wait with the child building its root filesystem, and the child waits for the
    "joined" byte before it drops privileges and execs. Either way nothing of the container's ever runs
    outside its cgroup.
    """
    # why imported here, before the fork, not at the top: the microVM backend takes ContainerProcess from
    # this module and never runs an init, whose modules (root filesystem, mount options, user namespaces)
    # are ~2 ms of its start; the child must find them loaded, as it may import nothing after pivot_root.
    from hutch.runtime import init

    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    parent_joins = cgroup is not None and not getattr(cgroup, "cheap_self_join", False)
    joined_read, joined_write = os.pipe2(os.O_CLOEXEC) if parent_joins else (None, None)
    parent_sock = child_sock = None
    if spec["process"].get("terminal"):
        import socket

        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    userns_fd = _new_userns(spec)
    new_pidns = _wants_new_pidns(spec)
    try:
        pid = fork_in_pid_namespace(lambda: sc.unshare(sc.CLONE_NEWPID)) if new_pidns else os.fork()
    except BaseException:
        if userns_fd is not None:
            os.close(userns_fd)
        raise
    if pid == 0:
        os.close(read_end)
        if joined_write is not None:
            os.close(joined_write)
        if parent_sock is not None:
            parent_sock.close()
        init.run(
            init.InitArgs(
                spec,
                rootfs,
                overlay,
                joined_read,
                write_end,
                child_sock,
                stdio,
                die_with_parent,
                seccomp_program,
                userns_fd,
                cgroup=None if parent_joins else cgroup,
            )
        )
    os.close(write_end)
    if userns_fd is not None:
        os.close(userns_fd)
    if parent_joins:
        os.close(joined_read)
        _join_cgroup(cgroup, pid, joined_write)
    if child_sock is not None:
        child_sock.close()
    return await_exec(pid, read_end, parent_sock)


def _join_cgroup(cgroup, pid: int, joined_write: int) -> None:
    """Move the child into its cgroup and tell it so; on failure the child is killed before it can exec."""
    try:
        cgroup.add_process(pid)
    except BaseException:
        os.close(joined_write)  # EOF: the child gives up
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(pid, 0)
        raise
    os.write(joined_write, b"1")
    os.close(joined_write)


def _new_userns(spec: dict) -> int | None:
    """The container's own user namespace, made here when the spec asks for one (runtime.userns)."""
    linux = spec.get("linux", {})
    if not any(ns["type"] == "user" and not ns.get("path") for ns in linux.get("namespaces", [])):
        return None
    from hutch.runtime.userns import make_userns

    return make_userns(linux.get("uidMappings", []), linux.get("gidMappings", []))


def _wants_new_pidns(spec: dict) -> bool:
    namespaces = spec.get("linux", {}).get("namespaces", [])
    return any(ns["type"] == "pid" and not ns.get("path") for ns in namespaces)


def fork_in_pid_namespace(enter) -> int:
    """fork() with the child born in the pid namespace ``enter()`` selects, the caller staying where it is.

    ``enter`` is ``unshare(CLONE_NEWPID)`` for a new namespace (the child is its pid 1) or
    ``setns(fd, CLONE_NEWPID)`` to join a container's (``hutch exec``). why restore: both only change the
    namespace of the caller's *next child*; joining our own again keeps any later fork of this process (a
    monitor, a second container) in the host namespace, and a failed fork must not leave it changed.
    """
    own = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
    try:
        enter()
        try:
            pid = os.fork()
        except BaseException:
            sc.setns(own, sc.CLONE_NEWPID)
            raise
        if pid != 0:
            sc.setns(own, sc.CLONE_NEWPID)
        return pid
    finally:
        os.close(own)


def await_exec(pid: int, read_end: int, parent_sock) -> ContainerProcess:
    """The parent's side of the exec handshake: take the pty master if one comes, then read the error
    pipe until EOF (the exec closed it) or a failure record (the child is reaped and the error raised)."""
    console = _receive_console(parent_sock) if parent_sock is not None else None
    failure = _read_all(read_end)
    if failure:
        os.waitpid(pid, 0)
        if console is not None:
            os.close(console)
        raise _error_from(failure)
    return ContainerProcess(pid, console)


def _receive_console(sock) -> int | None:
    import socket

    try:
        _msg, fds, _flags, _addr = socket.recv_fds(sock, 16, 1)
    finally:
        sock.close()
    return fds[0] if fds else None


def _read_all(fd: int) -> bytes:
    chunks = []
    try:
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


def _error_from(raw: bytes) -> HutchError:
    try:
        record = json.loads(raw)
        code, message = int(record["code"]), str(record["message"])
    except (ValueError, KeyError, TypeError):
        return HutchError(f"container init failed: {raw[:200]!r}")
    if code == 127:
        return CommandNotFound(message)
    if code == 126:
        return CommandNotExecutable(message)
    return HutchError(message)
