"""Frames of the exec channel: how ``hutch exec``s share one virtio-serial port.

virtio-serial ports are fixed when QEMU starts (and a template clone must have its template's devices), so
execs cannot get ports of their own. Instead one port, ``hutch.exec``, carries frames
``{u8 type, u8 id, u16 0, u32 length}`` + payload, little-endian, in both directions. ``hutch exec`` speaks
the same frames to the VM's supervisor over a unix socket; the supervisor only rewrites the id (one per
connected client) and routes. The guest agent (``native/vmagent/``) starts, feeds and reaps the processes.

Flow control, as SSH channel windows: all execs share the port, so no process may hold it up. Each
direction starts with WINDOW bytes of credit per exec (implicit, as HTTP/2's initial window: stdin flows
while the process is being started); the agent grants more stdin with CREDIT frames (a u32 of bytes) for
what the process took, and the client sends no more stdin than it was granted; the agent keeps what a
process has not read yet (at most a window) and never blocks on it. Output the other way: the agent reads
a process's output only while the client's credit lasts, and the client sends CREDIT for what it wrote
out. HOSTS (id 0, supervisor to agent) carries a new /etc/hosts for the container. PS asks the agent for
the container's processes (``hutch top``): it answers with one STDOUT frame and an EXIT.
"""

from __future__ import annotations

import struct

START, STDIN, SIGNAL, WINCH, STDOUT, STDERR, EXIT, CREDIT, HOSTS, PS = range(1, 11)
HEADER = struct.Struct("<BBHI")
MAX_FRAME = 1 << 20  # the agent's receive buffer: a larger frame could never be taken in
WINDOW = 128 << 10  # each exec's first credit, both ways: must equal WINDOW in native/vmagent/agent.h
# Credit is returned in batches (fewer frames through the relays): a quarter of the window, so a sender
# never waits on an unsent batch.
CREDIT_BATCH = WINDOW // 4
UNLIMITED = 0xFFFFFFFF  # an output credit that lets the agent drain an exec whose client is gone


def credit(ident: int, count: int) -> bytes:
    """A CREDIT frame: ``count`` more bytes may flow for ``ident``."""
    return pack(CREDIT, ident, count.to_bytes(4, "little"))


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
