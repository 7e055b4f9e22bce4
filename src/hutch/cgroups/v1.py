"""cgroup v1 backend: one directory per mounted controller hierarchy.

Controllers mounted together (``cpu,cpuacct``) share one directory, which is created, joined and removed
once. Killing goes through the freezer hierarchy when it is mounted.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from hutch.cgroups.base import (
    CgroupManager,
    keyed_count,
    make_dir,
    read_file,
    refuse_self,
    remove_default_parent,
    remove_tree,
    signal_pids,
    tree_pids,
    wait_for,
    write_file,
)
from hutch.errors import HutchError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from hutch.cgroups.devices import DeviceRule

#: The hierarchies a container joins: the resource controllers plus systemd's named hierarchy.
V1_CONTROLLERS = ("cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids", "name=systemd")

#: How long to wait for ``freezer.state`` to reach FROZEN before signalling anyway.
FREEZE_TIMEOUT = 1.0


class V1Manager(CgroupManager):
    """A container's cgroup in each v1 hierarchy given by ``dirs`` (controller name -> directory)."""

    version = "v1"
    cheap_self_join = True  # through tasks: see add_process

    def __init__(self, dirs: dict[str, Path]) -> None:
        if not dirs:
            raise HutchError("no cgroup v1 controller hierarchy is mounted")
        self._dirs = dict(dirs)
        self._unique = list(dict.fromkeys(self._dirs.values()))
        self._cpuset = self._dirs.get("cpuset")
        self._freezer = self._dirs.get("freezer")
        source = self._dirs.get("pids") or self._dirs.get("memory") or self._unique[0]
        # The pid list comes from one hierarchy, plus the freezer's (the one kill_all freezes) if separate.
        self._pid_dirs = list(dict.fromkeys(d for d in (source, self._freezer) if d is not None))

    def create(self) -> None:
        """mkdir in every hierarchy; in cpuset, also give the new cgroups their parents' cpus and mems."""
        for d in self._unique:
            make_dir(d)
            if d == self._cpuset:
                _fill_cpuset(d)

    def add_process(self, pid: int) -> None:
        """Write ``pid`` to cgroup.procs in every hierarchy (0: the writing process).

        why ``tasks`` for a single-threaded caller moving itself: a cgroup.procs write takes the kernel's
        global threadgroup lock, and the first write-lock after a quiet spell waits for an RCU grace period
        (15-20 ms here, on the path of every container and microVM start); moving one's own thread skips
        that lock (Linux 6.0+; older kernels take it either way), and with one thread the thread is the
        process. Every caller of ``add_process(0)`` is a child just forked, so it has one thread.
        """
        name = "tasks" if pid == 0 and _single_threaded() else "cgroup.procs"
        for d in self._unique:
            write_file(d / name, str(pid))

    def pids(self) -> list[int]:
        """Processes in the cgroup (pids or memory hierarchy, and freezer), nested cgroups included."""
        if len(self._pid_dirs) == 1:
            return tree_pids(self._pid_dirs[0])
        return sorted({pid for d in self._pid_dirs for pid in tree_pids(d)})

    def kill_all(self, sig: int = signal.SIGKILL, timeout: float = 5.0) -> None:
        """Signal every process with the cgroup frozen; for SIGKILL, repeat until the cgroup is empty."""
        deadline = time.monotonic() + timeout
        while pids := self.pids():
            refuse_self(pids, self._pid_dirs[0])
            if time.monotonic() >= deadline:
                raise HutchError(f"processes {pids} in {self._pid_dirs[0]} survived signal {sig}")
            self._signal_frozen(sig)
            if sig != signal.SIGKILL:
                return
            wait_for(lambda: not self.pids(), min(deadline, time.monotonic() + 0.5))

    def destroy(self, timeout: float = 5.0) -> None:
        """Kill what is left, then rmdir in every hierarchy (nested cgroups first)."""
        deadline = time.monotonic() + timeout
        self.kill_all(signal.SIGKILL, timeout)
        for d in self._unique:
            remove_tree(d, deadline)
            remove_default_parent(d)

    def freeze(self, frozen: bool) -> None:
        if self._freezer is None:
            raise HutchError("pausing needs the freezer cgroup controller, which is not mounted")
        state, wanted = self._freezer / "freezer.state", "FROZEN" if frozen else "THAWED"
        write_file(state, wanted)
        if not wait_for(lambda: read_file(state).strip() == wanted, time.monotonic() + FREEZE_TIMEOUT):
            raise HutchError(f"{state} did not reach {wanted}")

    def exists(self) -> bool:
        """Whether the cgroup directory is still present in any hierarchy."""
        return any(d.is_dir() for d in self._unique)

    def paths(self) -> dict[str, Path]:
        """Controller (or ``name=systemd``) -> directory; co-mounted controllers share a directory."""
        return dict(self._dirs)

    def set_devices(self, rules: list[DeviceRule] | tuple[DeviceRule, ...]) -> None:
        """Write the rules to the devices hierarchy: ``a`` to devices.deny, then each exception to .allow.

        The rules are first reduced to their effect (``DeviceFilter``) so v1 and v2 agree; each rule is one
        ``write(2)`` -- the kernel takes one rule per write -- on devices.allow or devices.deny, each file
        opened once (rules that allow everything write ``a`` to devices.allow instead, exceptions to .deny).
        Writing ``a`` needs a cgroup without children: a fresh one.
        """
        from hutch.cgroups.devices import DeviceFilter

        directory = self._dirs.get("devices")
        if directory is None:
            raise HutchError("cannot restrict devices: the cgroup v1 devices controller is not mounted")
        effective = DeviceFilter(rules).rules()
        fds: dict[bool, int] = {}
        try:
            for rule in effective:
                name = "devices.allow" if rule.allow else "devices.deny"
                data = "a" if rule.type == "a" else rule.cgroup_string()
                try:
                    if rule.allow not in fds:
                        fds[rule.allow] = os.open(directory / name, os.O_WRONLY | os.O_CLOEXEC)
                    os.write(fds[rule.allow], data.encode())
                except OSError as e:
                    raise HutchError(f"failed to write {data!r} to {directory / name}: {e.strerror}") from e
        finally:
            for fd in fds.values():
                os.close(fd)

    def set_resources(self, resources: dict) -> None:
        """Write the limits into each controller's hierarchy (``hutch.cgroups.limits.apply_v1``)."""
        from hutch.cgroups.limits import apply_v1

        apply_v1(self._dirs, resources)

    def stats(self) -> dict:
        """cpuacct, memory, pids and blkio counters (``hutch.cgroups.stats.read_v1``)."""
        from hutch.cgroups.stats import read_v1

        return read_v1(self._dirs)

    def oom_kills(self) -> int:
        """``oom_kill`` of memory.oom_control (kernel 4.13+): kills caused by this cgroup's limit."""
        memory = self._dirs.get("memory")
        return 0 if memory is None else keyed_count(memory / "memory.oom_control", "oom_kill")

    def _signal_frozen(self, sig: int) -> None:
        """Send ``sig`` to every process, with the cgroup frozen while the list is read and signalled."""
        if self._freezer is None:
            signal_pids(self.pids(), sig)
            return
        # why: reading cgroup.procs and then signalling races a fork loop -- children forked after the
        # read escape. Frozen tasks cannot fork, so the list read while frozen is complete; the signal is
        # delivered on thaw, and a task with SIGKILL pending cannot fork any more.
        state = self._freezer / "freezer.state"
        write_file(state, "FROZEN")
        try:
            wait_for(lambda: read_file(state).strip() == "FROZEN", time.monotonic() + FREEZE_TIMEOUT)
            signal_pids(self.pids(), sig)
        finally:
            write_file(state, "THAWED")


def _single_threaded() -> bool:
    """Whether the calling process has exactly one thread (a new thread needs that thread to make it)."""
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


def _fill_cpuset(directory: Path) -> None:
    """Copy cpuset.cpus and cpuset.mems down from the nearest ancestor that has them."""
    # why: a new v1 cpuset cgroup starts with empty cpus and mems (unless its parent sets clone_children),
    # and the kernel refuses to add a task to it (ENOSPC). Walking up from the leaf also repairs parents
    # left empty by an earlier create that was interrupted between mkdir and this copy.
    empty = []
    d = directory
    while not (read_file(d / "cpuset.cpus").strip() and read_file(d / "cpuset.mems").strip()):
        if d.parent == d:
            raise HutchError(f"no cpuset.cpus/cpuset.mems to copy into {directory}")
        empty.append(d)
        d = d.parent
    for d in reversed(empty):
        for name in ("cpuset.cpus", "cpuset.mems"):
            write_file(d / name, read_file(d.parent / name).strip())
