"""Device rules enforced by the kernel (root): the v1 devices controller, and a BPF device filter on cgroup2.

Each test makes a cgroup under ``hutch-devtest``, sets rules, and forks a child that joins the cgroup and
tries to open and mknod devices; the child reports every check that went the wrong way through a pipe and
its exit status (the number of such checks). On this hybrid host the v2 tests use the empty cgroup2 mount
at /sys/fs/cgroup/unified: the child stays in the host's (unrestricted) v1 devices cgroup there, so any
denial comes from the BPF program. Every cgroup is removed at teardown, pass or fail, and the module ends
by checking that no ``hutch-devtest`` group is left in any hierarchy.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from hutch.cgroups import CgroupManager, detect, open_manager, parse_mountinfo
from hutch.cgroups.devices import (
    DOCKER_DEFAULT_RULES,
    PRIVILEGED_RULES,
    DeviceRule,
    container_rules,
    parse_device_option,
)
from hutch.errors import HutchError

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(not os.path.isdir("/sys/fs/cgroup"), reason="no cgroupfs"),
]

PARENT = "hutch-devtest"
MOUNTS = parse_mountinfo(Path("/proc/self/mountinfo").read_text())


def _host_version() -> str | None:
    try:
        return detect()
    except HutchError:
        return None


HAS_V1_DEVICES = _host_version() == "v1" and any("devices" in m.controllers for m in MOUNTS)
HAS_V2 = any(m.fstype == "cgroup2" for m in MOUNTS)
VERSIONS = [
    pytest.param("v1", marks=pytest.mark.skipif(not HAS_V1_DEVICES, reason="no v1 devices hierarchy")),
    pytest.param("v2", marks=pytest.mark.skipif(not HAS_V2, reason="no cgroup2 mount")),
]


def _first_block_device() -> str | None:
    for name in ("loop0", "vda", "sda", "nvme0n1", "loop1"):
        path = f"/dev/{name}"
        try:
            if stat.S_ISBLK(os.stat(path).st_mode):
                return path
        except OSError:
            continue
    return None


BLOCK = _first_block_device()


def _parents(version: str) -> set[Path]:
    return {d.parent for d in open_manager("probe", parent=PARENT, version=version).paths().values()}


def _all_parents() -> set[Path]:
    found: set[Path] = set()
    if _host_version() == "v1":
        found |= _parents("v1")
    if HAS_V2:
        found |= _parents("v2")
    return found


@pytest.fixture(scope="module", autouse=True)
def nothing_left_behind():
    """After the module: no hutch-devtest cgroup in any hierarchy (removed here if a test leaked one)."""
    yield
    left = sorted(str(d) for d in _all_parents() if d.exists())
    for d in left:
        for sub in sorted(Path(d).iterdir(), reverse=True):
            if sub.is_dir():
                os.rmdir(sub)
        os.rmdir(d)
    assert not left, f"cgroups left behind: {left}"


@pytest.fixture
def cgroup() -> Callable[[str], CgroupManager]:
    """Make a cgroup ``hutch-devtest/hutch-devtest-<random>``; destroyed (and the parent removed) after."""
    made: list[CgroupManager] = []

    def factory(version: str) -> CgroupManager:
        manager = open_manager(f"{PARENT}-{secrets.token_hex(4)}", parent=PARENT, version=version)
        made.append(manager)
        manager.create()
        return manager

    yield factory
    errors = []
    for manager in made:
        try:
            manager.destroy()
        except Exception as e:  # noqa: BLE001 - every manager is cleaned up, the first error is reported
            errors.append(e)
    for parent in {d.parent for m in made for d in m.paths().values()}:
        try:
            os.rmdir(parent)
        except FileNotFoundError:
            pass
        except OSError as e:
            if e.errno != errno.EBUSY:  # another test's group is still in it
                errors.append(e)
    assert not errors, errors


# --- the child --------------------------------------------------------------------------------------------

# A check is (action, path, [major, minor,] expected errno or 0): "open-r"/"open-w" open the path,
# "mknod-c"/"mknod-b" make a char/block node there with the given numbers.


def _do(action: str, path: str, *numbers: int) -> int:
    """Perform one action, returning 0 or the errno it failed with."""
    try:
        if action == "open-r":
            os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY))
        elif action == "open-w":
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY))
        elif action in ("mknod-c", "mknod-b"):
            kind = stat.S_IFCHR if action == "mknod-c" else stat.S_IFBLK
            os.mknod(path, kind | 0o600, os.makedev(*numbers))
        else:
            raise ValueError(action)
    except OSError as e:
        return e.errno
    return 0


def run_checks(manager: CgroupManager, checks: list[tuple]) -> None:
    """Fork a child into ``manager``'s cgroup that performs ``checks``; fail with every wrong outcome."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 127
        try:
            os.close(read_end)
            manager.add_process(0)
            wrong = []
            for action, path, *rest in checks:
                *numbers, expected = rest
                got = _do(action, path, *numbers)
                if got != expected:
                    want = errno.errorcode.get(expected, "success") if expected else "success"
                    have = errno.errorcode.get(got, str(got)) if got else "success"
                    wrong.append(f"{action} {path} {numbers or ''}: expected {want}, got {have}")
            os.write(write_end, "\n".join(wrong).encode())
            code = min(len(wrong), 100)
        except BaseException as e:  # noqa: BLE001
            os.write(write_end, f"child failed: {e!r}".encode())
            code = 101
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        report = f.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"in {manager.paths()}:\n{report}"


