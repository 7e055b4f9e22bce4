"""Cgroups: one manager interface (``CgroupManager``), v1 and v2 backends chosen at run time.

Which version, and where the hierarchies are, comes from /proc/self/mountinfo, read once per process and
cached. Why mountinfo rather than statfs(2) of the mountpoint: ``os.statvfs`` has no ``f_type``, statfs
needs ctypes (an import that costs milliseconds), and the v1 backend needs the list of controller
mounts anyway -- one read of a small file answers both. The cgroup hutch runs in (/proc/self/cgroup) is
cached the same way: it is where hutch started, so the default parent does not move if hutch later
joins a container's cgroup.

Containers go under a parent cgroup: by default ``hutch`` below the cgroup hutch runs in, per hierarchy;
a relative ``--cgroup-parent`` is also taken below that cgroup, an absolute one from the hierarchy root.
"""

from __future__ import annotations

import os
from pathlib import Path

from hutch.cgroups.base import DEFAULT_PARENT, CgroupManager
from hutch.cgroups.v1 import V1_CONTROLLERS, V1Manager
from hutch.cgroups.v2 import V2Manager
from hutch.errors import HutchError, InvalidArgument

__all__ = [
    "CgroupManager",
    "Mount",
    "V1Manager",
    "V2Manager",
    "detect",
    "list_hutch_cgroups",
    "managers_for",
    "open_manager",
    "reopen",
]

CGROUP2_SUPER_MAGIC = 0x63677270  # what statfs(2) would report for a cgroup2 mount
DEFAULT_MOUNTPOINT = "/sys/fs/cgroup"
UNIFIED = "unified"  # key of the cgroup2 hierarchy in paths() and in parsed /proc/self/cgroup

#: Every v1 controller the kernel has; other super options of a cgroup mount (rw, xattr...) are not.
_KNOWN_V1 = frozenset(
    {
        *("cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids"),
        *("net_cls", "net_prio", "perf_event", "hugetlb", "rdma", "misc"),
    }
)


class Mount:
    """A cgroup filesystem mount: where, which subtree of the hierarchy, and (v1) its controllers."""

    __slots__ = ("mountpoint", "root", "fstype", "controllers")

    def __init__(self, mountpoint: str, root: str, fstype: str, controllers: tuple[str, ...] = ()) -> None:
        self.mountpoint = mountpoint
        self.root = root
        self.fstype = fstype
        self.controllers = controllers

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mount) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"Mount({self.mountpoint!r}, {self.root!r}, {self.fstype!r}, {self.controllers!r})"

    def _key(self) -> tuple[str, str, str, tuple[str, ...]]:
        return (self.mountpoint, self.root, self.fstype, self.controllers)


def parse_mountinfo(text: str) -> list[Mount]:
    """The cgroup and cgroup2 mounts in mountinfo ``text``, in mount order (see proc(5))."""
    mounts = []
    for line in text.splitlines():
        if " - cgroup" not in line:
            continue
        left, _, right = line.partition(" - ")
        fields, (fstype, _source, options) = left.split(), right.split(" ", 2)
        if fstype == "cgroup":
            opts = options.split(",")
            controllers = tuple(o for o in opts if o in _KNOWN_V1 or o.startswith("name="))
        elif fstype == "cgroup2":
            controllers = ()
        else:
            continue
        mounts.append(Mount(_unescape(fields[4]), _unescape(fields[3]), fstype, controllers))
    return mounts


def _unescape(field: str) -> str:
    """Undo mountinfo's octal escapes (``\\040`` for a space)."""
    if "\\" not in field:
        return field
    return field.encode().decode("unicode_escape").encode("latin-1").decode()


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """/proc/<pid>/cgroup ``text`` as hierarchy -> path: each v1 controller, ``name=...``, ``unified``."""
    result = {}
    for line in text.splitlines():
        _hid, controllers, path = line.split(":", 2)
        for key in controllers.split(",") if controllers else (UNIFIED,):
            result[key] = path
    return result


def detect_version(mounts: list[Mount], mountpoint: str = DEFAULT_MOUNTPOINT) -> str:
    """``v2`` if ``mountpoint`` is a cgroup2 mount, ``v1`` if v1 hierarchies are mounted right below it."""
    mountpoint = mountpoint.rstrip("/") or "/"
    at = [m for m in mounts if m.mountpoint == mountpoint]
    if at and at[-1].fstype == "cgroup2":  # the last mount on a mountpoint is the visible one
        return "v2"
    if any(m.fstype == "cgroup" and os.path.dirname(m.mountpoint) == mountpoint for m in mounts):
        return "v1"
    raise HutchError(f"no cgroup filesystem is mounted at {mountpoint}")


def cgroup_dir(mount: Mount, own: str, parent: str | None, name: str) -> Path:
    """Directory of cgroup ``name`` under ``parent`` in the hierarchy at ``mount``.

    ``own`` is the cgroup hutch runs in as /proc/self/cgroup spells it (from the hierarchy's root); the
    mount may show only a subtree (``mount.root``), so it is made relative to that first.
    """
    _check_name(name)
    parent = DEFAULT_PARENT if parent is None else parent
    _check_parent(parent)
    rel = parent if parent.startswith("/") else f"{_visible(own, mount.root)}/{parent}"
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    return Path(mount.mountpoint, *parts, name)


def _visible(own: str, root: str) -> str:
    """``own`` relative to the mount's root; the mount's root itself if ``own`` is outside it."""
    if root == "/":
        return own
    if own == root or own.startswith(root.rstrip("/") + "/"):
        return own[len(root.rstrip("/")) :] or "/"
    return "/"


