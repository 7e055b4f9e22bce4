"""Container commands: run, ps, rm, inspect (and the ``container`` group that aliases them)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys


def register(sub: argparse._SubParsersAction, only: str | None = None) -> None:
    """Add the container commands to the top-level parser (just ``only`` when given)."""

    def wanted(name: str) -> bool:
        return only is None or only == name

    if wanted("run"):
        add_run_arguments(
            sub.add_parser("run", help="run a command in a new container", conflict_handler="resolve")
        )
    if wanted("ps"):
        _add_ps(sub.add_parser("ps", help="list containers"))
    if wanted("rm"):
        _add_rm(sub.add_parser("rm", help="remove containers"))
    if wanted("inspect"):
        _add_inspect(sub.add_parser("inspect", help="show low-level information on containers or images"))
    if wanted("container"):
        _register_container_group(sub)


def _register_container_group(sub: argparse._SubParsersAction) -> None:
    group = sub.add_parser("container", help="manage containers").add_subparsers(
        dest="container_command", metavar="COMMAND"
    )
    add_run_arguments(
        group.add_parser("run", help="run a command in a new container", conflict_handler="resolve")
    )
    _add_ps(group.add_parser("ls", aliases=["ps", "list"], help="list containers"))
    _add_rm(group.add_parser("rm", aliases=["remove"], help="remove containers"))
    prune = group.add_parser("prune", help="remove all stopped containers")
    prune.add_argument("-f", "--force", action="store_true", help="do not ask (hutch never asks)")
    prune.set_defaults(handler=cmd_prune)
    _add_inspect(
        group.add_parser("inspect", help="show low-level information on containers"), containers=True
    )


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of ``run`` (and ``create``, which takes the same)."""
    p.add_argument("--rm", dest="remove", action="store_true", help="remove the container when it exits")
    p.add_argument("-d", "--detach", action="store_true", help="run in the background and print its id")
    p.add_argument("-i", "--interactive", action="store_true", help="keep stdin attached")
    p.add_argument("-t", "--tty", action="store_true", help="allocate a pseudo-terminal")
    p.add_argument("--name", help="name the container")
    p.add_argument(
        "-e", "--env", action="append", default=[], metavar="K=V", help="set an environment variable"
    )
    p.add_argument("--env-file", action="append", default=[], help="read environment variables from a file")
    p.add_argument("-w", "--workdir", help="working directory inside the container")
    p.add_argument("-u", "--user", help="user[:group] to run as (names or numbers)")
    # -h is the hostname, as in Docker (the parser is made with conflict_handler="resolve"; --help stays).
    p.add_argument("-h", "--hostname", help="container host name")
    p.add_argument("-v", "--volume", action="append", default=[], metavar="HOST:CTR[:ro]", help="bind mount")
    p.add_argument("--tmpfs", action="append", default=[], metavar="PATH[:OPTS]", help="mount a tmpfs")
    p.add_argument("--read-only", action="store_true", help="mount the root filesystem read-only")
    p.add_argument("--entrypoint", help="override the image's entrypoint ('' clears it)")
    p.add_argument("--network", "--net", default="none", help="none (default for now) or host")
    p.add_argument("--cap-add", action="append", default=[], metavar="CAP", help="add a capability (or ALL)")
    p.add_argument(
        "--cap-drop", action="append", default=[], metavar="CAP", help="drop a capability (or ALL)"
    )
    p.add_argument("--privileged", action="store_true", help="every capability, no masked paths, no seccomp")
    p.add_argument(
        "--security-opt",
        action="append",
        default=[],
        metavar="OPT",
        help="no-new-privileges[=true], seccomp=unconfined|PROFILE.json",
    )
    p.add_argument("--device", action="append", default=[], metavar="HOST[:CTR][:rwm]", help="add a device")
    p.add_argument("--ulimit", action="append", default=[], metavar="NAME=SOFT[:HARD]", help="set an rlimit")
    p.add_argument(
        "--isolation",
        "--runtime",
        dest="isolation",
        default="container",
        help="container (namespaces, default) or vm (the same container inside a QEMU microVM)",
    )
    p.add_argument("--vm-accel", default="auto", help="auto (KVM if it works, else TCG), kvm or tcg")
    p.add_argument("--vm-kernel", metavar="PATH", help="guest kernel bzImage (default /boot/vmlinuz-*cloud*)")
    p.add_argument("--vm-memory", metavar="SIZE", help="guest RAM, at least 80m (default 128m)")
    p.add_argument("--vm-cpus", type=int, metavar="N", help="guest vCPUs (default 1)")
    p.add_argument(
        "--vm-template", default="on", choices=["on", "off"], help="restore a pre-booted guest (default on)"
    )
    p.add_argument("image", help="image to run")
    p.add_argument("command", nargs=argparse.REMAINDER, help="command and arguments")
    p.set_defaults(handler=cmd_run)


