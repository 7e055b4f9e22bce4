"""cgroup v2 backend: one directory in the unified hierarchy.

The manager takes the hierarchy's mountpoint as a parameter (``/sys/fs/cgroup`` on a pure v2 host,
``/sys/fs/cgroup/unified`` on a hybrid one) because enabling controllers walks every level from there.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from pathlib import Path

from hutch.cgroups.base import (
    CgroupManager,
    keyed_count,
    read_file,
    refuse_self,
    remove_default_parent,
    remove_tree,
    signal_pids,
    tree_pids,
    wait_for,
    write_file,
    write_raw,
)
from hutch.errors import HutchError, InvalidArgument

TYPE_CHECKING = False
if TYPE_CHECKING:
    from hutch.cgroups.devices import DeviceRule

#: How long to wait for ``frozen 1`` in cgroup.events before signalling anyway.
FREEZE_TIMEOUT = 1.0


class V2Manager(CgroupManager):
    """A container's cgroup at ``path`` in the cgroup2 hierarchy mounted at ``mountpoint``."""

    version = "v2"

    def __init__(self, path: Path, mountpoint: Path = Path("/sys/fs/cgroup")) -> None:
        self._path = Path(path)
        self._mountpoint = Path(mountpoint)
        if self._mountpoint not in self._path.parents:
            raise InvalidArgument(f"cgroup {self._path} is not below the cgroup2 mount {self._mountpoint}")

    def create(self) -> None:
        """mkdir (with missing parents) and enable the available controllers down to the parent.

        If enabling fails for a reason other than the no-internal-processes rule, the directories this
        call created are removed again before the error is raised.
        """
        created = _make_dirs(self._path, self._mountpoint)
        try:
            self._enable_controllers()
        except BaseException:
            _remove_dirs(created)
            raise

    def add_process(self, pid: int) -> None:
        """Write ``pid`` to cgroup.procs (0: the writing process)."""
        write_file(self._path / "cgroup.procs", str(pid))

    def pids(self) -> list[int]:
        """Processes in the cgroup and in cgroups nested below it."""
        return tree_pids(self._path)

    def kill_all(self, sig: int = signal.SIGKILL, timeout: float = 5.0) -> None:
        """SIGKILL through cgroup.kill when the kernel has it (5.14+); else freeze, signal, thaw, repeat."""
        deadline = time.monotonic() + timeout
        if not self._populated():
            return
        refuse_self(self.pids(), self._path)
        if sig == signal.SIGKILL and (self._path / "cgroup.kill").exists():
            write_file(self._path / "cgroup.kill", "1")
        else:
            while pids := self.pids():
                if time.monotonic() >= deadline:
                    raise HutchError(f"processes {pids} in {self._path} survived signal {sig}")
                self._signal_frozen(sig)
                if sig != signal.SIGKILL:
                    return
                wait_for(lambda: not self._populated(), min(deadline, time.monotonic() + 0.5))
        if not wait_for(lambda: not self._populated(), deadline):
            raise HutchError(f"processes {self.pids()} in {self._path} survived signal {sig}")

    def destroy(self, timeout: float = 5.0) -> None:
        """Kill what is left, then rmdir the cgroup (nested cgroups first)."""
        deadline = time.monotonic() + timeout
        self.kill_all(signal.SIGKILL, timeout)
        remove_tree(self._path, deadline)
        remove_default_parent(self._path)

    def freeze(self, frozen: bool) -> None:
        control = self._path / "cgroup.freeze"
        if not control.exists():
            raise HutchError("pausing needs cgroup.freeze (Linux 5.2 or later)")
        write_file(control, "1" if frozen else "0")
        wanted = "1" if frozen else "0"
        if not wait_for(
            lambda: _events(self._path).get("frozen") == wanted, time.monotonic() + FREEZE_TIMEOUT
        ):
            raise HutchError(f"{self._path} did not {'freeze' if frozen else 'thaw'}")

    def exists(self) -> bool:
        """Whether the cgroup directory exists."""
        return self._path.is_dir()

    def paths(self) -> dict[str, Path]:
        """``{"unified": directory}``."""
        return {"unified": self._path}

    def set_devices(self, rules: list[DeviceRule] | tuple[DeviceRule, ...]) -> None:
        """Compile the rules to a BPF_PROG_TYPE_CGROUP_DEVICE program and attach it to the cgroup.

        cgroup v2 has no devices controller: the kernel runs the attached program on every open and mknod
        of a device node. A filter set earlier on this cgroup is replaced (see ``bpf.set_device_filter``).
        """
        from hutch.cgroups import bpf
        from hutch.cgroups.devices import assemble, compile_filter

        program = assemble(compile_filter(rules))
        try:
            bpf.set_device_filter(str(self._path), program)
        except OSError as e:
            raise HutchError(f"failed to set the device filter of cgroup {self._path}: {e.strerror}") from e

    def set_resources(self, resources: dict) -> None:
        """Write the limits into the unified cgroup (``hutch.cgroups.limits.apply_v2``)."""
        from hutch.cgroups.limits import apply_v2

        apply_v2(self._path, resources)

    def stats(self) -> dict:
        """cpu.stat, memory, pids and io.stat counters (``hutch.cgroups.stats.read_v2``)."""
        from hutch.cgroups.stats import read_v2

        return read_v2(self._path)

    def oom_kills(self) -> int:
        """``oom_kill`` of memory.events: kills in this cgroup and the cgroups below it."""
        return keyed_count(self._path / "memory.events", "oom_kill")

    def _populated(self) -> bool:
        """Whether any process is in the cgroup or below it (cgroup.events), False if it is gone."""
        return _events(self._path).get("populated") == "1"

    def _enable_controllers(self) -> None:
        """Enable, on every level from the mount down to the parent, the controllers it has available."""
        levels = [self._mountpoint]
        for part in self._path.relative_to(self._mountpoint).parts[:-1]:
            levels.append(levels[-1] / part)
        for level in levels:
            available = read_file(level / "cgroup.controllers").split()
            if not available:
                return  # nothing below can have a controller its parent lacks
            enabled = set(read_file(level / "cgroup.subtree_control").split())
            missing = " ".join(f"+{c}" for c in available if c not in enabled)
            if missing:
                _enable(level / "cgroup.subtree_control", missing)

    def _signal_frozen(self, sig: int) -> None:
        """Send ``sig`` to every process, with the cgroup frozen while the list is read and signalled."""
        freeze = self._path / "cgroup.freeze"
        if not freeze.exists():
            signal_pids(self.pids(), sig)
            return
        # why: reading cgroup.procs and then signalling races a fork loop -- children forked after the
        # read escape. Frozen tasks cannot fork, so the list read while frozen is complete.
        write_file(freeze, "1")
        try:
            wait_for(lambda: _events(self._path).get("frozen") == "1", time.monotonic() + FREEZE_TIMEOUT)
            signal_pids(self.pids(), sig)
        finally:
            write_file(freeze, "0")


