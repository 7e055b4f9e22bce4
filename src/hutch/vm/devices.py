"""``--device`` in a microVM: the node is made in the guest's /dev, for a driver the guest kernel has.

A guest has its own kernel and its own devices: a host device cannot be passed into it as a node, only
emulated by QEMU. What works is a device whose driver is in every guest this backend boots, so the node
means the same inside: the memory devices (``/dev/null``-like, major 1) and ``/dev/fuse`` (the ``fuse``
module, which the initramfs carries for virtiofs volumes). Anything else is refused when the container is
created, naming the device; ``--privileged``'s host devices are given only where they fit the same rule.
"""

from __future__ import annotations

import os

from hutch.errors import InvalidArgument
from hutch.vm import agentconf

# (major, minor) -> what it is; drivers built into the cloud kernel, or modules in hutch's initramfs
GUEST_CHAR_DEVICES = {
    (1, 3): "null",
    (1, 5): "zero",
    (1, 7): "full",
    (1, 8): "random",
    (1, 9): "urandom",
    (10, 229): "fuse",
}
FUSE = (10, 229)


def supported(device: dict) -> bool:
    return device.get("type") == "c" and (device.get("major"), device.get("minor")) in GUEST_CHAR_DEVICES


def check(devices: list[dict]) -> None:
    """At create time: every ``--device`` must be one the guest can have (see the module's docstring)."""
    for d in devices:
        if not supported(d):
            kind = "block" if d.get("type") == "b" else "character"
            raise InvalidArgument(
                f"--device {d['path']}: a microVM's kernel has no driver for {kind} device "
                f"{d.get('major')}:{d.get('minor')} (it can have the memory devices and /dev/fuse)"
            )


def records(devices: list[dict], root: str) -> list[bytes]:
    """The guest agent's steps for the spec's device nodes that fit (``linux.devices``, under ``root``)."""
    wanted = [d for d in devices if supported(d)]
    result = []
    if any((d["major"], d["minor"]) == FUSE for d in wanted):
        result.append(agentconf.modules("/modules.volumes"))  # fuse, loaded only when asked for
    for d in wanted:
        path = root + d["path"]
        result += [agentconf.mkdir(os.path.dirname(path))] if os.path.dirname(d["path"]) != "/dev" else []
        mode = d.get("fileMode", 0o666)
        result.append(
            agentconf.char_device(path, mode, d["major"], d["minor"], d.get("uid", 0), d.get("gid", 0))
        )
    return result
