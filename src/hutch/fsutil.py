"""Atomic file writes: temp file in the same directory, fsync, rename, fsync the directory.

A crash at any point leaves either the old file or the new one, never a torn one.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o644, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically; ``durable=False`` skips fsync for scratch files."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.rename(tmp, path)
    if durable:
        fsync_dir(path.parent)


def remove_tree(path: Path) -> None:
    """Remove a directory tree whose contents a container controlled, never following a symlink in it.

    Every step is relative to a directory fd opened with O_NOFOLLOW, so a symlink planted in an upper dir
    is unlinked, not followed (the same rule as shutil's fd-based rmtree; shutil itself loads bz2 and lzma,
    ~5 ms of every ``hutch run --rm``). A missing tree is fine.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        _empty_dir(fd)
    finally:
        os.close(fd)
    os.rmdir(path)


def _empty_dir(dir_fd: int) -> None:
    with os.scandir(dir_fd) as entries:
        names = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in entries]
    for name, is_dir in names:
        if not is_dir:
            os.unlink(name, dir_fd=dir_fd)
            continue
        child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            _empty_dir(child)
        finally:
            os.close(child)
        os.rmdir(name, dir_fd=dir_fd)


class file_lock:  # noqa: N801 - used as a context manager, like open()
    """An exclusive ``flock`` on ``path`` (created if missing) for the length of a ``with`` block.

    The fd is close-on-exec: a child that execs drops its copy, a child that forks keeps holding the lock
    with its parent until both have closed it (the detached start relies on that).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = -1

    def __enter__(self) -> file_lock:
        import fcntl

        os.makedirs(self.path.parent, mode=0o700, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc) -> None:
        os.close(self.fd)
        self.fd = -1
