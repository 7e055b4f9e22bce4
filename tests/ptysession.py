"""Driving an interactive ``hutch ... -it sh`` through a real pty, as a user at a terminal would."""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import termios
import time


def read_until(fd: int, needle: bytes, timeout: float = 20) -> bytes:
    """Read from ``fd`` until ``needle`` appears (or, with an empty needle, until EOF or the timeout)."""
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        data += chunk
        if needle and needle in data:
            return data
    if needle:
        raise AssertionError(f"{needle!r} not seen in {data!r}")
    return data


def shell_session(argv: list[str], env: dict) -> tuple[bytes, bytes, int]:
    """Run ``argv`` (ending in a shell) on a 33x101 pty: ask for tty, size, TERM; interrupt a sleep with
    Ctrl-C; exit 5. Returns (the first answers, the output after Ctrl-C, the exit code)."""
    pid, master = pty.fork()
    if pid == 0:
        os.execve(argv[0], argv, env)
    try:
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 101, 0, 0))
        read_until(master, b"# ")  # ash discards typeahead while it starts line editing
        os.write(master, b"tty; stty size; echo $TERM; echo marker-$((6*7))\r")
        answers = read_until(master, b"marker-42")
        # why the marker: on a loaded host (a TCG guest on a busy core) a fixed pause can end before the
        # shell has even read the line, and a Ctrl-C that reaches the line editor instead of sleep is
        # not the interrupt this checks. The pause after it covers sleep's fork and exec.
        os.write(master, b"echo sleeping-$((2*3)); sleep 100\r")
        read_until(master, b"sleeping-6\r\n")
        time.sleep(0.5)
        os.write(master, b"\x03")  # Ctrl-C interrupts sleep, the shell survives
        os.write(master, b"echo after-$((1+1))\r")
        after = read_until(master, b"after-2")
        os.write(master, b"exit 5\r")
        read_until(master, b"", timeout=5)
        _, status = os.waitpid(pid, 0)
        return answers, after, os.waitstatus_to_exitcode(status)
    finally:
        os.close(master)
        try:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
