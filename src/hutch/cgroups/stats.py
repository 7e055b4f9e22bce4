"""What a container's cgroup has used, read from the files of whichever cgroup version is in use.

Both readers return the same keys, so nothing above this layer asks which version it is:
``cpu_ns`` (CPU time used, ns), ``memory`` (bytes charged), ``memory_inactive_file`` (page cache the kernel
can drop, which ``docker stats`` subtracts), ``memory_limit`` (``None``: unlimited), ``pids``,
``pids_limit`` (``None``: unlimited), ``io_read``/``io_write`` (bytes), ``oom_kills``.
A file that is missing (controller not mounted or not enabled) leaves its value at 0 / None.
"""

from __future__ import annotations

from pathlib import Path

from hutch.cgroups.base import read_file
from hutch.errors import HutchError

#: v1 reports "no limit" as PAGE_COUNTER_MAX pages; anything this large is no limit.
_V1_NO_LIMIT = 2**62


def _read(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        return read_file(path)
    except HutchError:
        return None


def _int(text: str | None) -> int:
    try:
        return int(text.strip()) if text else 0
    except ValueError:
        return 0


def _limit(text: str | None) -> int | None:
    if text is None or text.strip() == "max":
        return None
    value = _int(text)
    return None if value >= _V1_NO_LIMIT else value


def flat_keyed(text: str | None) -> dict[str, int]:
    """``key value`` lines (memory.stat, cpu.stat, memory.events, memory.oom_control) as a dict."""
    result = {}
    for line in (text or "").splitlines():
        key, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            result[key] = int(value)
    return result


def v1_blkio(text: str | None) -> tuple[int, int]:
    """(read, write) bytes summed over devices from blkio.throttle.io_service_bytes_recursive."""
    read = write = 0
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] == "Read":
            read += int(parts[2])
        elif len(parts) == 3 and parts[1] == "Write":
            write += int(parts[2])
    return read, write


def v2_io(text: str | None) -> tuple[int, int]:
    """(read, write) bytes summed over devices from io.stat (``MAJ:MIN rbytes=N wbytes=N ...``)."""
    read = write = 0
    for line in (text or "").splitlines():
        for field in line.split()[1:]:
            key, _, value = field.partition("=")
            if key == "rbytes":
                read += int(value)
            elif key == "wbytes":
                write += int(value)
    return read, write


def read_v1(dirs: dict[str, Path]) -> dict:
    """The counters of a v1 cgroup (``dirs``: controller -> directory)."""

    def f(controller: str, name: str) -> str | None:
        d = dirs.get(controller)
        return _read(d / name) if d is not None else None

    mem_stat = flat_keyed(f("memory", "memory.stat"))
    io_read, io_write = v1_blkio(f("blkio", "blkio.throttle.io_service_bytes_recursive"))
    return {
        "cpu_ns": _int(f("cpuacct", "cpuacct.usage")),
        "memory": _int(f("memory", "memory.usage_in_bytes")),
        "memory_inactive_file": mem_stat.get("total_inactive_file", 0),
        "memory_limit": _limit(f("memory", "memory.limit_in_bytes")),
        "pids": _int(f("pids", "pids.current")),
        "pids_limit": _limit(f("pids", "pids.max")),
        "io_read": io_read,
        "io_write": io_write,
        "oom_kills": flat_keyed(f("memory", "memory.oom_control")).get("oom_kill", 0),
    }


def read_v2(path: Path) -> dict:
    """The counters of the unified cgroup at ``path``."""
    mem_stat = flat_keyed(_read(path / "memory.stat"))
    io_read, io_write = v2_io(_read(path / "io.stat"))
    return {
        "cpu_ns": flat_keyed(_read(path / "cpu.stat")).get("usage_usec", 0) * 1000,
        "memory": _int(_read(path / "memory.current")),
        "memory_inactive_file": mem_stat.get("inactive_file", 0),
        "memory_limit": _limit(_read(path / "memory.max")),
        "pids": _int(_read(path / "pids.current")),
        "pids_limit": _limit(_read(path / "pids.max")),
        "io_read": io_read,
        "io_write": io_write,
        "oom_kills": flat_keyed(_read(path / "memory.events")).get("oom_kill", 0),
    }
