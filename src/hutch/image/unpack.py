"""Unpack one image layer (an uncompressed tar stream) into a directory used as an overlayfs lower layer.

The threat: a layer comes from whoever built the image, so its tar is hostile input, and we unpack as root.

* Tar-slip: names like ``../../etc/cron.d/x`` or ``/etc/passwd``. Every name (and every hard link target) is
  split into components here; an absolute name or any ``..`` component is refused with ``UnsafeArchive``.
* Writing through symlinks (the CVE-2018-15664 and CVE-2019-14271 family: ``docker cp`` and unpackers that
  resolve a path, then use it while a symlink redirects it to the host). An earlier entry ``evil -> /`` or
  ``up -> ../..`` followed by ``evil/etc/passwd`` must not reach the host. So the kernel never follows a
  symlink for us: the path is walked one component at a time with ``openat(dir_fd, name,
  O_DIRECTORY|O_NOFOLLOW)``, each step relative to the directory fd of the step before. When a component is
  a symlink, we read it and continue the walk ourselves, scoped to the layer root: an absolute target starts
  again at the root fd, ``..`` pops a directory we hold, and popping past the root is refused. At most 40
  symlinks are followed per path (a loop is refused). Because every step works on a file descriptor of a
  directory already known to be inside the root, there is no window in which a path string could be
  re-resolved somewhere else, and a rename racing the unpack cannot redirect a later step outside.
* The last component of an entry is never followed: whatever is there is removed first (a directory
  only when the new entry is not a directory), and new files are created with ``O_CREAT|O_EXCL|O_NOFOLLOW``.
* Hard links: the target is resolved by the same walk, must already exist inside the root (in this layer,
  since the root starts empty) and must not be a directory; ``linkat`` without ``AT_SYMLINK_FOLLOW`` links
  the inode found there, never what a symlink points at.
* Device nodes can reach host hardware, so they are made only when ``allow_devices`` (default: running as
  root); otherwise they are skipped. FIFOs are always made; they are harmless.
* Symlinks themselves are created verbatim: their targets only mean something inside the container.

Whiteouts are converted to the overlayfs form, as containerd's overlay snapshotter does: ``dir/.wh.NAME``
becomes a 0:0 character device ``dir/NAME``, and ``dir/.wh..wh..opq`` sets ``trusted.overlay.opaque=y`` on
``dir`` (entries of ``dir`` from this same layer stay: opacity hides only the layers below).

Metadata follows the entry: owner (as root), xattrs from ``SCHILY.xattr.*`` pax records, mode including
setuid/setgid/sticky (after chown, which clears setuid), and mtime. Directory modes and mtimes are set last,
children first, because adding children changes a directory's mtime (and, when not root, a read-only
directory could not be filled).
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar

from hutch.errors import CorruptContent, HutchError, UnsafeArchive

_CHUNK = 1 << 20
# tarfile's stream reader copies its whole buffer on every read, headers included: 32 KiB measured best
# (bigger makes small-file layers slower, smaller makes big files slower).
_TAR_BUFSIZE = 32 << 10
_MAX_SYMLINKS = 40
_CACHE_LIMIT = 256
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_WHITEOUT = ".wh."
_WHITEOUT_META = ".wh..wh."
_OPAQUE = ".wh..wh..opq"
_OPAQUE_XATTR = "trusted.overlay.opaque"
_XATTR_PAX = "SCHILY.xattr."
_ESCAPE = "path escapes the layer root"

_Member = tarfile.TarInfo
_Path = tuple[str, ...]
_T = TypeVar("_T")


@dataclass
class LayerStats:
    """What one unpack did, for logs."""

    entries: int = 0
    files: int = 0
    dirs: int = 0
    bytes_written: int = 0
    whiteouts: int = 0
    skipped: int = 0


@dataclass
class _Dir:
    """An open directory inside the root and its real path (no symlinks) below the root."""

    fd: int
    path: _Path


def unpack_layer(tar_stream: BinaryIO, dest: Path, *, allow_devices: bool | None = None) -> LayerStats:
    """Unpack the uncompressed layer tar ``tar_stream`` into the existing empty directory ``dest``.

    Raises ``UnsafeArchive`` for an entry that would write outside ``dest``, ``CorruptContent`` for a broken
    tar, and ``HutchError`` naming the entry for a filesystem failure. On error ``dest`` holds a partial
    tree: the caller unpacks into a temporary directory and discards it.
    """
    devices = os.geteuid() == 0 if allow_devices is None else allow_devices
    unpacker = _Unpacker(dest, devices)
    try:
        unpacker.run(tar_stream)
    finally:
        unpacker.close()
    return unpacker.stats


class _Header(tarfile.TarInfo):
    """TarInfo that reports a damaged header instead of letting tarfile treat it as the end of the archive.

    tarfile's stream reader stops silently at a truncated or invalid header after the first member; a zero
    block (the end marker) or a clean end of data at a header boundary (as Go's reader accepts) still ends
    the archive normally.
    """

    @classmethod
    def fromtarfile(cls, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        try:
            return super().fromtarfile(tarfile_)
        except (tarfile.EOFHeaderError, tarfile.EmptyHeaderError):
            raise
        except tarfile.HeaderError as e:
            raise CorruptContent(f"layer tar is corrupt: {e}") from e


class _Unpacker:
    """The state of one unpack: the root fd, a cache of resolved parent directories, deferred dir metadata."""

    def __init__(self, dest: Path, allow_devices: bool) -> None:
        self.stats = LayerStats()
        self._allow_devices = allow_devices
        self._root = _Dir(os.open(dest, _DIR_FLAGS), ())
        self._cache: dict[_Path, _Dir] = {}
        self._dirs: dict[_Path, tuple[int, int]] = {}
        self._skipped_nodes: set[_Path] = set()  # devices not made: hard links to them are skipped too
        self._as_root = os.geteuid() == 0
        # New inodes are already root:root unless the root is setgid (then they inherit its group).
        self._chown_always = self._as_root and bool(os.fstat(self._root.fd).st_mode & stat.S_ISGID)

    def close(self) -> None:
        self._invalidate()
        os.close(self._root.fd)

    def run(self, tar_stream: BinaryIO) -> None:
        """Read entries one by one (streaming) and apply each; then settle directory metadata."""
        try:
            with tarfile.open(
                fileobj=tar_stream, mode="r|", bufsize=_TAR_BUFSIZE, tarinfo=_Header
            ) as archive:
                while (member := archive.next()) is not None:
                    archive.members.clear()  # tarfile keeps every header otherwise; layers can be huge
                    self.stats.entries += 1
                    self._guarded(archive, member)
        except tarfile.TarError as e:
            raise CorruptContent(f"layer tar is corrupt: {e}") from e
        self._finish_dirs()

    def _guarded(self, archive: tarfile.TarFile, member: _Member) -> None:
        """Apply one entry; filesystem errors are reported with the entry's name."""
        if len(self._cache) > _CACHE_LIMIT:
            self._invalidate()
        try:
            self._entry(archive, member)
        except OSError as e:
            raise HutchError(f"layer entry {member.name!r}: {e.strerror or e}") from e

    def _entry(self, archive: tarfile.TarFile, member: _Member) -> None:
        comps = _components(member.name, member.name)
        if not comps:
            return self._root_entry(member)
        if comps[0].startswith(_WHITEOUT_META) and comps != (_OPAQUE,):
            self.stats.skipped += 1  # aufs metadata (.wh..wh.plnk/..., .wh..wh.aufs): meaningless here
            return None
        if comps[-1].startswith(_WHITEOUT):
            return self._whiteout(comps, member)
        handler = self._handler(member)
        if handler is None:
            self.stats.skipped += 1
            if member.isdev():
                self._skipped_nodes.add(comps)
            return None
        parent = self._resolve(comps[:-1], member.name)
        return handler(archive, member, parent, comps)

    def _handler(self, member: _Member) -> Callable[..., None] | None:
        """The function for this entry type, or None to skip it (devices when not allowed, unknown types)."""
        if member.isreg():
            return self._file
        if member.isdir():
            return self._directory
        if member.issym():
            return self._symlink
        if member.islnk():
            return None if self._links_to_skipped(member) else self._hardlink
        if member.isfifo() or (member.isdev() and self._allow_devices):
            return self._node
        return None

    def _links_to_skipped(self, member: _Member) -> bool:
        return bool(self._skipped_nodes) and _components(member.linkname, member.name) in self._skipped_nodes

    # -- entry types ------------------------------------------------------------------------------------

    def _file(self, archive: tarfile.TarFile, member: _Member, parent: _Dir, comps: _Path) -> None:
        name = comps[-1]
        fd = self._create(parent, name, lambda: os.open(name, _FILE_FLAGS, 0o600, dir_fd=parent.fd))
        try:
            if member.size:
                self._copy(archive, member, fd)
            self._fd_metadata(fd, member)
        finally:
            os.close(fd)
        self.stats.files += 1

    def _copy(self, archive: tarfile.TarFile, member: _Member, fd: int) -> None:
        """Copy file data in big chunks.

        A plain member's data follows its header, so it is read straight from the archive stream (tarfile's
        per-member file object costs more than the copy for small files); sparse members need that object.
        """
        if member.sparse is not None:
            source = archive.extractfile(member)
            assert source is not None
            while chunk := source.read(_CHUNK):
                self._write(fd, chunk)
            return
        left = member.size
        while left:
            chunk = archive.fileobj.read(min(left, _CHUNK))
            if not chunk:
                raise CorruptContent(f"layer tar is corrupt: data of {member.name!r} is truncated")
            left -= len(chunk)
            self._write(fd, chunk)

    def _write(self, fd: int, chunk: bytes) -> None:
        """os.write may write less than asked: loop on the rest."""
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view) :]
        self.stats.bytes_written += len(chunk)

    def _directory(self, archive: tarfile.TarFile, member: _Member, parent: _Dir, comps: _Path) -> None:
        name = comps[-1]
        directory = _Dir(self._make_dir(parent, name), parent.path + (name,))
        self._cache_put(comps, directory)
        self._chown(member, lambda uid, gid: os.fchown(directory.fd, uid, gid))
        _set_xattrs(directory.fd, member, follow=True)
        self._dirs[directory.path] = (member.mode & 0o7777, _mtime_ns(member))
        self.stats.dirs += 1

    def _make_dir(self, parent: _Dir, name: str) -> int:
        """Open the directory ``name`` in ``parent``, creating it; an existing dir is kept, anything else
        (including a symlink to a dir) is replaced."""
        try:
            os.mkdir(name, 0o700, dir_fd=parent.fd)
        except FileExistsError:
            try:
                return os.open(name, _DIR_FLAGS, dir_fd=parent.fd)
            except OSError as e:
                if e.errno not in (errno.ENOTDIR, errno.ELOOP):
                    raise
            self._remove(parent, name)
            os.mkdir(name, 0o700, dir_fd=parent.fd)
        return os.open(name, _DIR_FLAGS, dir_fd=parent.fd)

    def _symlink(self, archive: tarfile.TarFile, member: _Member, parent: _Dir, comps: _Path) -> None:
        name = comps[-1]
        self._create(parent, name, lambda: os.symlink(member.linkname, name, dir_fd=parent.fd))
        self._path_metadata(parent, name, member, chmod=False)

    def _node(self, archive: tarfile.TarFile, member: _Member, parent: _Dir, comps: _Path) -> None:
        """A FIFO, or a device node (only reached when devices are allowed)."""
        name = comps[-1]
        if member.isfifo():
            self._create(parent, name, lambda: os.mkfifo(name, 0o600, dir_fd=parent.fd))
        else:
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            device = os.makedev(member.devmajor, member.devminor)
            self._create(parent, name, lambda: os.mknod(name, kind | 0o600, device, dir_fd=parent.fd))
        self._path_metadata(parent, name, member, chmod=True)

    def _hardlink(self, archive: tarfile.TarFile, member: _Member, parent: _Dir, comps: _Path) -> None:
        """Link to an inode already unpacked in this layer. Its metadata came with its own entry."""
        source_dir, source_name, source = self._link_source(member)
        name = comps[-1]
        try:
            os.link(source_name, name, src_dir_fd=source_dir.fd, dst_dir_fd=parent.fd, follow_symlinks=False)
        except FileExistsError:
            existing = os.stat(name, dir_fd=parent.fd, follow_symlinks=False)
            if (existing.st_dev, existing.st_ino) == (source.st_dev, source.st_ino):
                return
            self._remove(parent, name, source_dir)
            os.link(source_name, name, src_dir_fd=source_dir.fd, dst_dir_fd=parent.fd, follow_symlinks=False)

    def _link_source(self, member: _Member) -> tuple[_Dir, str, os.stat_result]:
        """Resolve a hard link target like any entry name; it must exist here and not be a directory."""
        where = f"layer entry {member.name!r}: hard link target {member.linkname!r}"
        comps = _components(member.linkname, member.name, f"{where} escapes the layer root")
        missing = f"{where} does not exist in this layer"
        if not comps:
            raise UnsafeArchive(f"{where} is the layer root")
        source_dir = self._resolve(comps[:-1], member.name, missing=missing)
        try:
            source = os.stat(comps[-1], dir_fd=source_dir.fd, follow_symlinks=False)
        except FileNotFoundError:
            raise UnsafeArchive(missing)
        if stat.S_ISDIR(source.st_mode):
            raise UnsafeArchive(f"{where} is a directory")
        return source_dir, comps[-1], source

    def _root_entry(self, member: _Member) -> None:
        """``./`` stands for the layer root itself: only a directory can, and it just gets metadata."""
        if not member.isdir():
            raise UnsafeArchive(f"layer entry {member.name!r}: a non-directory cannot replace the layer root")
        self._chown(member, lambda uid, gid: os.fchown(self._root.fd, uid, gid))
        _set_xattrs(self._root.fd, member, follow=True)
        self._dirs[()] = (member.mode & 0o7777, _mtime_ns(member))

    # -- whiteouts ----------------------------------------------------------------------------------------

    def _whiteout(self, comps: _Path, member: _Member) -> None:
        """OCI whiteouts to overlayfs: ``.wh.NAME`` -> char 0:0 at NAME; ``.wh..wh..opq`` -> opaque xattr."""
        base = comps[-1]
        if base == _OPAQUE:
            directory = self._resolve(comps[:-1], member.name)
            os.setxattr(directory.fd, _OPAQUE_XATTR, b"y")
        elif base.startswith(_WHITEOUT_META):
            self.stats.skipped += 1  # other aufs metadata in a subdirectory
            return
        else:
            self._whiteout_file(comps, member)
        self.stats.whiteouts += 1

    def _whiteout_file(self, comps: _Path, member: _Member) -> None:
        name = comps[-1][len(_WHITEOUT) :]
        if name in ("", ".", ".."):
            raise UnsafeArchive(f"layer entry {member.name!r}: invalid whiteout name")
        parent = self._resolve(comps[:-1], member.name)
        self._remove(parent, name)
        os.mknod(name, stat.S_IFCHR, os.makedev(0, 0), dir_fd=parent.fd)
        self._chown(member, _chown_at(parent.fd, name))

    # -- metadata -----------------------------------------------------------------------------------------

    def _chown(self, member: _Member, chown: Callable[[int, int], None]) -> None:
        """Owner from the entry, only as root, and skipped when the new inode already is root:root."""
        if self._as_root and (member.uid or member.gid or self._chown_always):
            chown(member.uid, member.gid)

    def _fd_metadata(self, fd: int, member: _Member) -> None:
        """Owner, xattrs, mode, mtime of an open regular file; chown first since it clears setuid."""
        self._chown(member, lambda uid, gid: os.fchown(fd, uid, gid))
        _set_xattrs(fd, member, follow=True)
        os.fchmod(fd, member.mode & 0o7777)
        mtime = _mtime_ns(member)
        os.utime(fd, ns=(mtime, mtime))

    def _path_metadata(self, parent: _Dir, name: str, member: _Member, *, chmod: bool) -> None:
        """The same for a symlink, FIFO or device, addressed by name without following it."""
        self._chown(member, _chown_at(parent.fd, name))
        # setxattr has no dir_fd form: /proc/self/fd/N names the directory we hold, and the last
        # component is not followed.
        _set_xattrs(f"/proc/self/fd/{parent.fd}/{name}", member, follow=False)
        if chmod:
            _chmod_nofollow(parent.fd, name, member.mode & 0o7777)
        mtime = _mtime_ns(member)
        os.utime(name, ns=(mtime, mtime), dir_fd=parent.fd, follow_symlinks=False)

    def _finish_dirs(self) -> None:
        """Set directory modes and mtimes, deepest first, walking the tree with fds again (no symlinks)."""
        self._invalidate()
        stack = [self._root]
        for path in sorted(self._dirs):
            while stack[-1].path != path[: len(stack[-1].path)]:
                self._settle(stack.pop())
            for name in path[len(stack[-1].path) :]:
                try:
                    fd = os.open(name, _DIR_FLAGS, dir_fd=stack[-1].fd)
                except OSError:
                    break  # replaced by a non-directory later in the layer: nothing to set
                stack.append(_Dir(fd, stack[-1].path + (name,)))
        while stack:
            self._settle(stack.pop())

    def _settle(self, directory: _Dir) -> None:
        meta = self._dirs.get(directory.path)
        try:
            if meta is not None:
                os.fchmod(directory.fd, meta[0])
                os.utime(directory.fd, ns=(meta[1], meta[1]))
        except OSError as e:
            raise HutchError(f"layer directory {'/'.join(directory.path) or '.'!r}: {e.strerror or e}") from e
        finally:
            if directory is not self._root:
                os.close(directory.fd)

    # -- paths --------------------------------------------------------------------------------------------

    def _resolve(self, comps: _Path, entry: str, *, missing: str | None = None) -> _Dir:
        """The directory at ``comps`` inside the root, following symlinks scoped to the root.

        Missing directories are created (0755) unless ``missing`` is given: then it is the error message.
        Results are cached by the literal path; any removal clears the cache, since it may change them.
        """
        if not comps:
            return self._root
        directory = self._cache.get(comps)
        if directory is None:
            directory = self._walk(comps, entry, missing)
            self._cache[comps] = directory
        return directory

    def _walk(self, comps: _Path, entry: str, missing: str | None) -> _Dir:
        stack: list[_Dir] = []
        pending = list(reversed(comps))
        hops = 0
        try:
            while pending:
                name = pending.pop()
                if name == "..":
                    if not stack:
                        raise UnsafeArchive(f"layer entry {entry!r}: {_ESCAPE} through a symlink")
                    os.close(stack.pop().fd)
                    continue
                step = self._step(stack[-1] if stack else self._root, name, entry, missing)
                if isinstance(step, _Dir):
                    stack.append(step)
                    continue
                hops += 1
                if hops > _MAX_SYMLINKS:
                    raise UnsafeArchive(f"layer entry {entry!r}: too many levels of symbolic links")
                if step.startswith("/"):
                    _close_all(stack)
                pending.extend(reversed([part for part in step.split("/") if part not in ("", ".")]))
            return stack.pop() if stack else self._root
        finally:
            _close_all(stack)

    def _step(self, here: _Dir, name: str, entry: str, missing: str | None) -> _Dir | str:
        """Open ``name`` in ``here`` as a directory without following it; a symlink gives its target."""
        try:
            return _Dir(os.open(name, _DIR_FLAGS, dir_fd=here.fd), here.path + (name,))
        except FileNotFoundError:
            if missing is not None:
                raise UnsafeArchive(missing)
            return self._implicit_dir(here, name)
        except OSError as e:
            if e.errno not in (errno.ENOTDIR, errno.ELOOP):
                raise
        where = "/".join(here.path + (name,))
        try:
            target = os.readlink(name, dir_fd=here.fd)
        except OSError:
            raise CorruptContent(f"layer entry {entry!r}: {where!r} is not a directory")
        if not target:
            raise CorruptContent(f"layer entry {entry!r}: symlink {where!r} has an empty target")
        return target

    def _implicit_dir(self, here: _Dir, name: str) -> _Dir:
        """A parent the tar did not list: 0755 whatever the umask, owned by us (root)."""
        os.mkdir(name, 0o755, dir_fd=here.fd)
        fd = os.open(name, _DIR_FLAGS, dir_fd=here.fd)
        os.fchmod(fd, 0o755)
        return _Dir(fd, here.path + (name,))

    def _create(self, parent: _Dir, name: str, make: Callable[[], _T]) -> _T:
        """Create with ``make`` (exclusive, not following); if the name is taken, remove it and retry."""
        try:
            return make()
        except FileExistsError:
            self._remove(parent, name)
            return make()

    def _remove(self, parent: _Dir, name: str, *keep: _Dir) -> None:
        """Remove whatever is at ``name`` (a directory with its contents); nothing there is fine."""
        try:
            os.unlink(name, dir_fd=parent.fd)
        except FileNotFoundError:
            return
        except IsADirectoryError:
            shutil.rmtree(name, dir_fd=parent.fd)  # fd-based and never follows symlinks
            gone = parent.path + (name,)
            self._dirs = {path: meta for path, meta in self._dirs.items() if path[: len(gone)] != gone}
        self._invalidate(parent, *keep)

    def _cache_put(self, comps: _Path, directory: _Dir) -> None:
        old = self._cache.get(comps)
        self._cache[comps] = directory
        if old is not None and old.fd != self._root.fd:
            os.close(old.fd)

    def _invalidate(self, *keep: _Dir) -> None:
        """Forget cached directories (closing them), except those the current entry still uses."""
        kept = {id(d) for d in keep}
        for comps, directory in list(self._cache.items()):
            if id(directory) not in kept:
                del self._cache[comps]
                if directory.fd != self._root.fd:
                    os.close(directory.fd)


