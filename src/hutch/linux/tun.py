"""A TAP device through ``/dev/net/tun`` (linux/if_tun.h): the host end of a microVM's network card.

The device lives exactly as long as an fd opened here (it is not made persistent with ``TUNSETPERSIST``):
QEMU inherits the fd, so when QEMU exits, is killed, or dies with its supervisor, the kernel deletes the
device and with it its bridge port. Nothing needs tearing down and a crash cannot leak a link.

    struct ifreq { char ifr_name[16]; short ifr_flags; ... }  (40 bytes on x86_64)   "16sH22x"
"""

from __future__ import annotations

import fcntl
import os
import struct

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFNAMSIZ = 16


def open_tap(name: str, vnet_hdr: bool = True) -> int:
    """A new TAP device called ``name`` (the kernel picks ``tapN`` for ""), returned as a close-on-exec
    fd. ``IFF_VNET_HDR``: frames carry virtio-net's header, so QEMU can pass checksum and segmentation
    offloads between the guest and the host instead of doing them in software. ``IFF_NO_PI``: no extra
    packet-information prefix, what QEMU expects."""
    if len(name.encode()) >= IFNAMSIZ:
        raise ValueError(f"interface name too long: {name!r}")
    flags = IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0)
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), flags))
    except BaseException:
        os.close(fd)
        raise
    return fd


def tap_name(fd: int) -> str:
    """The name the device got (``TUNGETIFF``)."""
    TUNGETIFF = 0x800454D2
    raw = fcntl.ioctl(fd, TUNGETIFF, bytes(40))
    return raw[:IFNAMSIZ].split(b"\0", 1)[0].decode()