def _add_ps(p: argparse.ArgumentParser) -> None:
    p.add_argument("-a", "--all", action="store_true", help="show stopped containers too")
    p.add_argument("-q", "--quiet", action="store_true", help="only ids")
    p.add_argument("--no-trunc", action="store_true", help="do not truncate ids and commands")
    p.add_argument("--format", help="'json' for one JSON object per line")
    p.set_defaults(handler=cmd_ps)


def _add_rm(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--force", action="store_true", help="kill and remove running containers")
    p.add_argument("-v", "--volumes", action="store_true", help="accepted for compatibility")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")
    p.set_defaults(handler=cmd_rm)


def _add_inspect(p: argparse.ArgumentParser, containers: bool = False) -> None:
    p.add_argument("--type", choices=["container", "image"], default="container" if containers else None)
    p.add_argument("-f", "--format", help="not supported yet; output is JSON")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.set_defaults(handler=cmd_inspect)


def run_options(args: argparse.Namespace):
    """``RunOptions`` from parsed ``run``/``create`` flags; bad values fail before anything exists."""
    from hutch.engine.devices import parse_devices
    from hutch.engine.options import (
        RunOptions,
        check_isolation,
        check_network,
        parse_env,
        parse_env_file,
        parse_security_opts,
        parse_tmpfs,
        parse_ulimit,
        parse_volume,
    )

    env: list[str] = []
    for path in args.env_file:
        env.extend(parse_env_file(path))
    env.extend(parse_env(args.env))
    isolation = check_isolation(args.isolation)
    vm = _vm_options(args) if isolation == "vm" else {}
    entrypoint = None
    if args.entrypoint is not None:
        entrypoint = [args.entrypoint] if args.entrypoint else []
    return RunOptions(
        image=args.image,
        command=list(args.command),
        name=args.name,
        entrypoint=entrypoint,
        env=env,
        workdir=args.workdir,
        user=args.user,
        hostname=args.hostname,
        volumes=[parse_volume(v) for v in args.volume],
        tmpfs=[parse_tmpfs(t) for t in args.tmpfs],
        read_only=args.read_only,
        network=check_network(args.network),
        interactive=args.interactive,
        tty=args.tty,
        remove=args.remove,
        detach=args.detach,
        cap_add=args.cap_add,
        cap_drop=args.cap_drop,
        privileged=args.privileged,
        ulimits=[parse_ulimit(u) for u in args.ulimit],
        devices=parse_devices(args.device),
        isolation=isolation,
        **vm,
        **parse_security_opts(args.security_opt),
    )


def _vm_options(args: argparse.Namespace) -> dict:
    """The ``--vm-*`` flags, checked before anything is created."""
    from hutch.engine.options import InvalidArgument, check_vm_accel, parse_memory_mib

    accel = check_vm_accel(args.vm_accel)
    if args.vm_cpus is not None and not 1 <= args.vm_cpus <= 64:
        raise InvalidArgument(f"invalid --vm-cpus {args.vm_cpus}: expected 1 to 64")
    return {
        "vm_accel": accel,
        "vm_kernel": os.path.abspath(args.vm_kernel) if args.vm_kernel else None,
        "vm_memory_mib": parse_memory_mib(args.vm_memory) if args.vm_memory else None,
        "vm_cpus": args.vm_cpus,
        "vm_template": args.vm_template,
    }


def cmd_run(args: argparse.Namespace, ctx) -> int:
    """``hutch run``: the container's exit status becomes ours."""
    from hutch.errors import InvalidArgument

    opts = run_options(args)
    if opts.detach and opts.remove and opts.interactive:
        raise InvalidArgument("--rm with -d -i is not supported")
    engine = ctx.engine
    record = engine.create(opts)
    if opts.detach:
        from hutch.engine.monitor import start_detached

        try:
            start_detached(ctx, record)
        except BaseException:
            if opts.remove:
                ctx.engine.remove(record.id, force=True)
            raise
        print(record.id)
        return 0
    return run_attached(engine, record, opts.interactive)


def run_attached(engine, record, interactive: bool) -> int:
    """Start ``record`` in the foreground: its exit status becomes ours, signals are forwarded and a pty
    (when the spec asks for a terminal) relayed."""
    from hutch.cli.terminal import FORWARDED_SIGNALS, attend

    stdin = sys.stdin.fileno() if interactive else os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    # why block: a signal arriving between the exec and the handlers below would kill hutch instead of
    # reaching the container; blocked, it waits and is forwarded once the handlers are in place.
    signal.pthread_sigmask(signal.SIG_BLOCK, FORWARDED_SIGNALS)
    try:
        proc = engine.start(record, (stdin, sys.stdout.fileno(), sys.stderr.fileno()), die_with_parent=True)
    except BaseException:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED_SIGNALS)
        if record.config.get("options", {}).get("remove"):
            engine.remove(record.id, force=True)
        raise
    return engine.finish(record, attend(proc.pid, proc.console, interactive))


