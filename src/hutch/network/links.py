"""Bridges and host routing facts through pyroute2: the slow, rare path (network create/rm, first use).

Imported only when a bridge must be made or removed, or the host's routes read; never for ``--network
none`` and never per container (see ``hutch.linux.rtnl`` for that path).
"""

from __future__ import annotations

import os

from hutch.errors import HutchError

AF_INET = 2


def exists(name: str) -> bool:
    """Whether a link of that name is in the host's namespace (sysfs: no netlink import needed)."""
    return os.path.exists(f"/sys/class/net/{name}")


def host_subnets() -> list[tuple[int, int]]:
    """Every IPv4 destination the host routes (any table) and every subnet of its addresses, as
    (network int, prefix) pairs; the default route is left out, it overlaps everything by design."""
    from pyroute2 import IPRoute

    from hutch.network.ipam import ip_to_int

    found = []
    with IPRoute() as ipr:
        for route in ipr.route("dump", family=AF_INET):
            dst, length = route.get("dst"), route["dst_len"]
            if dst and length:
                found.append((ip_to_int(dst), length))
        for addr in ipr.get_addr(family=AF_INET):
            found.append((ip_to_int(addr.get("address")), addr["prefixlen"]))
    return found


def create_bridge(name: str, gateway: str, prefixlen: int) -> None:
    """The bridge with the gateway address, up; ``route_localnet`` on it so the host's own 127.0.0.1
    connections can be DNAT'ed to containers (see ``nat``). Idempotent; on failure nothing is left."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    with IPRoute() as ipr:
        try:
            if not ipr.link_lookup(ifname=name):
                ipr.link("add", ifname=name, kind="bridge")
            index = ipr.link_lookup(ifname=name)[0]
            have = {(a.get("address"), a["prefixlen"]) for a in ipr.get_addr(index=index, family=AF_INET)}
            if (gateway, prefixlen) not in have:
                ipr.addr("add", index=index, address=gateway, prefixlen=prefixlen)
            ipr.link("set", index=index, state="up")
        except NetlinkError as err:
            _delete(ipr, name)
            raise HutchError(f"cannot create bridge {name}: {err}")
    _sysctl(f"net/ipv4/conf/{name}/route_localnet", "1")
    _sysctl("net/ipv4/ip_forward", "1")


def delete_link(name: str) -> None:
    """Remove a bridge or veth; a missing one is fine.

    One fixed request, so through ``hutch.linux.rtnl`` rather than pyroute2: teardown (``network rm``,
    every test root's clean-up) then costs a netlink round trip instead of pyroute2's ~200 ms import.
    """
    from hutch.linux import rtnl

    with rtnl.Socket() as sock:
        try:
            sock.delete_link(name)
        except FileNotFoundError:
            pass
        except OSError as err:
            if err.errno != 19:  # ENODEV: already gone
                raise


def _delete(ipr, name: str) -> None:
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        for index in ipr.link_lookup(ifname=name):
            ipr.link("del", index=index)
    except NetlinkError:
        pass


def link_names(prefixes: tuple[str, ...]) -> list[str]:
    """Names of host links starting with any of ``prefixes`` (for teardown checks and prune)."""
    return sorted(n for n in os.listdir("/sys/class/net") if n.startswith(prefixes))


def _sysctl(key: str, value: str) -> None:
    with open(f"/proc/sys/{key}", "w") as f:
        f.write(value)
