"""Cgroup discovery as pure logic: mountinfo and /proc/self/cgroup text in, versions and directories out."""

from pathlib import Path

import pytest

from hutch.cgroups import (
    DEFAULT_PARENT,
    Mount,
    cgroup_dir,
    detect_version,
    parse_mountinfo,
    parse_proc_cgroup,
    v1_dirs,
    v2_mount,
)
from hutch.cgroups.v1 import V1_CONTROLLERS
from hutch.cgroups.v2 import V2Manager
from hutch.errors import HutchError, InvalidArgument

HYBRID_MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""

HYBRID_PROC_CGROUP = """\
9:name=systemd:/
8:pids:/
7:blkio:/
6:freezer:/
5:devices:/
4:memory:/process_api/0e19
3:cpuset:/
2:cpuacct:/
1:cpu:/
0::/
"""

V2_MOUNTINFO = """\
24 30 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
30 24 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate
"""

# A v1 container without a cgroup namespace: the mounts show only the container's subtree.
DOCKER_V1_MOUNTINFO = """\
700 690 0:99 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs rw,mode=755
701 700 0:31 /docker/abc /sys/fs/cgroup/cpu,cpuacct ro,nosuid - cgroup cgroup rw,cpu,cpuacct
702 700 0:32 /docker/abc /sys/fs/cgroup/memory ro,nosuid - cgroup cgroup rw,memory
703 700 0:33 /docker/abc /sys/fs/cgroup/net_cls ro,nosuid - cgroup cgroup rw,net_cls
"""

DOCKER_V1_PROC_CGROUP = "4:cpu,cpuacct:/docker/abc/sub\n3:memory:/docker/abc\n2:net_cls:/docker/abc\n"


def hybrid() -> tuple[list[Mount], dict[str, str]]:
    return parse_mountinfo(HYBRID_MOUNTINFO), parse_proc_cgroup(HYBRID_PROC_CGROUP)


def test_parse_mountinfo_keeps_only_cgroup_mounts():
    mounts = parse_mountinfo(HYBRID_MOUNTINFO)
    assert len(mounts) == 10
    assert mounts[3] == Mount("/sys/fs/cgroup/memory", "/", "cgroup", ("memory",))
    assert mounts[8].controllers == ("name=systemd",)
    assert mounts[9] == Mount("/sys/fs/cgroup/unified", "/", "cgroup2", ())


def test_parse_mountinfo_comounted_and_escaped():
    text = "50 31 0:40 /a\\040b /mnt/my\\040cg rw - cgroup cgroup rw,xattr,cpu,cpuacct,release_agent=/x\n"
    assert parse_mountinfo(text) == [Mount("/mnt/my cg", "/a b", "cgroup", ("cpu", "cpuacct"))]


def test_parse_proc_cgroup():
    own = parse_proc_cgroup(HYBRID_PROC_CGROUP)
    assert own["memory"] == "/process_api/0e19"
    assert own["name=systemd"] == "/"
    assert own["unified"] == "/"
    assert parse_proc_cgroup(DOCKER_V1_PROC_CGROUP)["cpuacct"] == "/docker/abc/sub"


def test_detect_version():
    hybrid_mounts = parse_mountinfo(HYBRID_MOUNTINFO)
    assert detect_version(hybrid_mounts) == "v1"
    assert detect_version(hybrid_mounts, "/sys/fs/cgroup/") == "v1"
    assert detect_version(hybrid_mounts, "/sys/fs/cgroup/unified") == "v2"
    assert detect_version(parse_mountinfo(V2_MOUNTINFO)) == "v2"
    with pytest.raises(HutchError, match="no cgroup filesystem is mounted at /nowhere"):
        detect_version(hybrid_mounts, "/nowhere")


def test_detect_version_last_mount_on_a_mountpoint_wins():
    stacked = parse_mountinfo(
        "30 24 0:26 / /x rw - cgroup cgroup rw,pids\n31 24 0:27 / /x rw - cgroup2 c rw\n"
    )
    assert detect_version(stacked, "/x") == "v2"


def test_default_parent_is_below_own_cgroup():
    mounts, own = hybrid()
    memory = mounts[3]
    assert cgroup_dir(memory, own["memory"], None, "c1") == Path(
        f"/sys/fs/cgroup/memory/process_api/0e19/{DEFAULT_PARENT}/c1"
    )
    assert cgroup_dir(mounts[0], own["cpu"], None, "c1") == Path(f"/sys/fs/cgroup/cpu/{DEFAULT_PARENT}/c1")