def _check_name(name: str) -> None:
    """A container's cgroup name is one path component."""
    if not name or "/" in name or name in (".", "..") or "\0" in name:
        raise InvalidArgument(f"invalid cgroup name {name!r}: must be a single path component")


def _check_parent(parent: str) -> None:
    """A cgroup parent must not climb out of the hierarchy."""
    if ".." in parent.split("/") or "\0" in parent:
        raise InvalidArgument(f"invalid cgroup parent {parent!r}: '..' is not allowed")


_cache: tuple[list[Mount], dict[str, str]] | None = None


def _state() -> tuple[list[Mount], dict[str, str]]:
    """(cgroup mounts, the cgroup hutch started in per hierarchy), read once per process."""
    global _cache
    if _cache is None:
        with open("/proc/self/mountinfo") as f:
            mounts = parse_mountinfo(f.read())
        with open("/proc/self/cgroup") as f:
            own = parse_proc_cgroup(f.read())
        _cache = (mounts, own)
    return _cache


def detect(mountpoint: str = DEFAULT_MOUNTPOINT) -> str:
    """``v2`` if ``mountpoint`` is a cgroup2 mount, ``v1`` if it is a tmpfs with v1 hierarchies below."""
    return detect_version(_state()[0], mountpoint)


def v1_dirs(mounts: list[Mount], own: dict[str, str], name: str, parent: str | None) -> dict[str, Path]:
    """Controller -> cgroup directory for every v1 hierarchy in ``V1_CONTROLLERS`` that is mounted."""
    dirs: dict[str, Path] = {}
    for m in mounts:
        if m.fstype != "cgroup" or not any(c in V1_CONTROLLERS for c in m.controllers):
            continue
        d = cgroup_dir(m, own.get(m.controllers[0], "/"), parent, name)
        for c in m.controllers:
            if c in V1_CONTROLLERS:
                dirs.setdefault(c, d)  # a hierarchy mounted twice: the first mount is used
    return dirs


def v2_mount(mounts: list[Mount]) -> Mount:
    """The cgroup2 mount to use: /sys/fs/cgroup on a v2 host, else the first (hybrid: .../unified)."""
    v2 = [m for m in mounts if m.fstype == "cgroup2"]
    if not v2:
        raise HutchError("no cgroup2 filesystem is mounted")
    return next((m for m in v2 if m.mountpoint == DEFAULT_MOUNTPOINT), v2[0])


def open_manager(name: str, parent: str | None = None, version: str | None = None) -> CgroupManager:
    """The manager for container cgroup ``name``; nothing is created until ``create()``.

    ``version`` (``v1``/``v2``) defaults to what ``detect()`` finds; forcing ``v2`` on a hybrid host uses
    the cgroup2 mount at /sys/fs/cgroup/unified.
    """
    mounts, own = _state()
    version = version or detect_version(mounts)
    if version == "v2":
        m = v2_mount(mounts)
        return V2Manager(cgroup_dir(m, own.get(UNIFIED, "/"), parent, name), Path(m.mountpoint))
    if version == "v1":
        return V1Manager(v1_dirs(mounts, own, name, parent))
    raise InvalidArgument(f"invalid cgroup version {version!r}: expected 'v1' or 'v2'")


def reopen(paths: dict[str, str] | dict[str, Path]) -> CgroupManager:
    """The manager for a cgroup recorded earlier as ``manager.paths()`` (e.g. by another hutch process).

    The default parent depends on the cgroup the calling process runs in, so a later process must not
    recompute it: record ``paths()`` with the container and reopen from that.
    """
    if set(paths) == {UNIFIED}:
        path = Path(paths[UNIFIED])
        mounts = [m for m in _state()[0] if m.fstype == "cgroup2" and Path(m.mountpoint) in path.parents]
        if not mounts:
            raise HutchError(f"{path} is not below a cgroup2 mount")
        return V2Manager(path, Path(max((m.mountpoint for m in mounts), key=len)))
    return V1Manager({k: Path(v) for k, v in paths.items()})


def list_hutch_cgroups(parent: str | None = None, version: str | None = None) -> list[str]:
    """Names of the cgroups under ``parent`` (default: hutch's) in any hierarchy, sorted."""
    parents = {d.parent for d in open_manager("x", parent, version).paths().values()}
    names: set[str] = set()
    for d in parents:
        try:
            with os.scandir(d) as entries:
                names.update(e.name for e in entries if e.is_dir(follow_symlinks=False))
        except FileNotFoundError:
            pass
    return sorted(names)


def managers_for(dirs: set[Path] | list[Path]) -> list[CgroupManager]:
    """Managers for cgroup directories found on disk (not recorded): one v1 manager over those in v1
    hierarchies, keyed by each hierarchy's controllers so it freezes before killing, and one v2 manager
    per directory in a cgroup2 hierarchy. Directories outside every cgroup mount are refused."""
    mounts = _state()[0]
    v1: dict[str, Path] = {}
    managers: list[CgroupManager] = []
    for d in sorted(Path(d) for d in dirs):
        inside = [m for m in mounts if Path(m.mountpoint) in d.parents]
        if not inside:
            raise HutchError(f"{d} is not below a cgroup mount")
        m = max(inside, key=lambda m: len(m.mountpoint))
        if m.fstype == "cgroup2":
            managers.append(V2Manager(d, Path(m.mountpoint)))
        else:
            v1.update({c: d for c in m.controllers or ("none",)})
    if v1:
        managers.insert(0, V1Manager(v1))
    return managers
