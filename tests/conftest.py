"""Shared fixtures: a private hutch root per test, a busybox image built offline, and a leak check.

The leak check runs after every test that uses a hutch root, pass or fail: any mount, cgroup or process the
test left behind fails it (and is cleaned up, so one leak does not cascade into every later test).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "src"
sys.path.insert(0, str(REPO / "tools"))
sys.path.insert(0, str(REPO / "tests"))  # shared helpers such as ptysession
sys.path.insert(0, str(SRC))

# Every run of the suite puts its containers' cgroups under a parent of its own, so the leak check below
# sees only this run's (suites of other checkouts may run on the same machine at the same time).
os.environ.setdefault("HUTCH_CGROUP_PARENT", f"hutch-test-{os.getpid()}")


def _mounts_under(prefix: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p.startswith(prefix)]


def _hutch_cgroups() -> list[str]:
    from hutch.cgroups import list_hutch_cgroups

    try:
        return list_hutch_cgroups()
    except Exception:  # noqa: BLE001 - no cgroup support at all means nothing to leak
        return []


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    found.append(int(entry))
        except OSError:
            continue
    return found


def _teardown_networks(root: Path) -> None:
    """The bridges and nft table a test root made: hutch keeps them for the root's next run, a test's root
    has none (networking, issue 6)."""
    if not (root / "hutch.db").exists():
        return
    import sqlite3

    from hutch.db import Database
    from hutch.network.manager import NetworkManager

    db = Database(root / "hutch.db")
    try:
        NetworkManager(root, db).teardown()
    except sqlite3.DatabaseError:
        pass  # a test that broke its database on purpose made no network either
    finally:
        db.close()


@dataclass
class Result:
    """A finished hutch command."""

    code: int
    out: str
    err: str


class Hutch:
    """Runs the real ``hutch`` CLI (a subprocess, as a user would) against a private root."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.env = dict(os.environ, PYTHONPATH=str(SRC))

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "hutch", "--root", str(self.root), *args]

    def __call__(self, *args: str, input: str | None = None, timeout: float = 60) -> Result:
        proc = subprocess.run(
            self.argv(*args),
            input=input,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        return Result(proc.returncode, proc.stdout, proc.stderr)

    def ok(self, *args: str, **kwargs) -> str:
        result = self(*args, **kwargs)
        assert result.code == 0, f"hutch {' '.join(args)} exited {result.code}: {result.err}"
        return result.out


@pytest.fixture(scope="session", autouse=True)
def _sweep_networks_of_every_root(tmp_path_factory):
    """At the end of the run, the bridges and nft tables of every hutch root the tests made, also roots
    outside ``hutch_root`` (registry pulls into fresh roots, helpers' private roots): a bridge outlives its
    root otherwise, and a host has only so many address pools."""
    yield
    base = tmp_path_factory.getbasetemp()
    for db in base.glob("**/hutch.db"):
        _teardown_networks(db.parent)


@pytest.fixture(scope="session")
def busybox_tar(tmp_path_factory) -> Path:
    """A real rootfs tarball from Debian's busybox-static, built offline once per session."""
    from busybox_rootfs import build_rootfs_tar

    path = tmp_path_factory.mktemp("busybox") / "busybox.tar"
    build_rootfs_tar(path)
    return path


@pytest.fixture
def hutch_root(tmp_path) -> Path:
    """A private hutch root, checked for leaks after the test."""
    root = tmp_path / "root"
    cgroups_before = set(_hutch_cgroups())
    yield root
    leaks = []
    for pid in _processes_mentioning(str(root)):
        leaks.append(f"process {pid}")
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    for point in sorted(_mounts_under(str(tmp_path)), reverse=True):
        leaks.append(f"mount {point}")
        subprocess.run(["umount", "-l", point], check=False)
    _teardown_networks(root)
    new_cgroups = set(_hutch_cgroups()) - cgroups_before
    if new_cgroups:
        leaks.extend(f"cgroup {name}" for name in sorted(new_cgroups))
        from hutch.cgroups import open_manager

        for name in new_cgroups:
            try:
                open_manager(name).destroy()
            except Exception:  # noqa: BLE001
                pass
    assert not leaks, f"test leaked: {', '.join(leaks)}"


@pytest.fixture
def hutch(hutch_root) -> Hutch:
    return Hutch(hutch_root)


@pytest.fixture
def busybox(hutch, busybox_tar) -> str:
    """A hutch root with the busybox image imported as ``busybox:latest``."""
    hutch.ok("import", str(busybox_tar), "busybox")
    return "busybox"
