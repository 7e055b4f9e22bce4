"""The VM supervisor: the process the engine sees as the container's init when it runs in a microVM.

Forked by ``vm.backend.start``, it launches QEMU as its child and stands between the engine and the guest
as a shim does for Kata: it hands the guest its config over the control port, reports "up" (or a
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
from hutch.vm.relayio import read_some, write_all

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)

# bench/vm.py's phases: with HUTCH_VM_TIMINGS=<file>, the supervisor appends one JSON line of wall-clock
# stamps (QEMU forked, guest up, "exit N" read, QEMU reaped). Unset: nothing is kept.
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
        "stdio",
        "interactive",
        "console_log",
        "qemu_log",
        "boot_timeout",
        "accel",
        "daemons",
        "daemon_log",
        "restore",
        "tap_fd",
        "hosts_watch",
        "config",
        "tty",
        "exec_name",
        "stage",
    )

    def __init__(self, **values) -> None:
        # argv: QEMU's; config: the guest agent's (vm/agentconf.py);
        # daemons: (argv, listening fd) of each virtiofsd; exec_name: the socket `hutch exec` connects to;
        # stage: the container's staged mounts (vm/script.py), sent first on a cold boot (a template's
        # clone has them already);
        # tap_fd: the network card's TAP device (-1: none), inherited by QEMU only; hosts_watch: an
        # inotify fd on the container's hosts file and its path (None: no user network to follow).
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
        # a template clone loads its template from this fd (QEMU inherits it), named in the QMP request
        saved = os.open(launch.restore, os.O_RDONLY | os.O_CLOEXEC) if launch.restore is not None else -1
        qemu_pid = _start_qemu(launch, qemu_ends, saved)
        _stamp("qemu_forked")
        for s in qemu_ends.values():
            s.close()
        if launch.tap_fd >= 0:
            os.close(launch.tap_fd)  # why: QEMU alone holds the TAP, so it goes when QEMU does
        ctl = ports["hutch.ctl"]
        if saved >= 0:
            from hutch.vm.template import restore_requests

            os.close(saved)
            _send(ports["qmp"], restore_requests(saved))
        _send(ctl, launch.stage + launch.config)  # QEMU may die first
        problem = _await_up(ctl, launch.boot_timeout)
        if not problem:
            # the guest's clock, which its pid 1 awaits before the command runs: a clone's resumes where its
            # template's stood when saved (hours or days ago); a cold guest's RTC holds whole seconds only
            _send(ctl, b"time %d\n" % time.time_ns())
        _stamp("up")
        if problem and launch.restore is not None:
            problem = _restore_failure(launch, ports["qmp"]) or problem
        if problem.startswith("the guest did not come up"):
            from hutch.vm import qmp

            # (a clone's session was opened by its restore requests, whose replies were read above)
            status = qmp.status_then_quit(ports["qmp"], negotiated=launch.restore is not None)
            problem += f" (QEMU status: {status})"
        if problem:
            for pid in (qemu_pid, *helpers):
                _kill(pid)
            os.write(report, json.dumps({"code": 125, "message": _failure(launch, problem)}).encode())
            os._exit(125)
        for sig in FORWARDED:
            signal.signal(sig, lambda signum, _f: _send(ctl, b"signal %d\n" % signum))
        if launch.tty:
            _follow_window_size(ctl)
        listener = _exec_listener(launch.exec_name)
        # A foreground hutch run blocked these across the start; they are forwarded from here on.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED)
        os.write(report, b"ok")
        os.close(report)
        code = _relay(launch, ports, listener, qemu_pid)
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


def _start_qemu(launch: Launch, qemu_ends: dict[str, socket.socket], saved: int) -> int:
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
        for fd in (launch.tap_fd, saved):
            if fd >= 0:
                os.set_inheritable(fd, True)
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


def _restore_failure(launch: Launch, qmp_sock: socket.socket) -> str:
    """Why a clone did not come up, if its template did not load: QEMU's error reply or its log's
    complaint. Such a template is deleted, so the next start builds a fresh one."""
    replies = b""
    qmp_sock.setblocking(False)
    try:
        while chunk := qmp_sock.recv(65536):
            replies += chunk
    except OSError:
        pass  # nothing more (or QEMU gone): what was read is all there is
    errors = [line for line in replies.splitlines() if b'"error"' in line]
    if not errors and "migration" not in _tail(launch.qemu_log, 5):
        return ""
    Path(launch.restore).unlink(missing_ok=True)
    detail = json.loads(errors[0])["error"].get("desc", "") if errors else "QEMU could not load it"
    return f"loading the template {Path(launch.restore).name}: {detail}"  # (QEMU's log is appended)


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


def _follow_window_size(ctl: socket.socket) -> None:
    """With -t, our stdio is the slave of a host pty whose master the caller relays: made our controlling
    terminal, its size changes (the caller copies the user's) arrive as SIGWINCH and go to the guest's pty
    as "winch ROWS COLS" lines."""
    import fcntl
    import struct
    import termios

    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    def winch(_signum, _frame) -> None:
        try:
            rows, cols = struct.unpack("HHHH", fcntl.ioctl(0, termios.TIOCGWINSZ, b"\0" * 8))[:2]
        except OSError:
            return
        if rows or cols:  # 0x0: the caller has no terminal size to give
            _send(ctl, b"winch %d %d\n" % (rows, cols))

    signal.signal(signal.SIGWINCH, winch)
    winch(0, None)


def _exec_listener(name: bytes) -> socket.socket:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    listener.bind(name)
    listener.listen(128)
    return listener


def _relay(
    launch: Launch, ports: dict[str, socket.socket], listener: socket.socket, qemu_pid: int
) -> int | None:
    """Copy stdio until the guest's ports close (QEMU exited); the guest's "exit N", if it sent one.
    ``hutch exec`` clients connecting to ``listener`` are routed to and from the exec port. Nothing here
    blocks on the guest: the container's stdin waits in ``pending`` while the guest does not take it (and
    the caller's stdin is not read meanwhile), the router keeps its own queues.

    Without volumes QEMU is killed as soon as "exit N" arrives, rather than waiting for the guest to
    sync and reset (~35 ms of TCG): the guest has nothing left to save (its writable layer is a tmpfs),
    and its output is already in our sockets, since a virtio-serial write returns only once QEMU has
    written the bytes out, and the agent reports the exit only after the command's output has closed.
    With virtiofs volumes the guest's sync still runs (mmap'd writes may be in its page cache)."""
    stdin_fd, out_fd, err_fd = launch.stdio
    sinks = {ports["hutch.stdout"].fileno(): out_fd, ports["hutch.stderr"].fileno(): err_fd}
    ctl = ports["hutch.ctl"]
    stdin_sock = ports["hutch.stdin"]
    router = ExecRouter(ports["hutch.exec"], listener)
    readers = [ctl.fileno(), *sinks, *router.fds()]
    watch_fd, hosts_path = launch.hosts_watch or (-1, "")
    if watch_fd >= 0:
        readers.append(watch_fd)
    if launch.interactive:
        readers.append(stdin_fd)
        stdin_sock.setblocking(False)
    else:
        stdin_sock.close()
    code = None
    ctl_buf, pending, stdin_eof = b"", bytearray(), False
    while ctl.fileno() in readers or any(fd in readers for fd in sinks):
        watch = [fd for fd in readers if not (pending and fd == stdin_fd)]
        writers = router.writers() + ([stdin_sock.fileno()] if pending else [])
        try:
            ready, writable, _ = select.select(watch, writers, [])
        except InterruptedError:
            continue
        for fd in writable:
            if pending and fd == stdin_sock.fileno():
                _push(stdin_sock, pending)
            else:
                router.flush(fd, readers)
        if stdin_eof and not pending:
            # why shutdown, not close: a close is a hang-up, and QEMU drops whatever the guest has not
            # read yet; a half-close lets it read the rest, then see EOF and tell the guest.
            _shutdown(stdin_sock)
            stdin_eof = False
        for fd in ready:
            if fd not in readers or router.handle(fd, readers):
                continue  # (a client dropped earlier in this round, or the router's)
            data = read_some(fd)
            if fd == watch_fd:
                _hosts_changed(router, hosts_path)
            elif fd == stdin_fd:
                pending += data
                _push(stdin_sock, pending)
                if not data:
                    readers.remove(fd)
                    stdin_eof = True
            elif not data:
                readers.remove(fd)
            elif fd in sinks:
                write_all(sinks[fd], data)
            else:
                ctl_buf += data
                for line in ctl_buf.split(b"\n")[:-1]:
                    if line.startswith(b"exit "):
                        code = int(line[5:])
                        _stamp("exit_line")
                        if not launch.daemons:
                            os.kill(qemu_pid, signal.SIGKILL)
                ctl_buf = ctl_buf.rsplit(b"\n", 1)[-1]
    router.close()
    return code


def _hosts_changed(router: ExecRouter, path: str) -> None:
    """The network layer rewrote the container's hosts file (in place, under its lock, so a close ends a
    whole version): the guest gets the new content, written by its agent into the container's root."""
    from hutch.vm import frames

    try:
        with open(path, "rb") as f:
            content = f.read(frames.MAX_FRAME)
    except OSError:
        return  # the container is being removed
    router.send_to_guest(frames.pack(frames.HOSTS, 0, content))


