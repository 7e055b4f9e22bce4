"""Frames of the exec channel: how ``hutch exec``s share one virtio-serial port.

virtio-serial ports are fixed when QEMU starts (and a template clone must have its template's devices), so
execs cannot get ports of their own. Instead one port, ``hutch.exec``, carries frames
``{u8 type, u8 id, u16 0, u32 length}`` + payload, little-endian, in both directions. ``hutch exec`` speaks
the same frames to the VM's supervisor over a unix socket; the supervisor only rewrites the id (one per
connected client) and routes. The guest agent (``native/vmagent.c``) starts, feeds and reaps the processes.
"""

from __future__ import annotations

import struct

START, STDIN, SIGNAL, WINCH, STDOUT, STDERR, EXIT = range(1, 8)
HEADER = struct.Struct("<BBHI")
MAX_PAYLOAD = 1 << 19  # the agent's buffer holds 1 MiB; stdin is sent in smaller pieces


def pack(kind: int, ident: int, payload: bytes = b"") -> bytes:
    return HEADER.pack(kind, ident, 0, len(payload)) + payload


def split(buf: bytearray) -> list[tuple[int, int, bytes]]:
    """The complete frames at the start of ``buf`` (removed from it); a partial frame stays."""
    frames = []
    while len(buf) >= HEADER.size:
        kind, ident, _, length = HEADER.unpack_from(buf)
        if len(buf) < HEADER.size + length:
            break
        frames.append((kind, ident, bytes(buf[HEADER.size : HEADER.size + length])))
        del buf[: HEADER.size + length]
    return frames


def socket_name(container_id: str) -> bytes:
    """The supervisor's listening socket, in the abstract namespace: no file to clean up and no 108-byte
    path limit from a deep root. Connections are accepted from the supervisor's own uid only."""
    return b"\0hutch-vm-exec-" + container_id.encode()
