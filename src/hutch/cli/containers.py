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
    add_network_arguments(p)
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
    # --- lifecycle: restart policy and log options ---
    p.add_argument("--restart", default="no", help="no, on-failure[:N], always or unless-stopped")
    p.add_argument(
        "--log-opt", action="append", default=[], metavar="KEY=VALUE", help="max-size=SIZE, max-file=N"
    )
    p.add_argument(
        "--userns", default="host", help="host (default) or auto[:size=N]: container root unprivileged"
    )
    p.add_argument(
        "--userns-remap", metavar="USER", help="map to USER's first /etc/subuid range ('default': root)"
    )
    p.add_argument("-l", "--label", action="append", default=[], metavar="K=V", help="set a label")
    p.add_argument("--log-driver", default="k8s-file", help="k8s-file (the only one; json-file is taken too)")
    p.add_argument(
        "--pull",
        default="missing",
        choices=("missing", "always", "never"),
        help="pull the image first: when the store lacks it (default), always, or never",
    )
    _add_limit_arguments(p)
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


# --- networking (issue 6) ---


def add_network_arguments(p: argparse.ArgumentParser) -> None:
    """The network flags of ``run``/``create``."""
    from hutch.engine.options import DEFAULT_NETWORK

    p.add_argument(
        "--network",
        "--net",
        default=DEFAULT_NETWORK,
        help=f"none, host, bridge, container:NAME or a network's name (default {DEFAULT_NETWORK})",
    )
    p.add_argument(
        "--network-alias", action="append", default=[], metavar="NAME", help="another name on the network"
    )
    p.add_argument(
        "-p",
        "--publish",
        action="append",
        default=[],
        metavar="[IP:][HOSTPORT:]PORT[/PROTO]",
        help="publish a container port on the host",
    )
    p.add_argument(
        "-P", "--publish-all", action="store_true", help="publish every EXPOSEd port to a free port"
    )
    p.add_argument("--ip", help="the container's IPv4 address on its network")
    p.add_argument("--mac-address", help="the container's MAC address")
    p.add_argument("--dns", action="append", default=[], metavar="IP", help="a nameserver for resolv.conf")
    p.add_argument("--add-host", action="append", default=[], metavar="NAME:IP", help="an /etc/hosts line")


def network_options(args: argparse.Namespace) -> dict:
    """The network flags as ``RunOptions`` fields, validated."""
    from hutch.engine.options import (
        check_network,
        parse_add_host,
        parse_aliases,
        parse_dns,
        parse_ip,
        parse_mac,
    )

    publish = []
    if args.publish:
        from hutch.network.ports import parse_publish

        publish = [parse_publish(item) for item in args.publish]
    return {
        "network": check_network(args.network),
        "publish": publish,
        "publish_all": args.publish_all,
        "ip": parse_ip(args.ip),
        "mac_address": parse_mac(args.mac_address),
        "dns": parse_dns(args.dns),
        "add_hosts": [parse_add_host(h) for h in args.add_host],
        "network_aliases": parse_aliases(args.network_alias),
    }


def _add_limit_arguments(p: argparse.ArgumentParser) -> None:
    """Resource limits (--memory, --cpus, ...): defined in ``cli.limits``."""
    from hutch.cli.limits import add_resource_arguments

    add_resource_arguments(p)


def _add_ps(p: argparse.ArgumentParser) -> None:
    p.add_argument("-a", "--all", action="store_true", help="show stopped containers too")
    p.add_argument("-q", "--quiet", action="store_true", help="only ids")
    p.add_argument("--no-trunc", action="store_true", help="do not truncate ids and commands")
    p.add_argument("--format", help="'json', a Go template ('{{.Names}}') or 'table TEMPLATE'")
    p.add_argument(
        "-f", "--filter", action="append", default=[], metavar="KEY=VALUE",
        help="status=, name=, id=, label=KEY[=VALUE], ancestor=",
    )  # fmt: skip
    p.set_defaults(handler=cmd_ps)


