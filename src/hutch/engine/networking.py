"""The engine's side of container networking: which mode a container has, and when it is wired up.

``none`` and ``host`` never import ``hutch.network``. ``bridge`` and user networks get a namespace made
and wired by the network layer just before the init starts (``attach``) and released when the container
has exited (``detach``), from every path that ends a container: ``finish``, ``reconcile`` after a crash of
hutch or its monitor, ``rm -f``. ``container:NAME`` joins another running container's namespace.
"""

from __future__ import annotations

from hutch.errors import Conflict, InvalidArgument, NotFound


def is_bridged(mode: str) -> bool:
    """Whether the container gets its own interface on a hutch bridge (bridge or a user network)."""
    return mode not in ("none", "host") and not mode.startswith("container:")


def manager(engine):
    from hutch.network.manager import NetworkManager

    return NetworkManager(engine.root, engine.db)


def check_create(engine, opts, image_config: dict) -> dict:
    """At create time: the network must exist, the shared container must exist, fixed host ports must be
    free. Returns what the record keeps for start: the ports to publish (with ``-P`` expanded)."""
    mode = opts.network
    if opts.isolation == "vm" and (mode == "host" or mode.startswith("container:")):
        # the guest has its own kernel and network stack: it cannot share the host's or a container's
        raise InvalidArgument(f"--network {mode} with --isolation vm: use a bridge network or none")
    publish = list(opts.publish)
    if opts.publish_all:
        from hutch.network.ports import exposed_ports

        publish.extend(exposed_ports(image_config))
    if not is_bridged(mode):
        if publish:
            raise InvalidArgument(f"ports cannot be published with --network {mode}")
        if opts.ip or opts.mac_address or opts.network_aliases:
            raise InvalidArgument(
                f"--ip, --mac-address and --network-alias need a bridge network, not {mode}"
            )
    if mode.startswith("container:"):
        other = engine.records.lookup(mode.partition(":")[2])
        _check_joinable(other)
        return {"publish": [], "container": other.id}
    if is_bridged(mode):
        if not manager(engine).exists(mode):
            raise NotFound(f"network {mode} not found")
        if publish:
            from hutch.network.ports import check_free

            check_free(publish)
    return {"publish": publish}


def _check_joinable(other) -> None:
    """A microVM container's network stack is its guest kernel's; the host process behind its record (the
    VM's supervisor) holds the host's namespaces, which a container joining it would get instead."""
    if other.is_microvm:
        raise InvalidArgument(
            f"--network container:{other.name}: it runs in a microVM, whose network is its own"
        )


def shared_etc(engine, opts, cdir, network: dict) -> dict[str, str] | None:
    """``container:NAME`` shares the other container's hosts and resolv.conf (copied, as of now)."""
    if "container" not in network:
        return None
    other = engine.container_dir(network["container"])
    result = {}
    for name in ("hosts", "resolv.conf"):
        with open(other / name, "rb") as src, open(cdir / name, "wb") as dst:
            dst.write(src.read())
        result[f"/etc/{name}"] = str(cdir / name)
    return result


def attach(engine, record):
    """Before the init starts: an ``Attachment`` (bridged), a namespace path (``container:``) or None."""
    opts = record.config.get("options", {})
    mode = opts.get("network", "none")
    if mode.startswith("container:"):
        other = engine.lookup(record.config["network"]["container"])
        _check_joinable(other)
        if other.state != "running":
            raise Conflict(f"cannot join the network of container {other.name}: it is not running")
        return f"/proc/{other.pid}/ns/net"
    if not is_bridged(mode):
        return None
    return manager(engine).attach(
        record.id,
        record.name,
        mode,
        record.config["spec"].get("hostname", record.id[:12]),
        str(engine.container_dir(record.id) / "hosts"),
        ip=opts.get("ip"),
        mac=opts.get("mac_address"),
        aliases=opts.get("network_aliases") or [],
        publish=record.config.get("network", {}).get("publish", []),
        tap=opts.get("isolation") == "vm",  # a microVM's card: a TAP on the bridge, not a veth
    )


def with_netns(spec: dict, path: str) -> dict:
    """A copy of ``spec`` whose network namespace is joined by path rather than made new."""
    linux = dict(spec["linux"])
    linux["namespaces"] = [ns for ns in linux["namespaces"] if ns["type"] != "network"]
    linux["namespaces"].append({"type": "network", "path": path})
    return dict(spec, linux=linux)


