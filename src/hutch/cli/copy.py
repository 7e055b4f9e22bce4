"""``hutch cp``: copy files between a container and the host."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction, only: str | None = None) -> None:
    p = sub.add_parser(
        "cp", help="copy files between a container and the host (CONTAINER:PATH, a host path, or - for a tar)"
    )
    p.add_argument("-a", "--archive", action="store_true", help="keep uid/gid of the files")
    p.add_argument("-L", "--follow-link", action="store_true", help="follow a symbolic link in SRC")
    p.add_argument("src", metavar="SRC")
    p.add_argument("dest", metavar="DEST")
    p.set_defaults(handler=cmd_cp)


def cmd_cp(args: argparse.Namespace, ctx) -> int:
    from hutch.engine.copy import copy

    copy(ctx.engine, args.src, args.dest, follow=args.follow_link, archive=args.archive)
    return 0
