"""OCI ``linux.resources`` (memory, cpu, pids, blockIO) as the cgroupfs writes that apply them.

Pure functions from the spec's values to (file, value) pairs, one list per cgroup version, so the
conversions are unit-tested without a kernel; the managers do the writing (``apply_v1``/``apply_v2``).
The v2 conversions are the ones runc and crun use: ``cpu.weight`` from shares, ``memory.swap.max`` as
memory+swap minus memory, ``cpu.max`` as "quota period", ``io.max`` per MAJ:MIN. Imported only when a
container has limits, by ``hutch update`` and by the tests.
"""

from __future__ import annotations

import errno
from pathlib import Path

from hutch.cgroups.base import read_file, write_raw
from hutch.errors import HutchError

UNLIMITED_V1 = 2**63 - 4096  # what v1 reads back for "no limit" on 4 KiB pages (PAGE_COUNTER_MAX)


def _throttles(block: dict) -> list[tuple[str, dict]]:
    return [("read", t) for t in block.get("throttleReadBpsDevice", [])] + [
        ("write", t) for t in block.get("throttleWriteBpsDevice", [])
    ]


def v1_writes(res: dict) -> list[tuple[str, str, str]]:
    """(controller, file, value) in the order to write them; memory limits first (see ``apply_v1``)."""
    out: list[tuple[str, str, str]] = []
    mem = res.get("memory", {})
    if "limit" in mem:
        out.append(("memory", "memory.limit_in_bytes", str(mem["limit"])))
    if "swap" in mem:
        out.append(("memory", "memory.memsw.limit_in_bytes", str(mem["swap"])))
    if "reservation" in mem:
        out.append(("memory", "memory.soft_limit_in_bytes", str(mem["reservation"])))
    if "disableOOMKiller" in mem:
        out.append(("memory", "memory.oom_control", "1" if mem["disableOOMKiller"] else "0"))
    cpu = res.get("cpu", {})
    if "shares" in cpu:
        out.append(("cpu", "cpu.shares", str(cpu["shares"])))
    if "period" in cpu:
        out.append(("cpu", "cpu.cfs_period_us", str(cpu["period"])))
    if "quota" in cpu:
        out.append(("cpu", "cpu.cfs_quota_us", str(cpu["quota"])))
    for key in ("cpus", "mems"):
        if key in cpu:
            out.append(("cpuset", f"cpuset.{key}", cpu[key]))
    if "limit" in res.get("pids", {}):
        limit = res["pids"]["limit"]
        out.append(("pids", "pids.max", "max" if limit <= 0 else str(limit)))
    block = res.get("blockIO", {})
    if "weight" in block:
        out.append(("blkio", "blkio.weight", str(block["weight"])))
    for direction, t in _throttles(block):
        out.append(
            ("blkio", f"blkio.throttle.{direction}_bps_device", f"{t['major']}:{t['minor']} {t['rate']}")
        )
    return out


def shares_to_weight(shares: int) -> int:
    """cgroup v1 cpu.shares (2..262144) to v2 cpu.weight (1..10000), as runc converts it."""
    return 1 + ((shares - 2) * 9999) // 262142


def blkio_to_io_weight(weight: int) -> int:
    """v1 blkio.weight (10..1000) to v2 io.weight (1..10000), as runc converts it."""
    return 1 + (weight - 10) * 9999 // 990


