"""Resource flags to OCI linux.resources, and linux.resources to cgroup v1/v2 writes, as pure logic."""

import pytest

from hutch.cgroups.limits import blkio_to_io_weight, shares_to_weight, v1_writes, v2_writes
from hutch.cgroups.stats import flat_keyed, v1_blkio, v2_io
from hutch.engine.resources import Host, build, merge_update, parse_bytes, parse_id_list
from hutch.errors import HutchError, InvalidArgument

HOST = Host(ncpu=4, cpus="0-3", mems="0")


@pytest.mark.parametrize(
    "text, value",
    [("512", 512), ("1k", 1024), ("64m", 64 << 20), ("64M", 64 << 20), ("1.5g", 3 << 29), ("10mb", 10 << 20)],
)
def test_sizes_take_dockers_units(text, value):
    assert parse_bytes("memory", text) == value


@pytest.mark.parametrize(
    "flags, needle",
    [
        ({"memory": "5x"}, "'5x' for --memory"),
        ({"memory": "1m"}, "minimum is 6m"),
        ({"memory_swap": "64m"}, "--memory-swap needs --memory"),
        ({"memory": "64m", "memory_swap": "32m"}, "'32m' for --memory-swap"),
        ({"memory": "64m", "memory_reservation": "128m"}, "--memory-reservation"),
        ({"cpus": "8"}, "'8' for --cpus"),
        ({"cpus": "abc"}, "'abc' for --cpus"),
        ({"cpus": "1", "cpu_quota": "50000"}, "--cpus cannot be combined"),
        ({"cpu_period": "10"}, "'10' for --cpu-period"),
        ({"cpu_quota": "5"}, "--cpu-quota"),
        ({"cpu_shares": "-3"}, "--cpu-shares"),
        ({"cpuset_cpus": "5"}, "'5' for --cpuset-cpus"),
        ({"cpuset_cpus": "1-x"}, "'1-x' for --cpuset-cpus"),
        ({"cpuset_cpus": "3-1"}, "low to high"),
        ({"cpuset_mems": "1"}, "--cpuset-mems"),
        ({"pids_limit": "ten"}, "'ten' for --pids-limit"),
        ({"blkio_weight": "5"}, "'5' for --blkio-weight"),
        ({"device_read_bps": ["/dev/null:1m"]}, "not a block device"),
        ({"device_write_bps": ["nodevice"]}, "DEVICE:RATE"),
    ],
)
def test_bad_values_name_the_flag_and_the_value(flags, needle):
    with pytest.raises(InvalidArgument) as info:
        build(flags, HOST)
    message = str(info.value)
    assert needle in message and "\n" not in message


def test_memory_swap_defaults_to_twice_memory_and_minus_one_is_unlimited():
    assert build({"memory": "32m"}, HOST) == {"memory": {"limit": 32 << 20, "swap": 64 << 20}}
    assert build({"memory": "32m", "memory_swap": "-1"}, HOST)["memory"]["swap"] == -1


def test_every_flag_lands_in_its_oci_field():
    res = build(
        {
            "memory": "64m",
            "memory_swap": "128m",
            "memory_reservation": "32m",
            "oom_kill_disable": True,
            "cpus": "1.5",
            "cpu_shares": "512",
            "cpuset_cpus": "0,2-3",
            "cpuset_mems": "0",
            "pids_limit": "0",
            "blkio_weight": "300",
        },
        HOST,
    )
    assert res == {
        "memory": {"limit": 64 << 20, "swap": 128 << 20, "reservation": 32 << 20, "disableOOMKiller": True},
        "cpu": {"quota": 150_000, "period": 100_000, "shares": 512, "cpus": "0,2-3", "mems": "0"},
        "pids": {"limit": -1},
        "blockIO": {"weight": 300},
    }


def test_no_flags_no_resources():
    assert build({}, HOST) == {}


def test_id_lists():
    assert parse_id_list("0-2,5") == {0, 1, 2, 5}


