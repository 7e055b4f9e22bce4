"""Resource limits on the command line: the flags run, create and update share; ``stats``, ``update``.

The flags are defined here (one argument group) so the run parser only gains a function call; their values
are parsed by ``hutch.engine.resources``, imported only when one of them is given.
"""

from __future__ import annotations

import argparse
import json
import sys

_MEMORY_FLAGS = (
    ("-m", "--memory", "memory limit (b, k, m, g)"),
    ("", "--memory-swap", "memory+swap limit; -1: unlimited (default: twice --memory)"),
    ("", "--memory-reservation", "soft memory limit"),
)
_CPU_FLAGS = (
    ("--cpus", "number of CPUs (quota over a 100 ms period)"),
    ("--cpu-shares", "relative CPU weight (v1 shares, 2..262144)"),
    ("--cpu-period", "CFS period in µs"),
    ("--cpu-quota", "CFS quota in µs per period"),
    ("--cpuset-cpus", "CPUs the container may run on (0-2,4)"),
    ("--cpuset-mems", "memory nodes the container may use"),
    ("--pids-limit", "maximum number of processes (-1: unlimited)"),
    ("--blkio-weight", "block I/O weight (10..1000)"),
)


def add_resource_arguments(p: argparse.ArgumentParser, update: bool = False) -> None:
    """Docker's resource flags; ``update`` leaves out those Docker's update does not take."""
    g = p.add_argument_group("resource limits")
    for short, long, text in _MEMORY_FLAGS:
        g.add_argument(*(f for f in (short, long) if f), metavar="BYTES", help=text)
    for long, text in _CPU_FLAGS:
        g.add_argument(long, metavar="VALUE", help=text)
    if update:
        return
    g.add_argument("--oom-kill-disable", action="store_true", help="do not OOM-kill (cgroup v1 only)")
    for direction in ("read", "write"):
        g.add_argument(
            f"--device-{direction}-bps",
            action="append",
            default=[],
            metavar="DEV:RATE",
            help=f"limit {direction} rate from a block device (b, k, m, g per second)",
        )
    g.add_argument("--cgroup-parent", metavar="PATH", help="parent cgroup (default: hutch)")


def resource_flags(args: argparse.Namespace) -> dict:
    """The raw values of the resource flags that were given (by ``engine.resources`` names)."""
    from hutch.engine.resources import FLAGS

    return {name: getattr(args, name, None) for name in FLAGS}


def resources_from_args(args: argparse.Namespace) -> dict:
    """OCI ``linux.resources`` (without devices) from ``run``/``create`` flags; {} when none was given,
    without importing the parsers (the common ``hutch run``)."""
    given = [
        getattr(args, name.lstrip("-").replace("-", "_"))
        for group in (_MEMORY_FLAGS, _CPU_FLAGS)
        for name in (entry[-2] for entry in group)
    ]
    if not any(v is not None for v in given) and not (
        args.oom_kill_disable or args.device_read_bps or args.device_write_bps
    ):
        return {}
    from hutch.engine.resources import build

    return build(resource_flags(args))


def register(sub: argparse._SubParsersAction, only: str | None = None) -> None:
    """Add ``stats`` and ``update``."""
    if only in (None, "stats"):
        p = sub.add_parser("stats", help="show containers' resource usage")
        p.add_argument("-a", "--all", action="store_true", help="also list containers that are not running")
        p.add_argument("--no-stream", action="store_true", help="print one sample and exit")
        p.add_argument("--no-trunc", action="store_true", help="do not truncate ids")
        p.add_argument("--format", help="'json' (one object per line) or a template such as '{{.Name}}'")
        p.add_argument("containers", nargs="*", metavar="CONTAINER")
        p.set_defaults(handler=cmd_stats)
    if only in (None, "update"):
        p = sub.add_parser("update", help="change the resource limits of containers")
        add_resource_arguments(p, update=True)
        p.add_argument("containers", nargs="+", metavar="CONTAINER")
        p.set_defaults(handler=cmd_update)


def cmd_update(args: argparse.Namespace, ctx) -> int:
    """``hutch update``: new limits recorded and, for a running container, applied to its cgroup."""
    from hutch.engine.limits import update
    from hutch.engine.resources import build
    from hutch.errors import HutchError, InvalidArgument

    changes = build(resource_flags(args), update=True)
    if not changes:
        raise InvalidArgument("hutch update: give at least one limit to change (see --help)")
    status = 0
    for ref in args.containers:
        try:
            update(ctx.engine, ref, changes)
            print(ref)
        except HutchError as err:
            print(f"hutch: {err}", file=sys.stderr)
            status = 1
    return status


def cmd_stats(args: argparse.Namespace, ctx) -> int:
    """``hutch stats``: a table refreshed every second on a terminal, one sample with ``--no-stream``."""
    from hutch.engine.limits import StatsSampler

    sampler = StatsSampler(ctx.engine, args.containers, include_stopped=args.all)
    tty = sys.stdout.isatty()
    first = True
    while True:
        rows = sampler.sample()
        if tty and not args.no_stream:
            sys.stdout.write("\033[H\033[2J" if not first else "\033[2J\033[H")
        _print_stats(rows, args)
        sys.stdout.flush()
        first = False
        if args.no_stream or (args.containers and not rows):
            return 0
        sampler.wait()


_COLUMNS = (
    ("CONTAINER ID", "ID"),
    ("NAME", "Name"),
    ("CPU %", "CPUPerc"),
    ("MEM USAGE / LIMIT", "MemUsage"),
    ("MEM %", "MemPerc"),
    ("NET I/O", "NetIO"),
    ("BLOCK I/O", "BlockIO"),
    ("PIDS", "PIDs"),
)


def _print_stats(rows: list[dict], args: argparse.Namespace) -> None:
    from hutch.cli.format import table

    if not args.no_trunc:
        rows = [dict(r, ID=r["ID"][:12]) for r in rows]
    if args.format == "json":
        for r in rows:
            print(json.dumps({k: r[k] for k in sorted(r) if not k.startswith("_")}))
    elif args.format:
        for r in rows:
            print(_template(args.format, r))
    else:
        print(table([h for h, _ in _COLUMNS], [[str(r[k]) for _, k in _COLUMNS] for r in rows]))


def _template(template: str, row: dict) -> str:
    """Docker's ``--format`` for the simple case it is used for: ``{{.Field}}`` placeholders, ``\\t``."""
    import re

    from hutch.errors import InvalidArgument

    def field(m: re.Match) -> str:
        if m.group(1) not in row:
            raise InvalidArgument(f"invalid --format {template!r}: no field {m.group(1)!r}")
        return str(row[m.group(1)])

    text = template.removeprefix("table ").replace("\\t", "\t")
    return re.sub(r"\{\{\s*\.(\w+)\s*\}\}", field, text)
