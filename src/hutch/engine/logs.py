"""Reading a detached container's log: ``container.log`` (and its rotations) in the container's directory.

The monitor (native/monitor.c) writes one record per line in the CRI format that Kubernetes and Podman use::

    2026-11-27T19:50:20.123456789Z stdout F hello

``F`` ends a line, ``P`` is part of one (the bytes had no newline yet). Timestamps are fixed-width UTC, so
``--since``/``--until`` compare them as strings. Rotated files are ``container.log.1`` (newest) up to
``container.log.N-1``; the reader follows the current file by inode so a rotation mid-``-f`` loses nothing.
"""

from __future__ import annotations

import os
import re
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from hutch.errors import InvalidArgument

LOG_NAME = "container.log"
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\d(?:[T ]\d\d:\d\d(?::\d\d)?)?)(\.\d+)?(Z|[+-]\d\d:?\d\d)?")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class Message:
    """One logged line (or the unterminated tail of the output), with the time its first bytes arrived."""

    __slots__ = ("stamp", "stream", "data")

    def __init__(self, stamp: str, stream: str, data: bytes) -> None:
        self.stamp = stamp
        self.stream = stream
        self.data = data


def stamp_of(seconds: float) -> str:
    """The log's own timestamp format for a Unix time."""
    whole = int(seconds)
    nanos = int(round((seconds - whole) * 1e9))
    if nanos >= 1_000_000_000:
        whole, nanos = whole + 1, nanos - 1_000_000_000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{nanos:09d}Z"


def parse_time(text: str, flag: str, now: float | None = None) -> str:
    """``--since``/``--until`` as Docker takes them: RFC 3339 (date, time, offset optional), a Unix time,
    or a Go duration before now (``42m``, ``1h30m``). Returns a log timestamp to compare against."""
    now = time.time() if now is None else now
    text = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return stamp_of(float(text))
    if re.fullmatch(r"(?:\d+(?:\.\d+)?(?:ns|us|µs|ms|s|m|h))+", text):
        return stamp_of(now - sum(float(n) * _UNITS[u] for n, u in _DURATION.findall(text)))
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise InvalidArgument(
            f"invalid {flag} {text!r}: expected an RFC 3339 time, a Unix timestamp or a duration like 10m"
        )
    from datetime import UTC, datetime

    base, fraction, offset = match.groups()
    try:
        parsed = datetime.fromisoformat(base + (offset or "").replace("Z", "+00:00"))
    except ValueError:
        raise InvalidArgument(f"invalid {flag} {text!r}: not a valid date and time") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    # Whole seconds through datetime, the fraction kept as digits: datetime stops at microseconds.
    return stamp_of(int(parsed.timestamp()))[:20] + (fraction or ".")[1:10].ljust(9, "0") + "Z"


def log_files(cdir: Path) -> list[Path]:
    """The container's log files, oldest first."""
    rotated = []
    for entry in os.scandir(cdir) if cdir.is_dir() else ():
        suffix = entry.name[len(LOG_NAME) + 1 :]
        if entry.name.startswith(LOG_NAME + ".") and suffix.isdigit():
            rotated.append((int(suffix), Path(entry.path)))
    files = [path for _, path in sorted(rotated, reverse=True)]
    if (cdir / LOG_NAME).exists():
        files.append(cdir / LOG_NAME)
    return files


class _Assembler:
    """Joins partial records into messages, per stream."""

    def __init__(self) -> None:
        self.pending: dict[str, Message] = {}

    def feed(self, line: bytes) -> Message | None:
        try:
            stamp, stream, tag, data = line.rstrip(b"\n").split(b" ", 3)
        except ValueError:
            if line.count(b" ") == 2:  # an empty partial record: "STAMP STREAM P"
                return None
            return None  # a torn last line of a crashed monitor: nothing to show
        name = stream.decode()
        pending = self.pending.pop(name, None)
        if pending is None:
            pending = Message(stamp.decode(), name, b"")
        pending.data += data
        if tag == b"F":
            pending.data += b"\n"
            return pending
        self.pending[name] = pending
        return None

    def flush(self) -> list[Message]:
        rest = sorted(self.pending.values(), key=lambda m: m.stamp)
        self.pending.clear()
        return rest


