"""``hutch exec``: run a command in a running container.

Foreground: the process's exit status becomes ours, signals sent to hutch are forwarded to it, and with
``-t`` its pty is relayed. Detached (``-d``): hutch returns once the command has exec'd; the process is
hutch's child only until hutch exits, then the kernel reparents it to the nearest subreaper or the host's
init (not the container's: its parent was outside the container), which reaps it. Its output goes to
/dev/null, as with Docker's ``exec -d``, and it ends with the container (it is in the container's cgroup and
pid namespace).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from hutch.cli.terminal import FORWARDED_SIGNALS as _FORWARDED


def register(sub: argparse._SubParsersAction, only: str | None = None) -> None:
    """Add ``exec`` to the top-level parser."""
    if only not in (None, "exec"):
        return
    p = sub.add_parser("exec", help="run a command in a running container")
    p.add_argument("-d", "--detach", action="store_true", help="run the command in the background")
    p.add_argument("-i", "--interactive", action="store_true", help="keep stdin attached")
    p.add_argument("-t", "--tty", action="store_true", help="allocate a pseudo-terminal")
    p.add_argument(
        "-e", "--env", action="append", default=[], metavar="K=V", help="set an environment variable"
    )
    p.add_argument("-u", "--user", help="user[:group] to run as (names or numbers)")
    p.add_argument("-w", "--workdir", help="working directory inside the container")
    p.add_argument("container", metavar="CONTAINER")
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="COMMAND", help="command and arguments")
    p.set_defaults(handler=cmd_exec)


def cmd_exec(args: argparse.Namespace, ctx) -> int:
    """``hutch exec``: the command's exit status becomes ours (0 at once with ``-d``)."""
    from hutch.engine.execs import ExecOptions, exec_in
    from hutch.engine.options import parse_env
    from hutch.errors import InvalidArgument

    if not args.command:
        raise InvalidArgument('"hutch exec" requires at least 2 arguments: CONTAINER COMMAND [ARG...]')
    if args.detach and args.tty:
        # Docker's daemon keeps a detached exec's pty master open; hutch exits, and a closed master would
        # hang the process up at once.
        raise InvalidArgument("exec -d with -t is not supported: nothing would hold the terminal")
    env = parse_env(args.env)
    if args.detach:
        null = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
        try:
            options = ExecOptions(env, args.user, args.workdir, False, (null, null, null), detach=True)
            exec_in(ctx.engine, args.container, args.command, options)
        finally:
            os.close(null)
        return 0
    stdin = sys.stdin.fileno() if args.interactive else os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    options = ExecOptions(
        env, args.user, args.workdir, args.tty, (stdin, sys.stdout.fileno(), sys.stderr.fileno())
    )
    # why block: a signal arriving between the exec and the handlers below would kill hutch instead of
    # reaching the process; blocked, it waits and is forwarded once the handlers are in place.
    signal.pthread_sigmask(signal.SIG_BLOCK, _FORWARDED)
    try:
        proc = exec_in(ctx.engine, args.container, args.command, options)
    except BaseException:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _FORWARDED)
        raise
    finally:
        if not args.interactive:
            os.close(stdin)
    return _attend(proc, args.interactive)


def _attend(proc, interactive: bool) -> int:
    """Forward signals, relay the pty, wait: the process's exit status becomes ours."""
    from hutch.cli.terminal import attend
    from hutch.engine.containers import exit_code_of

    return exit_code_of(attend(proc.pid, proc.console, interactive))
