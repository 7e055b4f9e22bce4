"""Pure logic of a microVM's network card: the guest's eth0 script, QEMU's card arguments, the
initramfs's module lists and the template names of guests with and without a card."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from hutch.vm import initramfs, qemu, script, template

NIC = {"fd": 7, "mac": "02:42:0a:50:00:02", "address": "10.80.0.2", "prefixlen": 24, "gateway": "10.80.0.1"}


def test_guest_network_script_sets_mac_address_mtu_and_route():
    lines = script.network(dict(NIC, mtu=1400)).splitlines()
    assert lines[0] == "set -e"  # a failing step fails the container's start, never half a network
    assert "ip link set eth0 address 02:42:0a:50:00:02 mtu 1400 up" in lines
    assert "ip addr add 10.80.0.2/24 broadcast + dev eth0" in lines
    assert lines[-1] == "ip route add default via 10.80.0.1"
    internal = script.network(dict(NIC, mtu=1500, gateway=""))
    assert "route" not in internal  # an --internal network: no default route


def test_guest_network_script_quotes_values():
    text = script.network(dict(NIC, mtu="1500", mac="02:42; reboot"))
    assert "'02:42; reboot'" in text
    with pytest.raises(ValueError):
        script.network(dict(NIC, mtu="1500; reboot"))


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
    data = initramfs.build(mods)
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["busybox", "cpio", "-id"], input=data, cwd=out, check=True, capture_output=True)
    assert (out / "modules.net").read_text().split() == ["failover.ko", "net_failover.ko", "virtio_net.ko"]
    assert "virtio_net.ko" not in (out / "modules").read_text()  # never loaded without a card
    assert "hutch.net" in Path(out / "init").read_text()
    assert shlex.split(qemu.NET_CMDLINE) == ["hutch.net"]
