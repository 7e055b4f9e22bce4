"""Networks and address leases in the root's state database.

An address is leased to a container while it runs (Docker's rule) and the ``UNIQUE (network, address)``
constraint, checked inside a ``BEGIN IMMEDIATE`` transaction, is what makes it impossible to hand the same
address out twice, also between hutch processes running at once. Leases survive hutch restarts because they
are rows, not memory; a lease whose container is gone is released by ``NetworkManager.reconcile``.
Addresses are handed out round-robin from a per-network cursor, so a just-released address (whose old veth
the kernel may still be tearing down, or whose ARP entries peers still hold) is not reused at once.
"""

from __future__ import annotations

import json
import time

from hutch.db import Database
from hutch.errors import Conflict, InvalidArgument, NotFound

_DDL = """
CREATE TABLE IF NOT EXISTS networks (
    name TEXT PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    driver TEXT NOT NULL,
    subnet TEXT NOT NULL UNIQUE,       -- "10.66.0.0/16"
    gateway TEXT NOT NULL,
    bridge TEXT NOT NULL UNIQUE,       -- the host's bridge device
    internal INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    next_host INTEGER NOT NULL DEFAULT 2,
    labels TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS endpoints (
    container TEXT NOT NULL,
    network TEXT NOT NULL REFERENCES networks(name),
    name TEXT NOT NULL,                -- the container's name, resolvable by its peers
    address TEXT NOT NULL,
    mac TEXT NOT NULL,
    link TEXT NOT NULL,                -- host side of the veth pair
    aliases TEXT NOT NULL DEFAULT '[]',
    hosts_path TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (container, network),
    UNIQUE (network, address)
);
"""


def ip_to_int(address: str) -> int:
    """Dotted quad to int; ``ValueError`` for anything else (no leading zeros, no shorthand)."""
    parts = address.split(".")
    if len(parts) != 4 or not all(p.isdigit() and int(p) < 256 and str(int(p)) == p for p in parts):
        raise ValueError(f"invalid IPv4 address {address!r}")
    a, b, c, d = (int(x) for x in parts)
    return a << 24 | b << 16 | c << 8 | d


def int_to_ip(value: int) -> str:
    return f"{value >> 24 & 255}.{value >> 16 & 255}.{value >> 8 & 255}.{value & 255}"


def split_cidr(subnet: str) -> tuple[int, int]:
    """``"10.66.0.0/16"`` -> (network as int, prefix length)."""
    address, _, prefix = subnet.partition("/")
    return ip_to_int(address), int(prefix)


def mac_for(address: str) -> str:
    """Docker's scheme: 02:42 then the IPv4 address, so a MAC is unique wherever the address is."""
    return "02:42:" + ":".join(f"{int(x):02x}" for x in address.split("."))


class Network:
    """One row of ``networks``."""

    __slots__ = ("name", "id", "driver", "subnet", "gateway", "bridge", "internal", "created", "labels")

    def __init__(self, row) -> None:
        self.name = row["name"]
        self.id = row["id"]
        self.driver = row["driver"]
        self.subnet = row["subnet"]
        self.gateway = row["gateway"]
        self.bridge = row["bridge"]
        self.internal = bool(row["internal"])
        self.created = row["created"]
        self.labels = json.loads(row["labels"])

    @property
    def prefixlen(self) -> int:
        return split_cidr(self.subnet)[1]

    @property
    def broadcast(self) -> str:
        base, prefix = split_cidr(self.subnet)
        return int_to_ip(base | ((1 << (32 - prefix)) - 1))


class Endpoint:
    """One row of ``endpoints``: a container's address on a network."""

    __slots__ = ("container", "network", "name", "address", "mac", "link", "aliases", "hosts_path")

    def __init__(self, row) -> None:
        self.container = row["container"]
        self.network = row["network"]
        self.name = row["name"]
        self.address = row["address"]
        self.mac = row["mac"]
        self.link = row["link"]
        self.aliases = json.loads(row["aliases"])
        self.hosts_path = row["hosts_path"]


