#!/usr/bin/env python3
"""Build a small but real root filesystem tarball from Debian's ``busybox-static`` binary.

The tarball holds ``bin/busybox``, one relative symlink per applet at the path ``busybox --list-full``
gives (``bin/sh``, ``bin/ls``, ``usr/bin/env``, ...), an ``etc/passwd`` and ``etc/group`` with a non-root
user ``hutch`` (uid/gid 1000, member of ``wheel`` and ``audio``) and the usual empty directories. It is
deterministic: entries are sorted, every mtime is ``SOURCE_DATE_EPOCH`` (0 when unset) and owners are
numeric (0:0, except ``home/hutch`` at 1000:1000), so the same busybox gives the same digest.

Usage: ``python tools/busybox_rootfs.py OUT.tar [--busybox PATH]`` (``.tar.gz``/``.tgz`` compress).
Standard library only, so it runs before any virtualenv exists.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import os
import posixpath
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

DEFAULT_BUSYBOX = Path("/bin/busybox")

PASSWD = """\
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
hutch:x:1000:1000:hutch:/home/hutch:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
"""

GROUP = """\
root:x:0:
daemon:x:1:
wheel:x:10:hutch
audio:x:29:hutch
hutch:x:1000:
nogroup:x:65534:
"""

# path -> (mode, uid, gid); parents are added automatically with 0755 root:root.
DIRECTORIES: dict[str, tuple[int, int, int]] = {
    "bin": (0o755, 0, 0),
    "dev": (0o755, 0, 0),
    "etc": (0o755, 0, 0),
    "home": (0o755, 0, 0),
    "home/hutch": (0o755, 1000, 1000),
    "proc": (0o555, 0, 0),
    "root": (0o700, 0, 0),
    "run": (0o755, 0, 0),
    "sbin": (0o755, 0, 0),
    "sys": (0o555, 0, 0),
    "tmp": (0o1777, 0, 0),
    "usr": (0o755, 0, 0),
    "usr/bin": (0o755, 0, 0),
    "usr/sbin": (0o755, 0, 0),
    "var": (0o755, 0, 0),
    "var/log": (0o755, 0, 0),
    "var/tmp": (0o1777, 0, 0),
}

# Applets that make no sense in an image: ``linuxrc`` is an initrd's init and would clutter ``/``.
SKIPPED_APPLETS = frozenset({"linuxrc"})

PT_INTERP = 3


class RootfsError(Exception):
    """The rootfs could not be built; the message says why on one line."""


def check_static_elf(path: Path) -> None:
    """Raise ``RootfsError`` unless ``path`` is an ELF executable without a program interpreter."""
    try:
        with open(path, "rb") as f:
            ident = f.read(64)
            if len(ident) < 52 or ident[:4] != b"\x7fELF":
                raise RootfsError(f"{path} is not an ELF executable")
            elf_class, data = ident[4], ident[5]
            if data not in (1, 2) or elf_class not in (1, 2):
                raise RootfsError(f"{path}: unknown ELF class {elf_class} or byte order {data}")
            end = "<" if data == 1 else ">"
            if elf_class == 2:  # 64-bit
                (phoff,) = struct.unpack_from(end + "Q", ident, 0x20)
                phentsize, phnum = struct.unpack_from(end + "HH", ident, 0x36)
            else:
                (phoff,) = struct.unpack_from(end + "I", ident, 0x1C)
                phentsize, phnum = struct.unpack_from(end + "HH", ident, 0x2A)
            if phnum == 0 or phentsize < 4:
                raise RootfsError(f"{path}: ELF file has no program headers (not an executable)")
            f.seek(phoff)
            table = f.read(phentsize * phnum)
            if len(table) < phentsize * phnum:
                raise RootfsError(f"{path}: truncated ELF program header table")
    except FileNotFoundError:
        raise RootfsError(f"busybox binary {path} not found (apt-get install busybox-static)")
    except IsADirectoryError:
        raise RootfsError(f"{path} is a directory, not a busybox binary")
    except PermissionError:
        raise RootfsError(f"{path}: permission denied")
    for i in range(phnum):
        (p_type,) = struct.unpack_from(end + "I", table, i * phentsize)
        if p_type == PT_INTERP:
            raise RootfsError(
                f"{path} is dynamically linked (it has an ELF interpreter) and would not run in a container; "
                "install busybox-static"
            )


def list_applets(busybox: Path) -> list[str]:
    """Paths (relative, without a leading slash) at which ``busybox`` wants its applets."""
    try:
        out = subprocess.run(
            [str(busybox), "--list-full"], check=True, capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError) as err:
        raise RootfsError(f"cannot run '{busybox} --list-full': {err}")
    paths = []
    for line in out.splitlines():
        rel = posixpath.normpath(line.strip().lstrip("/"))
        if not rel or rel == "." or rel.startswith("..") or rel in SKIPPED_APPLETS or rel == "bin/busybox":
            continue
        paths.append(rel)
    if "bin/sh" not in paths:
        raise RootfsError(f"{busybox} --list-full does not list bin/sh; is it really busybox?")
    return sorted(set(paths))


def _source_date_epoch() -> int:
    value = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not value:
        return 0
    try:
        return max(0, int(value))
    except ValueError:
        raise RootfsError(f"SOURCE_DATE_EPOCH must be an integer, not {value!r}")


def _sort_key(path: str) -> tuple[str, ...]:
    return tuple(path.split("/"))


def _info(name: str, kind: bytes, mode: int, mtime: int, uid: int = 0, gid: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = mtime
    info.uid, info.gid = uid, gid
    info.uname = info.gname = ""  # numeric owners only: extractors must not map names to host users
    return info


def rootfs_entries(busybox: Path) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    """All entries of the rootfs, sorted so parents come first; file entries carry their content."""
    check_static_elf(busybox)
    applets = list_applets(busybox)
    mtime = _source_date_epoch()
    try:
        binary = busybox.read_bytes()
    except OSError as err:
        raise RootfsError(f"cannot read {busybox}: {err.strerror}")

    dirs = dict(DIRECTORIES)
    for path in ["bin/busybox", *applets]:
        parent = posixpath.dirname(path)
        while parent:
            dirs.setdefault(parent, (0o755, 0, 0))
            parent = posixpath.dirname(parent)

    entries: dict[str, tuple[tarfile.TarInfo, bytes | None]] = {}
    for path, (mode, uid, gid) in dirs.items():
        entries[path] = (_info(path, tarfile.DIRTYPE, mode, mtime, uid, gid), None)
    files = {
        "bin/busybox": (0o755, binary),
        "etc/passwd": (0o644, PASSWD.encode()),
        "etc/group": (0o644, GROUP.encode()),
    }
    for path, (mode, data) in files.items():
        info = _info(path, tarfile.REGTYPE, mode, mtime)
        info.size = len(data)
        entries[path] = (info, data)
    for path in applets:
        if path in entries:
            continue
        info = _info(path, tarfile.SYMTYPE, 0o777, mtime)
        info.linkname = posixpath.relpath("bin/busybox", posixpath.dirname(path) or ".")
        entries[path] = (info, None)
    return [entries[p] for p in sorted(entries, key=_sort_key)]


def write_rootfs_tar(fileobj: io.BufferedIOBase, busybox: Path = DEFAULT_BUSYBOX) -> None:
    """Write the rootfs as an uncompressed tar stream to ``fileobj``."""
    with tarfile.open(fileobj=fileobj, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for info, data in rootfs_entries(busybox):
            tar.addfile(info, io.BytesIO(data) if data is not None else None)


def build_rootfs_tar(output: Path, busybox: Path = DEFAULT_BUSYBOX) -> str:
    """Write the rootfs tarball to ``output`` atomically and return its ``sha256:`` digest.

    ``.tar.gz``/``.tgz`` outputs are gzip-compressed with a zero header mtime (still deterministic).
    """
    output = Path(output)
    buf = io.BytesIO()
    write_rootfs_tar(buf, Path(busybox))
    data = buf.getvalue()
    if output.name.endswith((".gz", ".tgz")):
        data = gzip.compress(data, compresslevel=9, mtime=0)
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, output)
    except OSError as err:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise RootfsError(f"cannot write {output}: {err.strerror}")
    return "sha256:" + hashlib.sha256(data).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build a deterministic busybox rootfs tarball.")
    parser.add_argument("output", type=Path, help="tarball to write (.tar, or .tar.gz/.tgz to compress)")
    parser.add_argument(
        "--busybox",
        type=Path,
        default=DEFAULT_BUSYBOX,
        help=f"static busybox binary (default {DEFAULT_BUSYBOX})",
    )
    args = parser.parse_args(argv)
    try:
        digest = build_rootfs_tar(args.output, args.busybox)
    except RootfsError as err:
        print(f"busybox_rootfs: error: {err}", file=sys.stderr)
        return 1
    print(f"{args.output} {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