def test_v1_writes():
    res = {
        "memory": {"limit": 100, "swap": 200, "reservation": 50},
        "cpu": {"shares": 512, "period": 100_000, "quota": 50_000, "cpus": "0"},
        "pids": {"limit": 10},
        "blockIO": {"weight": 300, "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1048576}]},
    }
    assert v1_writes(res) == [
        ("memory", "memory.limit_in_bytes", "100"),
        ("memory", "memory.memsw.limit_in_bytes", "200"),
        ("memory", "memory.soft_limit_in_bytes", "50"),
        ("cpu", "cpu.shares", "512"),
        ("cpu", "cpu.cfs_period_us", "100000"),
        ("cpu", "cpu.cfs_quota_us", "50000"),
        ("cpuset", "cpuset.cpus", "0"),
        ("pids", "pids.max", "10"),
        ("blkio", "blkio.weight", "300"),
        ("blkio", "blkio.throttle.read_bps_device", "8:0 1048576"),
    ]


def test_v2_writes_convert_as_runc_does():
    res = {
        "memory": {"limit": 100, "swap": 300, "reservation": 50},
        "cpu": {"shares": 1024, "period": 100_000, "quota": 50_000, "mems": "0"},
        "pids": {"limit": -1},
        "blockIO": {"weight": 500, "throttleWriteBpsDevice": [{"major": 254, "minor": 0, "rate": 4096}]},
    }
    assert v2_writes(res) == [
        ("memory.max", "100"),
        ("memory.swap.max", "200"),  # memory+swap minus memory
        ("memory.low", "50"),
        ("cpu.weight", "39"),
        ("cpu.max", "50000 100000"),
        ("cpuset.mems", "0"),
        ("pids.max", "max"),
        ("io.weight", f"default {blkio_to_io_weight(500)}"),
        ("io.max", "254:0 wbps=4096"),
    ]
    assert v2_writes({"memory": {"limit": 100, "swap": -1}})[1] == ("memory.swap.max", "max")
    assert v2_writes({"cpu": {"period": 50_000}}) == [("cpu.max", "max 50000")]


def test_v2_refuses_oom_kill_disable():
    with pytest.raises(HutchError, match="oom-kill-disable"):
        v2_writes({"memory": {"disableOOMKiller": True}})


def test_weight_conversions_cover_the_ranges():
    assert shares_to_weight(2) == 1 and shares_to_weight(262144) == 10000 and shares_to_weight(1024) == 39
    assert blkio_to_io_weight(10) == 1 and blkio_to_io_weight(1000) == 10000


def test_update_keeps_recorded_swap_and_checks_it():
    current = {"memory": {"limit": 32 << 20, "swap": 64 << 20}, "pids": {"limit": 5}}
    merged = merge_update(current, build({"memory": "48m"}, HOST, update=True))
    assert merged == {"memory": {"limit": 48 << 20, "swap": 64 << 20}, "pids": {"limit": 5}}
    with pytest.raises(InvalidArgument, match="memory-swap"):
        merge_update(current, build({"memory": "128m"}, HOST, update=True))
    merged = merge_update(current, build({"memory": "128m", "memory_swap": "-1"}, HOST, update=True))
    assert merged["memory"] == {"limit": 128 << 20, "swap": -1}
    assert current["memory"]["limit"] == 32 << 20  # not modified in place


def test_stat_file_parsers():
    assert flat_keyed("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n")["oom_kill"] == 3
    blkio = "254:0 Read 4096\n254:0 Write 8192\n254:0 Sync 1\n254:0 Total 12288\nTotal 12288\n"
    assert v1_blkio(blkio) == (4096, 8192)
    assert v2_io("254:0 rbytes=100 wbytes=200 rios=1 wios=2\n8:0 rbytes=1 wbytes=2\n") == (101, 202)


def test_stats_sizes_print_as_docker_does():
    from hutch.engine.limits import binary_size, decimal_size

    assert binary_size(160 * 1024) == "160KiB" and binary_size(64 << 20) == "64MiB" and binary_size(0) == "0B"
    assert decimal_size(1234) == "1.23kB" and decimal_size(0) == "0B"
