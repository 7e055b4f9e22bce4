"""The cgroup backends against the real cgroupfs of this machine (root).

v1 runs on the controller hierarchies under /sys/fs/cgroup; v2 on whatever cgroup2 mount there is (the
empty one at /sys/fs/cgroup/unified on a hybrid host). Every manager and process a test makes is recorded
and removed at teardown, even when the test fails, and the module ends by checking nothing is left.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hutch.cgroups import (
    DEFAULT_PARENT,
    CgroupManager,
    V2Manager,
    detect,
    list_hutch_cgroups,
    open_manager,
    parse_mountinfo,
    parse_proc_cgroup,
    reopen,
    v2_mount,
)
from hutch.cgroups.v1 import V1_CONTROLLERS
from hutch.errors import HutchError

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(not os.path.isdir("/sys/fs/cgroup"), reason="no cgroupfs"),
]

PARENT = "/hutch-cgtest"  # this module's own: teardown removes whatever is left below it
PREFIX = "hutch-cgtest-"
MOUNTS = parse_mountinfo(Path("/proc/self/mountinfo").read_text())
OWN = parse_proc_cgroup(Path("/proc/self/cgroup").read_text())
V2_MOUNTS = [m for m in MOUNTS if m.fstype == "cgroup2"]


def _close_and_reap(fd: int, pid: int) -> None:
    """A forked test child's pipe closed and the child gone, whatever the test reached."""
    os.close(fd)
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def host_version() -> str | None:
    try:
        return detect()
    except HutchError:
        return None


needs_v1 = pytest.mark.skipif(host_version() != "v1", reason="no cgroup v1 hierarchies")
needs_v2 = pytest.mark.skipif(not V2_MOUNTS, reason="no cgroup2 mount")

Factory = Callable[..., CgroupManager]

# Every process forks as fast as it can, forever, ignoring failures (pids.max bounds it).
FORK_BOMB = """
import os, sys
sys.stdin.readline()
while True:
    try:
        os.fork()
    except OSError:
        pass
"""


def default_parents() -> list[Path]:
    """The default ``hutch`` parent directory in every hierarchy."""
    found = []
    for m in MOUNTS:
        key = m.controllers[0] if m.controllers else "unified"
        own = OWN.get(key, "/")
        found.append(Path(m.mountpoint, own.lstrip("/"), DEFAULT_PARENT))
    return found


def parent_dirs() -> list[Path]:
    """The ``/hutch-cgtest`` parent directory in every hierarchy."""
    return [Path(m.mountpoint, PARENT.lstrip("/")) for m in MOUNTS]


def leftovers() -> list[Path]:
    """Anything these tests may have created that still exists, in any hierarchy."""
    left = [p for p in parent_dirs() if p.exists()]
    for parent in default_parents():
        if parent.is_dir():
            left.extend(p for p in parent.iterdir() if p.name.startswith(PREFIX))
    return left


@pytest.fixture(scope="module", autouse=True)
def nothing_left_behind() -> Iterator[None]:
    """Remove the test parents (and default parents this module created), then check nothing remains."""
    existed = {p for p in default_parents() if p.exists()}
    yield
    for top in parent_dirs():
        for d, _, _ in os.walk(top, topdown=False):  # parents left by a failed test, innermost first
            try:
                os.rmdir(d)
            except OSError:
                pass
    for p in default_parents():  # shared with other users: only the empty parent itself, if we made it
        if p not in existed:
            try:
                p.rmdir()
            except OSError:
                pass
    assert leftovers() == []


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen]]:
    """Processes a test starts; killed and reaped at teardown."""
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait()


@pytest.fixture
def make() -> Iterator[Factory]:
    """Make managers with unique names under ``/hutch-cgtest``; all destroyed at teardown."""
    made: list[CgroupManager] = []

    def factory(version: str = "v1", parent: str | None = PARENT, **kw: object) -> CgroupManager:
        if "manager" in kw:
            manager = kw["manager"]
        else:
            manager = open_manager(f"{PREFIX}{secrets.token_hex(4)}", parent, version)
        made.append(manager)  # type: ignore[arg-type]
        return manager  # type: ignore[return-value]

    yield factory
    for manager in made:
        manager.destroy()


def start(procs: list[subprocess.Popen], script: str) -> subprocess.Popen:
    """Start ``sh -c script``, waiting for a line on stdin first (to join the cgroup before it forks)."""
    p = subprocess.Popen(["sh", "-c", f"read go; {script}"], stdin=subprocess.PIPE, text=True)
    procs.append(p)
    return p


def release(p: subprocess.Popen) -> None:
    """Let a process from ``start`` go on."""
    assert p.stdin is not None
    p.stdin.write("go\n")
    p.stdin.close()


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def procs_in(directory: Path) -> list[int]:
    return [int(x) for x in (directory / "cgroup.procs").read_text().split()]


# ---- v1 ---------------------------------------------------------------------------------------------


