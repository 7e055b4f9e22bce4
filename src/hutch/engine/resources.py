"""Docker's resource flags (``--memory``, ``--cpus``, ``--pids-limit``...) parsed and checked, into the OCI
spec's ``linux.resources`` form, which the cgroups layer applies for v1 or v2.

Pure logic except where a value must be checked against the host (the CPUs and memory nodes that exist,
the block device a throttle names). Imported only when a resource flag is given, or by ``update``/``stats``.
Every error is one line naming the flag and the value, as ``--memory 5x``.
"""

from __future__ import annotations

import os
import re
import stat

from hutch.errors import InvalidArgument

#: Docker's floor for --memory: below it a container cannot even start its runtime.
MIN_MEMORY = 6 * 1024 * 1024
CPU_PERIOD = 100_000  # µs; what --cpus is expressed over, as Docker does
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4, "p": 1024**5}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([bkmgtp]?)(?:i?b)?", re.IGNORECASE)
_CPU_LIST = re.compile(r"\d+(-\d+)?(,\d+(-\d+)?)*")

#: The flags, as ``hutch run`` and ``hutch update`` name their argparse destinations.
FLAGS = (
    "memory",
    "memory_swap",
    "memory_reservation",
    "oom_kill_disable",
    "cpus",
    "cpu_shares",
    "cpu_period",
    "cpu_quota",
    "cpuset_cpus",
    "cpuset_mems",
    "pids_limit",
    "blkio_weight",
    "device_read_bps",
    "device_write_bps",
)


def parse_bytes(flag: str, text: str) -> int:
    """``512``, ``64m``, ``1.5g``, ``100kb``: Docker's RAMInBytes (binary units b, k, m, g, t, p)."""
    m = _SIZE.fullmatch(text.strip())
    if not m:
        raise InvalidArgument(
            f"invalid value {text!r} for --{flag}: expected a number with an optional unit (b, k, m, g)"
        )
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def binary_size(n: float) -> str:
    """Docker's BytesSize for memory: 1024-based, 4 significant digits (``1.5MiB``)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.4g}{unit}"
        n /= 1024
    return str(n)


def decimal_size(n: float) -> str:
    """Docker's HumanSizeWithPrecision: 1000-based, 3 significant digits (``1.2kB``), whole bytes below a
    kilobyte; image sizes and stats I/O."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.3g}{unit}" if unit != "B" else f"{int(n)}B"
        n /= 1000
    return str(n)


def _int(flag: str, text: str, low: int | None = None, high: int | None = None) -> int:
    try:
        value = int(text)
    except ValueError:
        raise InvalidArgument(f"invalid value {text!r} for --{flag}: expected an integer") from None
    if (low is not None and value < low) or (high is not None and value > high):
        raise InvalidArgument(f"invalid value {text!r} for --{flag}: must be between {low} and {high}")
    return value


def parse_cpus(text: str, ncpu: int) -> int:
    """``--cpus 1.5`` as a quota in µs per ``CPU_PERIOD``; more CPUs than the host has is refused."""
    try:
        value = float(text)
    except ValueError:
        raise InvalidArgument(f"invalid value {text!r} for --cpus: expected a number of CPUs") from None
    if not 0.01 <= value <= ncpu:
        raise InvalidArgument(
            f"invalid value {text!r} for --cpus: the range is 0.01 to {ncpu}.00 (this host has {ncpu} CPUs)"
        )
    return round(value * CPU_PERIOD)


def parse_id_list(text: str) -> set[int]:
    """``0-2,5`` as {0, 1, 2, 5}; the kernel's cpu/node list syntax."""
    result: set[int] = set()
    for part in text.split(","):
        low, _, high = part.partition("-")
        result.update(range(int(low), int(high or low) + 1))
    return result


