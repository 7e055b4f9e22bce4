"""The cgroup manager interface and the cgroupfs file helpers both backends share.

Files are read and written with raw ``os.open``/``os.read``/``os.write``: a cgroupfs write is one syscall
whose result is the kernel's verdict, and the hot path (create, add a process, destroy) has no time for text
wrappers. Every failure becomes a ``HutchError`` that names the path and the value written.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

from hutch.errors import HutchError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from hutch.cgroups.devices import DeviceRule


class CgroupManager(ABC):
    """One container's cgroup, in every hierarchy the backend uses."""

    version: str
    #: Whether ``add_process(0)`` from a just-forked (single-threaded) child is cheap, so the child may join
    #: by itself; otherwise its parent moves it while it works (see ``runtime.spawn``).
    cheap_self_join = False

    @abstractmethod
    def create(self) -> None:
        """Create the cgroup (and missing parents) in every hierarchy; idempotent."""

    @abstractmethod
    def add_process(self, pid: int) -> None:
        """Move ``pid`` (0: the calling process) into the cgroup in every hierarchy."""

    @abstractmethod
    def pids(self) -> list[int]:
        """Processes in the cgroup and in any cgroups nested below it."""

    @abstractmethod
    def kill_all(self, sig: int = signal.SIGKILL, timeout: float = 5.0) -> None:
        """Signal every process; for SIGKILL, wait until the cgroup is empty or ``timeout`` passes."""

    @abstractmethod
    def destroy(self, timeout: float = 5.0) -> None:
        """Kill what is left and remove the cgroup everywhere; a missing cgroup is fine."""

    @abstractmethod
    def exists(self) -> bool:
        """Whether the cgroup directory exists in any hierarchy."""

    @abstractmethod
    def paths(self) -> dict[str, Path]:
        """Hierarchy (v1 controller, ``name=systemd``) or ``unified`` (v2) -> cgroup directory."""

    @abstractmethod
    def freeze(self, frozen: bool) -> None:
        """Freeze (``pause``) or thaw (``unpause``) every process; returns once the kernel says it is done."""

    def set_devices(self, rules: list[DeviceRule] | tuple[DeviceRule, ...]) -> None:
        """Restrict the devices the cgroup's processes may open or mknod to what ``rules`` allow.

        ``rules`` are read in order from deny-all, as runc reads them (``hutch.cgroups.devices``). Call it
        after ``create()`` and before any process joins, so no process ever runs unrestricted.
        """
        raise HutchError(f"the {type(self).__name__} cgroup backend cannot restrict devices")

    # --- resource limits and usage (hutch.cgroups.limits, hutch.cgroups.stats) --------------------------

    def set_resources(self, resources: dict) -> None:
        """Apply OCI ``linux.resources`` limits (memory, cpu, pids, blockIO; ``devices`` is ``set_devices``).

        Called after ``create()`` and before any process joins, and again by ``hutch update``.
        """
        raise HutchError(f"the {type(self).__name__} cgroup backend cannot set resource limits")

    def stats(self) -> dict:
        """Usage counters with the same keys on every version (see ``hutch.cgroups.stats``)."""
        raise HutchError(f"the {type(self).__name__} cgroup backend has no usage counters")

    def oom_kills(self) -> int:
        """How many of the cgroup's processes the kernel's OOM killer has killed (0 if unknown)."""
        return 0


def write_raw(path: Path | str, data: str) -> None:
    """Write ``data`` in one ``write(2)``; raises ``OSError`` so callers can act on the errno."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, data.encode())
    finally:
        os.close(fd)


def write_file(path: Path | str, data: str) -> None:
    """Write ``data`` to a cgroup file, as a ``HutchError`` naming the path and the value on failure."""
    try:
        write_raw(path, data)
    except OSError as e:
        raise HutchError(f"failed to write {data!r} to {path}: {e.strerror}") from e


def read_file(path: Path | str) -> str:
    """The whole content of a cgroup file (cgroup.procs can exceed one page)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise HutchError(f"failed to read {path}: {e.strerror}") from e
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    except OSError as e:
        raise HutchError(f"failed to read {path}: {e.strerror}") from e
    finally:
        os.close(fd)
    return b"".join(chunks).decode()


def read_pids(directory: Path) -> list[int]:
    """PIDs in ``directory``/cgroup.procs; none if the cgroup does not exist (already removed)."""
    try:
        return [int(line) for line in read_file(directory / "cgroup.procs").split()]
    except HutchError as e:
        if isinstance(e.__cause__, FileNotFoundError):
            return []
        raise


