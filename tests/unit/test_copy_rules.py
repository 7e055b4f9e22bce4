"""hutch cp: Docker's destination rules, and what an archive from a container may do on the host."""

import io
import tarfile

import pytest

from hutch.engine.copy import parse_location, receive, target_plan
from hutch.errors import InvalidArgument, NotFound


def test_locations():
    assert parse_location("web:/etc/hosts") == ("web", "/etc/hosts")
    assert parse_location("web:") == ("web", "/")
    assert parse_location("/tmp/a:b") == (None, "/tmp/a:b")
    assert parse_location("./a:b") == (None, "./a:b")
    assert parse_location("-") == (None, "-")
    with pytest.raises(InvalidArgument):
        parse_location(":/x")


def test_docker_destination_rules():
    plan = target_plan("/d", "dir", src_is_dir=False, src_contents_only=False)
    assert (plan.directory, plan.rename, plan.contents_only) == ("/d", None, False)
    plan = target_plan("/d", "dir", src_is_dir=True, src_contents_only=True)
    assert plan.contents_only
    plan = target_plan("/d/new", None, src_is_dir=True, src_contents_only=False)
    assert (plan.directory, plan.rename) == ("/d", "new")
    plan = target_plan("/d/f", "file", src_is_dir=False, src_contents_only=False)
    assert (plan.directory, plan.rename) == ("/d", "f")
    with pytest.raises(InvalidArgument, match="directory to a file"):
        target_plan("/d/f", "file", src_is_dir=True, src_contents_only=False)
    with pytest.raises(NotFound):
        target_plan("/d/missing/", None, src_is_dir=False, src_contents_only=False)


def _archive(*members) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    buf.seek(0)
    return buf


def _entry(name, kind=tarfile.REGTYPE, data=b"", linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size, info.mode = kind, linkname, len(data), 0o644
    if kind == tarfile.DIRTYPE:
        info.mode = 0o755
    return info, data if kind == tarfile.REGTYPE else None


def test_a_symlink_from_the_container_is_kept_but_never_written_through(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    archive = _archive(
        _entry("d", tarfile.DIRTYPE),
        _entry("d/link", tarfile.SYMTYPE, linkname=str(outside)),
        _entry("d/link/evil", data=b"pwned"),
    )
    with pytest.raises(tarfile.OutsideDestinationError):
        receive(archive, str(dest), on_host=True, archive=False, contents_only=False)
    assert (dest / "d" / "link").is_symlink()
    assert list(outside.iterdir()) == []


def test_hard_links_out_and_device_nodes_are_refused(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("s")
    dest = tmp_path / "dest"
    dest.mkdir()
    hard = _archive(_entry("d", tarfile.DIRTYPE), _entry("d/h", tarfile.LNKTYPE, linkname="../secret"))
    with pytest.raises(tarfile.FilterError):
        receive(hard, str(dest), on_host=True, archive=False, contents_only=False)
    device = _archive(_entry("d", tarfile.DIRTYPE), _entry("d/null", tarfile.CHRTYPE))
    with pytest.raises(tarfile.SpecialFileError):
        receive(device, str(dest / "x"), on_host=True, archive=False, contents_only=False)


def test_contents_only_and_rename(tmp_path):
    tree = lambda: _archive(_entry("src", tarfile.DIRTYPE), _entry("src/a", data=b"A"))  # noqa: E731
    (tmp_path / "into").mkdir()
    receive(tree(), str(tmp_path / "into"), on_host=True, archive=False, contents_only=False)
    assert (tmp_path / "into" / "src" / "a").read_text() == "A"
    receive(tree(), str(tmp_path / "new"), on_host=True, archive=False, contents_only=False)
    assert (tmp_path / "new" / "a").read_text() == "A"
    (tmp_path / "flat").mkdir()
    receive(tree(), str(tmp_path / "flat"), on_host=True, archive=False, contents_only=True)
    assert (tmp_path / "flat" / "a").read_text() == "A"
