"""System commands: ``hutch info``."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction, only: str | None = None) -> None:
    """Add ``info``."""
    p = sub.add_parser("info", help="show what this host supports and what hutch holds")
    p.add_argument("--format", help="'json' for machine-readable output")
    p.set_defaults(handler=cmd_info)


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
        f" {'present' if userns['subuid'] else 'missing'})",
        f"KVM: {'usable' if kvm['usable'] else ('present, not usable' if kvm['present'] else 'not present')}",
        f"Kernel Version: {info['KernelVersion']}",
        f"Operating System: {info['OperatingSystem']}",
        f"Architecture: {info['Architecture']}",
        f"CPUs: {info['NCPU']}",
        f"Total Memory: {info['MemTotal'] / 2**30:.1f}GiB",
    ]
    print("\n".join(lines))
    return 0
