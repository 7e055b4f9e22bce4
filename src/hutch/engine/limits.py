"""``hutch update`` and ``hutch stats``: changing a container's limits and reading what it uses.

Both go through the cgroup recorded with the container (``cgroup_of``), so they work the same on cgroup v1
and v2. Imported only by those commands.
"""

from __future__ import annotations

import time

from hutch.engine.containers import Engine, cgroup_of
from hutch.engine.records import Record
from hutch.engine.resources import binary_size, decimal_size, merge_update
from hutch.errors import Conflict


def update(engine: Engine, ref: str, changes: dict) -> Record:
    """Lay ``changes`` (OCI resources, from ``resources.build(update=True)``) over the container's limits;
    apply them to its cgroup when it runs, then record them so a restart keeps them."""
    record = engine.lookup(ref)
    if record.state == "removing":
        raise Conflict(f"cannot update container {record.name}: it is being removed")
    current = record.config["spec"]["linux"]["resources"]
    merged = merge_update({k: v for k, v in current.items() if k != "devices"}, changes)
    if record.state == "running":
        # whole sections, not just the changed keys: memory and memory+swap must be written in an order
        # that depends on both (see cgroups.limits.apply_v1)
        cgroup_of(record).set_resources({key: merged[key] for key in changes})
    merged["devices"] = current.get("devices", [])
    engine.records.set_resources(record.id, merged)
    return record


def host_memory() -> int:
    """MemTotal in bytes: the limit ``stats`` shows for a container without one, as Docker does."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    return 0


def net_io(pid: int) -> tuple[int, int]:
    """(received, sent) bytes over the interfaces of ``pid``'s network namespace, loopback excluded."""
    rx = tx = 0
    try:
        with open(f"/proc/{pid}/net/dev") as f:
            lines = f.read().splitlines()[2:]
    except OSError:
        return 0, 0
    for line in lines:
        name, _, counters = line.partition(":")
        fields = counters.split()
        if name.strip() != "lo" and len(fields) >= 9:
            rx += int(fields[0])
            tx += int(fields[8])
    return rx, tx


def vm_net_io(cid: str) -> tuple[int, int]:
    """A microVM's (received, sent) bytes: its pid is the supervisor, a host process, so its namespace's
    counters would be the host's. Its cards are the TAP devices named after it (``vh<cid 9>...``), and
    what a TAP sends the guest receives."""
    import os

    rx = tx = 0
    for name in os.listdir("/sys/class/net"):
        if name.startswith(f"vh{cid[:9]}"):
            try:
                with open(f"/sys/class/net/{name}/statistics/tx_bytes") as f:
                    rx += int(f.read())
                with open(f"/sys/class/net/{name}/statistics/rx_bytes") as f:
                    tx += int(f.read())
            except (OSError, ValueError):
                continue  # the guest is going away
    return rx, tx


class StatsSampler:
    """Samples the containers' cgroups; CPU % is the CPU time used between two samples over the wall time
    between them (100 % = one core, as ``docker stats``), so the first sample is taken twice."""

    def __init__(self, engine: Engine, refs: list[str], include_stopped: bool = False, interval: float = 1.0):
        self.engine = engine
        self.refs = refs
        self.include_stopped = include_stopped
        self.interval = interval
        self._previous: dict[str, tuple[float, int]] = {}
        self._last = 0.0
        self._memtotal = host_memory()

    def _targets(self) -> list[Record]:
        if self.refs:
            return [self.engine.lookup(ref) for ref in self.refs]
        return self.engine.list(self.include_stopped)

    def sample(self) -> list[dict]:
        """One row per container, Docker's fields (``CPUPerc``, ``MemUsage``...) plus raw numbers."""
        records = self._targets()
        raw = {r.id: self._read(r) for r in records}
        if any(r.id not in self._previous and raw[r.id] for r in records):
            for r in records:
                if raw[r.id]:
                    self._previous[r.id] = (raw[r.id]["_when"], raw[r.id]["cpu_ns"])
            time.sleep(min(self.interval, 0.5))
            raw = {r.id: self._read(r) for r in records}
        self._last = time.monotonic()
        return [self._row(r, raw[r.id]) for r in records]

    def wait(self) -> None:
        """Sleep until ``interval`` has passed since the last sample."""
        time.sleep(max(0.0, self._last + self.interval - time.monotonic()))

    def _read(self, record: Record) -> dict | None:
        if record.state != "running":
            return None
        counters = cgroup_of(record).stats()
        own_netns = any(ns["type"] == "network" for ns in record.config["spec"]["linux"]["namespaces"])
        if record.is_microvm:
            counters["net_rx"], counters["net_tx"] = vm_net_io(record.id)
        else:
            counters["net_rx"], counters["net_tx"] = net_io(record.pid) if own_netns else (0, 0)
        counters["_when"] = time.monotonic()
        return counters

    def _row(self, record: Record, c: dict | None) -> dict:
        row = {"ID": record.id, "Container": record.name, "Name": record.name}
        if c is None:
            row.update(CPUPerc="--", MemUsage="-- / --", MemPerc="--", NetIO="--", BlockIO="--", PIDs="--")
            return row
        before = self._previous.get(record.id)
        cpu = 0.0
        if before and c["_when"] > before[0]:
            cpu = max(c["cpu_ns"] - before[1], 0) / ((c["_when"] - before[0]) * 1e9) * 100
        self._previous[record.id] = (c["_when"], c["cpu_ns"])
        used = max(c["memory"] - c["memory_inactive_file"], 0)
        limit = c["memory_limit"] or self._memtotal
        if self._memtotal:
            limit = min(limit, self._memtotal)
        row.update(
            CPUPerc=f"{cpu:.2f}%",
            MemUsage=f"{binary_size(used)} / {binary_size(limit)}",
            MemPerc=f"{used / limit * 100 if limit else 0:.2f}%",
            NetIO=f"{decimal_size(c['net_rx'])} / {decimal_size(c['net_tx'])}",
            BlockIO=f"{decimal_size(c['io_read'])} / {decimal_size(c['io_write'])}",
            PIDs=str(c["pids"]),
            # hutch's own: the raw numbers behind the strings, for scripts
            CPUTime=c["cpu_ns"],
            MemBytes=used,
            MemLimit=limit,
            NetRx=c["net_rx"],
            NetTx=c["net_tx"],
            BlockRead=c["io_read"],
            BlockWrite=c["io_write"],
            PIDsLimit=c["pids_limit"],
        )
        return row
