"""Detached containers: who reaps the init, keeps the log and applies the restart policy, without a daemon.

``hutch run -d`` forks a child that detaches into its own session, starts the container (so it is the
init's parent) and then execs ``hutch-monitor`` (native/monitor.c), a C program of a few hundred KiB: the
container's host-side cost for as long as it runs. The monitor copies the output into the log, serves
``hutch attach``, and when the init exits writes the raw wait status to ``exit`` and execs the finisher,
``python -m hutch.engine.monitor ROOT ID`` (below): the record, the cgroup, ``--rm``, and the restart policy,
which starts the container again in this same process and execs a new monitor.

Killing any of these processes never kills the container; the record is then reconciled from ``exit``
(Engine.reconcile). The fork happens with the database closed: a SQLite connection must not cross fork.
"""

from __future__ import annotations

import json
import os
import sys

from hutch.errors import HutchError


def start_detached(ctx, record) -> None:
    """Fork the monitor, which starts the container; return once the command has exec'd (or raise).

    why close the database first: SQLite keeps per-process lock state for each open file; a child forked
    while a connection is open inherits that state but not the kernel's fcntl locks, so even a new
    connection in the child can believe it holds locks it does not, and its commits race (SQLite's docs
    forbid carrying a connection across fork). The caller's context reopens it when next used.
    """
    from hutch.native import program

    binary = program("monitor", ctx.root / "cache" / "bin")
    ctx.engine.records.reset_restarts(record.id)
    ctx.close()
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        _child(lambda: ctx.fresh().engine, record, write_end, binary)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        raw = pipe.read()
    # The child has exec'd the monitor (or died): reap nothing more here; it is now our child only until
    # we exit, and the monitor never needs us.
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


def _child(make_engine, record, report_fd: int, binary: str) -> None:
    """The forked child: detach, start the container, become the monitor. Never returns."""
    try:
        os.setsid()
        engine = make_engine()
        launch(engine, record, binary, report_fd)
    except BaseException as exc:  # noqa: BLE001 - never a traceback on a terminal nobody watches
        _report(report_fd, exc)
        _log_failure(make_engine, record)
    os._exit(1)


def _report(report_fd: int | None, exc: BaseException) -> None:
    if report_fd is None:
        return
    code = exc.exit_code if isinstance(exc, HutchError) else 125
    message = str(exc) if isinstance(exc, HutchError) else f"monitor: {exc!r}"
    try:
        os.write(report_fd, json.dumps({"code": code, "message": message}).encode())
    except OSError:
        pass


def launch(engine, record, binary: str, report_fd: int | None) -> None:
    """Start the container with its stdio on pipes (or a pty) and exec the monitor over this process."""
    cdir = engine.container_dir(record.id)
    for stale in ("exit", "exit.tmp"):
        try:
            os.unlink(cdir / stale)
        except FileNotFoundError:
            pass
    options = record.config.get("options", {})
    tty, interactive = bool(options.get("tty")), bool(options.get("interactive"))
    devnull = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
    keep: list[int] = []
    if tty:
        stdio = (devnull, devnull, devnull)
    else:
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        in_r, in_w = os.pipe2(os.O_CLOEXEC) if interactive else (devnull, -1)
        stdio = (in_r, out_w, err_w)
    try:
        proc = engine.start(record, stdio, die_with_parent=False)
    except HutchError as exc:
        if report_fd is None:
            raise
        _report(report_fd, exc)
        os._exit(1)
    from hutch.engine.networking import held_sockets

    keep += [sock.fileno() for sock in held_sockets(engine)]  # published ports stay claimed
    argv = [binary, "-p", str(proc.pid)]
    if tty:
        argv += ["-t", "-o", str(proc.console)]
        if interactive:
            argv += ["-i", str(proc.console)]
        keep.append(proc.console)
    else:
        for fd in (out_w, err_w) + ((in_r,) if interactive else ()):
            os.close(fd)
        argv += ["-o", str(out_r), "-e", str(err_r)]
        keep += [out_r, err_r]
        if interactive:
            argv += ["-i", str(in_w)]
            keep.append(in_w)
    log_opts = options.get("log_opts") or {}
    if log_opts.get("max-size"):
        argv += ["-s", str(log_opts["max-size"]), "-n", str(log_opts.get("max-file", 1))]
    argv += ["--", sys.executable, "-m", "hutch.engine.monitor", str(engine.root), record.id]
    if report_fd is not None:
        os.write(report_fd, b"ok")
        os.close(report_fd)
    for fd in range(3):
        os.dup2(devnull, fd)
    for fd in keep:
        os.set_inheritable(fd, True)
    os.chdir(cdir)
    os.execv(binary, argv)