def _push(sock: socket.socket, queue: bytearray) -> bool:
    """Send what ``sock`` (non-blocking) takes from the head of ``queue``; False once the peer is gone
    (the queue is then emptied: nobody will read it)."""
    while queue:
        try:
            sent = sock.send(queue)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            queue.clear()
            return False
        del queue[:sent]
    return True


def _recv(sock: socket.socket) -> bytes | None:
    """What the non-blocking ``sock`` has: None if nothing yet, b"" at EOF or on an error."""
    try:
        return sock.recv(1 << 18)
    except (BlockingIOError, InterruptedError):
        return None
    except OSError:
        return b""


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass


class _Client:
    """One ``hutch exec`` connection: its id on the port, what it sent that is not yet a whole frame,
    what waits to be sent to it, and how much stdin the agent will still take from it."""

    __slots__ = ("sock", "ident", "inbuf", "outbuf", "credit", "closing")

    def __init__(self, sock: socket.socket, ident: int) -> None:
        self.sock, self.ident = sock, ident
        from hutch.vm import frames

        self.inbuf, self.outbuf = bytearray(), bytearray()
        self.credit, self.closing = frames.WINDOW, False


class ExecRouter:
    """Routes the frames of ``hutch exec`` clients (vm/frames.py) to the guest's exec port and back: each
    client gets an id, rewritten into its frames. Every socket is non-blocking with a queue of its own, so
    one slow client or process never holds up the others; the queues stay bounded because stdin flows
    only within the agent's credit and output within the client's. An id stays taken until its EXIT has
    come: a client that goes away has its process killed, and its output drained and dropped."""

    def __init__(self, port: socket.socket, listener: socket.socket) -> None:
        self.port, self.listener = port, listener
        port.setblocking(False)
        self.port_in, self.port_out = bytearray(), bytearray()
        self.clients: dict[int, _Client] = {}  # fd -> client
        self.owners: dict[int, _Client | None] = {}  # id -> its client; None: gone, the exec not ended yet

    def fds(self) -> list[int]:
        return [self.port.fileno(), self.listener.fileno()]

    def writers(self) -> list[int]:
        """The sockets with something queued for them."""
        fds = [fd for fd, client in self.clients.items() if client.outbuf]
        return fds + [self.port.fileno()] if self.port_out else fds

    def handle(self, fd: int, readers: list[int]) -> bool:
        """Serve ``fd`` if it is one of ours; False otherwise."""
        from hutch.vm import frames

        if fd == self.listener.fileno():
            self._accept(readers)
        elif fd == self.port.fileno():
            data = _recv(self.port)
            if data is None:
                return True
            if not data:
                readers.remove(fd)
            self.port_in += data
            for kind, ident, payload in frames.split(self.port_in):
                self._to_client(kind, ident, payload, readers)
        elif fd in self.clients:
            client = self.clients[fd]
            data = _recv(client.sock)
            if data is None:
                return True  # why: the fd of a client dropped this round, already reused by a new one
            client.inbuf += data
            for kind, _, payload in frames.split(client.inbuf):
                if not self._from_client(client, kind, payload):
                    data = b""  # a protocol breach: as if it had gone
                    break
            if not data or len(client.inbuf) > frames.MAX_FRAME + frames.HEADER.size:
                self._drop(client, readers)
        else:
            return False
        return True

    def flush(self, fd: int, readers: list[int]) -> None:
        """``fd`` can take more of its queue."""
        if fd == self.port.fileno():
            _push(self.port, self.port_out)
        elif fd in self.clients:
            client = self.clients[fd]
            if not _push(client.sock, client.outbuf) or (client.closing and not client.outbuf):
                self._drop(client, readers)

    def send_to_guest(self, data: bytes) -> None:
        self.port_out += data
        _push(self.port, self.port_out)

    def _from_client(self, client: _Client, kind: int, payload: bytes) -> bool:
        from hutch.vm import frames

        if kind == frames.STDIN:
            if len(payload) > client.credit:
                return False
            client.credit -= len(payload)
        elif kind not in (frames.START, frames.SIGNAL, frames.WINCH, frames.CREDIT, frames.PS):
            return False
        self.send_to_guest(frames.pack(kind, client.ident, payload))
        return True

    def _accept(self, readers: list[int]) -> None:
        import struct

        sock, _ = self.listener.accept()
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        free = next((i for i in range(1, 256) if i not in self.owners), None)
        # why the uid check: the socket is abstract, so file permissions cannot guard it
        if struct.unpack("3i", creds)[1] != os.geteuid() or free is None:
            sock.close()
            return
        sock.setblocking(False)
        client = _Client(sock, free)
        self.clients[sock.fileno()] = self.owners[free] = client
        readers.append(sock.fileno())

    def _to_client(self, kind: int, ident: int, payload: bytes, readers: list[int]) -> None:
        from hutch.vm import frames

        client = self.owners.get(ident)
        if kind == frames.EXIT:
            self.owners.pop(ident, None)
        if client is None:
            return  # its client is gone: dropped
        if kind == frames.CREDIT:
            client.credit += int.from_bytes(payload, "little")
        client.outbuf += frames.pack(kind, ident, payload)
        if kind == frames.EXIT:
            client.closing = True
            if client.sock.fileno() in readers:
                readers.remove(client.sock.fileno())
        self.flush(client.sock.fileno(), readers)

    def _drop(self, client: _Client, readers: list[int]) -> None:
        """Close a client; a process still running for it is killed, its output drained and dropped."""
        from hutch.vm import frames

        fd = client.sock.fileno()
        if self.owners.get(client.ident) is client:
            self.owners[client.ident] = None
            kill = frames.pack(frames.SIGNAL, client.ident, (9).to_bytes(4, "little"))
            self.send_to_guest(kill + frames.credit(client.ident, frames.UNLIMITED))
        self.clients.pop(fd, None)
        if fd in readers:
            readers.remove(fd)
        client.sock.close()

    def close(self) -> None:
        for client in self.clients.values():
            client.sock.close()
        self.listener.close()


def host_pty() -> tuple[int, int]:
    """A host pty whose slave carries the guest pty's bytes untouched (raw: the guest's line discipline
    already echoes and translates); the master is the caller's console, as with a namespace container."""
    import tty

    master, slave = os.openpty()
    os.set_inheritable(master, False)
    tty.setraw(slave)
    return master, slave


def port_pairs() -> tuple[dict[str, socket.socket], dict[str, socket.socket]]:
    """One connected socket pair per port: our ends, and the ends QEMU inherits (no socket files)."""
    ours, theirs = {}, {}
    for name in (*PORTS, "qmp"):
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        ours[name], theirs[name] = a, b
    return ours, theirs
