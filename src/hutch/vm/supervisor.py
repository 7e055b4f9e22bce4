"""The VM supervisor: the process the engine sees as the container's init when it runs in a microVM.

Forked by ``vm.backend.start``, it launches QEMU as its child and stands between the engine and the guest
as a shim does for Kata: it hands the guest its stage-2 script over the control port, reports "up" (or a
failure with the console log's tail) to the engine, relays stdio between the caller's fds and the
virtio-serial ports, forwards the signals it receives to the container's pid 1 in the guest, and exits
with the guest command's exit status. So ``waitpid``, signal forwarding, ``stop`` and the detached
monitor work for a VM exactly as for a namespace container.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import time
from pathlib import Path

from hutch.vm.qemu import PORTS

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)

# bench/vm.py's phases: with HUTCH_VM_TIMINGS=<file>, the supervisor appends one JSON line of wall-clock
# stamps (QEMU forked, template restored, guest up, "exit N" read, QEMU reaped). Unset: nothing is kept.
_TIMINGS = os.environ.get("HUTCH_VM_TIMINGS")
_stamps: dict[str, float] = {}


def _stamp(name: str) -> None:
    if _TIMINGS:
        _stamps[name] = time.time()


def _write_stamps() -> None:
    if _TIMINGS and _stamps:
        try:
            with open(_TIMINGS, "a") as f:
                f.write(json.dumps(_stamps) + "\n")
        except OSError:
            pass  # a benchmark's aid: never a reason to lose the exit status


class Launch:
    """Everything the supervisor needs; built by the backend before the fork."""

    __slots__ = (
        "argv",
        "script",
        "stdio",
        "interactive",
        "console_log",
        "qemu_log",
        "boot_timeout",
        "accel",
        "daemons",
        "daemon_log",
        "restore",
    )

    def __init__(self, **values) -> None:
        # argv: QEMU's; script: the guest's stage 2; daemons: (argv, listening fd) of each virtiofsd.
        for name in self.__slots__:
            setattr(self, name, values[name])


def run(
    launch: Launch, ports: dict[str, socket.socket], qemu_ends: dict[str, socket.socket], report: int
) -> None:
    """The supervisor's whole life; never returns."""
    code = 125
    qemu_pid = 0
    helpers: list[int] = []
    try:
        _stamp("supervisor")
        helpers = [_start_helper(argv, fd, launch.daemon_log) for argv, fd in launch.daemons]
        qemu_pid = _start_qemu(launch, qemu_ends)
        _stamp("qemu_forked")
        for s in qemu_ends.values():
            s.close()
        ctl = ports["hutch.ctl"]
        if launch.restore is not None:
            _restore(launch, ports["qmp"])
            _stamp("restored")
        _send(ctl, b"%d\n" % len(launch.script) + launch.script.encode())  # QEMU may die first
        problem = _await_up(ctl, launch.boot_timeout)
        _stamp("up")
        if problem.startswith("the guest did not come up"):
            from hutch.vm import qmp

            problem += f" (QEMU status: {qmp.status_then_quit(ports['qmp'])})"
        if problem:
            for pid in (qemu_pid, *helpers):
                _kill(pid)
            os.write(report, json.dumps({"code": 125, "message": _failure(launch, problem)}).encode())
            os._exit(125)
        for sig in FORWARDED:
            signal.signal(sig, lambda signum, _f: _send(ctl, b"signal %d\n" % signum))
        # A foreground hutch run blocked these across the start; they are forwarded from here on.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
        os.write(report, b"ok")
        os.close(report)
        code = _relay(launch, ports)
        _stamp("ports_closed")
        _, status = os.waitpid(qemu_pid, 0)
        _stamp("qemu_exited")
        for pid in helpers:
            _kill(pid)
        if code is None:
            code = 128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else 125
    except BaseException as exc:  # noqa: BLE001 - reported to the engine; nothing may be left running
        for pid in (qemu_pid, *helpers):
            if pid:
                _kill(pid)
        try:
            os.write(report, json.dumps({"code": 125, "message": f"microVM: {exc}"}).encode())
        except OSError:
            pass
    _write_stamps()
    os._exit(code)


