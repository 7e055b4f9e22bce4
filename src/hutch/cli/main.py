"""The ``hutch`` command line: parse docker-style arguments, run one handler, map errors to exit codes.

Each command group lives in its own module with a ``register(subparsers)`` function; those modules import
only the standard library at the top and defer engine imports to their handlers, so ``hutch run`` never
loads the code behind ``hutch save``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# Command group module -> the top-level commands it registers. Kept here (not imported from the modules) so
# that only the module of the command being run is imported.
_GROUPS = {
    "hutch.cli.images": ("images", "import", "load", "save", "tag", "rmi", "image"),
    "hutch.cli.containers": ("run", "ps", "rm", "inspect", "container"),
    "hutch.cli.system": ("info", "system"),
    "hutch.cli.registry": ("pull", "push", "login", "logout"),
    "hutch.cli.execs": ("exec",),
    "hutch.cli.events": ("events",),
    "hutch.cli.copy": ("cp",),
    "hutch.cli.lifecycle": (
        "create",
        "start",
        "stop",
        "restart",
        "kill",
        "wait",
        "logs",
        "rename",
        "top",
        "pause",
        "unpause",
        "attach",
    ),
    "hutch.cli.networks": ("network", "port"),
    "hutch.cli.limits": ("stats", "update"),
}
_GLOBAL_WITH_VALUE = ("--root", "--runroot")


def command_of(argv: list[str]) -> str | None:
    """The command word of ``argv`` (after global options), if it is a known command."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in _GLOBAL_WITH_VALUE:
            skip = True
        elif not arg.startswith("-"):
            return arg if any(arg in names for names in _GROUPS.values()) else None
    return None


class _Formatter(argparse.HelpFormatter):
    """argparse's help formatter, sized without ``shutil``.

    why: argparse makes a formatter for every ``add_argument`` (to check the metavar), and each asks
    ``shutil.get_terminal_size`` for the width; importing shutil (with its bz2, lzma and zlib) costs ~4 ms
    of every command, though only help and errors print anything. The width is found the same way: a
    positive ``COLUMNS``, else the terminal on stdout, else 80; minus 2, as argparse does.
    """

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24, width=None):
        if width is None:
            width = _columns() - 2
        super().__init__(prog, indent_increment, max_help_position, width)


def _columns() -> int:
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns > 0:
        return columns
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns or 80
    except (AttributeError, ValueError, OSError):
        return 80


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser (and, through ``add_subparsers``, every sub-parser) with ``_Formatter``."""

    def __init__(self, *args, formatter_class=_Formatter, **kwargs) -> None:
        super().__init__(*args, formatter_class=formatter_class, **kwargs)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``command`` only that command's sub-parser is built.

    why: building every sub-parser costs 20-30 ms, a third of a container start; help and errors for an
    unknown command still get the full parser.
    """
    import importlib

    parser = _Parser(prog="hutch", description="Run OCI images as containers or microVMs.")
    parser.add_argument("--root", type=Path, help="state directory (default /var/lib/hutch)")
    parser.add_argument("--runroot", type=Path, help="runtime state directory (default /run/hutch)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.add_argument("--version", action="version", version=f"hutch {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module, names in _GROUPS.items():
        if command is None:
            importlib.import_module(module).register(sub)
        elif command in names:
            importlib.import_module(module).register(sub, command)
    return parser


def _version() -> str:
    from hutch import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``hutch`` console script; returns the process exit status."""
    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser(command_of(argv))
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 125 if args.command else 0
    from hutch.cli.context import Context
    from hutch.errors import HutchError

    ctx = Context(args.root, args.runroot)
    try:
        return int(handler(args, ctx) or 0)
    except HutchError as err:
        if args.debug:
            raise
        print(f"hutch: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


def entry() -> None:
    """The console script: ``main``, then exit without the interpreter's teardown.

    why: tearing down the modules a ``hutch run`` loaded costs ~20 ms, a sixth of the whole command, and
    buys nothing: every database transaction is committed before ``main`` returns (SQLite's WAL needs no
    close), files are closed by their context managers, and stdio is flushed here.
    """
    code = main()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:
        pass
    os._exit(code)


if __name__ == "__main__":
    entry()