def _status(record) -> str:
    from hutch.cli.format import ago, duration

    if record.state == "running":
        return f"Up {duration(__import__('time').time() - (record.started or record.created))}"
    if record.state == "exited":
        return f"Exited ({record.exit_code}) {ago(record.finished or record.created)}"
    return record.state.capitalize()


def cmd_ps(args: argparse.Namespace, ctx) -> int:
    """``hutch ps``: Docker's columns."""
    from hutch.cli.format import ago, table

    records = ctx.engine.list(args.all)
    if args.quiet:
        for r in records:
            print(r.id if args.no_trunc else r.id[:12])
        return 0
    if args.format == "json":
        for r in records:
            print(json.dumps(_summary(r)))
        return 0
    rows = []
    for r in records:
        command = " ".join(r.config["spec"]["process"]["args"])
        if not args.no_trunc and len(command) > 20:
            command = command[:19] + "…"
        rows.append(
            [
                r.id if args.no_trunc else r.id[:12],
                r.image_ref,
                f'"{command}"',
                ago(r.created),
                _status(r),
                "",
                r.name,
            ]
        )
    print(table(["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"], rows))
    return 0


def _summary(r) -> dict:
    return {
        "ID": r.id,
        "Names": r.name,
        "Image": r.image_ref,
        "State": r.state,
        "Status": _status(r),
        "Command": " ".join(r.config["spec"]["process"]["args"]),
    }


def cmd_rm(args: argparse.Namespace, ctx) -> int:
    """``hutch rm``: every name is tried; the exit status says whether any failed."""
    from hutch.errors import HutchError

    status = 0
    for ref in args.containers:
        try:
            ctx.engine.remove(ref, force=args.force)
            print(ref)
        except HutchError as err:
            print(f"hutch: {err}", file=sys.stderr)
            status = 1
    return status


def cmd_inspect(args: argparse.Namespace, ctx) -> int:
    """``hutch inspect``: containers first, then images, as Docker resolves a bare name."""
    from hutch.engine.inspect import inspect_container
    from hutch.errors import NotFound

    results = []
    status = 0
    for name in args.names:
        try:
            if args.type != "image":
                try:
                    results.append(inspect_container(ctx.engine, ctx.engine.lookup(name)))
                    continue
                except NotFound:
                    if args.type == "container":
                        raise
            results.append(ctx.images.inspect(name))
        except NotFound:
            print(f"hutch: no such object: {name}", file=sys.stderr)
            status = 1
    print(json.dumps(results, indent=4))
    return status


def cmd_prune(args: argparse.Namespace, ctx) -> int:
    """``container prune``: Docker's output, the removed ids then a total."""
    removed = ctx.engine.prune()
    if removed:
        print("Deleted Containers:")
        for cid in removed:
            print(cid)
    print(f"Total reclaimed containers: {len(removed)}")
    return 0
