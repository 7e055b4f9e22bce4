"""Outbound NAT and published ports in one nftables table per hutch root.

One table (``hutch`` for the default root) holds everything hutch adds to the packet path, so it never
mixes with the user's rules or another tool's (podman's netavark, iptables-nft) and goes away in one
``delete table``. Per-network state lives in sets (subnets, bridge names) and published ports in two maps,
so starting or removing a container adds or deletes *elements* in one ``nft -f -`` transaction and never
touches rule handles:

    prerouting/output (nat): to a local address -> DNAT through ports_ip (HOSTIP . proto . port) or
                             ports_any (proto . port) to (container address . port)
    postrouting (nat):       from a container subnet leaving by a non-hutch device -> masquerade;
                             from 127.0.0.0/8 into a hutch bridge (a DNAT'ed localhost connection) ->
                             masquerade, so the container can answer (needs route_localnet on the bridge);
                             a container reaching a published port through the host (hairpin, even its
                             own) -> masquerade, so the answer comes back through the host's conntrack
    forward (filter):        nothing in or out of an --internal network's bridge; nothing routed from
                             one hutch network to another (Docker's isolation between networks)

why a bare ``dnat ... map``: a key missing from the map ends the rule (the lookup breaks), so no separate
membership test is needed; and Linux 6.1 (Debian 12's kernel) refuses that test, a map used as a set
("Invalid argument").

why DNAT for localhost rather than a userspace proxy: the kernel path keeps a published port at the speed
of a veth (measured in bench/), needs no process per port, and the source address seen by the container is
the real peer for connections from other hosts.

The nft CLI is used (``nft -f -``): Debian's python3-nftables binds to the system interpreter, not our
virtualenv. Without nft (or with ``HUTCH_FIREWALL=iptables``) the same rules go into iptables chains of
hutch's own (``iptables.py``), rebuilt from the database on every change.
"""

from __future__ import annotations

import os

from hutch.errors import HutchError

_BODY = """table ip {table} {{
  set nets {{ type ipv4_addr; flags interval; {nets} }}
  set bridges {{ type ifname; {bridges} }}
  set internal {{ type ifname; {internal} }}
  set same {{ type ifname . ifname; {same} }}
  map ports_any {{ type inet_proto . inet_service : ipv4_addr . inet_service; {ports_any} }}
  map ports_ip {{ type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; {ports_ip} }}
  chain ports {{
    dnat ip to ip daddr . meta l4proto . th dport map @ports_ip
    dnat ip to meta l4proto . th dport map @ports_any
  }}
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    fib daddr type local jump ports
  }}
  chain output {{ type nat hook output priority -100; policy accept; fib daddr type local jump ports; }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr 127.0.0.0/8 oifname @bridges masquerade
    ct status dnat ip saddr @nets oifname @bridges masquerade
    ip saddr @nets oifname != @bridges oifname != @internal masquerade
  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    iifname @internal drop
    oifname @internal drop
    iifname . oifname @same accept
    iifname @bridges oifname @bridges drop
  }}
}}
"""


class NeedsSync(HutchError):
    """The backend (iptables) has no per-element updates: the caller rebuilds from the database."""


def backend() -> str:
    """``nft``, or ``iptables`` when nft is missing or ``HUTCH_FIREWALL=iptables`` asks for it."""
    if os.environ.get("HUTCH_FIREWALL") != "iptables" and _nft_path() is not None:
        return "nft"
    from hutch.network import iptables

    if iptables.available():
        return "iptables"
    raise HutchError("neither nft (nftables) nor iptables is installed: bridge networking needs one")


class Port:
    """One published port: host side and where it goes."""

    __slots__ = ("proto", "host_ip", "host_port", "address", "container_port")

    def __init__(self, proto: str, host_ip: str, host_port: int, address: str, container_port: int) -> None:
        self.proto = proto
        self.host_ip = host_ip  # "" for every host address
        self.host_port = host_port
        self.address = address
        self.container_port = container_port

    def map_name(self) -> str:
        return "ports_ip" if self.host_ip else "ports_any"

    def element(self) -> str:
        key = f"{self.proto} . {self.host_port}"
        if self.host_ip:
            key = f"{self.host_ip} . {key}"
        return f"{key} : {self.address} . {self.container_port}"


def _elements(items: list[str]) -> str:
    return f"elements = {{ {', '.join(items)} }};" if items else ""


def table_script(table: str, networks: list, ports: list[Port]) -> str:
    """The whole table, from the database's view of networks and live ports (rebuilt atomically)."""
    return f"add table ip {table}\ndelete table ip {table}\n" + _BODY.format(
        table=table,
        nets=_elements([n.subnet for n in networks]),
        bridges=_elements([f'"{n.bridge}"' for n in networks]),
        internal=_elements([f'"{n.bridge}"' for n in networks if n.internal]),
        same=_elements([f'"{n.bridge}" . "{n.bridge}"' for n in networks]),
        ports_any=_elements([p.element() for p in ports if not p.host_ip]),
        ports_ip=_elements([p.element() for p in ports if p.host_ip]),
    )


def sync(table: str, networks: list, ports: list[Port]) -> None:
    """Make the table say exactly what the database says, in one transaction; no networks: no table."""
    if not networks:
        delete(table)
        return
    if backend() == "iptables":
        from hutch.network import iptables

        iptables.sync(table, networks, ports)
        return
    run(table_script(table, networks, ports))


def add_ports(table: str, ports: list[Port]) -> None:
    if ports and backend() == "iptables":
        raise NeedsSync("iptables: rebuild the chains")
    if ports:
        run("".join(f"add element ip {table} {p.map_name()} {{ {p.element()} }}\n" for p in ports))


def remove_ports(table: str, ports: list[Port]) -> None:
    """Delete the elements; adding each first makes the delete succeed even if it was already gone."""
    if ports and backend() == "iptables":
        raise NeedsSync("iptables: rebuild the chains")
    script = ""
    for p in ports:
        script += f"add element ip {table} {p.map_name()} {{ {p.element()} }}\n"
        script += f"delete element ip {table} {p.map_name()} {{ {p.element().split(' : ')[0]} }}\n"
    if script:
        run(script)


def delete(table: str) -> None:
    """Remove everything of this root's, from whichever backend holds it."""
    if _nft_path() is not None:
        run(f"add table ip {table}\ndelete table ip {table}\n")
    from hutch.network import iptables

    iptables.delete(table)


def exists(table: str) -> bool:
    import subprocess

    proc = subprocess.run([_nft(), "list", "table", "ip", table], capture_output=True)
    return proc.returncode == 0


def run(script: str) -> None:
    """One atomic ``nft -f -`` transaction: all of it applies or none."""
    import subprocess

    proc = subprocess.run([_nft(), "-f", "-"], input=script.encode(), capture_output=True)
    if proc.returncode != 0:
        raise HutchError(f"nftables refused hutch's rules: {proc.stderr.decode(errors='replace').strip()}")


def _nft_path() -> str | None:
    for path in ("/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"):
        if os.path.exists(path):
            return path
    return None


def _nft() -> str:
    path = _nft_path()
    if path is None:
        raise HutchError("nft (nftables) is not installed: bridge networking needs it")
    return path
