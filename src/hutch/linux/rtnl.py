"""The few rtnetlink requests a container start needs, written by hand: veth, address, route, link up.

why not pyroute2 here: importing pyroute2 costs ~200 ms on this machine (it pulls in asyncio and every
netlink family), more than the whole 150 ms budget of ``hutch run`` on a bridge. Everything that dumps or
parses kernel state (subnet clash checks, listing, teardown checks) goes through pyroute2 in
``hutch.network.links``; this module only *sends* five fixed request shapes and reads the kernel's ack.

Message layouts (linux/netlink.h, linux/rtnetlink.h, linux/if_link.h):
    struct nlmsghdr  { u32 len; u16 type; u16 flags; u32 seq; u32 pid; }            "IHHII"
    struct ifinfomsg { u8 family; u8 pad; u16 type; s32 index; u32 flags; u32 change; }  "BxHiII"
    struct ifaddrmsg { u8 family; u8 prefixlen; u8 flags; u8 scope; u32 index; }     "BBBBI"
    struct rtmsg     { u8 family, dst_len, src_len, tos, table, protocol, scope, type; u32 flags; }
    struct nlattr    { u16 len; u16 type; } + payload padded to 4 bytes
"""

from __future__ import annotations

import os
import struct

from hutch.linux import syscalls as sc

AF_NETLINK = 16
AF_INET = 2
SOCK_RAW = 3
NETLINK_ROUTE = 0

RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR = 20
RTM_NEWROUTE = 24
NLMSG_ERROR = 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400

IFF_UP = 0x1
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MASTER, IFLA_LINKINFO, IFLA_NET_NS_FD = 1, 3, 10, 18, 28
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
VETH_INFO_PEER = 1
IFA_ADDRESS, IFA_LOCAL, IFA_BROADCAST = 1, 2, 4
RTA_GATEWAY = 5
RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST = 254, 3, 0, 1
NLA_F_NESTED = 0x8000


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("HH", length, kind) + payload + b"\0" * (-length % 4)


def _name(text: str) -> bytes:
    return text.encode() + b"\0"


def _ifinfo(index: int = 0, flags: int = 0, change: int = 0) -> bytes:
    return struct.pack("BxHiII", 0, 0, index, flags, change)


def _ipv4(address: str) -> bytes:
    return bytes(int(part) for part in address.split("."))


def _mac(address: str) -> bytes:
    return bytes.fromhex(address.replace(":", ""))


class Socket:
    """One NETLINK_ROUTE socket, bound to the network namespace it was opened in.

    A netlink socket talks to the namespace that was current when it was created, whatever namespace the
    caller is in later: that is how one process configures a container's namespace without moving into it
    for more than the instant of ``socket()``.
    """

    def __init__(self) -> None:
        self.fd = sc.socket(AF_NETLINK, SOCK_RAW | sc.SOCK_CLOEXEC, NETLINK_ROUTE)
        self._seq = 0

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Socket:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def request(self, kind: int, flags: int, body: bytes, what: str) -> bytes:
        """Send one request and wait for its answer; a negative errno in the ack becomes ``OSError``."""
        self._seq += 1
        header = struct.pack("IHHII", 16 + len(body), kind, NLM_F_REQUEST | NLM_F_ACK | flags, self._seq, 0)
        os.write(self.fd, header + body)
        reply = b""
        while True:
            data = os.read(self.fd, 65536)
            offset = 0
            while offset + 16 <= len(data):
                length, mtype, _flags, seq, _pid = struct.unpack_from("IHHII", data, offset)
                if seq == self._seq:
                    if mtype == NLMSG_ERROR:
                        (error,) = struct.unpack_from("i", data, offset + 16)
                        if error:
                            raise OSError(-error, f"{what}: {os.strerror(-error)}")
                        return reply
                    reply = data[offset + 16 : offset + length]
                offset += (length + 3) & ~3

    # --- links --------------------------------------------------------------------------------------

    def link_index(self, name: str) -> int:
        """The ifindex of ``name`` in this socket's namespace (``ENODEV`` when there is none)."""
        body = self.request(RTM_GETLINK, 0, _ifinfo() + _attr(IFLA_IFNAME, _name(name)), f"find {name}")
        return struct.unpack_from("BxHiII", body)[2]

    def set_up(self, index: int) -> None:
        self.request(RTM_NEWLINK, 0, _ifinfo(index, IFF_UP, IFF_UP), f"set link {index} up")

    def enslave_up(self, index: int, master: int) -> None:
        """Make link ``index`` a port of bridge ``master`` and bring it up, in one request (a microVM's
        TAP device: it exists already, made through /dev/net/tun)."""
        body = _ifinfo(index, IFF_UP, IFF_UP) + _attr(IFLA_MASTER, struct.pack("I", master))
        self.request(RTM_NEWLINK, 0, body, f"attach link {index} to bridge {master}")

    def add_veth(
        self, name: str, peer: str, peer_netns_fd: int, master: int, peer_mac: str | None = None
    ) -> None:
        """A veth pair: ``name`` here, up and enslaved to bridge ``master``; ``peer`` born inside the
        namespace ``peer_netns_fd`` (so it never appears in the host's namespace, even for an instant)."""
        peer_attrs = _attr(IFLA_IFNAME, _name(peer)) + _attr(IFLA_NET_NS_FD, struct.pack("I", peer_netns_fd))
        if peer_mac:
            peer_attrs += _attr(IFLA_ADDRESS, _mac(peer_mac))
        info = _attr(IFLA_INFO_KIND, b"veth") + _attr(
            IFLA_INFO_DATA | NLA_F_NESTED, _attr(VETH_INFO_PEER | NLA_F_NESTED, _ifinfo() + peer_attrs)
        )
        body = (
            _ifinfo(0, IFF_UP, IFF_UP)
            + _attr(IFLA_IFNAME, _name(name))
            + _attr(IFLA_MASTER, struct.pack("I", master))
            + _attr(IFLA_LINKINFO | NLA_F_NESTED, info)
        )
        self.request(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, body, f"create veth {name}")

    def delete_link(self, name: str) -> None:
        self.request(RTM_DELLINK, 0, _ifinfo() + _attr(IFLA_IFNAME, _name(name)), f"delete link {name}")

    # --- addresses and routes -----------------------------------------------------------------------

    def add_address(self, index: int, address: str, prefixlen: int, broadcast: str | None = None) -> None:
        body = struct.pack("BBBBI", AF_INET, prefixlen, 0, 0, index)
        body += _attr(IFA_LOCAL, _ipv4(address)) + _attr(IFA_ADDRESS, _ipv4(address))
        if broadcast:
            body += _attr(IFA_BROADCAST, _ipv4(broadcast))
        self.request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, body, f"add address {address}/{prefixlen}")

    def add_default_route(self, gateway: str) -> None:
        body = struct.pack(
            "BBBBBBBBI", AF_INET, 0, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST, 0
        )
        body += _attr(RTA_GATEWAY, _ipv4(gateway))
        self.request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, body, f"add default route via {gateway}")