def _add_rm(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--force", action="store_true", help="kill and remove running containers")
    p.add_argument("-v", "--volumes", action="store_true", help="accepted for compatibility")
    p.add_argument("containers", nargs="+", metavar="CONTAINER")
    p.set_defaults(handler=cmd_rm)


def _add_inspect(p: argparse.ArgumentParser, containers: bool = False) -> None:
    p.add_argument("--type", choices=["container", "image"], default="container" if containers else None)
    p.add_argument("-f", "--format", help="a Go template ('{{.State.Status}}') or 'json'")
    p.add_argument("names", nargs="+", metavar="NAME")
    p.set_defaults(handler=cmd_inspect)


def run_options(args: argparse.Namespace):
    """``RunOptions`` from parsed ``run``/``create`` flags; bad values fail before anything exists."""
    from hutch.engine.devices import parse_devices
    from hutch.engine.options import (
        RunOptions,
        check_isolation,
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
    limits = _limit_options(args)
    vm = _vm_options(args, limits["resources"]) if isolation == "vm" else {}
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
        interactive=args.interactive,
        tty=args.tty,
        remove=args.remove,
        detach=args.detach,
        cap_add=args.cap_add,
        cap_drop=args.cap_drop,
        privileged=args.privileged,
        ulimits=[parse_ulimit(u) for u in args.ulimit],
        devices=parse_devices(args.device),
        **limits,
        isolation=isolation,
        **vm,
        **parse_security_opts(args.security_opt),
        **_lifecycle_options(args),
        **network_options(args),
    )


def _lifecycle_options(args: argparse.Namespace) -> dict:
    """``--restart``, ``--log-driver`` and ``--log-opt``, checked against each other and ``--rm``."""
    from hutch.engine.logopts import parse_log_opts
    from hutch.engine.restart import parse_restart
    from hutch.errors import InvalidArgument

    restart = parse_restart(args.restart)
    if restart != "no" and args.remove:
        raise InvalidArgument("conflicting options: --restart and --rm")
    if args.log_driver not in ("k8s-file", "json-file"):
        raise InvalidArgument(f"invalid --log-driver {args.log_driver!r}: only k8s-file is supported")
    labels = {}
    for item in args.label:
        key, _, value = item.partition("=")
        if not key:
            raise InvalidArgument(f"invalid --label {item!r}: expected KEY[=VALUE]")
        labels[key] = value
    if args.userns != "host":
        from hutch.engine.userns import parse_userns

        parse_userns(args.userns)  # checked now; the ids are allocated by the engine at create
    if args.privileged and (args.userns != "host" or args.userns_remap):
        raise InvalidArgument("--privileged cannot be used with a user namespace (--userns=host needed)")
    return {
        "restart": restart,
        "log_opts": parse_log_opts(args.log_opt),
        "labels": labels,
        "userns": args.userns,
        "userns_remap": args.userns_remap,
    }


def ensure_image(args: argparse.Namespace, ctx) -> None:
    """``--pull``: fetch the image from its registry when the store lacks it (``missing``), every time
    (``always``) or never. The registry code is imported only when a pull happens, so running an image
    the store has costs one lookup."""
    from hutch.errors import HutchError, NotFound

    if args.pull == "never":
        return
    if args.pull == "missing":
        try:
            ctx.images.resolve(args.image)
            return
        except NotFound:
            pass
    from hutch.cli.registry import pull_image

    try:
        pull_image(ctx, args.image, quiet=not sys.stderr.isatty(), out=sys.stderr)
    except HutchError as err:
        if args.pull == "always":
            raise
        raise NotFound(f'image "{args.image}" not found locally, and pulling it failed: {err}')


def _limit_options(args: argparse.Namespace) -> dict:
    """``RunOptions`` fields of the resource flags (``cli.limits``)."""
    from hutch.cli.limits import resources_from_args

    return {"resources": resources_from_args(args), "cgroup_parent": args.cgroup_parent}


def _vm_options(args: argparse.Namespace, resources: dict) -> dict:
    """The ``--vm-*`` flags, checked before anything is created. ``--memory`` and ``--cpus`` size the guest
    when the ``--vm-*`` ones are not given (guest RAM and vCPUs are what a VM's limits are)."""
    import math

    from hutch.engine.options import InvalidArgument, check_vm_accel, parse_memory_mib

    accel = check_vm_accel(args.vm_accel)
    cpus = args.vm_cpus
    quota, period = resources.get("cpu", {}).get("quota", 0), resources.get("cpu", {}).get("period", 0)
    if cpus is None and quota > 0 and period:
        cpus = math.ceil(quota / period)
    if cpus is not None and not 1 <= cpus <= 64:
        raise InvalidArgument(f"invalid --vm-cpus {cpus}: expected 1 to 64")
    memory = parse_memory_mib(args.vm_memory) if args.vm_memory else None
    limit = resources.get("memory", {}).get("limit", 0)
    if memory is None and limit > 0:
        memory = parse_memory_mib(f"{limit}", flag="memory")
    return {
        "vm_accel": accel,
        "vm_kernel": os.path.abspath(args.vm_kernel) if args.vm_kernel else None,
        "vm_memory_mib": memory,
        "vm_cpus": cpus,
        "vm_template": args.vm_template,
    }


def cmd_run(args: argparse.Namespace, ctx) -> int:
    """``hutch run``: the container's exit status becomes ours."""
    opts = run_options(args)
    ensure_image(args, ctx)
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
    options = record.config.get("options", {})
    out, err, copier = sys.stdout.fileno(), sys.stderr.fileno(), None
    if not options.get("remove") and not options.get("tty"):
        # Kept containers keep their output for ``hutch logs``; --rm ones would throw it away unread, so
        # their output goes straight to ours and costs nothing.
        from hutch.engine.monitor import start_copier
        from hutch.errors import HutchError

        try:
            out, err, copier = start_copier(engine, record, out, err)
        except HutchError as why:  # no C compiler: run anyway, without a log
            print(f"hutch: warning: the container's output is not logged: {why}", file=sys.stderr)
    try:
        proc = engine.start(record, (stdin, out, err), die_with_parent=True)
    except BaseException:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, FORWARDED_SIGNALS)
        if options.get("remove"):
            engine.remove(record.id, force=True)
        raise
    finally:
        if copier is not None:
            os.close(out)
            os.close(err)
    status = attend(proc.pid, proc.console, interactive)
    if copier is not None:
        os.waitpid(copier, 0)  # all output is through before we report the exit
    return engine.finish(record, status)


