"""Stopping, signalling and waiting for containers that another hutch process (or a monitor) started.

Without a daemon, the process that reaps a container is its monitor (``-d``) or the ``hutch run`` in the
foreground; these functions only signal the init and watch the record, and a record whose init vanished is
reconciled by ``Engine.lookup``.
"""

from __future__ import annotations

import os
import signal
import time

from hutch.engine import events
from hutch.engine.containers import Engine, cgroup_of, process_start_time
from hutch.engine.crashpoints import crash_point
from hutch.engine.records import LIVE_STATES, Record
from hutch.errors import Conflict, InvalidArgument

_POLL = 0.01


def parse_signal(text: str) -> int:
    """``KILL``, ``SIGKILL`` or ``9``, as ``docker kill -s`` takes it."""
    if text.isdigit():
        number = int(text)
        if not 0 < number < signal.NSIG:
            raise InvalidArgument(f"invalid signal {text!r}")
        return number
    name = text.upper()
    name = name if name.startswith("SIG") else "SIG" + name
    value = getattr(signal.Signals, name, None) if name in signal.Signals.__members__ else None
    if value is None:
        raise InvalidArgument(f"invalid signal {text!r}")
    return int(value)


def _alive(record: Record) -> bool:
    return bool(record.pid) and process_start_time(record.pid) == record.pid_start


def kill(engine: Engine, ref: str, sig: int = signal.SIGKILL) -> Record:
    """Send ``sig`` to the container's init (pid 1 inside), as ``docker kill`` does."""
    record = engine.lookup(ref)
    if record.state not in ("running", "paused") or not _alive(record):
        raise Conflict(f"cannot kill container {record.name}: container is not running")
    try:
        os.kill(record.pid, sig)
    except ProcessLookupError:
        pass
    events.emit(engine.root, "kill", record, signal=sig)
    if record.state == "paused":  # a frozen process cannot act on the signal, not even die of it
        _thaw(engine, record)
    return record


def pause(engine: Engine, ref: str) -> Record:
    """``pause``: freeze every process of the container through its cgroup."""
    record = engine.lookup(ref)
    if record.state == "paused":
        raise Conflict(f"container {record.name} is already paused")
    if record.state != "running" or not _alive(record):
        raise Conflict(f"container {record.name} is not running")
    cgroup = cgroup_of(record)
    cgroup.freeze(True)
    if not engine.records.transition(record.id, "running", "paused"):
        cgroup.freeze(False)  # it exited (or was stopped) while we froze it
        raise Conflict(f"container {record.name} is not running")
    events.emit(engine.root, "pause", record)
    return record


def unpause(engine: Engine, ref: str) -> Record:
    record = engine.lookup(ref)
    if record.state != "paused":
        raise Conflict(f"container {record.name} is not paused")
    _thaw(engine, record)
    return record


def _thaw(engine: Engine, record: Record) -> None:
    cgroup_of(record).freeze(False)
    if engine.records.transition(record.id, "paused", "running"):
        events.emit(engine.root, "unpause", record)


def wait_exited(engine: Engine, ref: str, timeout: float | None = None) -> Record:
    """Block until the container has exited and its exit is recorded (by its monitor or its hutch run)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        record = engine.lookup(ref)
        if record.state not in LIVE_STATES:
            return record
        if deadline is not None and time.monotonic() >= deadline:
            return record
        time.sleep(_POLL)


def stop(engine: Engine, ref: str, timeout: float = 10.0) -> Record:
    """The image's StopSignal (default SIGTERM), then SIGKILL to the whole cgroup after ``timeout``."""
    record = engine.lookup(ref)
    engine.records.mark_stopped_by_user(record.id)  # restart policies leave it stopped from now on
    if record.state == "restarting":
        return _cancel_restart(engine, record)
    if record.state not in ("running", "paused"):
        return record
    if record.state == "paused":
        _thaw(engine, record)
    spec_signal = record.config.get("stop_signal") or "SIGTERM"
    try:
        os.kill(record.pid, parse_signal(spec_signal))
    except ProcessLookupError:
        pass
    crash_point("stop:signalled")
    deadline = time.monotonic() + timeout
    while _alive(record) and time.monotonic() < deadline:
        time.sleep(_POLL)
    if _alive(record):
        cgroup_of(record).kill_all(signal.SIGKILL)
    record = wait_exited(engine, record.id, timeout=10.0)
    events.emit(engine.root, "stop", record)
    return record


def _cancel_restart(engine: Engine, record: Record) -> Record:
    """A container waiting out its restart back-off: end the waiting finisher; reconcile does the rest."""
    reaper_pid, _, reaper_start = record.reaper.partition(":")
    if reaper_pid.isdigit() and process_start_time(int(reaper_pid)) == reaper_start:
        try:
            os.kill(int(reaper_pid), signal.SIGKILL)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 5
        while process_start_time(int(reaper_pid)) == reaper_start and time.monotonic() < deadline:
            time.sleep(_POLL)
    return wait_exited(engine, record.id, timeout=10.0)


def processes(engine: Engine, ref: str) -> list[dict]:
    """``top``: the processes in the container's cgroup, read from /proc as ``ps -ef`` would show them; a
    microVM container's, which live in its guest, as the guest agent lists them (its cgroup holds QEMU)."""
    record = engine.lookup(ref)
    if record.state not in ("running", "paused"):
        raise Conflict(f"container {record.name} is not running")
    if record.is_microvm:
        if record.state == "paused":
            raise Conflict(f"container {record.name} is paused: its guest cannot answer until unpaused")
        from hutch.vm.processes import list_processes

        return list_processes(record.id, record.name)
    result = []
    for pid in sorted(cgroup_of(record).pids()):
        info = _proc_info(pid)
        if info is not None:
            result.append(info)
    return result


def _proc_info(pid: int) -> dict | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
        with open(f"/proc/{pid}/status") as f:
            uid = next(line.split()[1] for line in f if line.startswith("Uid:"))
    except (OSError, StopIteration):
        return None  # exited while we looked
    comm = stat[stat.find(b"(") + 1 : stat.rfind(b")")].decode(errors="replace")
    fields = stat[stat.rfind(b")") + 2 :].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu_seconds = (int(fields[11]) + int(fields[12])) // ticks
    command = cmdline.replace(b"\0", b" ").strip().decode(errors="replace") or f"[{comm}]"
    return {
        "UID": uid,
        "PID": str(pid),
        "PPID": fields[1].decode(),
        "TIME": f"{cpu_seconds // 3600:02d}:{cpu_seconds // 60 % 60:02d}:{cpu_seconds % 60:02d}",
        "CMD": command,
    }