EPERM = errno.EPERM


# --- tests ------------------------------------------------------------------------------------------------


def test_v2_on_this_host_uses_the_cgroup2_mount():
    if not HAS_V2:
        pytest.skip("no cgroup2 mount")
    path = open_manager("probe", parent=PARENT, version="v2").paths()["unified"]
    v2 = [m.mountpoint for m in MOUNTS if m.fstype == "cgroup2"]
    assert any(Path(mp) in path.parents for mp in v2)
    if _host_version() == "v1":  # hybrid: the cgroup2 mount sits below the v1 tmpfs
        assert str(path).startswith("/sys/fs/cgroup/unified/")


@pytest.mark.parametrize("version", VERSIONS)
def test_without_rules_everything_opens(cgroup, version):
    """The control: the devices the other tests expect to be refused do open in a plain cgroup."""
    checks = [("open-r", "/dev/kmsg", 0)]
    if BLOCK:
        checks.append(("open-r", BLOCK, 0))
    run_checks(cgroup(version), checks)


@pytest.mark.parametrize("version", VERSIONS)
def test_docker_defaults(cgroup, version, tmp_path):
    manager = cgroup(version)
    manager.set_devices(DOCKER_DEFAULT_RULES)
    checks = [
        ("open-w", "/dev/null", 0),
        ("open-r", "/dev/null", 0),
        ("open-r", "/dev/zero", 0),
        ("open-w", "/dev/full", 0),
        ("open-r", "/dev/urandom", 0),
        ("open-r", "/dev/random", 0),
        ("open-r", "/dev/ptmx", 0),
        ("open-r", "/dev/kmsg", EPERM),  # c 1:11
        ("open-w", "/dev/kmsg", EPERM),
        # mknod of any node is allowed (c *:* m, b *:* m); opening one is up to its numbers
        ("mknod-c", f"{tmp_path}/kmsg", 1, 11, 0),
        ("open-r", f"{tmp_path}/kmsg", EPERM),
        ("mknod-c", f"{tmp_path}/mem", 1, 1, 0),
        ("open-r", f"{tmp_path}/mem", EPERM),
        ("mknod-c", f"{tmp_path}/null", 1, 3, 0),
        ("open-w", f"{tmp_path}/null", 0),
        ("mknod-b", f"{tmp_path}/loop0", 7, 0, 0),
        ("open-r", f"{tmp_path}/loop0", EPERM),
    ]
    if BLOCK:
        checks.append(("open-r", BLOCK, EPERM))
    if os.path.exists("/dev/tty0"):
        checks.append(("open-r", "/dev/tty0", EPERM))  # c 4:0
    run_checks(manager, checks)


@pytest.mark.parametrize("version", VERSIONS)
def test_empty_rules_deny_even_mknod(cgroup, version, tmp_path):
    manager = cgroup(version)
    manager.set_devices([])
    run_checks(
        manager,
        [("open-w", "/dev/null", EPERM), ("mknod-c", f"{tmp_path}/null", 1, 3, EPERM)],
    )