def _status(record) -> str:
    from hutch.cli.format import ago, duration

    if record.state in ("running", "paused"):
        up = f"Up {duration(__import__('time').time() - (record.started or record.created))}"
        return up + " (Paused)" if record.state == "paused" else up
    if record.state == "restarting":
        return f"Restarting ({record.exit_code}) {ago(record.finished or record.created)}"
    if record.state == "exited":
        return f"Exited ({record.exit_code}) {ago(record.finished or record.created)}"
    return record.state.capitalize()


def cmd_ps(args: argparse.Namespace, ctx) -> int:
    """``hutch ps``: Docker's columns."""
    from hutch.cli.format import ago, table

    records = ctx.engine.list(args.all or any(f.startswith("status=") for f in args.filter))
    if args.filter:
        from hutch.engine.filters import container_filter

        keep = container_filter(args.filter)
        records = [r for r in records if keep(r)]
    if args.quiet:
        for r in records:
            print(r.id if args.no_trunc else r.id[:12])
        return 0
    if args.format == "json":
        for r in records:
            print(json.dumps(_summary(r, args.no_trunc, _ports_column(ctx, r))))
        return 0
    if args.format:
        from hutch.cli.gotemplate import render_rows

        sys.stdout.write(
            render_rows(args.format, [_summary(r, args.no_trunc, _ports_column(ctx, r)) for r in records])
        )
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
                _ports_column(ctx, r),
                r.name,
            ]
        )
    print(table(["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"], rows))
    return 0


def _ports_column(ctx, record) -> str:
    from hutch.engine.networking import ports_column

    return ports_column(ctx.engine, record)


def _summary(r, full_id: bool = False, ports: str = "") -> dict:
    """The fields ``ps --format`` offers, named as Docker's."""
    import time

    from hutch.cli.format import ago

    labels = r.config.get("options", {}).get("labels") or {}
    return {
        "ID": r.id if full_id else r.id[:12],
        "Names": r.name,
        "Image": r.image_ref,
        "State": r.state,
        "Status": _status(r),
        "Command": '"' + " ".join(r.config["spec"]["process"]["args"]) + '"',
        "CreatedAt": time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(r.created)),
        "RunningFor": ago(r.created),
        "Labels": ",".join(f"{k}={v}" for k, v in sorted(labels.items())),
        "Ports": ports,
        "Mounts": "",
        "Networks": r.config.get("options", {}).get("network", ""),
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
    if args.format and args.format != "json":
        from hutch.cli.gotemplate import Template

        template = Template(args.format.replace("\\t", "\t").replace("\\n", "\n"))
        for result in results:
            print(template.render(result))
        return status
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