def detach(engine, record) -> None:
    """After the container has exited (or was found dead): give back its addresses and ports."""
    if is_bridged(record.config.get("options", {}).get("network", "none")):
        manager(engine).detach(record.id)


def running_ids(engine) -> set[str]:
    return {r.id for r in engine.list(include_stopped=True) if r.state == "running"}


def hold(engine, attachment) -> None:
    """Keep the port sockets open as long as this process (the container's reaper) lives."""
    engine.__dict__.setdefault("_held_ports", []).extend(attachment.sockets)


def held_sockets(engine) -> list:
    """The host-port sockets this process holds for the containers it started (the monitor keeps them
    across its exec into hutch-monitor)."""
    return list(engine.__dict__.get("_held_ports", []))


def connect(engine, network: str, ref: str, ip: str | None = None, aliases: list[str] | None = None) -> None:
    """``network connect``: a running container gets one more interface (Docker also allows created
    ones; hutch wires interfaces at start, so it needs the container running)."""
    from hutch.engine.options import parse_aliases, parse_ip

    record = engine.lookup(ref)
    if not is_bridged(record.config.get("options", {}).get("network", "none")):
        raise Conflict(f"container {record.name} has no network of its own to connect")
    if record.is_microvm:
        # its pid is the supervisor, a host process: a veth would land in the host's namespace
        raise Conflict(f"network connect of container {record.name}: not supported with --isolation vm yet")
    if record.state != "running":
        raise Conflict(f"container {record.name} is not running")
    manager(engine).connect(
        record.id,
        record.pid,
        record.name,
        network,
        record.config["spec"].get("hostname", ""),
        str(engine.container_dir(record.id) / "hosts"),
        address=parse_ip(ip),
        aliases=parse_aliases(aliases or []),
    )


def renamed(engine, record, name: str) -> None:
    """Peers on the container's networks resolve it by its new name from now on."""
    if record.state == "running" and is_bridged(record.config.get("options", {}).get("network", "none")):
        manager(engine).rename(record.id, name)


def disconnect(engine, network: str, ref: str) -> None:
    record = engine.lookup(ref)
    if record.is_microvm and record.state == "running":
        raise Conflict(f"network disconnect of {record.name}: not supported with --isolation vm yet")
    manager(engine).disconnect(record.id, network)


def published(engine, ref: str) -> list:
    """The container's published ports while it runs (``hutch port``)."""
    return published_of(engine, engine.lookup(ref))


def published_of(engine, record) -> list:
    if record.state != "running" or not record.config.get("network", {}).get("publish"):
        return []
    return manager(engine).published(record.id)


def ports_column(engine, record) -> str:
    """``ps``'s PORTS: ``0.0.0.0:8080->80/tcp, ...``."""
    ports = published_of(engine, record)
    return ", ".join(f"{p.host_ip or '0.0.0.0'}:{p.host_port}->{p.container_port}/{p.proto}" for p in ports)


def settings(engine, record) -> dict:
    """``NetworkSettings`` of ``inspect``, from the live leases and ports (empty when not running)."""
    mode = record.config.get("options", {}).get("network", "none")
    result: dict = {"Networks": {}, "Ports": {}, "IPAddress": "", "Gateway": "", "MacAddress": ""}
    if not is_bridged(mode) or record.state != "running":
        return result
    mgr = manager(engine)
    for ep in mgr.endpoints(record.id):
        net = mgr.network(ep.network)
        result["Networks"][ep.network] = {
            "NetworkID": net.id,
            "IPAddress": ep.address,
            "IPPrefixLen": net.prefixlen,
            "Gateway": net.gateway,
            "MacAddress": ep.mac,
            "Aliases": ep.aliases,
        }
        if not result["IPAddress"]:
            result.update(IPAddress=ep.address, Gateway=net.gateway, MacAddress=ep.mac)
    for p in mgr.published(record.id):
        result["Ports"].setdefault(f"{p.container_port}/{p.proto}", []).append(
            {"HostIp": p.host_ip or "0.0.0.0", "HostPort": str(p.host_port)}
        )
    return result


def prune(engine) -> list[str]:
    """``system prune``'s network part: release what dead containers hold, rebuild the nft table, and
    remove unused user networks."""
    mgr = manager(engine)
    mgr.reconcile(running_ids(engine))
    return mgr.prune()