@pytest.mark.parametrize("version", VERSIONS)
def test_privileged_allows_everything(cgroup, version):
    manager = cgroup(version)
    manager.set_devices(PRIVILEGED_RULES)
    run_checks(manager, [("open-r", "/dev/kmsg", 0), ("open-w", "/dev/null", 0)])


@pytest.mark.parametrize("version", VERSIONS)
def test_device_option_allows_that_device(cgroup, version):
    if not os.path.exists("/dev/loop-control"):
        pytest.skip("no /dev/loop-control on this host (loop module not loaded)")
    _host, _container, rule = parse_device_option("/dev/loop-control")
    manager = cgroup(version)
    manager.set_devices(container_rules([rule]))
    run_checks(manager, [("open-w", "/dev/loop-control", 0), ("open-r", "/dev/kmsg", EPERM)])


@pytest.mark.parametrize("version", VERSIONS)
def test_device_option_mode_limits_access(cgroup, version):
    if BLOCK is None:
        pytest.skip("no block device on this host")
    _host, _container, rule = parse_device_option(f"{BLOCK}:/dev/xvda:r")
    assert rule.type == "b" and rule.access == "r"
    manager = cgroup(version)
    manager.set_devices(container_rules([rule]))
    run_checks(manager, [("open-r", BLOCK, 0), ("open-w", BLOCK, EPERM)])


@pytest.mark.parametrize("version", VERSIONS)
def test_setting_again_replaces_the_rules(cgroup, version):
    manager = cgroup(version)
    manager.set_devices(DOCKER_DEFAULT_RULES)
    manager.set_devices(container_rules([DeviceRule(True, "c", 1, 11, "r")]))
    run_checks(manager, [("open-r", "/dev/kmsg", 0), ("open-w", "/dev/kmsg", EPERM)])
    manager.set_devices(DOCKER_DEFAULT_RULES)
    run_checks(manager, [("open-r", "/dev/kmsg", EPERM), ("open-w", "/dev/null", 0)])


@pytest.mark.skipif(not HAS_V1_DEVICES, reason="no v1 devices hierarchy")
def test_v1_devices_list_shows_the_rules(cgroup):
    manager = cgroup("v1")
    manager.set_devices(DOCKER_DEFAULT_RULES)
    listed = (manager.paths()["devices"] / "devices.list").read_text().split("\n")
    assert sorted(filter(None, listed)) == sorted(r.cgroup_string() for r in DOCKER_DEFAULT_RULES[1:])


@pytest.mark.skipif(not HAS_V2, reason="no cgroup2 mount")
def test_v2_keeps_one_program_attached(cgroup):
    from hutch.cgroups import bpf

    manager = cgroup("v2")
    path = str(manager.paths()["unified"])
    for _ in range(3):
        manager.set_devices(DOCKER_DEFAULT_RULES)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert len(bpf.attached_programs(fd, path)) == 1
    finally:
        os.close(fd)


@pytest.mark.skipif(not HAS_V2, reason="no cgroup2 mount")
def test_v2_verifier_log_is_reported():
    from hutch.cgroups import bpf
    from hutch.cgroups.devices import EXIT, assemble

    with pytest.raises(OSError, match=r"(?s)BPF_PROG_LOAD.*for /x/y.*verifier log:.*R0 !read_ok"):
        bpf.load_device_filter(assemble([(EXIT, 0, 0, 0, 0)]), "/x/y")  # returns r0 without setting it


@pytest.mark.skipif(not HAS_V2, reason="no cgroup2 mount")
def test_v2_error_names_the_cgroup():
    manager = open_manager(f"{PARENT}-missing", parent=PARENT, version="v2")  # never created
    with pytest.raises(HutchError, match=f"{manager.paths()['unified']}.*No such file"):
        manager.set_devices(DOCKER_DEFAULT_RULES)


@pytest.mark.skipif(not HAS_V1_DEVICES, reason="no v1 devices hierarchy")
def test_v1_error_names_the_file_and_rule():
    manager = open_manager(f"{PARENT}-missing", parent=PARENT, version="v1")  # never created
    with pytest.raises(HutchError, match=r"'a' to .*devices\.deny"):
        manager.set_devices(DOCKER_DEFAULT_RULES)
