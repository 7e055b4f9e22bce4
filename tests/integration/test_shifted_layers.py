"""image.shifted: chown-ed layer copies keep everything but the owners, which move into the mapping."""

import os
import stat
import struct

import pytest

from hutch.errors import HutchError
from hutch.image.shifted import mapping_key, prune, shifted_layers

pytestmark = pytest.mark.root

UIDS = [{"containerID": 0, "hostID": 200000, "size": 65536}]
GIDS = [{"containerID": 0, "hostID": 400000, "size": 65536}]


def _layer(path):
    """A layer with what unpacking writes: set-id bits, hard links, symlinks, a whiteout, an opaque dir,
    a v3 file capability, odd owners."""
    (path / "bin").mkdir(parents=True)
    tool = path / "bin" / "tool"
    tool.write_bytes(b"\x7fELF" + b"x" * 100_000)
    os.chown(tool, 0, 50)
    os.chmod(tool, 0o4755)
    os.link(tool, path / "bin" / "alias")
    os.symlink("tool", path / "bin" / "link")
    os.lchown(path / "bin" / "link", 7, 8)
    home = path / "home" / "user"
    home.mkdir(parents=True)
    os.chown(home, 1000, 1000)
    os.chmod(path / "home", 0o1777)
    os.mknod(path / "gone", stat.S_IFCHR | 0o600, os.makedev(0, 0))
    opaque = path / "opaque"
    opaque.mkdir()
    os.setxattr(opaque, "trusted.overlay.opaque", b"y")
    ping = path / "bin" / "ping"
    ping.write_bytes(b"ping")
    # VFS_CAP_REVISION_3 | effective, CAP_NET_RAW permitted, for the namespace whose root is uid 1000 (a v3
    # capability of root id 0 the kernel stores as v2, which carries no root id)
    caps = struct.pack("<IIIIII", 0x03000001, 1 << 13, 0, 0, 0, 1000)
    os.setxattr(ping, "security.capability", caps)
    os.utime(tool, ns=(1_000_000_000, 2_000_000_000))


def test_copy_shifts_owners_and_keeps_the_rest(tmp_path):
    layer = tmp_path / "layers" / "abc"
    _layer(layer)
    (copy,) = shifted_layers(tmp_path, [layer], UIDS, GIDS)
    assert copy == tmp_path / "layers-shifted" / mapping_key(UIDS, GIDS) / "abc"
    assert mapping_key(UIDS, GIDS) == "200000-400000-65536"
    tool = os.lstat(copy / "bin" / "tool")
    assert (tool.st_uid, tool.st_gid) == (200000, 400050)
    assert stat.S_IMODE(tool.st_mode) == 0o4755  # set after the chown that clears it
    assert tool.st_mtime_ns == 2_000_000_000
    assert (copy / "bin" / "tool").read_bytes() == (layer / "bin" / "tool").read_bytes()
    assert os.lstat(copy / "bin" / "alias").st_ino == tool.st_ino
    link = os.lstat(copy / "bin" / "link")
    assert os.readlink(copy / "bin" / "link") == "tool" and (link.st_uid, link.st_gid) == (200007, 400008)
    assert os.stat(copy / "home" / "user").st_uid == 201000
    assert stat.S_IMODE(os.stat(copy / "home").st_mode) == 0o1777
    gone = os.lstat(copy / "gone")
    assert stat.S_ISCHR(gone.st_mode) and gone.st_rdev == 0
    assert os.getxattr(copy / "opaque", "trusted.overlay.opaque") == b"y"
    caps = os.getxattr(copy / "bin" / "ping", "security.capability")
    assert struct.unpack("<IIIIII", caps)[5] == 201000  # its root moved with the owners
    assert os.stat(copy).st_uid == 200000
    # the original is untouched
    assert os.stat(layer / "bin" / "tool").st_uid == 0
    assert not [p for p in copy.parent.iterdir() if p.name.startswith(".tmp-")]


def test_second_call_reuses_the_copy_and_prune_removes_unused_mappings(tmp_path):
    layer = tmp_path / "layers" / "abc"
    _layer(layer)
    (copy,) = shifted_layers(tmp_path, [layer], UIDS, GIDS)
    inode = os.stat(copy / "bin" / "tool").st_ino
    assert shifted_layers(tmp_path, [layer], UIDS, GIDS) == [copy]
    assert os.stat(copy / "bin" / "tool").st_ino == inode
    assert prune(tmp_path, {mapping_key(UIDS, GIDS)}) == 0 and copy.exists()
    assert prune(tmp_path, set()) == 1 and not copy.parent.exists()


def test_an_owner_outside_the_mapping_is_a_clear_error_and_leaves_nothing(tmp_path):
    layer = tmp_path / "layers" / "abc"
    _layer(layer)
    os.chown(layer / "home" / "user", 70000, 0)
    with pytest.raises(HutchError, match="owned by id 70000, outside the container's 65536"):
        shifted_layers(tmp_path, [layer], UIDS, GIDS)
    assert [p.name for p in (tmp_path / "layers-shifted" / mapping_key(UIDS, GIDS)).iterdir()] == []
