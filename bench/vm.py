#!/usr/bin/env python3
"""microVM start latency and memory: ``hutch run --isolation vm`` against a bare QEMU boot, in one run.

- launch-to-exit of ``true``: ``hutch run --rm --isolation vm busybox true``, restored from the
  pre-booted template (the default) and booted cold (``--vm-template off``), vs a bare
  ``qemu-system-x86_64 -M microvm`` booting the very same vmlinux and initramfs straight into
  ``busybox poweroff -f`` (no modules, no disk, no hutch): the floor hutch's cold boot is measured against.
  Rounds are interleaved so a noisy machine slows both alike; medians are reported.
- phases: the guest's own uptime when the container's command runs (kernel boot + hutch's init), and
  hutch's host-side time around it (start-up, image and cache look-ups, QEMU start, tear-down).
- host memory: PSS of QEMU (and of hutch's supervisor) for an idle detached guest (a template clone), and
  of a bare idle QEMU.

    .venv/bin/python bench/vm.py [--runs 5] [--accel tcg] [--json out.json]

Needs root, qemu-system-x86, erofs-utils, linux-image-cloud-amd64. Everything lives in a temporary root,
removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
sys.path.insert(0, str(REPO / "src"))

import busybox_rootfs  # noqa: E402

PY = str(REPO / ".venv" / "bin" / "python")


def hutch(root: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    return subprocess.run([PY, "-m", "hutch", "--root", str(root), *args], env=env, **kw)


def bare_argv(root: Path, accel: str, tail: str) -> list[str]:
    """The same kernel and initramfs hutch boots, with init replaced by a busybox command."""
    from hutch.vm import qemu

    cache = root / "cache" / "vm"
    vmlinux = next(cache.glob("vmlinux-*"))
    initrd = next(cache.glob("initramfs-*.cpio"))
    return qemu.command(
        kernel=str(vmlinux),
        initrd=str(initrd),
        disk=None,
        accel=accel,
        memory_mib=128,
        cpus=1,
        port_fds={},
        console_log="/dev/null",
        khz=qemu.tsc_khz(),
        extra_cmdline=f"rdinit=/bin/busybox -- {tail}",
    )


def timed(argv_or_fn) -> float:
    t0 = time.perf_counter()
    proc = argv_or_fn()
    elapsed = (time.perf_counter() - t0) * 1000
    if proc.returncode != 0:
        raise SystemExit(f"bench: failed: {proc.args}: {proc.stderr}")
    return elapsed


def pss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def children_named(parent: int, prefix: bytes) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmd = f.read()
            except OSError:
                continue
            if ppid == parent and cmd.startswith(prefix):
                found.append(int(entry))
    return found


def idle_memory(root: Path, accel: str) -> dict:
    """PSS of QEMU and the supervisor for an idle detached guest, and of a bare QEMU idling in busybox."""
    vm = ("--isolation", "vm", "--vm-accel", accel)
    cid = hutch(root, "run", "-d", *vm, "busybox", "sleep", "600", capture_output=True, text=True)
    cid.check_returncode()
    record = json.loads(hutch(root, "inspect", cid.stdout.strip(), capture_output=True, text=True).stdout)
    supervisor = record[0]["State"]["Pid"]
    time.sleep(3)
    qemu_pid = children_named(supervisor, b"qemu-system")[0]
    result = {"hutch_qemu_pss_kib": pss_kib(qemu_pid), "hutch_supervisor_pss_kib": pss_kib(supervisor)}
    hutch(root, "rm", "-f", cid.stdout.strip(), capture_output=True).check_returncode()
    bare = subprocess.Popen(bare_argv(root, accel, "sleep 600"), stdin=subprocess.DEVNULL)
    try:
        time.sleep(6)
        result["bare_qemu_pss_kib"] = pss_kib(bare.pid)
    finally:
        bare.kill()
        bare.wait()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--accel", default="tcg", choices=["tcg", "kvm", "auto"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hutch-bench-vm-") as tmp:
        root = Path(tmp) / "root"
        tar = Path(tmp) / "busybox.tar"
        busybox_rootfs.build_rootfs_tar(tar)
        hutch(root, "import", str(tar), "busybox", capture_output=True).check_returncode()
        vm = ("--isolation", "vm", "--vm-accel", args.accel)
        # The first run builds and caches the vmlinux, the initramfs and the erofs disk: not timed.
        first = time.perf_counter()
        hutch(root, "run", "--rm", *vm, "busybox", "true", capture_output=True).check_returncode()
        first_ms = (time.perf_counter() - first) * 1000
        accel = args.accel if args.accel != "auto" else "tcg"
        names = ["hutch_vm_template", "hutch_vm_cold", "bare_qemu"]
        samples: dict[str, list[float]] = {name: [] for name in (*names, "guest_uptime_at_command")}
        for i in range(args.runs):
            order = names[i % 3 :] + names[: i % 3]
            for name in order:
                if name.startswith("hutch_vm"):
                    mode = "off" if name == "hutch_vm_cold" else "on"
                    cmd = [*vm, "--vm-template", mode, "busybox", "true"]
                    ms = timed(lambda cmd=cmd: hutch(root, "run", "--rm", *cmd, capture_output=True))
                else:
                    argv = bare_argv(root, accel, "poweroff -f")
                    ms = timed(lambda argv=argv: subprocess.run(argv, capture_output=True, text=True))
                samples[name].append(ms)
            probe = ("run", "--rm", *vm, "--vm-template", "off", "busybox", "cat", "/proc/uptime")
            up = hutch(root, *probe, capture_output=True, text=True)
            samples["guest_uptime_at_command"].append(float(up.stdout.split()[0]) * 1000)
        result = {
            "accel": accel,
            "runs": args.runs,
            "first_run_with_cache_build_ms": round(first_ms),
            **{f"{k}_median_ms": round(statistics.median(v)) for k, v in samples.items()},
            "initramfs_bytes": next((root / "cache" / "vm").glob("initramfs-*.cpio")).stat().st_size,
            **idle_memory(root, accel),
        }
        bare = result["bare_qemu_median_ms"]
        result["cold_vs_bare"] = round(result["hutch_vm_cold_median_ms"] / bare, 2)
        result["template_vs_bare"] = round(result["hutch_vm_template_median_ms"] / bare, 2)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
