"""Pure logic of the runtime: mount options, scoped path resolution, user lookup, capabilities."""

import os

import pytest

from hutch.errors import HutchError, InvalidArgument
from hutch.linux import syscalls as sc
from hutch.runtime.capabilities import DOCKER_DEFAULT, cap_number, mask
from hutch.runtime.mountopts import parse_mount_options
from hutch.runtime.paths import secure_join
from hutch.runtime.users import resolve_user

PASSWD = """root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
hutch:x:1000:1000:hutch:/home/hutch:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
"""
GROUP = """root:x:0:
wheel:x:10:hutch
audio:x:29:hutch,daemon
hutch:x:1000:
nogroup:x:65534:
"""


def test_mount_options_flags_data_and_propagation():
    opts = parse_mount_options(["nosuid", "noexec", "nodev", "mode=755", "size=65536k", "rprivate", "ro"])
    assert opts.flags == sc.MS_NOSUID | sc.MS_NOEXEC | sc.MS_NODEV | sc.MS_RDONLY
    assert opts.data_string == "mode=755,size=65536k"
    assert opts.propagation == [sc.MS_PRIVATE | sc.MS_REC]


def test_mount_options_later_option_clears_earlier():
    opts = parse_mount_options(["ro", "rw", "rbind"])
    assert opts.flags == sc.MS_BIND | sc.MS_REC
    assert opts.is_bind


def test_empty_mount_option_is_an_error():
    with pytest.raises(InvalidArgument):
        parse_mount_options([""])


def test_secure_join_clamps_dotdot_and_reroots_symlinks(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "run").mkdir()
    os.symlink("/run/resolv.conf", root / "etc" / "resolv.conf")
    os.symlink("../../../../../../", root / "up")
    os.symlink("/", root / "abs")
    assert secure_join(str(root), "/etc/resolv.conf") == str(root / "run" / "resolv.conf")
    assert secure_join(str(root), "/../../etc/passwd") == str(root / "etc" / "passwd")
    assert secure_join(str(root), "/up/etc/passwd") == str(root / "etc" / "passwd")
    assert secure_join(str(root), "/abs/tmp") == str(root / "tmp")


def test_secure_join_symlink_loop_fails(tmp_path):
    os.symlink("b", tmp_path / "a")
    os.symlink("a", tmp_path / "b")
    with pytest.raises(OSError):
        secure_join(str(tmp_path), "/a/x")


def test_user_by_name_gets_primary_and_supplementary_groups():
    user = resolve_user("hutch", PASSWD, GROUP)
    assert (user.uid, user.gid, user.groups, user.home) == (1000, 1000, [10, 29], "/home/hutch")


def test_numeric_uid_in_passwd_uses_its_entry():
    assert resolve_user("1000", PASSWD, GROUP).gid == 1000


def test_numeric_uid_not_in_passwd_gets_gid_zero():
    user = resolve_user("4242", PASSWD, GROUP)
    assert (user.uid, user.gid, user.groups) == (4242, 0, [0])


def test_user_and_group_names():
    user = resolve_user("daemon:wheel", PASSWD, GROUP)
    assert (user.uid, user.gid) == (1, 10)
    assert user.groups == [29]


def test_default_user_is_root():
    user = resolve_user("", PASSWD, GROUP)
    assert (user.uid, user.gid, user.groups) == (0, 0, [0])


def test_unknown_user_and_group_names_fail_clearly():
    with pytest.raises(HutchError, match="unable to find user ghost"):
        resolve_user("ghost", PASSWD, GROUP)
    with pytest.raises(HutchError, match="unable to find group ghosts"):
        resolve_user("hutch:ghosts", PASSWD, GROUP)


def test_docker_default_capability_mask():
    assert mask(list(DOCKER_DEFAULT)) == 0xA80425FB


def test_capability_names():
    assert cap_number("CAP_SYS_ADMIN") == 21
    assert cap_number("net_admin") == 12
    with pytest.raises(InvalidArgument, match="unknown capability"):
        cap_number("CAP_FLY")
