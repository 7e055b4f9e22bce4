"""Pure logic of a microVM's network card: the guest's eth0 records, QEMU's card arguments, the
initramfs's module lists and the template names of guests with and without a card."""

from __future__ import annotations

import shlex
import shutil
import struct
import subprocess

import pytest

from hutch.errors import HutchError
from hutch.vm import agentconf, initramfs, qemu, script, template

NIC = {"fd": 7, "mac": "02:42:0a:50:00:02", "address": "10.80.0.2", "prefixlen": 24, "gateway": "10.80.0.1"}


def _steps(records: list[bytes]) -> list[tuple[int, bytes]]:
    return [(struct.unpack_from("<I", r)[0], r[8:]) for r in records]


def test_guest_network_records_set_mac_mtu_address_and_route():
    steps = _steps(script.network_records(dict(NIC, mtu=1400)))
    assert steps[0] == (agentconf.LINK, struct.pack("<I6s2x", 0, b"") + b"lo\0")
    mac = bytes.fromhex("02420a500002")
    assert steps[1] == (agentconf.LINK, struct.pack("<I6s2x", 1400, mac) + b"eth0\0")
    address = bytes([10, 80, 0, 2]) + bytes([10, 80, 0, 255]) + bytes([24, 0, 0, 0]) + b"eth0\0"
    assert steps[2] == (agentconf.ADDRESS, address)  # with the broadcast, as `ip addr add ... broadcast +`
    assert steps[3] == (agentconf.ROUTE, bytes([10, 80, 0, 1]))
    internal = _steps(script.network_records(dict(NIC, mtu=1500, gateway="")))
    assert [tag for tag, _ in internal] == [agentconf.LINK, agentconf.LINK, agentconf.ADDRESS]  # --internal


def test_guest_network_records_refuse_bad_values():
    for bad in (
        {"mac": "02:42; reboot"},
        {"mtu": "1500; reboot"},
        {"address": "10.80.0.300"},
        {"mac": "02:42"},
    ):
        with pytest.raises(HutchError, match="network card|MAC"):
            script.network_records({**NIC, "mtu": 1500, **bad})


def test_qemu_card_on_the_inherited_tap_fd():
    argv = qemu.nic_args(9, "02:42:0a:50:00:02")
    assert argv == [
        "-netdev",
        "tap,id=net0,fd=9",
        "-device",
        "virtio-net-device,netdev=net0,mac=02:42:0a:50:00:02",
    ]


def test_templates_with_and_without_a_card_live_side_by_side(tmp_path):
    plain = template.template_path(tmp_path, "/k", "/i", 128, 1, "tcg")
    card = template.template_path(tmp_path, "/k", "/i", 128, 1, "tcg", nic=True)
    newer = template.template_path(tmp_path, "/k", "/i2", 128, 1, "tcg", nic=True)
    assert plain != card
    # the build part (kernel, initramfs) is shared: a new build replaces both, a shape change neither
    assert plain.stem.split("-")[0] == card.stem.split("-")[0] != newer.stem.split("-")[0]


@pytest.mark.skipif(shutil.which("busybox") is None, reason="needs busybox")
def test_initramfs_lists_the_card_driver_apart(tmp_path):
    mods = tmp_path / "modules"
    dep = {
        "kernel/drivers/virtio/virtio_ring.ko": [],
        "kernel/drivers/virtio/virtio.ko": ["kernel/drivers/virtio/virtio_ring.ko"],
        "kernel/drivers/virtio/virtio_mmio.ko": ["kernel/drivers/virtio/virtio.ko"],
        "kernel/drivers/block/virtio_blk.ko": ["kernel/drivers/virtio/virtio.ko"],
        "kernel/drivers/char/virtio_console.ko": ["kernel/drivers/virtio/virtio.ko"],
        "kernel/fs/erofs/erofs.ko": [],
        "kernel/fs/overlayfs/overlay.ko": [],
        "kernel/fs/fuse/virtiofs.ko": ["kernel/drivers/virtio/virtio.ko"],
        "kernel/net/core/failover.ko": [],
        "kernel/drivers/net/net_failover.ko": ["kernel/net/core/failover.ko"],
        "kernel/drivers/net/virtio_net.ko": [
            "kernel/drivers/net/net_failover.ko", "kernel/net/core/failover.ko",
            "kernel/drivers/virtio/virtio.ko",
        ],
    }  # fmt: skip
    for path in dep:
        (mods / path).parent.mkdir(parents=True, exist_ok=True)
        (mods / path).write_bytes(b"\x7fELF" + path.encode())
    (mods / "modules.dep").write_text("".join(f"{p}: {' '.join(d)}\n" for p, d in dep.items()))
    data = initramfs.build(mods, b"\x7fELF agent")
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["busybox", "cpio", "-id"], input=data, cwd=out, check=True, capture_output=True)
    assert (out / "modules.net").read_text().split() == ["failover.ko", "net_failover.ko", "virtio_net.ko"]
    assert "virtio_net.ko" not in (out / "modules").read_text()  # never loaded without a card
    assert (out / "init").read_bytes() == b"\x7fELF agent"  # the agent is the init; nothing else runs
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [
            "dev",
            "init",
            "lib",
            "lower",
            "modules",
            "modules.net",
            "modules.volumes",
            "newroot",
            "proc",
            "rw",
            "sys",
        ]
    )
    assert shlex.split(qemu.NET_CMDLINE) == ["hutch.net"]
