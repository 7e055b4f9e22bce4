"""``hutch attach``: the user's terminal joined to a detached container through its monitor's socket.

The monitor (native/monitor.c) frames output as Docker's attach stream does: an 8-byte header (stream, three
zero bytes, big-endian length) then the bytes. We send stdin as stream 0 frames (an empty one closes the
container's stdin) and terminal sizes as stream 9 frames (rows, cols).
"""

from __future__ import annotations

import os
import select
import signal
import socket
import struct
import sys

_STDIN, _RESIZE = 0, 9


DEFAULT_DETACH_KEYS = "ctrl-p,ctrl-q"


def parse_detach_keys(text: str) -> bytes:
    """Docker's ``--detach-keys``: comma-separated ``ctrl-<letter>``, ``ctrl-@``, ``ctrl-[`` ... or single
    characters; empty means none."""
    from hutch.errors import InvalidArgument

    keys = b""
    for key in filter(None, text.split(",")):
        if len(key) == 1:
            keys += key.encode()
        elif key.startswith("ctrl-") and len(key) == 6 and "@" <= key[5].upper() <= "_":
            keys += bytes([ord(key[5].upper()) - 64])
        else:
            raise InvalidArgument(f"invalid --detach-keys {text!r}: expected keys such as ctrl-p,ctrl-q")
    return keys


class _Detached(Exception):
    pass


def attach(engine, ref: str, stdin: bool, sig_proxy: bool, detach_keys: bytes = b"\x10\x11") -> int:
    from hutch.engine.lifecycle import wait_exited
    from hutch.errors import Conflict

    record = engine.lookup(ref)
    if record.state == "paused":
        raise Conflict(f"you cannot attach to a paused container, unpause it first: {record.name}")
    if record.state != "running":
        raise Conflict(f"you cannot attach to a stopped container, start it first: {record.name}")
    options = record.config.get("options", {})
    tty = bool(options.get("tty"))
    stdin = stdin and bool(options.get("interactive"))
    sock = _connect(engine.container_dir(record.id))
    if sig_proxy and not tty:
        from hutch.cli.terminal import FORWARDED_SIGNALS, forward_to

        for sig in FORWARDED_SIGNALS:
            signal.signal(sig, lambda signum, _frame: forward_to(record.pid, signum))
    saved = _raw_terminal(sock) if tty and stdin else None
    try:
        _pump(sock, stdin, detach_keys)
    except _Detached:
        sys.stderr.write("\r\nread escape sequence\r\n" if tty else "read escape sequence\n")
        return 0
    finally:
        if saved is not None:
            import termios

            termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, saved)
        sock.close()
    from hutch.errors import NotFound

    try:
        return wait_exited(engine, record.id, timeout=10.0).exit_code or 0
    except NotFound:  # --rm: the record went with the container; its die event keeps the code
        from hutch.engine.events import last_exit_code

        return last_exit_code(engine.root, record.id) or 0


def _connect(cdir) -> socket.socket:
    """Through the container directory's fd: a socket path must fit in 108 bytes, a deep root may not."""
    from hutch.errors import Conflict

    dirfd = os.open(cdir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.connect(f"/proc/self/fd/{dirfd}/attach")
    except OSError as err:
        sock.close()
        raise Conflict(f"cannot attach: the container's monitor does not answer ({err.strerror})") from None
    finally:
        os.close(dirfd)
    return sock


def _frame(stream: int, data: bytes) -> bytes:
    return struct.pack(">BxxxI", stream, len(data)) + data


def _raw_terminal(sock: socket.socket):
    import termios
    import tty

    fd = sys.stdin.fileno()
    if not os.isatty(fd):
        return None
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)

    def resize(*_args) -> None:
        import fcntl

        rows, cols = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))[:2]
        sock.sendall(_frame(_RESIZE, struct.pack(">HH", rows, cols)))

    resize()
    signal.signal(signal.SIGWINCH, resize)
    return saved


def _pump(sock: socket.socket, stdin: bool, detach_keys: bytes = b"") -> None:
    """Demultiplex output to stdout/stderr and send stdin until the monitor closes the connection, or the
    detach keys are typed (raises _Detached; keys split across reads count too)."""
    matched = 0
    out = {1: sys.stdout.buffer, 2: sys.stderr.buffer}
    readers: list = [sock] + ([sys.stdin.fileno()] if stdin else [])
    buffer = b""
    while True:
        try:
            ready, _, _ = select.select(readers, [], [])
        except InterruptedError:
            continue
        if sock in ready:
            data = sock.recv(65536)
            if not data:
                return
            buffer += data
            while len(buffer) >= 8:
                stream, length = struct.unpack(">BxxxI", buffer[:8])
                if len(buffer) < 8 + length:
                    break
                target = out.get(stream, out[1])
                target.write(buffer[8 : 8 + length])
                target.flush()
                buffer = buffer[8 + length :]
        if stdin and sys.stdin.fileno() in ready:
            data = os.read(sys.stdin.fileno(), 16384)
            if detach_keys and data:
                held = detach_keys[:matched]  # a prefix of the sequence, held back from the last read
                data, matched = _scan(held + data, detach_keys)
            sock.sendall(_frame(_STDIN, data))  # empty at end of input: closes the container's stdin
            if not data:
                readers.remove(sys.stdin.fileno())
                stdin = False


def _scan(data: bytes, keys: bytes) -> tuple[bytes, int]:
    """(bytes to send, how much of ``keys`` the end of ``data`` matches); raises _Detached on a match."""
    if keys in data:
        raise _Detached
    for length in range(min(len(keys) - 1, len(data)), 0, -1):
        if data.endswith(keys[:length]):
            return data[:-length], length
    return data, 0
