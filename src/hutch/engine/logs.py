"""Reading a detached container's output files (``stdout.log``/``stderr.log`` in its directory).

The monitor points the container's stdout and stderr straight at these files, so they hold exactly what
the container wrote, each stream apart. (Timestamps and rotation need a copier between the container and
the file: issue 7.)
"""

from __future__ import annotations

import os
import time
from typing import BinaryIO

from hutch.engine.containers import Engine
from hutch.engine.records import Record
from hutch.errors import InvalidArgument


def _last_lines(data: bytes, count: int) -> bytes:
    if count <= 0:
        return b""
    lines = data.splitlines(keepends=True)
    return b"".join(lines[-count:])


def tail(engine: Engine, record: Record, lines: str, out: BinaryIO, err: BinaryIO) -> None:
    """Print each stream, or its last ``lines`` lines (``all`` for everything)."""
    if lines != "all" and not lines.lstrip("-").isdigit():
        raise InvalidArgument(f"invalid --tail {lines!r}: expected a number or 'all'")
    cdir = engine.container_dir(record.id)
    for name, stream in (("stdout.log", out), ("stderr.log", err)):
        try:
            data = (cdir / name).read_bytes()
        except FileNotFoundError:
            continue
        stream.write(data if lines == "all" else _last_lines(data, int(lines)))
        stream.flush()


def follow(engine: Engine, record: Record, out: BinaryIO, err: BinaryIO, poll: float = 0.05) -> None:
    """Print what is there, then what is appended, until the container has exited and both are drained."""
    cdir = engine.container_dir(record.id)
    offsets = {"stdout.log": 0, "stderr.log": 0}
    streams = {"stdout.log": out, "stderr.log": err}
    while True:
        running = engine.lookup(record.id).state == "running"
        for name, offset in offsets.items():
            try:
                with open(cdir / name, "rb") as f:
                    f.seek(offset)
                    data = f.read()
            except FileNotFoundError:
                continue
            if data:
                streams[name].write(data)
                streams[name].flush()
                offsets[name] = offset + len(data)
        if not running:
            return
        time.sleep(poll)
        if not os.path.isdir(cdir):
            return
