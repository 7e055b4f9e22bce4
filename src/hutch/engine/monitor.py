"""Detached containers: a small monitor process per container waits for its init and records the exit.

Without a daemon someone must reap the container's init and write its exit status; that is the monitor,
forked from the ``hutch run -d`` process and detached into its own session so it outlives it (the role
conmon plays for Podman). It opens its own database connection: a SQLite connection must not cross fork.
"""

from __future__ import annotations

import json
import os

from hutch.errors import HutchError


def start_detached(root, make_engine, record) -> None:
    """Fork the monitor, which starts the container; return once the command has exec'd (or raise)."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        _monitor(make_engine, record, write_end)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        raw = pipe.read()
    if raw != b"ok":
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
        try:
            err = json.loads(raw)
            exc = HutchError(err["message"])
            exc.exit_code = err["code"]
        except (ValueError, KeyError):
            exc = HutchError(f"container monitor failed to start the container: {raw[:200]!r}")
        raise exc


def _monitor(make_engine, record, report_fd: int) -> None:
    """The monitor's whole life; never returns."""
    code = 1
    try:
        os.setsid()
        engine = make_engine()
        cdir = engine.container_dir(record.id)
        devnull = os.open("/dev/null", os.O_RDWR)
        out = os.open(cdir / "stdout.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        err = os.open(cdir / "stderr.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        try:
            proc = engine.start(record, (devnull, out, err), die_with_parent=False)
        except HutchError as exc:
            os.write(report_fd, json.dumps({"code": exc.exit_code, "message": str(exc)}).encode())
            os._exit(1)
        os.write(report_fd, b"ok")
        os.close(report_fd)
        for fd in range(3):
            os.dup2(devnull, fd)
        if proc.console is not None:
            _drain(proc.console, out)
        _, status = os.waitpid(proc.pid, 0)
        engine.finish(record, status)
        code = 0
    except BaseException as exc:  # noqa: BLE001 - a monitor must never leave a traceback on a terminal
        try:
            os.write(report_fd, json.dumps({"code": 125, "message": f"monitor: {exc}"}).encode())
        except OSError:
            pass
    os._exit(code)


def _drain(console: int, out: int) -> None:
    """A detached ``-t`` container writes to its pty; copy that into the log until the pty closes."""
    while True:
        try:
            data = os.read(console, 65536)
        except OSError:
            break
        if not data:
            break
        os.write(out, data)
    os.close(console)
