"""Relaying the user's terminal to a container's pty: raw mode, window size, copy both ways."""

from __future__ import annotations

import os
import signal
import sys


def _copy_winsize(src_fd: int, dest_fd: int) -> None:
    import fcntl
    import termios

    try:
        size = fcntl.ioctl(src_fd, termios.TIOCGWINSZ, b"\0" * 8)
        fcntl.ioctl(dest_fd, termios.TIOCSWINSZ, size)
    except OSError:
        pass


def relay(master: int, interactive: bool) -> None:
    """Copy stdin to the pty and the pty to stdout until the container closes it.

    The local terminal goes to raw mode so that Ctrl-C, Ctrl-Z and friends reach the container's line
    discipline as bytes, exactly as with ``docker run -it``; it is restored on every exit path.
    """
    import termios
    import tty

    stdin = sys.stdin.fileno()
    stdout = sys.stdout.fileno()
    saved = None
    if interactive and os.isatty(stdin):
        saved = termios.tcgetattr(stdin)
        tty.setraw(stdin)
    if os.isatty(stdin):
        _copy_winsize(stdin, master)
        signal.signal(signal.SIGWINCH, lambda *_: _copy_winsize(stdin, master))
    try:
        _pump(master, stdin if interactive else None, stdout)
    finally:
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        signal.signal(signal.SIGWINCH, signal.SIG_DFL)
        os.close(master)


def _pump(master: int, stdin: int | None, stdout: int) -> None:
    import select  # (here: a run without -t never relays, and every run imports this module)

    readers = [master] + ([stdin] if stdin is not None else [])
    while True:
        try:
            ready, _, _ = select.select(readers, [], [])
        except InterruptedError:
            continue
        if master in ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every slave fd closed, the container is done
                return
            if not data:
                return
            os.write(stdout, data)
        if stdin is not None and stdin in ready:
            data = os.read(stdin, 65536)
            if not data:
                readers.remove(stdin)
                stdin = None
                continue
            os.write(master, data)


FORWARDED_SIGNALS = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
)


def attend(pid: int, console: int | None, interactive: bool) -> int:
    """Forward signals to ``pid`` (install handlers, then unblock what the caller blocked across the
    start), relay its pty if it has one, wait for it, and return its raw wait status.

    The caller blocks FORWARDED_SIGNALS before starting the process, so a signal that arrives between the
    exec and the handlers waits instead of killing hutch."""
    for sig in FORWARDED_SIGNALS:
        signal.signal(sig, lambda signum, _frame: forward_to(pid, signum))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED_SIGNALS)
    if console is not None:
        relay(console, interactive)
    _, status = os.waitpid(pid, 0)
    for sig in FORWARDED_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    return status


def forward_to(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass
