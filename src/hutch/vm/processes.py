"""``hutch top`` of a container in a microVM: its processes as the guest agent lists them.

The container's cgroup on the host holds the VM's supervisor and QEMU, not the container's processes,
which live in the guest. So the request travels as a PS frame over the exec channel (``vm.frames``); the
agent walks the guest's /proc for the processes of the container's pid namespace and answers with one
line each: uid, pid and parent pid as the container sees them, CPU time in clock ticks, command line.
"""

from __future__ import annotations

import socket

from hutch.errors import HutchError
from hutch.vm import frames

GUEST_TICKS_PER_SECOND = 100  # USER_HZ: fixed at 100 in the x86 kernel's ABI, whatever its HZ


def list_processes(container_id: str, name: str, timeout: float = 30.0) -> list[dict]:
    """The container's processes, as ``ps -ef`` columns (``UID``, ``PID``, ``PPID``, ``TIME``, ``CMD``)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    try:
        sock.connect(frames.socket_name(container_id))
        sock.sendall(frames.pack(frames.PS, 0))
        listing, code = _answer(sock)
    except OSError as err:
        raise HutchError(f"top of container {name}: its microVM does not answer ({err.strerror or err})")
    finally:
        sock.close()
    if code != 0:
        raise HutchError(f"top of container {name}: the guest could not list its processes")
    return [row for line in listing.decode(errors="replace").splitlines() if (row := parse_line(line))]


def _answer(sock: socket.socket) -> tuple[bytes, int]:
    buf, listing = bytearray(), b""
    while True:
        chunk = sock.recv(1 << 16)
        if not chunk:
            raise OSError(0, "the microVM went away")
        buf += chunk
        for kind, _ident, payload in frames.split(buf):
            if kind == frames.STDOUT:
                listing += payload
            elif kind == frames.EXIT:
                return listing, int.from_bytes(payload, "little", signed=True)


def parse_line(line: str) -> dict | None:
    """``uid\\tpid\\tppid\\tticks\\tcommand`` -> a row; None for a malformed line."""
    fields = line.split("\t", 4)
    if len(fields) != 5 or not all(f.lstrip("-").isdigit() for f in fields[:4]):
        return None
    seconds = int(fields[3]) // GUEST_TICKS_PER_SECOND
    return {
        "UID": fields[0],
        "PID": fields[1],
        "PPID": fields[2],
        "TIME": f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}",
        "CMD": fields[4],
    }
