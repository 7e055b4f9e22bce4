"""The ``hutch`` command line: parse docker-style arguments, run one handler, map errors to exit codes.

Each command group lives in its own module with a ``register(subparsers)`` function; those modules import
only the standard library at the top and defer engine imports to their handlers, so ``hutch run`` never
loads the code behind ``hutch save``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

_GROUPS = ("hutch.cli.images", "hutch.cli.containers")


def build_parser() -> argparse.ArgumentParser:
    """The whole parser; handlers are attached as ``handler`` defaults by each group module."""
    import importlib

    parser = argparse.ArgumentParser(prog="hutch", description="Run OCI images as containers or microVMs.")
    parser.add_argument("--root", type=Path, help="state directory (default /var/lib/hutch)")
    parser.add_argument("--runroot", type=Path, help="runtime state directory (default /run/hutch)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.add_argument("--version", action="version", version=f"hutch {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _GROUPS:
        importlib.import_module(name).register(sub)
    return parser


def _version() -> str:
    from hutch import __version__

    return __version__


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``hutch`` console script; returns the process exit status."""
    parser = build_parser()
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


if __name__ == "__main__":
    sys.exit(main())
