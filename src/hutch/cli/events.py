"""``hutch events``: what hutch processes did to containers, from the root's event log."""

from __future__ import annotations

import argparse
import json
import sys


def register(sub: argparse._SubParsersAction, only: str | None = None) -> None:
    p = sub.add_parser("events", help="show container events (create, start, die, destroy, ...)")
    p.add_argument("--since", help="show events since a time (RFC 3339, Unix time, or 10m ago)")
    p.add_argument("--until", help="stop at a time (RFC 3339, Unix time, or 10m ago)")
    p.add_argument("-f", "--filter", action="append", default=[], metavar="KEY=VALUE",
                   help="container=, event=, image=, type=")  # fmt: skip
    p.add_argument("--format", help="'json' or a Go template ('{{.Action}} {{.Actor.Attributes.name}}')")
    p.set_defaults(handler=cmd_events)


def cmd_events(args: argparse.Namespace, ctx) -> int:
    """Past events from --since, then new ones as they happen, until --until or Ctrl-C."""
    from hutch.engine.events import event_filter, read
    from hutch.engine.logs import parse_time, stamp_of

    since = _nanos(parse_time(args.since, "--since")) if args.since else None
    until = _nanos(parse_time(args.until, "--until")) if args.until else None
    matches = event_filter(args.filter)
    template = None
    if args.format and args.format != "json":
        from hutch.cli.gotemplate import Template

        template = Template(args.format)

    def show(event: dict) -> None:
        if args.format == "json":
            line = json.dumps(event)
        elif template is not None:
            line = template.render(event)
        else:
            attrs = ", ".join(f"{k}={v}" for k, v in sorted(event["Actor"]["Attributes"].items()))
            stamp = stamp_of(event["timeNano"] / 1e9)[:20] + f"{event['timeNano'] % 1_000_000_000:09d}Z"
            line = f"{stamp} {event['Type']} {event['Action']} {event['id']} ({attrs})"
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    read(ctx.root, since, until, matches, follow=until is None or until > _now(), out=show)
    return 0


def _nanos(stamp: str) -> int:
    """A log timestamp (``2026-11-27T20:13:17.123456789Z``) as Unix nanoseconds."""
    import calendar
    import time

    seconds = calendar.timegm(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S"))
    return seconds * 1_000_000_000 + int(stamp[20:29])


def _now() -> int:
    import time

    return time.time_ns()
