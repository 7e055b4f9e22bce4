"""create, start, stop, kill, restart, wait, logs, pause, attach: the container lifecycle without a daemon."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction, only: str | None = None) -> None:
    """Add the lifecycle commands (just ``only`` when given)."""
    from hutch.cli.containers import add_run_arguments

    def wanted(name: str) -> bool:
        return only is None or only == name

    if wanted("create"):
        p = sub.add_parser(
            "create", help="create a container without starting it", conflict_handler="resolve"
        )
        add_run_arguments(p)
        p.set_defaults(handler=cmd_create)
    if wanted("start"):
        p = sub.add_parser("start", help="start created or stopped containers")
        p.add_argument("-a", "--attach", action="store_true", help="attach output and wait for the exit")
        p.add_argument("-i", "--interactive", action="store_true", help="attach stdin")
        p.add_argument("containers", nargs="+", metavar="CONTAINER")
        p.set_defaults(handler=cmd_start)
    for name, text in (("stop", "stop running containers"), ("restart", "restart containers")):
        if wanted(name):
            p = sub.add_parser(name, help=text)
            p.add_argument("-t", "--time", type=float, default=10.0, help="seconds to wait before killing")
            p.add_argument("containers", nargs="+", metavar="CONTAINER")
            p.set_defaults(handler=cmd_stop if name == "stop" else cmd_restart)
    if wanted("kill"):
        p = sub.add_parser("kill", help="send a signal to running containers")
        p.add_argument("-s", "--signal", default="KILL", help="signal name or number (default KILL)")
        p.add_argument("containers", nargs="+", metavar="CONTAINER")
        p.set_defaults(handler=cmd_kill)
    if wanted("wait"):
        p = sub.add_parser("wait", help="wait for containers to exit and print their exit codes")
        p.add_argument("containers", nargs="+", metavar="CONTAINER")
        p.set_defaults(handler=cmd_wait)
    if wanted("rename"):
        p = sub.add_parser("rename", help="rename a container")
        p.add_argument("container", metavar="CONTAINER")
        p.add_argument("new_name", metavar="NEW_NAME")
        p.set_defaults(handler=cmd_rename)
    if wanted("top"):
        p = sub.add_parser("top", help="show the processes of a running container")
        p.add_argument("container", metavar="CONTAINER")
        p.set_defaults(handler=cmd_top)
    if wanted("logs"):
        p = sub.add_parser("logs", help="print a detached container's output")
        p.add_argument("-f", "--follow", action="store_true", help="keep printing until the container exits")
        p.add_argument("-n", "--tail", default="all", help="only the last N lines")
        p.add_argument("--since", help="only lines since a time (RFC 3339, Unix time, or 10m ago)")
        p.add_argument("--until", help="only lines before a time (RFC 3339, Unix time, or 10m ago)")
        p.add_argument("-t", "--timestamps", action="store_true", help="prefix each line with its time")
        p.add_argument("container", metavar="CONTAINER")
        p.set_defaults(handler=cmd_logs)
    for name, text in (("pause", "freeze all processes of containers"), ("unpause", "thaw them")):
        if wanted(name):
            p = sub.add_parser(name, help=text)
            p.add_argument("containers", nargs="+", metavar="CONTAINER")
            p.set_defaults(handler=cmd_pause if name == "pause" else cmd_unpause)
    if wanted("attach"):
        p = sub.add_parser("attach", help="attach to a detached container's input and output")
        p.add_argument("--no-stdin", action="store_true", help="do not attach stdin")
        p.add_argument("--sig-proxy", default="true", help="forward signals to the container (true|false)")
        p.add_argument(
            "--detach-keys", default="ctrl-p,ctrl-q", help="keys that detach (default ctrl-p,ctrl-q)"
        )
        p.add_argument("container", metavar="CONTAINER")
        p.set_defaults(handler=cmd_attach)


def _each(refs: list[str], action) -> int:
    """Docker's multi-container behaviour: act on each, report failures, fail if any failed."""
    from hutch.errors import HutchError

    status = 0
    for ref in refs:
        try:
            action(ref)
        except HutchError as err:
            print(f"hutch: {err}", file=sys.stderr)
            status = 1
    return status


def cmd_create(args: argparse.Namespace, ctx) -> int:
    from hutch.cli.containers import ensure_image, run_options

    opts = run_options(args)
    ensure_image(args, ctx)
    record = ctx.engine.create(opts)
    print(record.id)
    return 0


