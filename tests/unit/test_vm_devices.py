"""Which ``--device`` nodes a microVM guest gets (vm/devices.py): pure logic, no guest."""

from __future__ import annotations

import struct

import pytest

from hutch.errors import InvalidArgument
from hutch.vm import agentconf, devices


def _dev(path: str, kind: str, major: int, minor: int) -> dict:
    return {"path": path, "type": kind, "major": major, "minor": minor, "fileMode": 0o620, "uid": 5, "gid": 6}


def test_memory_devices_and_fuse_pass_the_check_others_are_refused_by_name():
    devices.check([_dev("/dev/zero", "c", 1, 5), _dev("/dev/fuse", "c", 10, 229)])
    with pytest.raises(InvalidArgument, match=r"--device /dev/sda: .* no driver for block device 8:0"):
        devices.check([_dev("/dev/fuse", "c", 10, 229), _dev("/dev/sda", "b", 8, 0)])
    with pytest.raises(InvalidArgument, match=r"--device /dev/net/tun: .* character device 10:200"):
        devices.check([_dev("/dev/net/tun", "c", 10, 200)])
    with pytest.raises(InvalidArgument, match="1:1"):
        devices.check([_dev("/dev/mem", "c", 1, 1)])  # major 1, but not a harmless one


def _records(devs: list[dict]) -> list[tuple[int, bytes]]:
    out = []
    for raw in devices.records(devs, "/newroot"):
        tag, length = struct.unpack_from("<II", raw)
        out.append((tag, raw[8 : 8 + length]))
    return out


def test_records_make_the_node_with_its_mode_and_owner_and_load_fuse_only_for_it():
    zero = _records([_dev("/dev/zero", "c", 1, 5)])
    assert zero == [(agentconf.MKNOD, struct.pack("<5I", 0o620, 1, 5, 5, 6) + b"/newroot/dev/zero\0")]
    nested = _records([_dev("/dev/fuse", "c", 10, 229), _dev("/dev/a/b", "c", 1, 3)])
    assert [tag for tag, _ in nested] == [
        agentconf.MODULES,
        agentconf.MKNOD,
        agentconf.MKDIR,
        agentconf.MKNOD,
    ]
    assert nested[2][1] == b"/newroot/dev/a\0"
    # --privileged puts every host device in the spec: only those the guest drives become nodes
    assert _records([_dev("/dev/sda", "b", 8, 0), _dev("/dev/kvm", "c", 10, 232)]) == []