def parse_cpuset(flag: str, text: str, available: str) -> str:
    """``--cpuset-cpus``/``--cpuset-mems``: valid list syntax, and only ids the host has (``available``)."""
    if not _CPU_LIST.fullmatch(text):
        raise InvalidArgument(f"invalid value {text!r} for --{flag}: expected a list such as 0-2,4")
    wanted = parse_id_list(text)
    if any(int(a) > int(b) for a, _, b in (p.partition("-") for p in text.split(",")) if b):
        raise InvalidArgument(f"invalid value {text!r} for --{flag}: a range goes from low to high")
    missing = sorted(wanted - parse_id_list(available)) if available else []
    if missing:
        raise InvalidArgument(
            f"invalid value {text!r} for --{flag}: not available on this host (available: {available})"
        )
    return text


def parse_throttle(flag: str, text: str) -> dict:
    """``--device-read-bps /dev/sda:10m``: the block device's major:minor and a rate in bytes/s."""
    path, sep, rate = text.rpartition(":")
    if not sep or not path:
        raise InvalidArgument(f"invalid value {text!r} for --{flag}: expected DEVICE:RATE")
    try:
        st = os.stat(path)
    except OSError as e:
        raise InvalidArgument(f"invalid value {text!r} for --{flag}: {path}: {e.strerror}") from None
    if not stat.S_ISBLK(st.st_mode):
        raise InvalidArgument(f"invalid value {text!r} for --{flag}: {path} is not a block device")
    return {"major": os.major(st.st_rdev), "minor": os.minor(st.st_rdev), "rate": parse_bytes(flag, rate)}


def host_cpus() -> str:
    """The CPUs this process may use, in list syntax (what a container's cpuset can be taken from)."""
    return _compact(os.sched_getaffinity(0))


def host_mems() -> str:
    """The memory nodes that are online ("0" on a machine without NUMA)."""
    try:
        with open("/sys/devices/system/node/online") as f:
            return f.read().strip()
    except OSError:
        return "0"


def _compact(ids: set[int]) -> str:
    """{0, 1, 2, 5} as ``0-2,5``."""
    parts: list[str] = []
    for i in sorted(ids):
        if parts and parts[-1].split("-")[-1] == str(i - 1):
            parts[-1] = f"{parts[-1].split('-')[0]}-{i}"
        else:
            parts.append(str(i))
    return ",".join(parts)


class Host:
    """What the checks need to know about the host; a parameter so the logic is testable anywhere."""

    def __init__(self, ncpu: int | None = None, cpus: str | None = None, mems: str | None = None) -> None:
        self.ncpu = ncpu or os.cpu_count() or 1
        self.cpus = host_cpus() if cpus is None else cpus
        self.mems = host_mems() if mems is None else mems


def build(flags: dict, host: Host | None = None, update: bool = False) -> dict:
    """OCI ``linux.resources`` (without ``devices``) from raw flag values (``None``: not given).

    Docker's rules: --memory-swap needs --memory and is at least as large (-1: unlimited; unset: twice
    --memory); --memory-reservation is at most --memory; --cpus excludes --cpu-period/--cpu-quota. With
    ``update`` (``hutch update``) only what is given is returned: the rest stays as recorded.
    """
    host = host or Host()
    res: dict = {}
    memory = _memory(flags, update)
    if memory:
        res["memory"] = memory
    cpu = _cpu(flags, host)
    if cpu:
        res["cpu"] = cpu
    if flags.get("pids_limit") is not None:
        limit = _int("pids-limit", flags["pids_limit"])
        res["pids"] = {"limit": limit if limit > 0 else -1}  # Docker: 0 and -1 both mean unlimited
    block = _block_io(flags)
    if block:
        res["blockIO"] = block
    return res


