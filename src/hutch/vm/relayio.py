"""Byte relaying between fds for the microVM's stdio and exec streams (supervisor and ``hutch exec``).

A relay must outlive its ends: a reader that went away or a sink that hung up ends that stream only, never
the loop that also carries the exit status, so errors are swallowed here by design.
"""

from __future__ import annotations

import os


def read_some(fd: int, limit: int = 65536) -> bytes:
    """What ``fd`` has (up to ``limit``, at most 64 KiB); b"" at EOF or on an error, which the caller
    treats as EOF."""
    try:
        return os.read(fd, min(limit, 65536))
    except OSError:
        return b""


def write_all(fd: int, data: bytes) -> None:
    """All of ``data`` to ``fd``; a sink that is gone (EPIPE, EIO of a hung-up pty) drops the rest."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except InterruptedError:
            continue
        except OSError:
            return