@needs_v1
def test_v1_uses_every_mounted_hierarchy(make: Factory):
    manager = make("v1")
    mounted = {c for m in MOUNTS for c in m.controllers if c in V1_CONTROLLERS}
    assert set(manager.paths()) == mounted
    assert manager.version == "v1"
    for key, d in manager.paths().items():
        assert d.parent.name == "hutch-cgtest", key


@needs_v1
def test_v1_create_add_kill_destroy(make: Factory, procs: list[subprocess.Popen]):
    manager = make("v1")
    assert not manager.exists()
    manager.create()
    manager.create()  # idempotent
    assert manager.exists()
    assert all(d.is_dir() for d in manager.paths().values())
    p = start(procs, "exec sleep 30")
    manager.add_process(p.pid)
    for d in manager.paths().values():
        assert procs_in(d) == [p.pid]
    assert manager.pids() == [p.pid]
    manager.kill_all()
    assert p.wait(timeout=5) == -signal.SIGKILL
    assert manager.pids() == []
    manager.destroy()
    assert not manager.exists()
    assert not any(d.exists() for d in manager.paths().values())


@needs_v1
def test_v1_cpuset_copied_from_parents(make: Factory):
    manager = make("v1", parent="/hutch-cgtest/deeper")
    manager.create()
    leaf = manager.paths()["cpuset"]
    root = Path("/sys/fs/cgroup/cpuset")
    for f in ("cpuset.cpus", "cpuset.mems"):
        expected = (root / f).read_text().strip()
        assert expected
        assert (leaf / f).read_text().strip() == expected
        assert (leaf.parent / f).read_text().strip() == expected
    manager.destroy()
    for d in set(manager.paths().values()):
        d.parent.rmdir()  # /hutch-cgtest/deeper


@needs_v1
def test_v1_process_tree_is_killed(make: Factory, procs: list[subprocess.Popen]):
    manager = make("v1")
    manager.create()
    p = start(procs, "for i in 1 2 3 4 5; do sleep 30 & done; wait")
    manager.add_process(p.pid)
    release(p)
    wait_for(lambda: len(manager.pids()) == 6)
    family = manager.pids()
    manager.destroy()
    assert p.wait(timeout=5) == -signal.SIGKILL
    assert not manager.exists()
    wait_for(lambda: not any(alive(pid) for pid in family))


@needs_v1
def test_v1_fork_loop_is_killed(make: Factory, procs: list[subprocess.Popen]):
    """Processes that all fork as fast as they can (bounded by pids.max) cannot outrun the frozen kill."""
    manager = make("v1")
    manager.create()
    (manager.paths()["pids"] / "pids.max").write_text("40")
    p = subprocess.Popen([sys.executable, "-c", FORK_BOMB], stdin=subprocess.PIPE, text=True)
    procs.append(p)
    manager.add_process(p.pid)
    release(p)
    wait_for(lambda: len(manager.pids()) >= 20)
    manager.kill_all()
    assert manager.pids() == []
    assert p.wait(timeout=5) == -signal.SIGKILL
    manager.destroy()
    assert not manager.exists()


@needs_v1
def test_v1_other_signal_goes_through_the_freezer(make: Factory, procs: list[subprocess.Popen]):
    manager = make("v1")
    manager.create()
    p = start(procs, "exec sleep 30")
    manager.add_process(p.pid)
    manager.kill_all(signal.SIGTERM)
    assert p.wait(timeout=5) == -signal.SIGTERM
    assert (manager.paths()["freezer"] / "freezer.state").read_text().strip() == "THAWED"


@needs_v1
def test_v1_add_process_zero_is_the_caller(make: Factory):
    manager = make("v1")
    manager.create()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: join, report, then wait to be killed
        try:
            os.close(r)
            manager.add_process(0)
            try:
                manager.kill_all()
                os.write(w, b"killed-itself?")
            except HutchError as e:
                os.write(w, str(e).encode())
            time.sleep(30)
        finally:
            os._exit(1)
    os.close(w)
    try:
        message = os.read(r, 4096).decode()
        assert "contains hutch" in message
        assert manager.pids() == [pid]
        manager.destroy()
        assert os.waitpid(pid, 0)[1] == signal.SIGKILL
    finally:
        _close_and_reap(r, pid)


@needs_v1
def test_v1_add_process_zero_moves_every_thread_of_a_threaded_caller(make: Factory):
    """A single-threaded caller joins through ``tasks`` (no global lock); one with more threads must
    still move them all, as a cgroup.procs write does."""
    manager = make("v1")
    manager.create()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: a second thread, then join, report the thread ids, then wait to be killed
        try:
            import threading

            os.close(r)
            release = threading.Event()
            worker = threading.Thread(target=release.wait, daemon=True)
            worker.start()
            manager.add_process(0)
            os.write(w, " ".join(os.listdir("/proc/self/task")).encode())
            time.sleep(30)
        finally:
            os._exit(1)
    os.close(w)
    try:
        tids = sorted(int(t) for t in os.read(r, 4096).decode().split())
        assert len(tids) == 2
        for directory in set(manager.paths().values()):
            assert sorted(int(t) for t in (directory / "tasks").read_text().split()) == tids
        manager.destroy()
        assert os.waitpid(pid, 0)[1] == signal.SIGKILL
    finally:
        _close_and_reap(r, pid)