def _memory(flags: dict, update: bool) -> dict:
    mem: dict = {}
    if flags.get("memory") is not None:
        mem["limit"] = parse_bytes("memory", flags["memory"])
        if mem["limit"] < MIN_MEMORY:
            raise InvalidArgument(f"invalid value {flags['memory']!r} for --memory: the minimum is 6m")
    swap = flags.get("memory_swap")
    if swap is not None:
        if "limit" not in mem and not update:
            raise InvalidArgument("--memory-swap needs --memory: set the memory limit too")
        mem["swap"] = -1 if swap.strip() == "-1" else parse_bytes("memory-swap", swap)
        if mem["swap"] != -1 and mem["swap"] < mem.get("limit", 0):
            raise InvalidArgument(
                f"invalid value {swap!r} for --memory-swap: must be at least --memory ({flags['memory']})"
            )
    elif "limit" in mem and not update:
        mem["swap"] = 2 * mem["limit"]
    if flags.get("memory_reservation") is not None:
        mem["reservation"] = parse_bytes("memory-reservation", flags["memory_reservation"])
        if "limit" in mem and mem["reservation"] > mem["limit"]:
            raise InvalidArgument(
                f"invalid value {flags['memory_reservation']!r} for --memory-reservation:"
                " must not exceed --memory"
            )
    if flags.get("oom_kill_disable"):
        mem["disableOOMKiller"] = True
    return mem


def _cpu(flags: dict, host: Host) -> dict:
    cpu: dict = {}
    if flags.get("cpus") is not None:
        if flags.get("cpu_period") is not None or flags.get("cpu_quota") is not None:
            raise InvalidArgument("--cpus cannot be combined with --cpu-period or --cpu-quota")
        cpu["quota"] = parse_cpus(flags["cpus"], host.ncpu)
        cpu["period"] = CPU_PERIOD
    if flags.get("cpu_period") is not None:
        cpu["period"] = _int("cpu-period", flags["cpu_period"], 1000, 1_000_000)
    if flags.get("cpu_quota") is not None:
        quota = _int("cpu-quota", flags["cpu_quota"])
        if quota != -1 and quota < 1000:
            raise InvalidArgument(
                f"invalid value {flags['cpu_quota']!r} for --cpu-quota: the minimum is 1000"
            )
        cpu["quota"] = quota
    if flags.get("cpu_shares") is not None:
        shares = _int("cpu-shares", flags["cpu_shares"], 0, 262144)
        if shares:  # Docker: 0 means the default
            cpu["shares"] = max(shares, 2)
    if flags.get("cpuset_cpus") is not None:
        cpu["cpus"] = parse_cpuset("cpuset-cpus", flags["cpuset_cpus"], host.cpus)
    if flags.get("cpuset_mems") is not None:
        cpu["mems"] = parse_cpuset("cpuset-mems", flags["cpuset_mems"], host.mems)
    return cpu


def _block_io(flags: dict) -> dict:
    block: dict = {}
    if flags.get("blkio_weight") is not None:
        weight = _int("blkio-weight", flags["blkio_weight"])
        if weight and not 10 <= weight <= 1000:
            raise InvalidArgument(
                f"invalid value {flags['blkio_weight']!r} for --blkio-weight: must be between 10 and 1000"
            )
        if weight:
            block["weight"] = weight
    for flag, key in (
        ("device_read_bps", "throttleReadBpsDevice"),
        ("device_write_bps", "throttleWriteBpsDevice"),
    ):
        if flags.get(flag):
            block[key] = [parse_throttle(flag.replace("_", "-"), text) for text in flags[flag]]
    return block


def merge_update(current: dict, update: dict) -> dict:
    """``hutch update``: the container's resources with ``update`` (from ``build(update=True)``) laid over.

    As Docker's update: a new --memory without --memory-swap keeps the recorded memory+swap limit, which
    must still be at least the memory limit; likewise a reservation above the limit is refused.
    """
    merged = {key: dict(value) if isinstance(value, dict) else value for key, value in current.items()}
    for key, value in update.items():
        merged.setdefault(key, {}).update(value)
    mem = merged.get("memory", {})
    swap, limit, low = mem.get("swap"), mem.get("limit"), mem.get("reservation")
    if swap not in (None, -1) and limit is not None and swap < limit:
        raise InvalidArgument(
            f"--memory {limit} exceeds the memory+swap limit {swap} already set: update --memory-swap too"
        )
    if swap not in (None, -1) and limit is None:
        raise InvalidArgument("--memory-swap needs a memory limit: set --memory too")
    if low is not None and limit is not None and low > limit:
        raise InvalidArgument(f"--memory-reservation {low} exceeds the memory limit {limit}")
    return merged