def _start_one(ctx, ref: str, attach: bool, interactive: bool) -> int:
    from hutch.errors import Conflict

    engine = ctx.engine
    record = engine.lookup(ref)
    if record.state in ("running", "paused", "restarting"):
        if attach:
            raise Conflict(f"container {record.name} is already running")
        return 0
    if attach:
        from hutch.cli.containers import run_attached

        return run_attached(engine, record, interactive)
    from hutch.engine.monitor import start_detached

    start_detached(ctx, record)
    return 0


def cmd_start(args: argparse.Namespace, ctx) -> int:
    """``start -a`` returns the container's exit code, as Docker does; otherwise names are printed."""
    if args.attach:
        if len(args.containers) > 1:
            from hutch.errors import InvalidArgument

            raise InvalidArgument("you cannot start and attach multiple containers at once")
        return _start_one(ctx, args.containers[0], True, args.interactive)
    return _each(args.containers, lambda ref: (_start_one(ctx, ref, False, False), print(ref)))


def cmd_stop(args: argparse.Namespace, ctx) -> int:
    from hutch.engine.lifecycle import stop

    return _each(args.containers, lambda ref: (stop(ctx.engine, ref, args.time), print(ref)))


def cmd_restart(args: argparse.Namespace, ctx) -> int:
    from hutch.engine.lifecycle import stop

    def restart(ref: str) -> None:
        stop(ctx.engine, ref, args.time)
        _start_one(ctx, ref, False, False)
        print(ref)

    return _each(args.containers, restart)


def cmd_kill(args: argparse.Namespace, ctx) -> int:
    from hutch.engine.lifecycle import kill, parse_signal

    sig = parse_signal(args.signal)
    return _each(args.containers, lambda ref: (kill(ctx.engine, ref, sig), print(ref)))


def cmd_wait(args: argparse.Namespace, ctx) -> int:
    from hutch.engine.events import last_exit_code
    from hutch.engine.lifecycle import wait_exited
    from hutch.errors import NotFound

    def wait(ref: str) -> None:
        cid = ctx.engine.lookup(ref).id
        try:
            code = wait_exited(ctx.engine, cid).exit_code
        except NotFound:  # removed on exit (--rm): the die event keeps the code
            code = last_exit_code(ctx.root, cid)
        print(code)

    return _each(args.containers, wait)


def cmd_logs(args: argparse.Namespace, ctx) -> int:
    """Both streams as the container wrote them (stdout to stdout, stderr to stderr)."""
    from hutch.engine.logs import LogQuery, follow, show
    from hutch.engine.records import LIVE_STATES

    engine = ctx.engine
    record = engine.lookup(args.container)
    query = LogQuery(args.tail, args.since, args.until, args.timestamps)
    cdir = engine.container_dir(record.id)
    if args.follow:

        def alive() -> bool:
            try:
                return engine.lookup(record.id).state in LIVE_STATES
            except Exception:  # noqa: BLE001 - removed while we followed it
                return False

        follow(cdir, query, sys.stdout.buffer, sys.stderr.buffer, alive)
    else:
        show(cdir, query, sys.stdout.buffer, sys.stderr.buffer)
    return 0


def cmd_pause(args: argparse.Namespace, ctx) -> int:
    from hutch.engine.lifecycle import pause

    return _each(args.containers, lambda ref: (pause(ctx.engine, ref), print(ref)))


def cmd_unpause(args: argparse.Namespace, ctx) -> int:
    from hutch.engine.lifecycle import unpause

    return _each(args.containers, lambda ref: (unpause(ctx.engine, ref), print(ref)))


def cmd_attach(args: argparse.Namespace, ctx) -> int:
    """Relay the terminal to the container's monitor until the container exits; its exit code is ours."""
    from hutch.cli.attach import attach, parse_detach_keys

    keys = parse_detach_keys(args.detach_keys)
    return attach(ctx.engine, args.container, not args.no_stdin, args.sig_proxy != "false", keys)


def cmd_rename(args: argparse.Namespace, ctx) -> int:
    ctx.engine.rename(args.container, args.new_name)
    return 0


def cmd_top(args: argparse.Namespace, ctx) -> int:
    """``top``: Docker prints ``ps -ef`` columns for the container's processes."""
    from hutch.cli.format import table
    from hutch.engine.lifecycle import processes

    rows = [
        [p["UID"], p["PID"], p["PPID"], p["TIME"], p["CMD"]] for p in processes(ctx.engine, args.container)
    ]
    print(table(["UID", "PID", "PPID", "TIME", "CMD"], rows))
    return 0