def test_relative_and_absolute_parents():
    mounts, own = hybrid()
    memory = mounts[3]
    assert cgroup_dir(memory, own["memory"], "a/b", "c1") == Path(
        "/sys/fs/cgroup/memory/process_api/0e19/a/b/c1"
    )
    assert cgroup_dir(memory, own["memory"], "/a/b/", "c1") == Path("/sys/fs/cgroup/memory/a/b/c1")
    assert cgroup_dir(memory, own["memory"], "/", "c1") == Path("/sys/fs/cgroup/memory/c1")


def test_mount_showing_a_subtree():
    mounts = parse_mountinfo(DOCKER_V1_MOUNTINFO)
    own = parse_proc_cgroup(DOCKER_V1_PROC_CGROUP)
    cpu = mounts[0]
    assert cgroup_dir(cpu, own["cpu"], None, "c1") == Path(
        f"/sys/fs/cgroup/cpu,cpuacct/sub/{DEFAULT_PARENT}/c1"
    )
    assert cgroup_dir(mounts[1], own["memory"], None, "c1") == Path(
        f"/sys/fs/cgroup/memory/{DEFAULT_PARENT}/c1"
    )
    # hutch's cgroup outside what the mount shows: fall back to the mount's root
    assert cgroup_dir(cpu, "/elsewhere", None, "c1") == Path(
        f"/sys/fs/cgroup/cpu,cpuacct/{DEFAULT_PARENT}/c1"
    )


@pytest.mark.parametrize("name", ["", "a/b", "..", ".", "a\0b"])
def test_invalid_names(name):
    mounts, own = hybrid()
    with pytest.raises(InvalidArgument, match="invalid cgroup name"):
        cgroup_dir(mounts[0], "/", None, name)


@pytest.mark.parametrize("parent", ["../x", "/a/../../x", "a/.."])
def test_invalid_parents(parent):
    mounts, _ = hybrid()
    with pytest.raises(InvalidArgument, match="invalid cgroup parent"):
        cgroup_dir(mounts[0], "/", parent, "c1")


def test_v1_dirs_on_hybrid_host():
    mounts, own = hybrid()
    dirs = v1_dirs(mounts, own, "c1", "/hutch-test")
    assert tuple(dirs) == V1_CONTROLLERS
    assert dirs["name=systemd"] == Path("/sys/fs/cgroup/systemd/hutch-test/c1")
    assert dirs["pids"] == Path("/sys/fs/cgroup/pids/hutch-test/c1")


def test_v1_dirs_comounted_share_a_directory_and_skip_unused_controllers():
    mounts = parse_mountinfo(DOCKER_V1_MOUNTINFO)
    dirs = v1_dirs(mounts, parse_proc_cgroup(DOCKER_V1_PROC_CGROUP), "c1", "/p")
    assert dirs == {
        "cpu": Path("/sys/fs/cgroup/cpu,cpuacct/p/c1"),
        "cpuacct": Path("/sys/fs/cgroup/cpu,cpuacct/p/c1"),
        "memory": Path("/sys/fs/cgroup/memory/p/c1"),
    }


def test_v2_mount_prefers_sys_fs_cgroup():
    assert v2_mount(parse_mountinfo(HYBRID_MOUNTINFO)).mountpoint == "/sys/fs/cgroup/unified"
    assert v2_mount(parse_mountinfo(V2_MOUNTINFO)).mountpoint == "/sys/fs/cgroup"
    with pytest.raises(HutchError, match="no cgroup2"):
        v2_mount(parse_mountinfo(DOCKER_V1_MOUNTINFO))


def test_v2_manager_rejects_a_path_outside_its_mount():
    with pytest.raises(InvalidArgument, match="not below the cgroup2 mount"):
        V2Manager(Path("/tmp/x"), Path("/sys/fs/cgroup"))


def test_v2_create_enables_missing_controllers_on_every_level(tmp_path):
    """On a fake tree of plain files: each level gets one write naming only what is missing."""
    mid = tmp_path / "hutch-test"
    mid.mkdir()
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
    (tmp_path / "cgroup.subtree_control").write_text("cpu\n")
    (mid / "cgroup.controllers").write_text("cpu\n")
    (mid / "cgroup.subtree_control").write_text("cpu\n")
    manager = V2Manager(mid / "c1", tmp_path)
    manager.create()
    assert (mid / "c1").is_dir()
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+memory +pids"
    assert (mid / "cgroup.subtree_control").read_text() == "cpu\n"
    assert manager.paths() == {"unified": mid / "c1"}