def _components(name: str, entry: str, escape: str | None = None) -> _Path:
    """Split a tar name into components, dropping ``.`` and empty ones; absolute or ``..`` is refused."""
    parts = tuple(part for part in name.split("/") if part not in ("", "."))
    if name.startswith("/") or ".." in parts:
        raise UnsafeArchive(escape or f"layer entry {entry!r}: {_ESCAPE}")
    return parts


def _chown_at(dir_fd: int, name: str) -> Callable[[int, int], None]:
    """lchown of ``name`` in ``dir_fd``, for ``_Unpacker._chown``."""
    return lambda uid, gid: os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)


def _close_all(stack: list[_Dir]) -> None:
    while stack:
        os.close(stack.pop().fd)


def _mtime_ns(member: _Member) -> int:
    """mtime in ns; a pax ``mtime`` record is parsed exactly (a float would lose the nanoseconds)."""
    text = member.pax_headers.get("mtime") if member.pax_headers else None
    if text:
        seconds, _, fraction = text.partition(".")
        try:
            ns = abs(int(seconds or "0")) * 1_000_000_000 + int((fraction + "000000000")[:9])
            return -ns if seconds.startswith("-") else ns
        except ValueError:
            pass
    return int(member.mtime * 1_000_000_000)


def _set_xattrs(target: int | str, member: _Member, *, follow: bool) -> None:
    """Apply ``SCHILY.xattr.*`` pax records.

    ``trusted.overlay.*`` from the tar is dropped: overlayfs reads those from lower layers (opaque,
    redirect, metacopy), so only whiteout conversion may set them. ``security.*`` is best effort: a
    filesystem or LSM may refuse it, which must not fail the pull.
    """
    if not member.pax_headers:
        return
    for key, value in member.pax_headers.items():
        if not key.startswith(_XATTR_PAX):
            continue
        name = key[len(_XATTR_PAX) :]
        if name.startswith("trusted.overlay."):
            continue
        data = value.encode("utf-8", "surrogateescape")  # tarfile decoded the raw bytes this way
        try:
            os.setxattr(target, name, data, follow_symlinks=follow)
        except OSError as e:
            if not (name.startswith("security.") and e.errno in (errno.EPERM, errno.ENOTSUP)):
                raise


def _chmod_nofollow(dir_fd: int, name: str, mode: int) -> None:
    """chmod a FIFO or device we just created; fchmodat(AT_SYMLINK_NOFOLLOW) when libc supports it.

    The fallback follows a symlink, but the name was created by us an instant ago in a directory only we
    write to, so it is the node itself.
    """
    try:
        os.chmod(name, mode, dir_fd=dir_fd, follow_symlinks=False)
    except (NotImplementedError, ValueError):  # how Python reports a libc without the flag
        os.chmod(name, mode, dir_fd=dir_fd)
