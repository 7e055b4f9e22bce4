"""Container events (``hutch events``): one JSON line per event in ``<root>/events.log``.

Without a daemon there is no bus to subscribe to; every hutch process appends what it did to one file and
``events`` follows it. A line is written with one ``write`` on an O_APPEND descriptor, which the kernel
serialises per file, so concurrent writers never interleave. The file rotates once it passes 4 MiB
(``events.log.1`` keeps the previous one); readers follow by inode.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

LOG_NAME = "events.log"
MAX_SIZE = 4 * 1024 * 1024


def emit(root: Path, action: str, record, **attributes) -> None:
    """Record ``action`` (create, start, die, destroy, pause, unpause, kill, stop, rename...) for a container.

    Best effort: an event log that cannot be written must never fail the operation it describes.
    """
    now = time.time_ns()
    attrs = {"image": record.image_ref, "name": record.name}
    attrs.update({k: str(v) for k, v in attributes.items()})
    line = json.dumps(
        {
            "Type": "container",
            "Action": action,
            "status": action,
            "id": record.id,
            "from": record.image_ref,
            "Actor": {"ID": record.id, "Attributes": attrs},
            "scope": "local",
            "time": now // 1_000_000_000,
            "timeNano": now,
        },
        separators=(",", ":"),
    )
    path = os.path.join(root, LOG_NAME)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, line.encode() + b"\n")
            if os.fstat(fd).st_size > MAX_SIZE:
                os.replace(path, path + ".1")
        finally:
            os.close(fd)
    except OSError:
        pass


_FILTER_KEYS = ("container", "event", "image", "type", "label")


def event_filter(items: list[str]):
    """``--filter container=,event=,image=,type=,label=``: the same key ORs, keys AND, as Docker."""
    from hutch.engine.filters import parse_filters

    wanted = parse_filters(items, _FILTER_KEYS)

    def matches(event: dict) -> bool:
        attrs = event.get("Actor", {}).get("Attributes", {})
        checks = {
            "container": lambda v: event["id"].startswith(v) or attrs.get("name") == v,
            "event": lambda v: event["Action"] == v,
            "image": lambda v: event.get("from") == v,
            "type": lambda v: event["Type"] == v,
            "label": lambda v: False,
        }
        return all(any(checks[k](v) for v in values) for k, values in wanted.items())

    return matches


def read(root: Path, since_ns: int | None, until_ns: int | None, matches, follow: bool, out) -> None:
    """Write the events from ``since_ns`` (none: only new ones) to ``until_ns`` (none: forever if
    ``follow``) through ``out(event)``."""
    path = Path(root) / LOG_NAME
    f = _open(path)
    try:
        if since_ns is None and f is not None:
            f.seek(0, os.SEEK_END)
        elif since_ns is not None:
            older = _open(Path(str(path) + ".1"))
            if older is not None:
                with older:
                    _emit_lines(older.read(), since_ns, until_ns, matches, out)
        pending = b""
        while True:
            if f is not None:
                data = f.read()
                if data:
                    lines = (pending + data).split(b"\n")
                    pending = lines.pop()
                    if _emit_lines(b"\n".join(lines), since_ns, until_ns, matches, out):
                        return
                    continue
            if not follow or (until_ns is not None and time.time_ns() > until_ns):
                return
            if f is None or _rotated(f, path):
                if f is not None:
                    f.close()
                f = _open(path)
                pending = b""
                continue
            time.sleep(0.05)
    finally:
        if f is not None:
            f.close()


def _emit_lines(data: bytes, since_ns, until_ns, matches, out) -> bool:
    """True once an event past ``until_ns`` was seen."""
    for line in data.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if since_ns is not None and event["timeNano"] < since_ns:
            continue
        if until_ns is not None and event["timeNano"] > until_ns:
            return True
        if matches(event):
            out(event)
    return False


def _open(path: Path):
    try:
        return open(path, "rb")  # noqa: SIM115 - followed across the loop
    except FileNotFoundError:
        return None


def _rotated(f, path: Path) -> bool:
    try:
        return os.stat(path).st_ino != os.fstat(f.fileno()).st_ino
    except FileNotFoundError:
        return False


def last_exit_code(root: Path, cid: str) -> int | None:
    """The exit code of the container's last ``die`` event: how ``attach``/``wait`` learn the code of a
    ``--rm`` container whose record is already gone."""
    for name in (LOG_NAME, LOG_NAME + ".1"):
        try:
            with open(Path(root) / name, "rb") as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            continue
        needle = f'"id":"{cid}"'.encode()
        for line in reversed(lines):
            if needle in line and b'"Action":"die"' in line:
                try:
                    return int(json.loads(line)["Actor"]["Attributes"]["exitCode"])
                except (ValueError, KeyError):
                    return None
    return None
