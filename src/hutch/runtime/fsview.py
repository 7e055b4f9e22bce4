"""Entering a container's filesystem from a forked helper process, for ``hutch cp``.

A running container's view is its mount namespace: ``setns`` into it makes its root our root, volumes and
tmpfs included, so every path we then open resolves inside the container, symlinks included, with no
chance to climb out. A stopped container has no namespace; we make a private one, mount its overlay, and
chroot into it. Either way the caller must be a single-threaded child that exits when done, and must
have imported everything it needs first (the host's Python is not inside the container).
"""

from __future__ import annotations

import os

from hutch.linux import syscalls as sc
from hutch.runtime.rootfs import OverlayRoot, mount_root


def enter_running(pid: int) -> None:
    """Join the mount namespace of container init ``pid``; our root and cwd become its /."""
    fd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    try:
        sc.setns(fd, sc.CLONE_NEWNS)
    finally:
        os.close(fd)
    os.chdir("/")


def enter_stopped(overlay: OverlayRoot, mountpoint: str) -> None:
    """Mount the container's overlay in a mount namespace of our own and chroot into it."""
    sc.unshare(sc.CLONE_NEWNS)
    mount_root(mountpoint, overlay, sc.MS_REC | sc.MS_PRIVATE)
    os.chroot(mountpoint)
    os.chdir("/")