@needs_v1
def test_v1_destroy_is_idempotent(make: Factory):
    manager = make("v1")
    manager.destroy()  # never created
    manager.create()
    manager.destroy()
    manager.destroy()
    assert not manager.exists()


@needs_v1
def test_v1_destroy_removes_nested_cgroups(make: Factory, procs: list[subprocess.Popen]):
    manager = make("v1")
    manager.create()
    nested = manager.paths()["pids"] / "inner"
    nested.mkdir()
    p = start(procs, "exec sleep 30")
    (nested / "cgroup.procs").write_text(str(p.pid))
    for key, d in manager.paths().items():
        if key != "pids":
            (d / "cgroup.procs").write_text(str(p.pid))
    assert manager.pids() == [p.pid]
    manager.destroy()
    assert p.wait(timeout=5) == -signal.SIGKILL
    assert not manager.exists()


@needs_v1
def test_v1_write_error_names_path_and_value(make: Factory):
    manager = make("v1")
    manager.create()
    with pytest.raises(HutchError, match=r"failed to write '999999999' to /sys/fs/cgroup/.*/cgroup.procs: "):
        manager.add_process(999999999)


@needs_v1
def test_v1_default_parent_is_below_own_cgroup(make: Factory):
    manager = make("v1", parent=None)
    memory = manager.paths()["memory"]
    assert memory == Path("/sys/fs/cgroup/memory", OWN["memory"].lstrip("/"), DEFAULT_PARENT, memory.name)
    manager.create()
    assert memory.name in list_hutch_cgroups()
    manager.destroy()
    assert memory.name not in list_hutch_cgroups()


@needs_v1
def test_list_and_reopen(make: Factory):
    manager = make("v1")
    manager.create()
    name = manager.paths()["pids"].name
    assert name in list_hutch_cgroups(PARENT)
    again = make(manager=reopen({k: str(v) for k, v in manager.paths().items()}))
    assert again.paths() == manager.paths()
    again.destroy()
    assert not manager.exists()
    assert name not in list_hutch_cgroups(PARENT)


# ---- v2 ---------------------------------------------------------------------------------------------


@pytest.fixture
def v2_mountpoint() -> Path:
    return Path(v2_mount(MOUNTS).mountpoint)


@needs_v2
def test_v2_create_add_kill_destroy(make: Factory, procs: list[subprocess.Popen], v2_mountpoint: Path):
    name = f"{PREFIX}{secrets.token_hex(4)}"
    manager = make(manager=V2Manager(v2_mountpoint / PARENT.lstrip("/") / name, v2_mountpoint))
    assert manager.version == "v2"
    manager.create()
    manager.create()
    path = manager.paths()["unified"]
    assert path.is_dir()
    p = start(procs, "exec sleep 30")
    manager.add_process(p.pid)
    assert manager.pids() == [p.pid]
    assert (path / "cgroup.kill").exists()  # kernel 5.14+: the kill goes through it
    manager.kill_all()
    assert p.wait(timeout=5) == -signal.SIGKILL
    assert "populated 0" in (path / "cgroup.events").read_text()
    manager.destroy()
    manager.destroy()
    assert not manager.exists()


@needs_v2
def test_v2_process_tree_and_nested_cgroups(make: Factory, procs: list[subprocess.Popen]):
    manager = make("v2")
    manager.create()
    p = start(procs, "for i in 1 2 3; do sleep 30 & done; wait")
    manager.add_process(p.pid)
    release(p)
    wait_for(lambda: len(manager.pids()) == 4)
    family = manager.pids()
    nested = manager.paths()["unified"] / "inner"
    nested.mkdir()
    (nested / "cgroup.procs").write_text(str(family[-1]))
    manager.destroy()
    assert p.wait(timeout=5) == -signal.SIGKILL
    assert not manager.exists()
    wait_for(lambda: not any(alive(pid) for pid in family))


@needs_v2
def test_v2_other_signal_goes_through_freeze(make: Factory, procs: list[subprocess.Popen]):
    manager = make("v2")
    manager.create()
    p = start(procs, "exec sleep 30")
    manager.add_process(p.pid)
    manager.kill_all(signal.SIGTERM)
    assert p.wait(timeout=5) == -signal.SIGTERM
    assert (manager.paths()["unified"] / "cgroup.freeze").read_text().strip() == "0"


@needs_v2
def test_v2_open_manager_uses_the_cgroup2_mount(make: Factory, v2_mountpoint: Path):
    manager = make("v2")
    assert manager.paths() == {"unified": v2_mountpoint / "hutch-cgtest" / manager.paths()["unified"].name}
    manager.create()
    assert manager.paths()["unified"].name in list_hutch_cgroups(PARENT, version="v2")
    again = reopen(manager.paths())
    again.destroy()
    assert not manager.exists()
