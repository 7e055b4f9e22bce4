"""Layer unpacking: entry types, metadata, whiteouts, and every way a hostile tar tries to escape."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from hutch.errors import CorruptContent, UnsafeArchive
from hutch.image.compression import open_decompressed
from hutch.image.unpack import LayerStats, unpack_layer

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown, mknod, trusted.* xattrs)")

# -- building tars in memory ------------------------------------------------------------------------------


def entry(name: str, kind: bytes = tarfile.REGTYPE, **attrs) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = attrs.pop("mode", 0o755 if kind == tarfile.DIRTYPE else 0o644)
    info.mtime = attrs.pop("mtime", 1_600_000_000)
    data = attrs.pop("data", b"")
    for key, value in attrs.items():
        setattr(info, key, value)
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data


def reg(name: str, data: bytes = b"", **attrs) -> tuple[tarfile.TarInfo, bytes]:
    return entry(name, data=data, **attrs)


def dir_(name: str, **attrs) -> tuple[tarfile.TarInfo, bytes]:
    return entry(name, tarfile.DIRTYPE, **attrs)


def sym(name: str, target: str, **attrs) -> tuple[tarfile.TarInfo, bytes]:
    return entry(name, tarfile.SYMTYPE, linkname=target, mode=0o777, **attrs)


def hard(name: str, target: str) -> tuple[tarfile.TarInfo, bytes]:
    return entry(name, tarfile.LNKTYPE, linkname=target)


def tar_bytes(*entries: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data else None)
    return buf.getvalue()


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    """The layer directory, with an empty sentinel sibling that must stay empty."""
    (tmp_path / "sentinel").mkdir()
    layer = tmp_path / "layer"
    layer.mkdir()
    return layer


def unpack(dest: Path, *entries: tuple[tarfile.TarInfo, bytes], **kwargs) -> LayerStats:
    return unpack_layer(io.BytesIO(tar_bytes(*entries)), dest, **kwargs)


def refused(dest: Path, name: str, *entries: tuple[tarfile.TarInfo, bytes]) -> str:
    """Unpacking must fail with UnsafeArchive naming ``name`` and write nothing beside the layer."""
    siblings = sorted(dest.parent.iterdir())
    with pytest.raises(UnsafeArchive) as caught:
        unpack(dest, *entries)
    assert repr(name) in str(caught.value)
    assert list((dest.parent / "sentinel").iterdir()) == []
    assert sorted(dest.parent.iterdir()) == siblings
    return str(caught.value)


# -- entry types and metadata -----------------------------------------------------------------------------


def test_files_dirs_and_modes(dest: Path) -> None:
    big = os.urandom(3 << 20)
    stats = unpack(
        dest,
        dir_("etc", mode=0o750),
        reg("etc/hosts", b"127.0.0.1 localhost\n", mode=0o600),
        reg("etc/big", big),
        dir_("tmp", mode=0o1777),
        reg("bin/su", b"\x7fELF", mode=0o4755),
        reg("bin/wall", b"\x7fELF", mode=0o2711),
        reg("empty"),
    )
    assert (dest / "etc/hosts").read_bytes() == b"127.0.0.1 localhost\n"
    assert (dest / "etc/big").read_bytes() == big
    assert (dest / "empty").read_bytes() == b""
    assert stat.S_IMODE((dest / "etc").stat().st_mode) == 0o750
    assert stat.S_IMODE((dest / "etc/hosts").stat().st_mode) == 0o600
    assert stat.S_IMODE((dest / "tmp").stat().st_mode) == 0o1777
    assert stat.S_IMODE((dest / "bin/su").stat().st_mode) == 0o4755
    assert stat.S_IMODE((dest / "bin/wall").stat().st_mode) == 0o2711
    assert stat.S_IMODE((dest / "bin").stat().st_mode) == 0o755  # implicit parent
    assert stats.entries == 7 and stats.files == 5 and stats.dirs == 2
    assert stats.bytes_written == len(big) + 20 + 8


@needs_root
def test_ownership_kept_with_setuid(dest: Path) -> None:
    unpack(
        dest,
        dir_("home/user", uid=1000, gid=1000, mode=0o700),
        reg("home/user/tool", b"x", uid=1000, gid=1000, mode=0o4755),
        sym("home/user/link", "tool", uid=1000, gid=1000),
        reg("rootfile", b"x"),
    )
    for path in ("home/user", "home/user/tool", "home/user/link"):
        st = os.lstat(dest / path)
        assert (st.st_uid, st.st_gid) == (1000, 1000), path
    assert stat.S_IMODE((dest / "home/user/tool").stat().st_mode) == 0o4755  # chown did not clear setuid
    st = (dest / "rootfile").stat()
    assert (st.st_uid, st.st_gid) == (0, 0)


def test_xattrs_from_pax_headers(dest: Path) -> None:
    xattrs = {"SCHILY.xattr.user.origin": "layer", "SCHILY.xattr.user.bin": "\udcff\x00\x01"}
    unpack(
        dest,
        dir_("d", pax_headers={"SCHILY.xattr.user.kind": "dir"}),
        reg("d/f", b"x", pax_headers=xattrs),
        reg("d/g", b"x", pax_headers={"SCHILY.xattr.trusted.overlay.opaque": "y"}),
    )
    assert os.getxattr(dest / "d", "user.kind") == b"dir"
    assert os.getxattr(dest / "d/f", "user.origin") == b"layer"
    assert os.getxattr(dest / "d/f", "user.bin") == b"\xff\x00\x01"
    assert "trusted.overlay.opaque" not in os.listxattr(dest / "d/g")  # only whiteouts may set these


def test_mtimes(dest: Path) -> None:
    unpack(
        dest,
        dir_("d", mtime=1_500_000_000),
        reg("d/f", b"x", mtime=1_400_000_000),
        sym("d/l", "f", mtime=1_300_000_000),
        reg("d/precise", b"x", pax_headers={"mtime": "1600000000.123456789"}),
        dir_("d/sub", mtime=1_200_000_000),
        reg("d/sub/late", b"x"),
    )
    assert (dest / "d").stat().st_mtime == 1_500_000_000  # set after its children were added
    assert (dest / "d/sub").stat().st_mtime == 1_200_000_000
    assert (dest / "d/f").stat().st_mtime == 1_400_000_000
    assert os.lstat(dest / "d/l").st_mtime == 1_300_000_000
    assert (dest / "d/precise").stat().st_mtime_ns == 1_600_000_000_123_456_789


def test_symlinks_are_created_verbatim(dest: Path) -> None:
    unpack(dest, sym("abs", "/etc/passwd"), sym("rel", "../../nowhere"), sym("dot", "."))
    assert os.readlink(dest / "abs") == "/etc/passwd"
    assert os.readlink(dest / "rel") == "../../nowhere"
    assert os.readlink(dest / "dot") == "."


def test_hardlinks(dest: Path) -> None:
    unpack(
        dest,
        reg("bin/busybox", b"bb", mode=0o755),
        hard("bin/sh", "bin/busybox"),
        hard("./bin/ls", "./bin/busybox"),
        sym("s", "bin/busybox"),
        hard("s2", "s"),
    )
    assert os.stat(dest / "bin/sh").st_ino == os.stat(dest / "bin/busybox").st_ino
    assert os.stat(dest / "bin/busybox").st_nlink == 3
    assert os.lstat(dest / "s2").st_ino == os.lstat(dest / "s").st_ino  # the symlink itself, not its target
    assert os.path.islink(dest / "s2")


def test_hardlink_over_existing_name(dest: Path) -> None:
    unpack(dest, reg("a", b"a"), reg("b", b"b"), hard("b", "a"), hard("b", "a"))
    assert (dest / "b").read_bytes() == b"a"
    assert os.stat(dest / "a").st_nlink == 2


def test_fifo(dest: Path) -> None:
    unpack(dest, entry("run/pipe", tarfile.FIFOTYPE, mode=0o620))
    st = os.lstat(dest / "run/pipe")
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o620


@needs_root
def test_char_device_when_allowed(dest: Path) -> None:
    unpack(dest, entry("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666), allow_devices=True)
    st = os.lstat(dest / "dev/null")
    assert stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == 1 and os.minor(st.st_rdev) == 3
    assert stat.S_IMODE(st.st_mode) == 0o666


def test_devices_skipped_when_not_allowed(dest: Path) -> None:
    stats = unpack(
        dest,
        entry("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3),
        entry("dev/sda", tarfile.BLKTYPE, devmajor=8, devminor=0),
        allow_devices=False,
    )
    assert not (dest / "dev").exists()  # not even the parent of a skipped entry
    assert stats.skipped == 2


def test_hardlink_to_skipped_device_is_skipped(dest: Path) -> None:
    dev = entry("dev/null", tarfile.CHRTYPE, devmajor=1, devminor=3)
    stats = unpack(dest, dev, hard("dev/null2", "dev/null"), reg("ok", b"x"), allow_devices=False)
    assert sorted(os.listdir(dest)) == ["ok"]
    assert stats.skipped == 2


def test_empty_layer(dest: Path) -> None:
    stats = unpack(dest)
    assert stats == LayerStats()
    assert os.listdir(dest) == []


def test_unknown_type_skipped(dest: Path) -> None:
    stats = unpack(dest, entry("weird", b"Z"), reg("ok", b"x"))
    assert sorted(os.listdir(dest)) == ["ok"]
    assert stats.skipped == 1


def test_root_entry_sets_root_metadata(dest: Path) -> None:
    unpack(dest, dir_(".", mode=0o711, mtime=1_000_000_000), reg("./f", b"x"))
    assert stat.S_IMODE(dest.stat().st_mode) == 0o711
    assert dest.stat().st_mtime == 1_000_000_000
    assert (dest / "f").read_bytes() == b"x"


def test_gzip_layer_end_to_end(dest: Path) -> None:
    blob = gzip.compress(tar_bytes(dir_("usr/lib"), reg("usr/lib/libc.so", b"libc")))
    unpack_layer(open_decompressed(io.BytesIO(blob)), dest)
    assert (dest / "usr/lib/libc.so").read_bytes() == b"libc"


# -- whiteouts ----------------------------------------------------------------------------------------------


def is_whiteout(path: Path) -> bool:
    st = os.lstat(path)
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)


@needs_root
def test_whiteout_file_becomes_char_device(dest: Path) -> None:
    stats = unpack(dest, dir_("etc"), reg("etc/.wh.motd"), reg(".wh.gone"))
    assert is_whiteout(dest / "etc/motd")
    assert is_whiteout(dest / "gone")
    assert not (dest / "etc/.wh.motd").exists()
    assert stats.whiteouts == 2


@needs_root
def test_whiteout_removes_earlier_entries_of_the_same_layer(dest: Path) -> None:
    unpack(
        dest,
        reg("a/file", b"x"),
        dir_("a/dir"),
        reg("a/dir/inner", b"y"),
        reg("a/.wh.file"),
        reg("a/.wh.dir"),
    )
    assert is_whiteout(dest / "a/file")
    assert is_whiteout(dest / "a/dir")


@needs_root
def test_opaque_directory(dest: Path) -> None:
    stats = unpack(dest, dir_("opt"), reg("opt/keep", b"k"), reg("opt/.wh..wh..opq"), reg("new/.wh..wh..opq"))
    assert os.getxattr(dest / "opt", "trusted.overlay.opaque") == b"y"
    assert os.getxattr(dest / "new", "trusted.overlay.opaque") == b"y"  # created when missing
    assert (dest / "opt/keep").read_bytes() == b"k"  # opacity hides lower layers only
    assert not (dest / "opt/.wh..wh..opq").exists()
    assert stats.whiteouts == 2


def test_aufs_metadata_ignored(dest: Path) -> None:
    stats = unpack(
        dest, dir_(".wh..wh.plnk"), reg(".wh..wh.plnk/1.2", b"x"), reg(".wh..wh.aufs"), reg("d/.wh..wh.x")
    )
    assert os.listdir(dest) == []
    assert stats.skipped == 4


def test_invalid_whiteout_names(dest: Path) -> None:
    refused(dest, "a/.wh..", reg("a/.wh.."))


# -- replacing entries --------------------------------------------------------------------------------------


def test_file_replaced_by_dir_and_dir_by_file(dest: Path) -> None:
    unpack(
        dest,
        reg("x", b"file"),
        dir_("x", mode=0o700),
        reg("x/child", b"c"),
        dir_("y"),
        reg("y/deep/er", b"d"),
        reg("y", b"now a file"),
    )
    assert (dest / "x").is_dir() and (dest / "x/child").read_bytes() == b"c"
    assert stat.S_IMODE((dest / "x").stat().st_mode) == 0o700
    assert (dest / "y").read_bytes() == b"now a file"


def test_existing_dir_kept_with_new_metadata(dest: Path) -> None:
    unpack(dest, dir_("d", mode=0o755), reg("d/f", b"x"), dir_("d", mode=0o700, mtime=1_000_000_000))
    assert (dest / "d/f").read_bytes() == b"x"
    assert stat.S_IMODE((dest / "d").stat().st_mode) == 0o700
    assert (dest / "d").stat().st_mtime == 1_000_000_000


def test_dir_entry_replaces_symlink_instead_of_following_it(dest: Path) -> None:
    unpack(dest, dir_("real"), sym("d", "real"), dir_("d", mode=0o700), reg("d/f", b"x"))
    assert not os.path.islink(dest / "d")
    assert (dest / "d/f").read_bytes() == b"x"
    assert os.listdir(dest / "real") == []


def test_file_entry_replaces_symlink_instead_of_writing_through_it(dest: Path) -> None:
    unpack(dest, reg("target", b"original"), sym("link", "target"), reg("link", b"new"))
    assert (dest / "target").read_bytes() == b"original"
    assert (dest / "link").read_bytes() == b"new" and not os.path.islink(dest / "link")


# -- symlinks inside the root -------------------------------------------------------------------------------


def test_relative_symlink_parent_is_followed_inside_the_root(dest: Path) -> None:
    unpack(dest, dir_("usr/lib"), sym("lib", "usr/lib"), reg("lib/x", b"x"), reg("lib/y", b"y"))
    assert (dest / "usr/lib/x").read_bytes() == b"x"
    assert (dest / "usr/lib/y").read_bytes() == b"y"
    assert os.path.islink(dest / "lib")


def test_symlink_parent_to_missing_dir_creates_it_inside(dest: Path) -> None:
    unpack(dest, sym("lib64", "usr/lib64"), reg("lib64/ld.so", b"ld"))
    assert (dest / "usr/lib64/ld.so").read_bytes() == b"ld"


def test_absolute_symlink_parent_is_scoped_to_the_root(dest: Path) -> None:
    unpack(
        dest,
        sym("lib", "/usr/lib"),
        reg("lib/x", b"x"),
        sym("usr/lib/up", "../.."),
        reg("usr/lib/up/y", b"y"),
    )
    assert (dest / "usr/lib/x").read_bytes() == b"x"
    assert (dest / "y").read_bytes() == b"y"  # ../.. from usr/lib is the root itself: allowed


def test_evil_root_symlink_stays_inside(dest: Path) -> None:
    before = hashlib.sha256(Path("/etc/passwd").read_bytes()).hexdigest()
    unpack(dest, sym("evil", "/"), reg("evil/etc/passwd", b"pwned::0:0::/:/bin/sh\n"))
    assert hashlib.sha256(Path("/etc/passwd").read_bytes()).hexdigest() == before
    assert (dest / "etc/passwd").read_bytes() == b"pwned::0:0::/:/bin/sh\n"
    assert os.path.islink(dest / "evil")
    assert list((dest.parent / "sentinel").iterdir()) == []


def test_later_entries_see_replaced_parents(dest: Path) -> None:
    """Resolved parents are cached; replacing a directory by a symlink (or back) must not use stale ones."""
    unpack(
        dest,
        dir_("a"),
        reg("a/f", b"1"),
        sym("a", "/"),
        reg("a/x", b"2"),
        sym("b", "/"),
        reg("b/y", b"3"),
        dir_("b"),
        reg("b/z", b"4"),
    )
    assert os.path.islink(dest / "a") and (dest / "x").read_bytes() == b"2"
    assert (dest / "y").read_bytes() == b"3"
    assert not os.path.islink(dest / "b") and (dest / "b/z").read_bytes() == b"4"


def test_long_and_non_utf8_names(dest: Path) -> None:
    deep = "/".join(["component-" + "x" * 40] * 6) + "/file"
    odd = "caf\udce9"  # the byte 0xe9, not valid UTF-8, as tarfile decodes it
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT, errors="surrogateescape") as tar:
        for info, data in (reg(deep, b"deep"), reg(odd, b"odd"), hard("link", deep)):
            tar.addfile(info, io.BytesIO(data))
    unpack_layer(io.BytesIO(buf.getvalue()), dest)
    assert (dest / deep).read_bytes() == b"deep"
    assert b"caf\xe9" in os.listdir(os.fsencode(dest))
    assert (dest / odd).read_bytes() == b"odd"
    assert (dest / "link").read_bytes() == b"deep"


def test_no_file_descriptors_leak(dest: Path) -> None:
    before = len(os.listdir("/proc/self/fd"))
    unpack(dest, dir_("a/b/c"), reg("a/b/c/f", b"x"), sym("l", "a/b"), reg("l/c/g", b"y"), hard("h", "l/c/f"))
    for bad in (
        (sym("up", ".."), reg("up/x")),
        (reg("f"), hard("h2", "missing/x")),
        (reg("q/r/../../../x"),),
    ):
        with pytest.raises(UnsafeArchive):
            unpack(dest, *bad)
    assert len(os.listdir("/proc/self/fd")) == before


# -- refusals -----------------------------------------------------------------------------------------------


def test_absolute_name_refused(dest: Path) -> None:
    message = refused(dest, "/etc/passwd", reg("/etc/passwd", b"x"))
    assert "escapes the layer root" in message


@pytest.mark.parametrize(
    "name", ["../x", "a/../../x", "a/../b", "./../sentinel/x", "a/b/../../../sentinel/x"]
)
def test_dotdot_refused(dest: Path, name: str) -> None:
    assert "path escapes the layer root" in refused(dest, name, reg(name, b"x"))


def test_dotdot_in_dir_entry_refused(dest: Path) -> None:
    refused(dest, "../sentinel/d", dir_("../sentinel/d"))


def test_symlink_up_then_write_refused(dest: Path) -> None:
    refused(dest, "up/x", sym("up", "../.."), reg("up/x", b"x"))
    assert os.path.islink(dest / "up")  # creating the symlink was fine


def test_symlink_to_parent_then_write_refused(dest: Path) -> None:
    refused(dest, "up/sentinel/x", sym("up", ".."), reg("up/sentinel/x", b"x"))


def test_symlink_chain_escaping_refused(dest: Path) -> None:
    refused(
        dest,
        "s1/sentinel/x",
        dir_("d"),
        sym("d/s2", ".."),  # d/s2 is the root: fine on its own
        sym("s1", "d/s2/.."),  # ... but one more .. climbs out
        reg("s1/sentinel/x", b"x"),
    )


def test_symlink_chain_through_absolute_and_relative_refused(dest: Path) -> None:
    refused(dest, "a/x", sym("a", "/b"), sym("b", "c/../../d"), dir_("c"), reg("a/x", b"x"))


def test_symlink_loop_refused(dest: Path) -> None:
    assert "too many levels of symbolic links" in refused(
        dest, "a/x", sym("a", "b"), sym("b", "a"), reg("a/x")
    )


def test_self_loop_refused(dest: Path) -> None:
    refused(dest, "me/x", sym("me", "me"), reg("me/x"))


def test_hardlink_to_host_file_refused(dest: Path) -> None:
    message = refused(dest, "passwd", hard("passwd", "/etc/passwd"))
    assert "'/etc/passwd'" in message
    assert not (dest / "passwd").exists()


def test_hardlink_outside_refused(dest: Path) -> None:
    (dest.parent / "outside").write_text("secret")
    message = refused(dest, "stolen", hard("stolen", "../outside"))
    assert "escapes the layer root" in message


def test_hardlink_through_symlink_outside_refused(dest: Path) -> None:
    (dest.parent / "outside").write_text("secret")
    refused(dest, "stolen", sym("up", ".."), hard("stolen", "up/outside"))


def test_hardlink_to_missing_target_refused(dest: Path) -> None:
    assert "does not exist in this layer" in refused(dest, "l", hard("l", "nothing/here"))
    assert "does not exist in this layer" in refused(dest, "m", reg("f"), hard("m", "missing"))


def test_hardlink_to_directory_refused(dest: Path) -> None:
    assert "is a directory" in refused(dest, "l", dir_("d"), hard("l", "d"))


def test_hardlink_via_absolute_symlink_stays_inside(dest: Path) -> None:
    unpack(dest, reg("etc/passwd", b"mine"), sym("root", "/"), hard("copy", "root/etc/passwd"))
    assert (dest / "copy").read_bytes() == b"mine"
    assert os.stat(dest / "copy").st_ino == os.stat(dest / "etc/passwd").st_ino


def test_non_directory_root_entry_refused(dest: Path) -> None:
    refused(dest, "./", sym("./", "/"))


# -- corrupt input ------------------------------------------------------------------------------------------


def test_parent_that_is_a_file_is_corrupt(dest: Path) -> None:
    with pytest.raises(CorruptContent, match="'a/b/c'.*'a' is not a directory"):
        unpack(dest, reg("a", b"x"), reg("a/b/c", b"y"))


def test_truncated_data_is_corrupt(dest: Path) -> None:
    blob = tar_bytes(reg("f", os.urandom(100_000)))
    with pytest.raises(CorruptContent, match="layer tar is corrupt"):
        unpack_layer(io.BytesIO(blob[:50_000]), dest)


def test_truncated_header_is_corrupt(dest: Path) -> None:
    blob = tar_bytes(reg("f", b"x" * 512), reg("g", b"y"))
    with pytest.raises(CorruptContent, match="layer tar is corrupt"):
        unpack_layer(io.BytesIO(blob[: 1024 + 100]), dest)


def test_garbage_header_is_corrupt(dest: Path) -> None:
    blob = tar_bytes(reg("f", b"x" * 512))
    with pytest.raises(CorruptContent, match="layer tar is corrupt"):
        unpack_layer(io.BytesIO(blob[:1024] + os.urandom(512) + bytes(1024)), dest)


@pytest.mark.parametrize("blob", [b"", b"not a tar at all" * 40], ids=["empty", "garbage"])
def test_not_a_tar_is_corrupt(dest: Path, blob: bytes) -> None:
    with pytest.raises(CorruptContent, match="layer tar is corrupt"):
        unpack_layer(io.BytesIO(blob), dest)


def test_corrupt_gzip_layer(dest: Path) -> None:
    blob = bytearray(gzip.compress(tar_bytes(reg("f", os.urandom(50_000)))))
    blob[len(blob) // 2] ^= 0xFF
    with pytest.raises(CorruptContent):
        unpack_layer(open_decompressed(io.BytesIO(bytes(blob))), dest)
