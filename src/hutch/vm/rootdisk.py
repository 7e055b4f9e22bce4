"""The image's root filesystem as one read-only erofs disk, built once per image layer chain.

The unpacked layers are merged by the host's own overlayfs (so whiteouts and opaque directories mean what
they mean to a container) and ``mkfs.erofs`` packs the merged view. The overlay is mounted in a private
mount namespace of a forked child that then execs mkfs.erofs: the mount disappears with that process on
every path, success, failure or a kill, and the host's mount table never sees it.
"""

from __future__ import annotations

import os
from pathlib import Path

from hutch.errors import HutchError


def disk_path(cache: Path, layers: list[Path]) -> Path:
    """Cache key: the top layer's chain id names the whole chain below it."""
    top = layers[-1].name if layers else "empty"
    return cache / f"{top}.erofs"


def ensure(cache: Path, layers: list[Path], scratch: Path) -> Path:
    """The erofs disk for ``layers`` (lowest first), built under a temp name and renamed into place."""
    target = disk_path(cache, layers)
    if target.exists():
        return target
    os.makedirs(cache, exist_ok=True)
    os.makedirs(scratch, exist_ok=True)
    tmp = cache / f".{target.name}.tmp-{os.getpid()}"
    merged = scratch / f"erofs-merge-{os.getpid()}"
    empty = scratch / f"erofs-empty-{os.getpid()}"
    for d in (merged, empty):
        os.makedirs(d, exist_ok=True)
    try:
        _mkfs_from_layers(layers, empty, merged, tmp)
        os.rename(tmp, target)
    finally:
        for d in (merged, empty):
            try:
                os.rmdir(d)
            except OSError:
                pass
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
    return target


def _mkfs_from_layers(layers: list[Path], empty: Path, merged: Path, out: Path) -> None:
    # A lower-only overlay needs two lower dirs at least: an empty one goes at the bottom.
    # Relative names from the layers' directory keep the option string under the kernel's page limit.
    base = layers[0].parent if layers else empty.parent
    lower = ":".join([p.name if p.parent == base else str(p) for p in reversed(layers)] + [str(empty)])
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        _child(base, lower, merged, out, write_end)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        setup_error = pipe.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    if setup_error:
        raise HutchError(f"building the VM root disk: {setup_error}")
    if os.waitstatus_to_exitcode(status) != 0:
        raise HutchError(f"building the VM root disk: mkfs.erofs failed (status {status})")


def _child(base: Path, lower: str, merged: Path, out: Path, report: int) -> None:
    """In the fork: private mount namespace, read-only overlay of the layers, exec mkfs.erofs on it."""
    try:
        from hutch.linux import syscalls as sc

        # why a new mount namespace: the merged view must never show up in (or leak into) the host's mount
        # table; it is freed by the kernel when mkfs.erofs exits, however it exits.
        sc.unshare(sc.CLONE_NEWNS)
        sc.mount("none", "/", None, sc.MS_REC | sc.MS_PRIVATE)
        os.chdir(base)
        sc.mount("overlay", str(merged), "overlay", sc.MS_RDONLY, f"lowerdir={lower}")
        devnull = os.open("/dev/null", os.O_RDWR)
        os.dup2(devnull, 1)
        os.execvp("mkfs.erofs", ["mkfs.erofs", "--quiet", str(out), str(merged)])
    except FileNotFoundError:
        os.write(report, b"mkfs.erofs not found: install erofs-utils")
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, then this child exits
        os.write(report, str(exc).encode())
    os._exit(1)


def sweep(cache: Path, layers_dir: Path) -> int:
    """Delete the disks whose top layer is gone from the store (after ``rmi`` or a prune), and temp files
    of builds that died; returns the bytes freed. A running guest keeps its disk open, so it is unaffected."""
    freed = 0
    try:
        names = os.listdir(cache)
    except FileNotFoundError:
        return 0
    for name in names:
        chain, dot, ext = name.partition(".")
        stale_tmp = name.startswith(".") and ".tmp-" in name and not _alive(name.rpartition("-")[2])
        if not stale_tmp and (ext != "erofs" or not dot or chain == "empty" or (layers_dir / chain).is_dir()):
            continue
        try:
            freed += os.stat(cache / name).st_blocks * 512
            os.unlink(cache / name)
        except FileNotFoundError:
            pass
    return freed


def _alive(pid: str) -> bool:
    return pid.isdigit() and os.path.exists(f"/proc/{pid}")
