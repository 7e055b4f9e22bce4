"""A microVM's network card on a hutch bridge: a TAP device whose fd QEMU inherits.

A namespace container gets a veth whose far end lives in its network namespace (``sandbox``); a microVM
has no namespace on the host, its network stack is the guest kernel's. Its link to the bridge is a TAP
device: frames the guest's virtio-net card sends come out of the TAP into the bridge, and the other way.
So the bridge, IPAM, NAT and published ports (DNAT to the guest's address) work unchanged: the TAP is just
another bridge port, with the endpoint's address and MAC configured inside the guest instead of on a
veth peer.

Lifetime: the device is not persistent; it exists while an fd of it is open. hutch opens it, enslaves it
to the bridge, and hands the fd to the supervisor, which passes it to QEMU and closes its own copy. When
QEMU exits (or is killed, or dies with its supervisor through PDEATHSIG) the kernel deletes the device:
no teardown, and a crash anywhere leaves no link behind.
"""

from __future__ import annotations

import os

from hutch.errors import HutchError
from hutch.linux import rtnl, tun
from hutch.network.sandbox import hairpin


def _mtu(link: str) -> int:
    try:
        with open(f"/sys/class/net/{link}/mtu") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1500


class Tap:
    """One TAP device held open by fd, a port of a network's bridge."""

    def __init__(self, fd: int, network, endpoint) -> None:
        self.fd = fd
        self.network = network
        self.endpoint = endpoint

    @classmethod
    def new(cls, network, endpoint) -> Tap:
        """The TAP ``endpoint.link``, up, on ``network``'s bridge; on failure nothing is left (closing the
        fd deletes the device)."""
        try:
            fd = tun.open_tap(endpoint.link)
        except OSError as err:
            raise HutchError(f"cannot create TAP device {endpoint.link}: {err.strerror or err}")
        try:
            with rtnl.Socket() as host:
                host.enslave_up(host.link_index(endpoint.link), host.link_index(network.bridge))
            hairpin(endpoint.link)
        except BaseException as exc:
            os.close(fd)
            if isinstance(exc, OSError):
                raise HutchError(f"cannot attach {endpoint.link} to bridge {network.bridge}: {exc}")
            raise
        return cls(fd, network, endpoint)

    def guest_config(self) -> dict:
        """What the guest configures on its eth0 (plain values: the vm layer knows nothing of networks)."""
        net, ep = self.network, self.endpoint
        return {
            "fd": self.fd,
            "mac": ep.mac,
            "address": ep.address,
            "prefixlen": net.prefixlen,
            "gateway": "" if net.internal else net.gateway,
            "mtu": _mtu(net.bridge),
        }

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
