"""System commands: ``hutch info`` and ``hutch system info|prune``."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction, only: str | None = None) -> None:
    """Add ``info`` and the ``system`` group."""
    if only in (None, "info"):
        _add_info(sub.add_parser("info", help="show what this host supports and what hutch holds"))
    if only in (None, "system"):
        group = sub.add_parser("system", help="manage hutch").add_subparsers(
            dest="system_command", metavar="COMMAND"
        )
        _add_info(group.add_parser("info", help="show what this host supports and what hutch holds"))
        prune = group.add_parser(
            "prune", help="remove stopped containers, unused networks, orphaned cgroups, dangling images"
        )
        prune.add_argument("-a", "--all", action="store_true", help="remove all unused images too")
        prune.add_argument("-f", "--force", action="store_true", help="do not ask for confirmation")
        prune.set_defaults(handler=cmd_system_prune)


def _add_info(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", help="'json' for machine-readable output")
    p.set_defaults(handler=cmd_info)


def cmd_system_prune(args: argparse.Namespace, ctx) -> int:
    """``hutch system prune``: stopped containers, then orphaned cgroups in every hierarchy, then images
    no container uses (dangling ones, or all with ``-a``); asks first unless ``-f``, as Docker does."""
    import sys

    from hutch.cli.images import print_prune_report
    from hutch.engine.cgroupgc import prune_cgroups

    if not args.force:
        print(
            "WARNING! This will remove:\n  - all stopped containers\n"
            "  - all networks not used by a container\n  - all orphaned hutch cgroups\n"
            f"  - all {'unused' if args.all else 'dangling'} images\n"
            "Are you sure you want to continue? [y/N] ",
            end="",
            flush=True,
        )
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            return 0
    from hutch.engine.networking import prune as prune_networks

    containers = ctx.engine.prune()
    ctx.engine.prune_shifted_layers()  # also the copies a crash between copying and create left
    networks = prune_networks(ctx.engine)
    cgroups = prune_cgroups(ctx.engine)
    report = ctx.images.prune(all=args.all, in_use=ctx.containers_using_image)
    report["SpaceReclaimed"] += ctx.engine.sweep_vm_disks()
    for title, items in (
        ("Deleted Containers:", containers),
        ("Deleted Networks:", networks),
        ("Deleted cgroups:", cgroups),
    ):
        if items:
            print(title, *items, sep="\n")
            print()
    print_prune_report(report)
    return 0


def _summary(ctx) -> dict:
    from hutch import __version__
    from hutch.engine import hostinfo

    records = ctx.engine.list(include_stopped=True)
    running = sum(1 for r in records if r.state == "running")
    info = {
        "ServerVersion": __version__,
        "Containers": len(records),
        "ContainersRunning": running,
        "ContainersStopped": len(records) - running,
        "Images": len(ctx.images.list_images()),
        "Driver": "overlay",
        "DockerRootDir": str(ctx.root),
        "RunRoot": str(ctx.runroot),
    }
    info.update(hostinfo.host())
    layers = ctx.root / "layers"
    info["UserNamespaces"]["idmapped_layers"] = hostinfo.idmapped_mounts(
        str(layers if layers.is_dir() else ctx.root)
    )
    return info


def _yes(value: bool) -> str:
    return "yes" if value else "no"


def cmd_info(args: argparse.Namespace, ctx) -> int:
    """Docker-style ``info`` text, or the same facts as JSON."""
    info = _summary(ctx)
    if args.format == "json":
        print(json.dumps(info, indent=2))
        return 0
    cg, sc, userns, kvm = info["Cgroups"], info["Seccomp"], info["UserNamespaces"], info["KVM"]
    lines = [
        f"Server Version: hutch {info['ServerVersion']}",
        f"Containers: {info['Containers']} (Running: {info['ContainersRunning']},"
        f" Stopped: {info['ContainersStopped']})",
        f"Images: {info['Images']}",
        f"Storage Driver: overlay (kernel support: {_yes(info['Overlayfs'])})",
        f" Root Dir: {info['DockerRootDir']}",
        f"Cgroup Driver: {cg['driver']}",
        f"Cgroup Version: {cg['version'][1:]}"
        + (" (hybrid: v1 controllers, a v2 mount beside)" if cg["hybrid"] else ""),
        "Security Options:",
        f" seccomp: kernel {_yes(sc['kernel'])}, libseccomp {sc['libseccomp'] or 'not found'}",
        f" user namespaces: {_yes(userns['available'])} (max {userns['max']}, /etc/subuid"
        f" {'present' if userns['subuid'] else 'missing'}; layers"
        f" {'idmapped' if userns['idmapped_layers'] else 'chown-ed copies'})",
        f"KVM: {'usable' if kvm['usable'] else ('present, not usable' if kvm['present'] else 'not present')}",
        f"Kernel Version: {info['KernelVersion']}",
        f"Operating System: {info['OperatingSystem']}",
        f"Architecture: {info['Architecture']}",
        f"CPUs: {info['NCPU']}",
        f"Total Memory: {info['MemTotal'] / 2**30:.1f}GiB",
    ]
    print("\n".join(lines))
    return 0
