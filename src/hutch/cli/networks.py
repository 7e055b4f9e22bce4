"""Network commands: ``network create/ls/inspect/rm/connect/disconnect/prune`` and ``port``."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction, only: str | None = None) -> None:
    """Add ``network`` and ``port`` (just ``only`` when given)."""
    if only in (None, "network"):
        _register_network(sub)
    if only in (None, "port"):
        p = sub.add_parser("port", help="list a container's published ports")
        p.add_argument("container", metavar="CONTAINER")
        p.add_argument("private", nargs="?", metavar="PORT[/PROTO]", help="only this container port")
        p.set_defaults(handler=cmd_port)


def _register_network(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("network", help="manage networks").add_subparsers(
        dest="network_command", metavar="COMMAND"
    )
    p = group.add_parser("create", help="create a bridge network")
    p.add_argument("--subnet", help="IPv4 subnet in CIDR form (default: a free /24 from hutch's pool)")
    p.add_argument("--gateway", help="the bridge's address (default: the subnet's first address)")
    p.add_argument("-d", "--driver", default="bridge", help="only bridge")
    p.add_argument("--internal", action="store_true", help="no traffic to or from outside the network")
    p.add_argument("--label", action="append", default=[], metavar="K=V", help="a label")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(handler=cmd_create)
    p = group.add_parser("ls", aliases=["list"], help="list networks")
    p.add_argument("-q", "--quiet", action="store_true", help="only ids")
    p.set_defaults(handler=cmd_ls)
    p = group.add_parser("inspect", help="show networks as JSON")
    p.add_argument("names", nargs="+", metavar="NETWORK")
    p.set_defaults(handler=cmd_inspect)
    p = group.add_parser("rm", aliases=["remove"], help="remove networks")
    p.add_argument("names", nargs="+", metavar="NETWORK")
    p.set_defaults(handler=cmd_rm)
    p = group.add_parser("prune", help="remove networks no container uses")
    p.add_argument("-f", "--force", action="store_true", help="do not ask (hutch never asks)")
    p.set_defaults(handler=cmd_prune)
    p = group.add_parser("connect", help="connect a running container to a network")
    p.add_argument("--ip", help="its address on the network")
    p.add_argument("--alias", action="append", default=[], help="another name on the network")
    p.add_argument("network", metavar="NETWORK")
    p.add_argument("container", metavar="CONTAINER")
    p.set_defaults(handler=cmd_connect)
    p = group.add_parser("disconnect", help="disconnect a container from a network")
    p.add_argument("-f", "--force", action="store_true", help="accepted for compatibility")
    p.add_argument("network", metavar="NETWORK")
    p.add_argument("container", metavar="CONTAINER")
    p.set_defaults(handler=cmd_disconnect)


def _manager(ctx):
    from hutch.network.manager import NetworkManager

    return NetworkManager(ctx.root, ctx.db)


def cmd_create(args: argparse.Namespace, ctx) -> int:
    from hutch.errors import InvalidArgument

    if args.driver != "bridge":
        raise InvalidArgument(f"network driver {args.driver!r} is not supported: only bridge")
    labels = dict(item.partition("=")[::2] for item in args.label)
    net = _manager(ctx).create(args.name, args.subnet, args.gateway, args.internal, labels)
    print(net.id)
    return 0


def cmd_ls(args: argparse.Namespace, ctx) -> int:
    from hutch.cli.format import table

    networks = _manager(ctx).networks()
    rows = [[n.id[:12], n.name, "bridge", "local"] for n in networks]
    if not any(n.name == "bridge" for n in networks):
        rows.insert(0, ["-", "bridge", "bridge", "local"])  # made on first use, listed as Docker does
    rows += [["host", "host", "host", "local"], ["none", "none", "null", "local"]]
    if args.quiet:
        print("\n".join(r[0] for r in rows))
    else:
        print(table(["NETWORK ID", "NAME", "DRIVER", "SCOPE"], rows))
    return 0


def network_json(manager, net, names: dict[str, str]) -> dict:
    """``network inspect`` in Docker's shape."""
    from hutch.engine.inspect import _iso

    containers = {
        ep.container: {
            "Name": names.get(ep.container, ep.name),
            "MacAddress": ep.mac,
            "IPv4Address": f"{ep.address}/{net.prefixlen}",
            "IPv6Address": "",
        }
        for ep in manager.ipam.endpoints_on(net.name)
    }
    return {
        "Name": net.name,
        "Id": net.id,
        "Created": _iso(net.created),
        "Scope": "local",
        "Driver": "bridge",
        "EnableIPv6": False,
        "IPAM": {"Driver": "default", "Config": [{"Subnet": net.subnet, "Gateway": net.gateway}]},
        "Internal": net.internal,
        "Containers": containers,
        "Options": {"com.docker.network.bridge.name": net.bridge},
        "Labels": net.labels,
    }


def cmd_inspect(args: argparse.Namespace, ctx) -> int:
    import sys

    from hutch.errors import NotFound

    manager = _manager(ctx)
    names = {r.id: r.name for r in ctx.engine.list(include_stopped=True)}
    results, status = [], 0
    for ref in args.names:
        try:
            results.append(network_json(manager, manager.network(ref), names))
        except NotFound as err:
            print(f"hutch: {err}", file=sys.stderr)
            status = 1
    print(json.dumps(results, indent=4))
    return status


def cmd_rm(args: argparse.Namespace, ctx) -> int:
    import sys

    from hutch.errors import HutchError

    manager, status = _manager(ctx), 0
    ctx.engine.list(include_stopped=True)  # reconcile: a crashed container must not pin the network
    for ref in args.names:
        try:
            print(manager.remove(ref))
        except HutchError as err:
            print(f"hutch: {err}", file=sys.stderr)
            status = 1
    return status


def cmd_prune(args: argparse.Namespace, ctx) -> int:
    ctx.engine.list(include_stopped=True)
    removed = _manager(ctx).prune()
    if removed:
        print("Deleted Networks:")
        print("\n".join(removed))
    return 0


def cmd_connect(args: argparse.Namespace, ctx) -> int:
    from hutch.engine.networking import connect

    connect(ctx.engine, args.network, args.container, ip=args.ip, aliases=args.alias)
    return 0


def cmd_disconnect(args: argparse.Namespace, ctx) -> int:
    from hutch.engine.networking import disconnect

    disconnect(ctx.engine, args.network, args.container)
    return 0


def cmd_port(args: argparse.Namespace, ctx) -> int:
    """``port NAME [PORT[/PROTO]]``: Docker's ``80/tcp -> 0.0.0.0:8080`` lines."""
    from hutch.engine.networking import published
    from hutch.errors import NotFound

    ports = published(ctx.engine, args.container)
    if args.private:
        number, _, proto = args.private.partition("/")
        ports = [p for p in ports if str(p.container_port) == number and p.proto == (proto or "tcp")]
        if not ports:
            raise NotFound(f"no public port '{args.private}' published for {args.container}")
    for p in sorted(ports, key=lambda p: (p.container_port, p.proto, p.host_port)):
        host = f"{p.host_ip or '0.0.0.0'}:{p.host_port}"
        print(host if args.private else f"{p.container_port}/{p.proto} -> {host}")
    return 0