def v2_writes(res: dict) -> list[tuple[str, str]]:
    """(file, value) for the unified hierarchy, in the order to write them."""
    out: list[tuple[str, str]] = []
    mem = res.get("memory", {})
    if mem.get("disableOOMKiller"):
        raise HutchError("--oom-kill-disable is not supported on cgroup v2 (the kernel has no such switch)")
    limit = mem.get("limit")
    if limit is not None:
        out.append(("memory.max", "max" if limit < 0 else str(limit)))
    if "swap" in mem and limit is not None:
        swap = mem["swap"]
        # v1 limits memory+swap together; v2 limits swap alone
        out.append(("memory.swap.max", "max" if swap < 0 or limit < 0 else str(max(swap - limit, 0))))
    if "reservation" in mem:
        out.append(("memory.low", str(mem["reservation"])))
    cpu = res.get("cpu", {})
    if "shares" in cpu:
        out.append(("cpu.weight", str(shares_to_weight(cpu["shares"]))))
    if "quota" in cpu or "period" in cpu:
        quota = cpu.get("quota", -1)
        out.append(("cpu.max", f"{'max' if quota < 0 else quota} {cpu.get('period', 100_000)}"))
    for key in ("cpus", "mems"):
        if key in cpu:
            out.append((f"cpuset.{key}", cpu[key]))
    if "limit" in res.get("pids", {}):
        limit = res["pids"]["limit"]
        out.append(("pids.max", "max" if limit <= 0 else str(limit)))
    block = res.get("blockIO", {})
    if "weight" in block:
        out.append(("io.weight", f"default {blkio_to_io_weight(block['weight'])}"))
    for direction, t in _throttles(block):
        key = "rbps" if direction == "read" else "wbps"
        out.append(("io.max", f"{t['major']}:{t['minor']} {key}={t['rate']}"))
    return out


def write_limit(path: Path, value: str) -> None:
    """One limit write, with an error that says which limit the kernel refused and why."""
    try:
        write_raw(path, value)
    except FileNotFoundError:
        if not path.parent.is_dir():
            raise HutchError(f"cannot set {path.name}: cgroup {path.parent} does not exist") from None
        raise HutchError(
            f"cannot set {path.name} to {value!r}: this kernel or cgroup has no such file"
            " (controller missing or not enabled)"
        ) from None
    except OSError as e:
        hint = ""
        if e.errno == errno.EBUSY and path.name.startswith("memory"):
            hint = " (usage is above the new limit)"
        raise HutchError(f"failed to write {value!r} to {path}: {e.strerror}{hint}") from e


def apply_v1(dirs: dict[str, Path], res: dict) -> None:
    """Write ``res`` into the v1 hierarchies ``dirs`` (controller -> directory).

    Memory first, ordered so memory.limit_in_bytes never exceeds memory.memsw.limit_in_bytes (the kernel
    refuses that with EINVAL): when the new memory limit is above the current memory+swap limit, or the new
    memory+swap limit is unlimited, memory+swap goes first. A host without swap accounting has no memsw
    file: the swap limit is then dropped, as Docker does.
    """
    writes = v1_writes(res)
    memory = dirs.get("memory")
    if memory is not None:
        writes = _order_memory(memory, writes, res.get("memory", {}))
    for controller, name, value in writes:
        directory = dirs.get(controller)
        if directory is None:
            raise HutchError(f"cannot set {name}: the cgroup v1 {controller} controller is not mounted")
        if (
            name == "blkio.weight"
            and not (directory / name).exists()
            and (directory / "blkio.bfq.weight").exists()
        ):
            name = "blkio.bfq.weight"
        write_limit(directory / name, value)


def _order_memory(memory: Path, writes: list, mem: dict) -> list:
    swap_file = memory / "memory.memsw.limit_in_bytes"
    if "swap" in mem and not swap_file.exists():
        writes = [w for w in writes if w[1] != swap_file.name]
    elif "swap" in mem and "limit" in mem:
        current_swap = int(read_file(swap_file).strip() or UNLIMITED_V1)
        if mem["swap"] < 0 or mem["limit"] > current_swap:
            swap_write = next(w for w in writes if w[1] == swap_file.name)
            writes = [swap_write] + [w for w in writes if w is not swap_write]
    return writes


def apply_v2(path: Path, res: dict) -> None:
    """Write ``res`` into the unified cgroup ``path``; a swap limit on a host without swap accounting
    (no memory.swap.max) is dropped, as runc does."""
    for name, value in v2_writes(res):
        if name == "memory.swap.max" and not (path / name).exists():
            continue
        if name == "io.weight" and (path / "io.bfq.weight").exists():
            name, value = "io.bfq.weight", str(res["blockIO"]["weight"])  # BFQ takes v1's 10..1000 scale
        write_limit(path / name, value)
