"""``hutch exec`` into a container that runs in a microVM.

The namespace backend joins the init's namespaces from the host; here they live in the guest, so the
request goes to the VM's supervisor (a unix socket, see ``vm.frames``) which routes it over the guest's
exec port to the guest agent. The agent starts the process in the container's namespaces with the
container's set-up (user, groups, capabilities, seccomp, rlimits) and carries its stdio and exit code back.

On the host, ``spawn`` forks a small relay process and returns it as the exec's process: its exit status
is the command's and signals sent to it are forwarded into the guest, so the CLI's ``attend`` (signals,
pty, wait) works unchanged. With ``-t`` the relay's stdio is the slave of a host pty whose master is the
caller's console, as for a container started with ``-t`` (see ``vm.backend``).
"""

from __future__ import annotations

import os
import select
import signal
import socket
import struct

from hutch.errors import HutchError
from hutch.runtime.spawn import ContainerProcess
from hutch.vm import frames
from hutch.vm.relayio import read_some, write_all

_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
LOST = 137  # the VM went away before the process's exit code arrived (it was killed with the guest)


def spawn(
    container_id: str,
    name: str,
    config: bytes,
    stdio: tuple[int, int, int],
    tty: bool,
    die_with_parent: bool,
) -> ContainerProcess:
    """Send the exec request for ``config`` (vm/agentconf.py) and fork the relay that serves it."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.connect(frames.socket_name(container_id))
        sock.sendall(frames.pack(frames.START, 0, config))
    except OSError as err:
        sock.close()
        raise HutchError(f"exec into container {name}: its microVM does not answer ({err.strerror})")
    master = slave = None
    if tty:
        from hutch.vm.supervisor import host_pty

        master, slave = host_pty()
        stdio = (slave, slave, slave)
    pid = os.fork()
    if pid == 0:
        code = 125
        try:
            from hutch.runtime.process import close_extra_fds

            # why: a caller's fd held here lives as long as the exec; the other end of a pipe the caller
            # feeds as the exec's stdin would then never reach EOF (hutch cp writes a tar stream so).
            close_extra_fds(sock.fileno(), *stdio)
            if die_with_parent:
                from hutch.linux import syscalls as sc

                sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
            code = _relay(sock, stdio, tty)
        finally:
            os._exit(code)
    sock.close()
    if slave is not None:
        os.close(slave)
    return ContainerProcess(pid, master)


def _relay(sock: socket.socket, stdio: tuple[int, int, int], tty: bool) -> int:
    """Stdin (within the agent's credit, vm/frames.py) and signals to the guest, output back (credited
    once written), until the EXIT frame: its code is ours."""
    stdin, out, err = stdio
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    watched = _FORWARDED + ((signal.SIGWINCH,) if tty else ())
    for sig in watched:
        signal.signal(sig, lambda *_: None)  # a handler, so the wakeup fd sees the signal
    if tty:
        import fcntl
        import termios

        os.setsid()
        fcntl.ioctl(stdin, termios.TIOCSCTTY, 0)  # the caller's size changes arrive as SIGWINCH
        _send_winch(sock, stdin)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, watched)
    buf, credit, owed, stdin_open = bytearray(), frames.WINDOW, 0, True
    while True:
        # why stdin only with credit: the guest keeps at most a window of unread stdin per exec
        readers = [sock.fileno(), wake_r] + ([stdin] if stdin_open and credit > 0 else [])
        try:
            ready, _, _ = select.select(readers, [], [])
        except InterruptedError:
            continue
        if wake_r in ready:
            for signum in os.read(wake_r, 64):
                if signum == signal.SIGWINCH:
                    _send_winch(sock, stdin)
                else:
                    _send(sock, frames.pack(frames.SIGNAL, 0, struct.pack("<i", signum)))
        if stdin in ready:
            data = read_some(stdin, credit)
            credit -= len(data)
            _send(sock, frames.pack(frames.STDIN, 0, data))  # empty: EOF
            stdin_open = bool(data)
        if sock.fileno() in ready:
            data = read_some(sock.fileno())
            if not data:
                return LOST
            buf += data
            for kind, _, payload in frames.split(buf):
                if kind in (frames.STDOUT, frames.STDERR):
                    write_all(out if kind == frames.STDOUT else err, payload)
                    owed += len(payload)
                    if owed >= frames.CREDIT_BATCH:
                        _send(sock, frames.credit(0, owed))
                        owed = 0
                elif kind == frames.CREDIT:
                    credit += int.from_bytes(payload, "little")
                elif kind == frames.EXIT:
                    return struct.unpack("<i", payload)[0]


def _send_winch(sock: socket.socket, fd: int) -> None:
    import fcntl
    import termios

    try:
        rows, cols = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))[:2]
    except OSError:
        return
    _send(sock, frames.pack(frames.WINCH, 0, struct.pack("<HH", rows, cols)))


def _send(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except OSError:
        pass
