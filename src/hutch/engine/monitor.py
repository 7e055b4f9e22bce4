"""Detached containers: a small monitor process per container waits for its init and records the exit.

Without a daemon someone must reap the container's init and write its exit status; that is the monitor,
forked from the ``hutch run -d`` process and detached into its own session so it outlives it (the role
conmon plays for Podman). It opens its own database connection: a SQLite connection must not cross fork.
"""

from __future__ import annotations

import json
import os

from hutch.errors import HutchError


def start_detached(ctx, record) -> None:
    """Fork the monitor, which starts the container; return once the command has exec'd (or raise).

    why close the database first: SQLite keeps per-process lock state for each open file; a child forked
    while a connection is open inherits that state but not the kernel's fcntl locks, so even a new
    connection in the child can believe it holds locks it does not, and its commits race (SQLite's docs
    forbid carrying a connection across fork). The caller's context reopens it when next used.
    """
    ctx.close()
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        _monitor(lambda: ctx.fresh().engine, record, write_end)
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
        _log_failure(make_engine, record)
    os._exit(code)


def _log_failure(make_engine, record) -> None:
    """Keep the traceback next to the container's logs: nobody else will ever see a monitor's error."""
    import traceback

    try:
        path = make_engine().container_dir(record.id) / "monitor.log"
        with open(path, "a") as f:
            traceback.print_exc(file=f)
    except Exception:  # noqa: BLE001 - nowhere left to report to
        pass


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
