"""The network layer's one entry point for the engine: networks, attaching containers, teardown.

Host-global names are derived from the root, so test roots and the default root never share a bridge or a
table: the default root (/var/lib/hutch) has bridge ``hutch0`` and nft table ``hutch``; any other root gets
``hutch<crc>`` and ``hutch-<crc>``. User networks get ``hbr-<id>`` bridges, containers ``vh<cid><net>`` veths.

Changes are serialised per root by a lock file; choosing a subnet is serialised host-wide (two roots must
not pick the same free subnet at once), and a subnet is free when no host route or address overlaps it.
"""

from __future__ import annotations

import fcntl
import os
import re
import zlib
from pathlib import Path

from hutch.db import Database
from hutch.errors import Conflict, HutchError, InvalidArgument, NotFound
from hutch.network import dns, nat
from hutch.network.ipam import Endpoint, Ipam, Network, int_to_ip, ip_to_int, split_cidr
from hutch.network.ports import PortTable, reserve

DEFAULT_ROOT = Path("/var/lib/hutch")
DEFAULT_NETWORK = dns.DEFAULT_NETWORK
RESERVED = ("bridge", "default", "host", "none")


# Pools chosen away from Docker's (172.17.0.0/16 up) and Podman's (10.88.0.0/16, 10.89.x.0/24) defaults.
# A root's default network takes a /16 (65k addresses) while one of 14 is free, then a /24 from
# 10.200.0.0/13 (2048 more), so many roots on one host (tests, CI jobs, users' --root) do not run out.
def _default_pool():
    yield from ((10 << 24 | n << 16, 16) for n in range(66, 80))
    yield from ((10 << 24 | n << 16 | m << 8, 24) for n in range(200, 208) for m in range(256))


def _user_pool():
    return ((10 << 24 | n << 16 | m << 8, 24) for n in range(80, 96) for m in range(256))


GLOBAL_LOCK = "/run/hutch-network.lock"
LINK_PREFIXES = ("vh", "hbr-", "hutch")


def overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    prefix = min(a[1], b[1])
    mask = (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF
    return (a[0] & mask) == (b[0] & mask)


def parse_subnet(text: str) -> tuple[int, int]:
    """``A.B.C.D/N`` with host bits zero and a prefix between 8 and 30."""
    address, sep, prefix = text.partition("/")
    try:
        base = ip_to_int(address)
    except ValueError:
        raise InvalidArgument(f"invalid subnet {text!r}: expected A.B.C.D/N")
    if not sep or not prefix.isdigit() or not 8 <= int(prefix) <= 30:
        raise InvalidArgument(f"invalid subnet {text!r}: the prefix length must be 8 to 30")
    if base & ((1 << (32 - int(prefix))) - 1):
        raise InvalidArgument(f"invalid subnet {text!r}: host bits are set")
    return base, int(prefix)


class Attachment:
    """What a started container holds on to: its namespace (until its init has entered it) or, for a
    microVM, its TAP device (until QEMU has inherited it), and the sockets that keep its published host
    ports reserved (for the container's lifetime)."""

    def __init__(self, sandbox, sockets: list, endpoint: Endpoint) -> None:
        self.sandbox = sandbox
        self.sockets = sockets
        self.endpoint = endpoint

    @property
    def netns_path(self) -> str:
        return self.sandbox.path

    def guest_config(self) -> dict:
        """A microVM's card: the TAP fd and the guest's eth0 settings (see ``network.tap``)."""
        return self.sandbox.guest_config()

    def release_namespace(self) -> None:
        """After the init has joined (or QEMU has inherited the TAP): our fd is no longer needed, the
        container's processes hold it."""
        self.sandbox.close()


class NetworkManager:
    """Networks of one hutch root."""

    def __init__(self, root: Path, db: Database) -> None:
        self.root = root
        self.db = db
        self.ipam = Ipam(db)
        self.ports = PortTable(db)
        tag = "" if root == DEFAULT_ROOT else f"{zlib.crc32(str(root).encode()):08x}"
        self.default_bridge = f"hutch{tag}" if tag else "hutch0"
        self.table = f"hutch-{tag}" if tag else "hutch"

    # --- locking ------------------------------------------------------------------------------------

    def _lock(self, path: str | None = None):
        return _FileLock(path or str(self.root / "network.lock"))

    # --- networks -----------------------------------------------------------------------------------

    def create(
        self,
        name: str,
        subnet: str | None = None,
        gateway: str | None = None,
        internal: bool = False,
        labels: dict | None = None,
    ) -> Network:
        """``network create``: the record, the bridge and the NAT rules, or an error and none of them."""
        if not re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}", name):
            raise InvalidArgument(f"invalid network name {name!r}")
        if name in RESERVED:
            raise Conflict(f"{name} is a pre-defined network and cannot be created")
        net_id = os.urandom(32).hex()
        with self._lock():
            return self._add(name, net_id, f"hbr-{net_id[:11]}", subnet, gateway, internal, labels or {})

    def _add(self, name, net_id, bridge, subnet, gateway, internal, labels) -> Network:
        if self.ipam.find_network(name):
            raise Conflict(f"network with name {name} already exists")
        with self._lock(GLOBAL_LOCK):
            if subnet is not None:
                base, prefix = parse_subnet(subnet)
                self._check_free((base, prefix), subnet)
            else:
                base, prefix = self._choose(_default_pool() if name == DEFAULT_NETWORK else _user_pool())
            gw = gateway or int_to_ip(base + 1)
            try:
                value = ip_to_int(gw)
            except ValueError:
                raise InvalidArgument(f"invalid gateway {gw!r}")
            if not base < value < base + (1 << (32 - prefix)) - 1:
                raise InvalidArgument(f"gateway {gw} is not in subnet {int_to_ip(base)}/{prefix}")
            net = self.ipam.add_network(
                name, net_id, f"{int_to_ip(base)}/{prefix}", gw, bridge, internal, labels
            )
            try:
                self._materialise(net)
            except BaseException:
                self._unmaterialise(net)
                with self.db.transaction() as conn:
                    conn.execute("DELETE FROM networks WHERE name=?", (name,))
                try:
                    self.sync_nat()  # the rules as they were before this network
                except HutchError:
                    pass  # the original error says more
                raise
        return net

    def _taken(self) -> list[tuple[int, int]]:
        from hutch.network import links

        return links.host_subnets() + [split_cidr(n.subnet) for n in self.ipam.networks()]

    def _check_free(self, wanted: tuple[int, int], text: str) -> None:
        for other in self._taken():
            if overlaps(wanted, other):
                raise Conflict(
                    f"subnet {text} overlaps {int_to_ip(other[0])}/{other[1]}, already routed on this host"
                    " or used by another network"
                )

    def _choose(self, pool) -> tuple[int, int]:
        taken = self._taken()
        for candidate in pool:
            if not any(overlaps(candidate, other) for other in taken):
                return candidate
        raise Conflict("no free subnet left in hutch's address pools: give one with --subnet")

    def _materialise(self, net: Network) -> None:
        from hutch.network import links

        links.create_bridge(net.bridge, net.gateway, net.prefixlen)
        self.sync_nat()

    def _unmaterialise(self, net: Network) -> None:
        from hutch.network import links

        links.delete_link(net.bridge)

    def sync_nat(self) -> None:
        """Rebuild the root's nft table from the database (networks whose bridge exists, live ports)."""
        from hutch.network import links

        networks = [n for n in self.ipam.networks() if links.exists(n.bridge)]
        nat.sync(self.table, networks, [p for _, p in self.ports.all()])

    def remove(self, ref: str) -> str:
        """``network rm``: refused while containers are attached; the bridge and rules go with it."""
        with self._lock():
            net = self.ipam.network(ref)
            if net.name == DEFAULT_NETWORK:
                raise Conflict(f"{net.name} is a pre-defined network and cannot be removed")
            self.ipam.delete_network(net.name)
            self._unmaterialise(net)
            self.sync_nat()
        return net.name

    def network(self, ref: str) -> Network:
        if ref == "default":
            ref = DEFAULT_NETWORK
        return self.ipam.network(ref)

    def networks(self) -> list[Network]:
        return self.ipam.networks()

    def exists(self, ref: str) -> bool:
        if ref in (DEFAULT_NETWORK, "default"):
            return True
        try:
            self.ipam.network(ref)
        except NotFound:
            return False
        return True

    def _ready(self, ref: str) -> Network:
        """The network, with its bridge and rules in place (made on first use, or again after a reboot)."""
        from hutch.network import links

        if ref in (DEFAULT_NETWORK, "default"):
            net = self.ipam.find_network(DEFAULT_NETWORK)
            if net is None:
                return self._add(
                    DEFAULT_NETWORK, os.urandom(32).hex(), self.default_bridge, None, None, False, {}
                )
        else:
            net = self.ipam.network(ref)
        if not links.exists(net.bridge):
            # after a reboot (or someone deleted the bridge): make it again, if its subnet is still free
            with self._lock(GLOBAL_LOCK):
                for other in links.host_subnets():
                    if overlaps(split_cidr(net.subnet), other):
                        raise Conflict(
                            f"network {net.name}: its subnet {net.subnet} is now routed elsewhere on this"
                            f" host ({int_to_ip(other[0])}/{other[1]})"
                        )
                self._materialise(net)
        return net

    # --- containers ---------------------------------------------------------------------------------

    def attach(
        self,
        cid: str,
        name: str,
        network: str,
        hostname: str,
        hosts_path: str,
        *,
        ip: str | None = None,
        mac: str | None = None,
        aliases: list[str] | None = None,
        publish: list[dict] | None = None,
        tap: bool = False,
    ) -> Attachment:
        """A new network namespace for ``cid`` wired to ``network`` (``tap``: a TAP device on the bridge
        for a microVM instead), with its published ports; on any failure nothing is left (lease, ports,
        rules, namespace or TAP)."""
        from hutch.network.sandbox import Sandbox

        with self._lock():
            net = self._ready(network)
            link = f"vh{cid[:9]}{net.id[:4]}"
            ep = self.ipam.lease(
                net, cid, name, link, address=ip, mac=mac, aliases=aliases, hosts_path=hosts_path
            )
            sockets: list = []
            box = None
            try:
                sockets = self._publish(cid, ep, publish or [])
                if tap:
                    from hutch.network.tap import Tap

                    box = Tap.new(net, ep)
                else:
                    box = Sandbox.new()
                    box.add_interface(net, ep, "eth0", default_route=True)
                dns.add_self(hosts_path, ep.address, [hostname])
                if net.name != DEFAULT_NETWORK:
                    dns.refresh(self.ipam, {cid} | dns.neighbours(self.ipam, cid))
            except BaseException:
                if box is not None:
                    box.close()
                for sock in sockets:
                    sock.close()
                self._release(cid)
                raise
        return Attachment(box, sockets, ep)

    def _publish(self, cid: str, ep: Endpoint, wanted: list[dict]) -> list:
        if not wanted:
            return []
        held = reserve(wanted)
        try:
            ports = [
                nat.Port(w["proto"], w["host_ip"], w["host_port"], ep.address, w["container_port"])
                for w, _ in held
            ]
            self.ports.claim(cid, ports)
            try:
                nat.add_ports(self.table, ports)
            except HutchError:
                self.sync_nat()  # iptables, or the table was flushed by someone: rebuild (the claim is in)
        except BaseException:
            for _, sock in held:
                sock.close()
            raise
        return [sock for _, sock in held]

    def detach(self, cid: str) -> None:
        """The container has stopped: its links, leases, ports and peers' host entries go."""
        with self._lock():
            self._release(cid)

    def _release(self, cid: str) -> None:
        from hutch.network.sandbox import Sandbox

        # why delete what the kernel deletes anyway: a veth goes with its namespace, but the kernel
        # destroys namespaces from a workqueue that lagged over 30 s on a busy host; a stopped container's
        # links go now (a TAP is gone already with its QEMU, and a missing link is fine).
        for endpoint in self.ipam.endpoints_of(cid):
            Sandbox.remove_link(endpoint.link)
        peers = dns.neighbours(self.ipam, cid)
        self.ipam.release(cid)
        ports = self.ports.release(cid)
        if ports:
            try:
                nat.remove_ports(self.table, ports)
            except HutchError:
                self.sync_nat()
        if peers:
            dns.refresh(self.ipam, peers)

    def connect(
        self, cid: str, pid: int, name: str, network: str, hostname: str, hosts_path: str, **kw
    ) -> Endpoint:
        """``network connect`` of a running container: one more veth, ``ethN``, no default route."""
        from hutch.network.sandbox import Sandbox

        with self._lock():
            net = self._ready(network)
            count = len(self.ipam.endpoints_of(cid))
            ep = self.ipam.lease(net, cid, name, f"vh{cid[:9]}{net.id[:4]}", hosts_path=hosts_path, **kw)
            try:
                box = Sandbox.of_process(pid)
                try:
                    box.add_interface(net, ep, f"eth{count}", default_route=count == 0)
                finally:
                    box.close()
            except BaseException:
                self.ipam.release(cid, net.name)
                raise
            if net.name != DEFAULT_NETWORK:
                dns.refresh(self.ipam, {cid} | dns.neighbours(self.ipam, cid))
        return ep

    def disconnect(self, cid: str, network: str) -> None:
        from hutch.network.sandbox import Sandbox

        with self._lock():
            net = self.network(network)
            peers = dns.neighbours(self.ipam, cid)
            released = self.ipam.release(cid, net.name)
            if not released:
                raise NotFound(f"container is not connected to network {net.name}")
            for ep in released:
                Sandbox.remove_link(ep.link)
            dns.refresh(self.ipam, peers | {cid})

    def rename(self, cid: str, name: str) -> None:
        """A renamed container is found by its new name on its networks."""
        with self._lock():
            self.ipam.rename(cid, name)
            dns.refresh(self.ipam, dns.neighbours(self.ipam, cid))

    def endpoints(self, cid: str) -> list[Endpoint]:
        return self.ipam.endpoints_of(cid)

    def published(self, cid: str) -> list[nat.Port]:
        return self.ports.of(cid)

    # --- repair -------------------------------------------------------------------------------------

    def reconcile(self, running: set[str]) -> list[str]:
        """Release what containers that no longer run still hold (hutch or its monitor was killed), and
        make the nft table match the database again. Returns the container ids released."""
        with self._lock():
            stale = {ep.container for ep in self.ipam.all_endpoints()} | {c for c, _ in self.ports.all()}
            stale -= running
            for cid in sorted(stale):
                self._release(cid)
            if self.ipam.networks():
                self.sync_nat()
        return sorted(stale)

    def prune(self) -> list[str]:
        """``network prune``: user networks without containers."""
        removed = []
        for net in self.ipam.networks():
            if net.name != DEFAULT_NETWORK and not self.ipam.endpoints_on(net.name):
                removed.append(self.remove(net.name))
        return removed

    def teardown(self) -> None:
        """Remove every bridge and the nft table of this root (its containers must be gone): for tests
        and for throwing a root away."""
        with self._lock():
            for net in self.ipam.networks():
                self._unmaterialise(net)
            nat.delete(self.table)


class _FileLock:
    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = -1

    def __enter__(self) -> _FileLock:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc) -> None:
        os.close(self.fd)