def _start_qemu(launch: Launch, qemu_ends: dict[str, socket.socket]) -> int:
    pid = os.fork()
    if pid != 0:
        return pid
    try:
        from hutch.linux import syscalls as sc

        # why: QEMU must die with its supervisor (no guest outlives the container), and must not get the
        # terminal's Ctrl-C directly: the supervisor forwards it into the guest instead.
        sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
        if launch.restore is not None:
            # why: QEMU asks for huge pages on its TCG code buffer and on a 2 MiB ACPI ROM it touches 4 KiB
            # of; a clone's 2 MiB pages there are ~3 MiB of PSS it does not use (inherited across exec).
            sc.prctl(sc.PR_SET_THP_DISABLE, 1)
        os.setpgid(0, 0)
        for s in qemu_ends.values():
            os.set_inheritable(s.fileno(), True)
        null = os.open("/dev/null", os.O_RDWR)
        log = os.open(launch.qemu_log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.dup2(log, 2)
        for sig in FORWARDED:
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        os.execvp(launch.argv[0], launch.argv)
    except BaseException:  # noqa: BLE001 - the parent sees the exit and reports QEMU's log
        os._exit(127)


def _restore(launch: Launch, qmp_sock: socket.socket) -> None:
    """Load the template into the QEMU just started with ``-incoming defer`` and give it the image disk.
    A template that does not load is deleted, so the next start builds a fresh one."""
    from hutch.vm import qmp, template

    path, disk = launch.restore
    try:
        template.restore(
            qmp.Qmp(qmp_sock, timeout=launch.boot_timeout), Path(path), disk, launch.boot_timeout
        )
    except BaseException:
        Path(path).unlink(missing_ok=True)
        raise


def _start_helper(argv: list[str], keep_fd: int, log_path: str) -> int:
    """A virtiofsd: dies with the supervisor, inherits only its listening socket."""
    pid = os.fork()
    if pid != 0:
        os.close(keep_fd)
        return pid
    try:
        from hutch.linux import syscalls as sc

        sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
        os.set_inheritable(keep_fd, True)
        null = os.open("/dev/null", os.O_RDWR)
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.dup2(log, 2)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        os.execv(argv[0], argv)
    except BaseException:  # noqa: BLE001 - QEMU then fails to connect, and that is reported
        os._exit(127)


def _await_up(ctl: socket.socket, timeout: float) -> str:
    """Wait for the guest's "up"; an error string on timeout, a guest failure or QEMU's exit."""
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf.removeprefix(b"ready\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([ctl], [], [], left)[0]:
            return f"the guest did not come up within {timeout:g} s"
        try:
            chunk = ctl.recv(4096)
        except OSError:  # ECONNRESET: QEMU died with our script unread
            chunk = b""
        if not chunk:
            return "QEMU exited before the guest came up"
        buf += chunk
    line = buf.removeprefix(b"ready\n").split(b"\n", 1)[0].decode(errors="replace")
    return "" if line == "up" else f"guest init: {line.removeprefix('fail ')}"


def _failure(launch: Launch, problem: str) -> str:
    tail = _tail(launch.qemu_log) or _tail(launch.console_log)
    return f"microVM ({launch.accel}): {problem}" + (f"; log: {tail}" if tail else "")


def _tail(path: str, lines: int = 3) -> str:
    try:
        with open(path, "rb") as f:
            text = f.read()[-4096:].decode(errors="replace")
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def _send(ctl: socket.socket, data: bytes) -> None:
    try:
        ctl.sendall(data)
    except OSError:
        pass


def _relay(launch: Launch, ports: dict[str, socket.socket]) -> int | None:
    """Copy stdio until the guest's ports close (QEMU exited); the guest's "exit N", if it sent one."""
    stdin_fd, out_fd, err_fd = launch.stdio
    sinks = {ports["hutch.stdout"].fileno(): out_fd, ports["hutch.stderr"].fileno(): err_fd}
    ctl = ports["hutch.ctl"]
    stdin_sock = ports["hutch.stdin"]
    readers = [ctl.fileno(), *sinks]
    if launch.interactive:
        readers.append(stdin_fd)
    else:
        stdin_sock.close()
    code = None
    ctl_buf = b""
    while ctl.fileno() in readers or any(fd in readers for fd in sinks):
        try:
            ready, _, _ = select.select(readers, [], [])
        except InterruptedError:
            continue
        for fd in ready:
            data = _read(fd)
            if fd == stdin_fd:
                if data:
                    _send(stdin_sock, data)
                else:
                    readers.remove(fd)
                    # why shutdown, not close: a close is a hang-up, and QEMU drops whatever the guest
                    # has not read yet; a half-close lets it read the rest, then see EOF and tell the guest.
                    stdin_sock.shutdown(socket.SHUT_WR)
            elif not data:
                readers.remove(fd)
            elif fd in sinks:
                _write_all(sinks[fd], data)
            else:
                ctl_buf += data
                for line in ctl_buf.split(b"\n")[:-1]:
                    if line.startswith(b"exit "):
                        code = int(line[5:])
                        _stamp("exit_line")
                ctl_buf = ctl_buf.rsplit(b"\n", 1)[-1]
    return code


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:
        return b""


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BrokenPipeError:
            return
        except InterruptedError:
            continue


def port_pairs() -> tuple[dict[str, socket.socket], dict[str, socket.socket]]:
    """One connected socket pair per port: our ends, and the ends QEMU inherits (no socket files)."""
    ours, theirs = {}, {}
    for name in (*PORTS, "qmp"):
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ours[name], theirs[name] = a, b
    return ours, theirs