def _enable(subtree_control: Path, data: str) -> None:
    """Write ``+c1 +c2 ...`` in one write: the kernel applies all of it or none, so nothing is half-done."""
    try:
        write_raw(subtree_control, data)
    except OSError as e:
        # why: a non-root cgroup that holds processes cannot enable domain controllers for its children
        # (the no-internal-processes rule, EBUSY). Children then simply go without them.
        if e.errno != errno.EBUSY:
            raise HutchError(f"failed to write {data!r} to {subtree_control}: {e.strerror}") from e


def _make_dirs(path: Path, mountpoint: Path) -> list[Path]:
    """``mkdir -p`` below ``mountpoint``; returns the directories this call created, outermost first."""
    missing = []
    d = path
    while d != mountpoint and not d.is_dir():
        missing.append(d)
        d = d.parent
    created: list[Path] = []
    for d in reversed(missing):
        try:
            os.mkdir(d)
        except FileExistsError:
            continue
        except OSError as e:
            _remove_dirs(created)
            raise HutchError(f"failed to create cgroup {d}: {e.strerror}") from e
        created.append(d)
    return created


def _remove_dirs(created: list[Path]) -> None:
    """Undo ``_make_dirs``, innermost first; a directory someone else now uses is left alone."""
    for d in reversed(created):
        try:
            os.rmdir(d)
        except OSError:
            pass


def _events(directory: Path) -> dict[str, str]:
    """cgroup.events as a dict (``populated``, ``frozen``); empty if the cgroup is gone."""
    try:
        text = read_file(directory / "cgroup.events")
    except HutchError as e:
        if isinstance(e.__cause__, FileNotFoundError):
            return {}
        raise
    return dict(line.split(" ", 1) for line in text.splitlines() if " " in line)