def subtree(directory: Path) -> list[Path]:
    """``directory`` and every cgroup below it, parents before children; empty if it does not exist."""
    found = [directory]
    for parent in found:
        try:
            with os.scandir(parent) as entries:
                found.extend(Path(e.path) for e in entries if e.is_dir(follow_symlinks=False))
        except FileNotFoundError:
            if parent == directory:
                return []
    return found


def tree_pids(directory: Path) -> list[int]:
    """PIDs in ``directory`` and in the cgroups a container may have nested below it."""
    return [pid for d in subtree(directory) for pid in read_pids(d)]


def refuse_self(pids: list[int], directory: Path) -> None:
    """Refuse to freeze or kill a cgroup hutch itself has joined: it would freeze or kill the caller."""
    me = os.getpid()
    if me in pids:
        raise HutchError(f"refusing to kill the processes of {directory}: it contains hutch (pid {me})")


def signal_pids(pids: list[int], sig: int) -> None:
    """Send ``sig`` to each pid; those that already exited are skipped."""
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def wait_for(condition: Callable[[], bool], deadline: float) -> bool:
    """Poll ``condition`` with short, growing sleeps until it holds or ``deadline`` (monotonic) passes."""
    delay = 0.0005
    while not condition():
        now = time.monotonic()
        if now >= deadline:
            return False
        time.sleep(min(delay, deadline - now))
        delay = min(delay * 2, 0.02)
    return True


def make_dir(directory: Path) -> None:
    """``mkdir -p`` for a cgroup: the common case (parent exists) costs a single mkdir.

    A parent can vanish between our mkdirs (another hutch removing the empty default parent, see
    ``remove_default_parent``), so a missing parent is retried a few times.
    """
    for attempt in range(5):
        try:
            os.mkdir(directory)
            return
        except FileExistsError:
            return
        except FileNotFoundError:
            try:
                os.makedirs(directory, exist_ok=True)
                return
            except FileNotFoundError as e:
                if attempt == 4:
                    raise HutchError(f"failed to create cgroup {directory}: {e.strerror}") from e
            except OSError as e:
                raise HutchError(f"failed to create cgroup {directory}: {e.strerror}") from e
        except OSError as e:
            raise HutchError(f"failed to create cgroup {directory}: {e.strerror}") from e


#: The parent group of containers without ``--cgroup-parent``. HUTCH_CGROUP_PARENT replaces it, as a
#: default ``--cgroup-parent`` for a whole environment (the test suite gives each run its own).
DEFAULT_PARENT = os.environ.get("HUTCH_CGROUP_PARENT") or "hutch"


def remove_default_parent(directory: Path, default_name: str = DEFAULT_PARENT.rsplit("/", 1)[-1]) -> None:
    """Remove the default parent group once its last container group is gone.

    Only a parent with hutch's default name is touched (a ``--cgroup-parent`` may be the user's own); the
    kernel refuses to remove a parent that still has children (EBUSY), which makes this safe against a
    concurrent create.
    """
    parent = directory.parent
    if parent.name != default_name:
        return
    try:
        os.rmdir(parent)
    except OSError as e:
        if e.errno not in (errno.EBUSY, errno.ENOTEMPTY, errno.ENOENT):
            raise HutchError(f"failed to remove cgroup {parent}: {e.strerror}") from e


def remove_tree(directory: Path, deadline: float) -> None:
    """Remove ``directory`` and the cgroups nested in it, children first; a missing cgroup is fine."""
    try:
        os.rmdir(directory)  # the common case: a leaf that is already empty; no directory scan
        return
    except FileNotFoundError:
        return
    except OSError as e:
        if e.errno != errno.EBUSY:
            raise HutchError(f"failed to remove cgroup {directory}: {e.strerror}") from e
    for d in reversed(subtree(directory)):
        _rmdir(d, deadline)


def _rmdir(directory: Path, deadline: float) -> None:
    """``rmdir`` a cgroup, retrying while the kernel says busy until ``deadline``.

    A cgroup whose last process was just killed stays busy for a moment (exit is asynchronous), so EBUSY
    is retried with short, growing sleeps before it is reported.
    """
    delay = 0.0005
    while True:
        try:
            os.rmdir(directory)
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY or time.monotonic() >= deadline:
                raise HutchError(f"failed to remove cgroup {directory}: {e.strerror}") from e
        time.sleep(delay)
        delay = min(delay * 2, 0.02)


def keyed_count(path: Path, key: str) -> int:
    """The value of ``key`` in a flat-keyed cgroup file (``key value`` lines); 0 if absent or unreadable.

    Kept here rather than in ``stats`` because ``finish`` reads the OOM count of every container on the
    ``hutch run`` path, which must not import the stats module.
    """
    try:
        text = read_file(path)
    except HutchError:
        return 0
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return 0
