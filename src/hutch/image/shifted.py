"""Copies of unpacked layers with their owners shifted into a user namespace's id range.

A container with its own user namespace must see the image's files owned by its root. Where the kernel
can, hutch idmaps the shared layers at mount time and writes nothing (``runtime.userns``); where it cannot
(kernels before 5.12, filesystems without idmapped-mount support), this module writes what Docker's
``userns-remap`` writes: a copy of each layer in which every owner ``N`` becomes ``host_start + N``.

Copies are cached per mapping (``layers-shifted/<uid>-<gid>-<size>/<chain>``), so containers that share a
mapping (``--userns-remap``) share one copy, and a copy is deleted when the last container with its
mapping goes (``prune``). Each layer is built under a temporary name and renamed into place, under a lock
per mapping, so a crash or a concurrent ``create`` never leaves or uses a half-written layer.
"""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

from hutch.errors import HutchError
from hutch.fsutil import file_lock, fsync_dir, remove_tree

SUBDIR = "layers-shifted"
_CAPS_XATTR = "security.capability"
_VFS_CAP_REVISION_3 = 0x03000000
_VFS_CAP_REVISION_MASK = 0xFF000000


class IdMap:
    """One contiguous mapping, as ``--userns=auto`` and ``--userns-remap`` make them: container id ``N``
    (``N < size``) is host id ``start + N``."""

    __slots__ = ("start", "size")

    def __init__(self, start: int, size: int) -> None:
        self.start = start
        self.size = size

    @classmethod
    def from_oci(cls, mappings: list[dict]) -> IdMap:
        if len(mappings) != 1 or mappings[0]["containerID"] != 0:
            raise HutchError("a shifted layer copy needs one mapping that starts at container id 0")
        return cls(mappings[0]["hostID"], mappings[0]["size"])

    def host(self, ident: int, path: str) -> int:
        if ident >= self.size:
            raise HutchError(
                f"{path} is owned by id {ident}, outside the container's {self.size} mapped ids"
                " (ask for more with --userns=auto:size=N)"
            )
        return self.start + ident


def mapping_key(uid_map: list[dict], gid_map: list[dict]) -> str:
    """The directory name of a mapping's copies: ``<uid start>-<gid start>-<size>``."""
    uids, gids = IdMap.from_oci(uid_map), IdMap.from_oci(gid_map)
    return f"{uids.start}-{gids.start}-{min(uids.size, gids.size)}"


def shifted_layers(root: Path, layers: list[Path], uid_map: list[dict], gid_map: list[dict]) -> list[Path]:
    """The shifted copies of ``layers`` (same order), written now where missing."""
    uids, gids = IdMap.from_oci(uid_map), IdMap.from_oci(gid_map)
    key = mapping_key(uid_map, gid_map)
    target = root / SUBDIR / key
    copies = [target / layer.name for layer in layers]
    with file_lock(root / SUBDIR / f"{key}.lock"):
        target.mkdir(mode=0o711, parents=True, exist_ok=True)
        for stale in target.glob(".tmp-*"):  # a crash mid-copy; nobody else builds here (the lock)
            remove_tree(stale)
        for layer, copy in zip(layers, copies, strict=True):
            if not copy.is_dir():
                _build(layer, copy, uids, gids)
    return copies


def prune(root: Path, keep: set[str]) -> int:
    """Delete every mapping's copies whose key is not in ``keep`` (and temp dirs a crash left); returns
    how many mappings went."""
    base = root / SUBDIR
    try:
        names = sorted(os.listdir(base))
    except FileNotFoundError:
        return 0
    removed = 0
    for name in names:
        if name.endswith(".lock") or name in keep:
            continue
        with file_lock(base / f"{name}.lock"):
            remove_tree(base / name)
        (base / f"{name}.lock").unlink(missing_ok=True)
        removed += 1
    return removed


def _build(layer: Path, copy: Path, uids: IdMap, gids: IdMap) -> None:
    tmp = copy.with_name(f".tmp-{copy.name}-{os.getpid()}")
    remove_tree(tmp)
    try:
        _Copier(uids, gids).tree(str(layer), str(tmp))
        # why: the rename below publishes the layer; its contents must be on disk before it is visible.
        os.sync()
        os.rename(tmp, copy)
        fsync_dir(copy.parent)
    except BaseException:
        remove_tree(tmp)
        raise


class _Copier:
    """Copies one tree: data, modes (set after the chown, which clears set-id bits), timestamps, xattrs
    (overlayfs's opaque markers, file capabilities with a v3 root id shifted too), hard links kept as
    links, device nodes and whiteouts recreated, symlinks never followed."""

    def __init__(self, uids: IdMap, gids: IdMap) -> None:
        self.uids = uids
        self.gids = gids
        self.links: dict[tuple[int, int], str] = {}

    def tree(self, src: str, dst: str) -> None:
        st = os.lstat(src)
        os.mkdir(dst, 0o700)
        with os.scandir(src) as entries:
            children = sorted(entry.name for entry in entries)
        for name in children:
            self.entry(os.path.join(src, name), os.path.join(dst, name))
        self.finish(src, dst, st)

    def entry(self, src: str, dst: str) -> None:
        st = os.lstat(src)
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            self.tree(src, dst)
            return
        if stat.S_ISREG(mode) and st.st_nlink > 1:
            first = self.links.get((st.st_dev, st.st_ino))
            if first is not None:
                os.link(first, dst)
                return
            self.links[(st.st_dev, st.st_ino)] = dst
        if stat.S_ISREG(mode):
            _copy_data(src, dst)
        elif stat.S_ISLNK(mode):
            os.symlink(os.readlink(src), dst)
        else:  # devices, whiteouts (0:0 character devices), fifos, sockets
            os.mknod(dst, stat.S_IFMT(mode) | 0o600, st.st_rdev)
        self.finish(src, dst, st)

    def finish(self, src: str, dst: str, st: os.stat_result) -> None:
        link = stat.S_ISLNK(st.st_mode)
        os.chown(dst, self.uids.host(st.st_uid, src), self.gids.host(st.st_gid, src), follow_symlinks=False)
        if not link:
            os.chmod(dst, stat.S_IMODE(st.st_mode))
        for name in os.listxattr(src, follow_symlinks=False):
            value = os.getxattr(src, name, follow_symlinks=False)
            if name == _CAPS_XATTR:
                value = self.shift_caps(value, src)
            os.setxattr(dst, name, value, follow_symlinks=False)
        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)

    def shift_caps(self, value: bytes, path: str) -> bytes:
        """A v3 (namespaced) file capability names the root it belongs to; that root moves with the
        owners. v2 capabilities carry no root id and are copied as they are, as an idmapped mount shows
        them."""
        if len(value) < 24:
            return value
        (magic,) = struct.unpack_from("<I", value)
        if magic & _VFS_CAP_REVISION_MASK != _VFS_CAP_REVISION_3:
            return value
        (rootid,) = struct.unpack_from("<I", value, 20)
        return value[:20] + struct.pack("<I", self.uids.host(rootid, path)) + value[24:]


def _copy_data(src: str, dst: str) -> None:
    """The file's bytes through copy_file_range (in-kernel, reflinks where the filesystem can)."""
    fd_in = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fd_out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            size = os.fstat(fd_in).st_size
            copied = 0
            while copied < size:
                n = os.copy_file_range(fd_in, fd_out, size - copied)
                if n == 0:
                    break
                copied += n
        finally:
            os.close(fd_out)
    finally:
        os.close(fd_in)