def messages(cdir: Path) -> Iterator[Message]:
    """Every message in the container's logs, in order."""
    assembler = _Assembler()
    for path in log_files(cdir):
        try:
            with open(path, "rb") as f:
                for line in f:
                    message = assembler.feed(line)
                    if message is not None:
                        yield message
        except FileNotFoundError:  # rotated away while we read
            continue
    yield from assembler.flush()


class LogQuery:
    """What ``hutch logs`` asked for."""

    def __init__(
        self, tail: str = "all", since: str | None = None, until: str | None = None, timestamps: bool = False
    ) -> None:
        if tail != "all" and not tail.lstrip("-").isdigit():
            raise InvalidArgument(f"invalid --tail {tail!r}: expected a number or 'all'")
        self.tail = None if tail == "all" or int(tail) < 0 else int(tail)
        self.since = parse_time(since, "--since") if since else None
        self.until = parse_time(until, "--until") if until else None
        self.timestamps = timestamps

    def wanted(self, message: Message) -> bool:
        if self.since is not None and message.stamp < self.since:
            return False
        return self.until is None or message.stamp <= self.until


def write(message: Message, query: LogQuery, out: BinaryIO, err: BinaryIO) -> None:
    stream = err if message.stream == "stderr" else out
    if query.timestamps:
        stream.write(message.stamp.encode() + b" ")
    stream.write(message.data)


def show(cdir: Path, query: LogQuery, out: BinaryIO, err: BinaryIO) -> None:
    """Print what is logged now, filtered."""
    selected = (m for m in messages(cdir) if query.wanted(m))
    if query.tail is not None:
        selected = deque(selected, maxlen=query.tail) if query.tail else deque()
    for message in selected:
        write(message, query, out, err)
    out.flush()
    err.flush()


def follow(cdir: Path, query: LogQuery, out: BinaryIO, err: BinaryIO, alive, poll: float = 0.05) -> None:
    """Print what is logged, then what is appended, until ``alive()`` is false and the file is drained.

    The current file is held open and read to its end before a newer one (after a rotation) is opened, so
    nothing written between two polls is lost; only history before ``--tail`` is skipped.
    """
    path = cdir / LOG_NAME
    assembler = _Assembler()
    current = _open_current(path, wait=alive)
    if current is None:
        return
    # History from the rotated files and what the current file holds now, through the tail filter.
    history = []
    for old in log_files(cdir)[:-1]:
        try:
            with open(old, "rb") as f:
                history.extend(m for m in map(assembler.feed, f) if m is not None)
        except FileNotFoundError:
            continue
    chunk = current.read()
    lines = chunk.split(b"\n")
    pending = lines.pop()
    history.extend(m for m in (assembler.feed(line) for line in lines) if m is not None)
    selected = [m for m in history if query.wanted(m)]
    if query.tail is not None:
        selected = selected[len(selected) - query.tail :] if query.tail else []
    for message in selected:
        write(message, query, out, err)
    out.flush()
    err.flush()
    while True:
        living = alive()
        data = current.read()
        if data:
            lines = (pending + data).split(b"\n")
            pending = lines.pop()
            for line in lines:
                message = assembler.feed(line)
                if message is not None and query.wanted(message):
                    write(message, query, out, err)
            out.flush()
            err.flush()
            continue
        if _rotated(current, path):
            current.close()
            current = _open_current(path, wait=alive)
            if current is None:
                break
            continue
        if not living:
            break
        if query.until is not None and stamp_of(time.time()) > query.until:
            break
        time.sleep(poll)
    current.close()
    for message in assembler.flush():
        if query.wanted(message):
            write(message, query, out, err)
    out.flush()
    err.flush()


def _open_current(path: Path, wait) -> BinaryIO | None:
    while True:
        try:
            return open(path, "rb")  # noqa: SIM115 - held across the follow loop
        except FileNotFoundError:
            if not wait():
                return None
            time.sleep(0.05)


def _rotated(current: BinaryIO, path: Path) -> bool:
    try:
        return os.stat(path).st_ino != os.fstat(current.fileno()).st_ino
    except FileNotFoundError:
        return True