def start_copier(engine, record, tee_out: int, tee_err: int) -> tuple[int, int, int]:
    """For a container in the foreground: a monitor in copy mode keeps its log (so ``hutch logs`` works
    afterwards, as with Docker) and passes the output on to ``tee_out``/``tee_err``.

    Returns the write ends to give the container as stdout and stderr, and the copier's pid to wait for
    once the container has exited (it ends when both streams do).
    """
    from hutch.native import program

    binary = program("monitor", engine.root / "cache" / "bin")
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    cdir = str(engine.container_dir(record.id))
    log_opts = record.config.get("options", {}).get("log_opts") or {}
    argv = [binary, "-o", str(out_r), "-e", str(err_r), "-T", str(tee_out), "-U", str(tee_err)]
    if log_opts.get("max-size"):
        argv += ["-s", str(log_opts["max-size"]), "-n", str(log_opts.get("max-file", 1))]
    pid = os.fork()
    if pid == 0:
        try:
            for fd in (out_r, err_r, tee_out, tee_err):
                os.set_inheritable(fd, True)
            os.chdir(cdir)
            os.execv(binary, argv)
        finally:
            os._exit(127)
    os.close(out_r)
    os.close(err_r)
    return out_w, err_w, pid


def finish(root: str, cid: str) -> None:
    """The finisher the monitor execs: record the exit, then restart the container if its policy says so."""
    import time
    from pathlib import Path

    from hutch.db import Database
    from hutch.engine.containers import Engine, process_start_time
    from hutch.engine.restart import delay_before, should_restart

    _close_inherited_fds()
    engine = Engine(Path(root), Database(Path(root) / "hutch.db"))
    record = engine.records.get(cid)
    if record is None:
        return
    status = read_exit_status(engine.container_dir(cid))
    code = engine.finish(record, 255 << 8 if status is None else status)
    policy = record.config.get("options", {}).get("restart") or "no"
    if policy == "no":
        return
    current = engine.records.get(cid)
    if current is None or not should_restart(policy, code, current.restarts, bool(current.stopped)):
        return
    me = os.getpid()
    if not engine.records.mark_restarting(cid, current.restarts + 1, f"{me}:{process_start_time(me)}"):
        return
    time.sleep(delay_before(current.restarts, time.time() - (record.started or time.time())))
    current = engine.records.get(cid)
    if current is None or current.stopped or current.state != "restarting":
        return
    from hutch.native import program

    os.chdir("/")
    try:
        launch(engine, current, program("monitor", engine.root / "cache" / "bin"), None)
    except HutchError as exc:
        engine.records.mark_exited(cid, exc.exit_code)
        raise


def _close_inherited_fds() -> None:
    """What the monitor passed on (the sockets holding the container's published host ports) is of no use
    to the finisher, and a restart must bind those ports again: with the old sockets still open here, the
    bind fails (EADDRINUSE) and the restarted container exits 125."""
    from hutch.runtime.process import close_extra_fds

    close_extra_fds()


def read_exit_status(cdir) -> int | None:
    """The raw wait status the monitor wrote, or None if it never got to (it was killed)."""
    try:
        with open(os.path.join(cdir, "exit")) as f:
            return int(f.read().strip())
    except (FileNotFoundError, ValueError):
        return None


def _log_failure(make_engine, record) -> None:
    """Keep the traceback next to the container's logs: nobody else will ever see a monitor's error."""
    import traceback

    try:
        path = make_engine().container_dir(record.id) / "monitor.log"
        with open(path, "a") as f:
            traceback.print_exc(file=f)
    except Exception:  # noqa: BLE001 - nowhere left to report to
        pass


if __name__ == "__main__":
    try:
        finish(sys.argv[1], sys.argv[2])
    except BaseException:  # noqa: BLE001 - the monitor exec'd us with stdio on /dev/null
        import traceback

        try:
            with open(os.path.join(sys.argv[1], "containers", sys.argv[2], "monitor.log"), "a") as f:
                traceback.print_exc(file=f)
        except OSError:
            pass
    os._exit(0)
