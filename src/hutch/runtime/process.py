"""Setting up the container's process between fork and exec: stdio, terminal, limits, identity, cwd, fds,
signals, and the exec itself. Shared by the init (``runtime.init``) and ``hutch exec``
(``runtime.execproc``); both run it in a forked child that must never return.

Every import is at the top: after pivot_root (or setns into the container's mount namespace) the host's
Python library is out of reach.
"""

from __future__ import annotations

import fcntl
import json
import os
import resource
import signal
import struct
import termios

from hutch.linux import syscalls as sc
from hutch.runtime import capabilities
from hutch.runtime.users import ExecUser, resolve_user

USER_ANNOTATION = "io.hutch.user"
# unlockpt(3) and ptsname(3) as ioctls (asm-generic/ioctls.h); Python's termios does not export them.
_TIOCSPTLCK = 0x40045431
_TIOCGPTN = 0x80045430
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


class InitError(Exception):
    """A set-up failure, carrying the exit code the parent should report (125, 126 or 127)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def report(fd: int, code: int, message: str) -> None:
    try:
        os.write(fd, json.dumps({"code": code, "message": message}).encode())
    finally:
        os._exit(code)


def set_stdio(stdio: tuple[int, int, int]) -> None:
    for target, fd in enumerate(stdio):
        if fd != target:
            os.dup2(fd, target)


def attach_console(sock) -> None:
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


def set_rlimits(rlimits: list[dict]) -> None:
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


def switch_user(spec: dict) -> ExecUser:
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


def enter_cwd(cwd: str) -> None:
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


def close_extra_fds(*keep: int) -> None:
    """Close every fd above stdio but ``keep``: no fd of hutch's may reach the container beyond stdio (the
    error pipe is close-on-exec), and a long-lived helper (monitor finisher, microVM supervisor) must not
    hold a caller's pipe or a published port's socket open."""
    start = 3
    for fd in sorted({k for k in keep if k >= start}):
        os.closerange(start, fd)
        start = fd + 1
    os.closerange(start, 65536)


def reset_signals() -> None:
    """Python ignores SIGPIPE and SIGXFSZ and installs handlers; an ignored signal survives exec, so the
    container would inherit it. Restore defaults and unblock everything."""
    for sig in _RESET_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def exec_command(argv: list[str], env: list[str]) -> None:
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
