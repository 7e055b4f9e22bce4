"""A container's network namespace, made and wired by hutch before the container's init enters it.

Order of work on ``hutch run`` (the choice, and why):

1. ``unshare(CLONE_NEWNET)`` in the hutch process itself, keep an fd of the new namespace, ``setns`` back.
   The namespace exists only as that fd: no bind mount under /run, so a hutch crash at any point leaves
   nothing to unmount; when the fd and the container's processes are gone the kernel destroys the
   namespace, and with it the container's end of every veth, and so the host end too.
2. Open a netlink socket while inside it (a socket stays bound to the namespace it was made in), bring
   ``lo`` up, and from the host side create the veth pair with its container end born inside the new
   namespace, already named ``eth0``; address, link and default route are set through the inside socket.
3. The init gets ``/proc/self/fd/N`` as its network namespace path (the runtime's ordinary "join a
   namespace by path" case) and ``setns``es into it before anything else.

The alternative the issue offered, a veth moved into the child's namespace by pid at the parent's
"joined" handshake, would overlap the ~2 ms of netlink work with the child's root set-up but needs a second
handshake (the parent must know the child has unshared), and the container would briefly run with no
network. Measured: the whole of this module takes ~2 ms per container (bench/).
"""

from __future__ import annotations

import os

from hutch.linux import rtnl
from hutch.linux import syscalls as sc


def _open_ns(path: str) -> int:
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC)


def hairpin(host_link: str) -> None:
    """Let the bridge send a frame back out of the port it came in by: with br_netfilter loaded (as on
    this host), a container reaching its own published port through the host is DNAT'ed at the bridge and
    sent back to its own port, which a bridge refuses unless the port is in hairpin mode (Docker does the
    same). A missing sysfs file (no bridge port) is not an error."""
    try:
        with open(f"/sys/class/net/{host_link}/brport/hairpin_mode", "w") as f:
            f.write("1")
    except FileNotFoundError:
        pass


class Sandbox:
    """A network namespace held open by fd, with a netlink socket inside it."""

    def __init__(self, ns_fd: int, inside: rtnl.Socket) -> None:
        self.ns_fd = ns_fd
        self.inside = inside

    @classmethod
    def new(cls) -> Sandbox:
        own = _open_ns("/proc/self/ns/net")
        try:
            sc.unshare(sc.CLONE_NEWNET)
            try:
                ns_fd = _open_ns("/proc/self/ns/net")
                inside = rtnl.Socket()
            finally:
                # why: back at once; hutch's own sockets (and the veth's host end) belong to the host.
                sc.setns(own, sc.CLONE_NEWNET)
        finally:
            os.close(own)
        box = cls(ns_fd, inside)
        inside.set_up(1)  # lo is always ifindex 1 in a new namespace
        return box

    @classmethod
    def of_process(cls, pid: int) -> Sandbox:
        """The namespace of a running container (``network connect``)."""
        own = _open_ns("/proc/self/ns/net")
        ns_fd = _open_ns(f"/proc/{pid}/ns/net")
        try:
            sc.setns(ns_fd, sc.CLONE_NEWNET)
            try:
                inside = rtnl.Socket()
            finally:
                sc.setns(own, sc.CLONE_NEWNET)
        finally:
            os.close(own)
        return cls(ns_fd, inside)

    @property
    def path(self) -> str:
        return f"/proc/self/fd/{self.ns_fd}"

    def add_interface(self, network, endpoint, ifname: str, default_route: bool) -> None:
        """A veth from ``network``'s bridge to ``ifname`` here, with the endpoint's address and MAC."""
        with rtnl.Socket() as host:
            bridge = host.link_index(network.bridge)
            try:
                host.add_veth(endpoint.link, ifname, self.ns_fd, bridge, endpoint.mac)
            except FileExistsError:
                # The name is derived from the container and network ids: one left over is this container's
                # own from its last run, whose namespace the kernel is still destroying (restart).
                host.delete_link(endpoint.link)
                host.add_veth(endpoint.link, ifname, self.ns_fd, bridge, endpoint.mac)
        hairpin(endpoint.link)
        index = self.inside.link_index(ifname)
        self.inside.add_address(index, endpoint.address, network.prefixlen, network.broadcast)
        self.inside.set_up(index)
        if default_route and not network.internal:
            self.inside.add_default_route(network.gateway)

    @staticmethod
    def remove_link(host_link: str) -> None:
        """Delete a veth by its host end (the container end goes with it)."""
        with rtnl.Socket() as host:
            try:
                host.delete_link(host_link)
            except OSError:
                pass

    def close(self) -> None:
        self.inside.close()
        if self.ns_fd >= 0:
            os.close(self.ns_fd)
            self.ns_fd = -1
