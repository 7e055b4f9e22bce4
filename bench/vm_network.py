#!/usr/bin/env python3
"""What a network card costs a microVM, and what a published port to a microVM carries, in one run.

- start: ``hutch run --rm --isolation vm busybox true`` from the template with ``--network none`` and
  with the default bridge (a TAP on hutch's bridge, the virtio-net driver in the template, eth0 set up by
  the guest), rounds interleaved, medians;
- throughput: loopback TCP through a published port (``-p PORT:80``, nft DNAT) into busybox ``nc`` in a
  microVM and in a namespace container on the same bridge, ``--mib`` MiB per connection, interleaved.

    .venv/bin/python bench/vm_network.py [--runs 7] [--mib 32] [--accel tcg] [--json FILE]

Needs root, qemu-system-x86, erofs-utils, linux-image-cloud-amd64, nftables. Everything lives in a
temporary root; containers, the bridge and the nft table are removed at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO / "tools"))
sys.path.insert(0, str(BENCH))

import busybox_rootfs  # noqa: E402
import port_throughput as tput  # noqa: E402
import run_latency as common  # noqa: E402
import vm as vmbench  # noqa: E402


def starts(root: Path, vm: tuple[str, ...], runs: int) -> dict[str, list[float]]:
    """Interleaved launch-to-exit of ``true`` without and with a network card (ms)."""
    modes = {"none": ("--network", "none"), "bridge": ("--network", "bridge")}
    samples: dict[str, list[float]] = {name: [] for name in modes}
    names = list(modes)
    for i in range(runs):
        for name in names[i % 2 :] + names[: i % 2]:
            cmd = ["run", "--rm", *modes[name], *vm, "busybox", "true"]
            t0 = time.perf_counter()
            vmbench.hutch(root, *cmd, capture_output=True).check_returncode()
            samples[name].append((time.perf_counter() - t0) * 1000)
    return samples


def throughput(root: Path, vm: tuple[str, ...], rounds: int, mib: int) -> dict[str, list[float]]:
    """MiB/s through a published port into a microVM and into a namespace container."""
    ports = {"vm": tput.free_port(), "container": tput.free_port()}
    for name, port in ports.items():
        flags = vm if name == "vm" else ()
        vmbench.hutch(
            root, "run", "-d", "--name", f"tput-{name}", "-p", f"127.0.0.1:{port}:80", *flags,
            "busybox", *tput.SERVER, capture_output=True,
        ).check_returncode()  # fmt: skip
    for port in ports.values():
        tput.wait_ready(port, timeout=60)
    return tput.measure(ports, rounds, mib)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="starts per mode, and connections per target")
    parser.add_argument("--mib", type=int, default=32, help="MiB per connection (TCG moves ~10-50 MiB/s)")
    parser.add_argument("--accel", default="tcg", choices=["tcg", "kvm", "auto"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hutch-bench-vmnet-") as tmp:
        root = Path(tmp) / "root"
        tar = Path(tmp) / "busybox.tar"
        busybox_rootfs.build_rootfs_tar(tar)
        vm = ("--isolation", "vm", "--vm-accel", args.accel)
        try:
            vmbench.hutch(root, "import", str(tar), "busybox", capture_output=True).check_returncode()
            for mode in ("none", "bridge"):  # builds the caches and both templates: not timed
                vmbench.hutch(root, "run", "--rm", "--network", mode, *vm, "busybox", "true",
                              capture_output=True).check_returncode()  # fmt: skip
            start = starts(root, vm, args.runs)
            speed = throughput(root, vm, args.runs, args.mib)
        finally:
            for name in ("vm", "container"):
                vmbench.hutch(root, "rm", "-f", f"tput-{name}", capture_output=True)
            common.teardown_networks(REPO / ".venv" / "bin" / "hutch", root)
            common._kill_processes_mentioning(Path(tmp))
    result = {
        "accel": args.accel,
        "runs": args.runs,
        "mib_per_connection": args.mib,
        **{f"vm_start_{k}_median_ms": round(statistics.median(v)) for k, v in start.items()},
        **{f"vm_start_{k}_min_ms": round(min(v)) for k, v in start.items()},
        **{f"port_{k}_median_mib_s": round(statistics.median(v), 1) for k, v in speed.items()},
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
