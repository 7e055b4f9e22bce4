"""``-v`` volumes for microVMs: one virtiofsd per volume, shared with the guest over vhost-user.

QEMU is the vhost-user client and virtiofsd the server, so each volume needs a listening socket. hutch
binds it itself in the abstract namespace (``\\0hutch-vfs-<container>-<n>``: no socket file to clean up,
no path-length limit from deep roots) and hands the listening fd to virtiofsd (``--fd``); QEMU connects
by name (``abstract=on``). vhost-user needs guest RAM QEMU can share: a memfd backend with ``share=on``.
The cloud kernel's virtio-mmio needs ``force-legacy=false`` for vhost-user-fs (measured on these hosts).
``ro`` is enforced by the guest's mount (the C virtiofsd of QEMU 7.2 has no read-only mode).
"""

from __future__ import annotations

import socket

VIRTIOFSD = "/usr/lib/qemu/virtiofsd"


class Share:
    """One volume: its listening socket and what QEMU and virtiofsd are told about it."""

    __slots__ = ("source", "tag", "name", "sock")

    def __init__(self, source: str, tag: str, name: str) -> None:
        self.source = source
        self.tag = tag
        self.name = name
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind("\0" + name)
        self.sock.listen(1)

    def daemon_argv(self) -> list[str]:
        return [
            VIRTIOFSD,
            f"--fd={self.sock.fileno()}",
            "-o",
            f"source={self.source}",
            "-o",
            "cache=auto",
            "-o",
            "sandbox=chroot",
            "-o",
            "log_level=warn",
        ]


def shares(cid: str, volumes: list[dict]) -> list[Share]:
    made: list[Share] = []
    try:
        for n, vol in enumerate(volumes):
            made.append(Share(vol["source"], f"vol{n}", f"hutch-vfs-{cid[:16]}-{n}"))
    except BaseException:
        for share in made:
            share.sock.close()
        raise
    return made


def qemu_args(shares: list[Share], memory_mib: int) -> tuple[str, list[str]]:
    """The machine option to add and the extra argv for ``shares`` (nothing without volumes)."""
    if not shares:
        return "", []
    argv = [
        "-object",
        f"memory-backend-memfd,id=mem,size={memory_mib}M,share=on",
        "-global",
        "virtio-mmio.force-legacy=false",
    ]
    for n, share in enumerate(shares):
        argv += [
            "-chardev",
            f"socket,id=vfs{n},path={share.name},abstract=on",
            "-device",
            f"vhost-user-fs-device,chardev=vfs{n},tag={share.tag}",
        ]
    return ",memory-backend=mem", argv