class Ipam:
    """The ``networks`` and ``endpoints`` tables."""

    def __init__(self, db: Database) -> None:
        self.db = db
        db.ensure_schema("networks", _DDL)

    # --- networks -----------------------------------------------------------------------------------

    def add_network(
        self, name: str, net_id: str, subnet: str, gateway: str, bridge: str, internal: bool, labels: dict
    ) -> Network:
        try:
            with self.db.transaction() as conn:
                conn.execute(
                    "INSERT INTO networks (name, id, driver, subnet, gateway, bridge, internal, created,"
                    " labels) VALUES (?,?,?,?,?,?,?,?,?)",
                    (
                        name,
                        net_id,
                        "bridge",
                        subnet,
                        gateway,
                        bridge,
                        int(internal),
                        time.time(),
                        json.dumps(labels),
                    ),
                )
        except Exception as err:
            if "UNIQUE" in str(err):
                if "networks.name" in str(err):
                    raise Conflict(f"network with name {name} already exists")
                raise Conflict(f"subnet {subnet} is already used by another hutch network")
            raise
        return self.network(name)

    def network(self, ref: str) -> Network:
        """By name, full id or unique id prefix."""
        conn = self.db.conn
        row = conn.execute("SELECT * FROM networks WHERE name=? OR id=?", (ref, ref)).fetchone()
        if row is None and ref:
            rows = conn.execute("SELECT * FROM networks WHERE id LIKE ? LIMIT 2", (ref + "%",)).fetchall()
            row = rows[0] if len(rows) == 1 else None
        if row is None:
            raise NotFound(f"network {ref} not found")
        return Network(row)

    def find_network(self, name: str) -> Network | None:
        row = self.db.conn.execute("SELECT * FROM networks WHERE name=?", (name,)).fetchone()
        return Network(row) if row else None

    def networks(self) -> list[Network]:
        return [Network(r) for r in self.db.conn.execute("SELECT * FROM networks ORDER BY created")]

    def delete_network(self, name: str) -> None:
        with self.db.transaction() as conn:
            used = conn.execute("SELECT name FROM endpoints WHERE network=?", (name,)).fetchall()
            if used:
                names = ", ".join(r["name"] for r in used)
                raise Conflict(
                    f"network {name} has active endpoints ({names}): stop or disconnect them first"
                )
            conn.execute("DELETE FROM networks WHERE name=?", (name,))

    # --- leases -------------------------------------------------------------------------------------

    def lease(
        self,
        network: Network,
        container: str,
        name: str,
        link: str,
        *,
        address: str | None = None,
        mac: str | None = None,
        aliases: list[str] | None = None,
        hosts_path: str = "",
    ) -> Endpoint:
        """Give ``container`` an address on ``network`` (``address`` when asked for, else the next free)."""
        base, prefix = split_cidr(network.subnet)
        size = 1 << (32 - prefix)
        with self.db.transaction() as conn:
            if address is not None:
                chosen = _check_static(network, address, base, size)
            else:
                chosen = self._next_free(conn, network, base, size)
            ip = int_to_ip(chosen)
            try:
                conn.execute(
                    "INSERT INTO endpoints VALUES (?,?,?,?,?,?,?,?)",
                    (
                        container,
                        network.name,
                        name,
                        ip,
                        mac or mac_for(ip),
                        link,
                        json.dumps(aliases or []),
                        hosts_path,
                    ),
                )
            except Exception as err:
                if "UNIQUE" in str(err) and "address" in str(err):
                    raise Conflict(f"address {ip} is already in use on network {network.name}")
                if "UNIQUE" in str(err):
                    raise Conflict(f"container {name} is already connected to network {network.name}")
                raise
        return self.endpoint(container, network.name)

    @staticmethod
    def _next_free(conn, network: Network, base: int, size: int) -> int:
        used = {
            ip_to_int(r[0])
            for r in conn.execute("SELECT address FROM endpoints WHERE network=?", (network.name,))
        }
        used.add(ip_to_int(network.gateway))
        row = conn.execute("SELECT next_host FROM networks WHERE name=?", (network.name,)).fetchone()
        start = row[0] if 1 <= row[0] < size - 1 else 1
        for step in range(size - 2):
            host = (start - 1 + step) % (size - 2) + 1  # 1 .. size-2: neither network nor broadcast
            if base + host not in used:
                conn.execute("UPDATE networks SET next_host=? WHERE name=?", (host + 1, network.name))
                return base + host
        raise Conflict(f"network {network.name} ({network.subnet}) has no free address left")

    def endpoint(self, container: str, network: str) -> Endpoint:
        row = self.db.conn.execute(
            "SELECT * FROM endpoints WHERE container=? AND network=?", (container, network)
        ).fetchone()
        if row is None:
            raise NotFound(f"container is not connected to network {network}")
        return Endpoint(row)

    def endpoints_of(self, container: str) -> list[Endpoint]:
        rows = self.db.conn.execute("SELECT * FROM endpoints WHERE container=?", (container,)).fetchall()
        return [Endpoint(r) for r in rows]

    def endpoints_on(self, network: str) -> list[Endpoint]:
        rows = self.db.conn.execute("SELECT * FROM endpoints WHERE network=?", (network,)).fetchall()
        return [Endpoint(r) for r in rows]

    def all_endpoints(self) -> list[Endpoint]:
        return [Endpoint(r) for r in self.db.conn.execute("SELECT * FROM endpoints")]

    def rename(self, container: str, name: str) -> None:
        with self.db.transaction() as conn:
            conn.execute("UPDATE endpoints SET name=? WHERE container=?", (name, container))

    def release(self, container: str, network: str | None = None) -> list[Endpoint]:
        """Drop the container's leases (on one network or all); returns what was released."""
        with self.db.transaction() as conn:
            if network is None:
                rows = conn.execute("SELECT * FROM endpoints WHERE container=?", (container,)).fetchall()
                conn.execute("DELETE FROM endpoints WHERE container=?", (container,))
            else:
                rows = conn.execute(
                    "SELECT * FROM endpoints WHERE container=? AND network=?", (container, network)
                ).fetchall()
                conn.execute("DELETE FROM endpoints WHERE container=? AND network=?", (container, network))
        return [Endpoint(r) for r in rows]


def _check_static(network: Network, address: str, base: int, size: int) -> int:
    try:
        value = ip_to_int(address)
    except ValueError:
        raise InvalidArgument(f"invalid IPv4 address {address!r}")
    if not base < value < base + size - 1:
        raise InvalidArgument(
            f"address {address} is not a host address of network {network.name} ({network.subnet})"
        )
    if address == network.gateway:
        raise Conflict(f"address {address} is the gateway of network {network.name}")
    return value
