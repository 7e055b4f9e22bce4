#!/usr/bin/env python3
"""microVM start latency and memory: ``hutch run --isolation vm`` against a bare QEMU boot, in one run.

- launch-to-exit of ``true``: ``hutch run --rm --isolation vm busybox true``, restored from the
  pre-booted template (the default) and booted cold (``--vm-template off``), vs a bare
  ``qemu-system-x86_64 -M microvm`` booting the very same vmlinux and initramfs straight into a power-off
  (the init's probe path: no devices, no modules, no disk, no hutch): the floor hutch's cold boot is
  measured against.
  Rounds are interleaved so a noisy machine slows both alike; medians are reported.
- phases (ms), medians over the same timed runs: the supervisor stamps its steps when ``HUTCH_VM_TIMINGS``
  names a file (QEMU forked, guest "up", its "exit N" read, QEMU reaped), so a run splits into hutch
  start-up (launch to QEMU's fork), QEMU's fork to "up" (a clone: QEMU start, the template's load, the
  guest reading its config and mounting the image; there is no stamp in between, as the supervisor
  awaits no reply from the restore), the command, power-off (a clone without volumes: QEMU killed on
  "exit N") and host tear-down. A cold run's guest side comes from a
  probe run printing ``/proc/uptime`` and ``dmesg``, in the guest's own clock: kernel to init (the
  kernel's "Run /init"), modules loaded (init's ``hutch-init: modules`` line in the kernel log) and init
  to command. A bare QEMU's start is in its launch-to-exit (it has no QMP to ask).
- host memory: PSS of QEMU (and of hutch's supervisor) for one idle detached guest (a template clone),
  the mean over several idle clones at once (they share the template's RAM file and QEMU's own pages),
  that mean without the guest RAM mapping ("beyond the guest's own use", the budget), and a bare idle QEMU;
  and the host CPU one idle clone and the bare idle QEMU burn (% of a core over 5 s).

    .venv/bin/python bench/vm.py [--runs 5] [--accel tcg] [--clones 4] [--json out.json]

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
from density import cpu_ticks  # noqa: E402
from hutch_networks import teardown_networks  # noqa: E402

PY = str(REPO / ".venv" / "bin" / "python")


def hutch(root: Path, *args: str, timings: Path | None = None, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    if timings is not None:
        env["HUTCH_VM_TIMINGS"] = str(timings)
    return subprocess.run([PY, "-m", "hutch", "--root", str(root), *args], env=env, **kw)


# (phase, from stamp, to stamp); "launch" and "end" are the bench's own clock around the hutch process.
PHASES = (
    ("host_startup", "launch", "qemu_forked"),
    ("guest_boot_to_up", "qemu_forked", "up"),
    ("command", "up", "exit_line"),
    ("poweroff", "exit_line", "qemu_exited"),
    ("host_teardown", "qemu_exited", "end"),
)


def timed_run(root: Path, args: tuple, stamps: Path) -> tuple[float, dict]:
    """One ``hutch run``: its launch-to-exit in ms, and its phases in ms from the supervisor's stamps."""
    stamps.unlink(missing_ok=True)
    launch = time.time()
    proc = hutch(root, "run", "--rm", *args, timings=stamps, capture_output=True, text=True)
    end = time.time()
    if proc.returncode != 0:
        raise SystemExit(f"bench: failed: {proc.args}: {proc.stderr}")
    marks = {"launch": launch, "end": end, **json.loads(stamps.read_text().splitlines()[-1])}
    phases = {name: (marks[b] - marks[a]) * 1000 for name, a, b in PHASES if a in marks and b in marks}
    return (end - launch) * 1000, phases


def guest_phases(root: Path, vm: tuple, stamps: Path) -> dict:
    """A cold boot's guest side, from a probe printing its uptime and the kernel log."""
    # --privileged: reading the kernel log needs CAP_SYSLOG, which Docker's default set (the guest
    # agent applies it) does not grant.
    probe = (*vm, "--vm-template", "off", "--privileged", "busybox", "sh", "-c", "cat /proc/uptime; dmesg")
    stamps.unlink(missing_ok=True)
    proc = hutch(root, "run", "--rm", *probe, timings=stamps, capture_output=True, text=True)
    lines = proc.stdout.splitlines()
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"bench: probe failed: {proc.stderr}")
    at_command = float(lines[0].split()[0]) * 1000
    marks = json.loads(stamps.read_text().splitlines()[-1])

    def kernel_ms(text: str) -> float:
        line = next(x for x in lines if text in x)
        return float(line.split("]", 1)[0].strip("[ ")) * 1000

    init, modules = kernel_ms("Run /init as init process"), kernel_ms("hutch-init: modules")
    # The guest's clock, not the host's: it starts late in the kernel's boot, so these add up to less
    # than the host's QEMU-fork-to-"up".
    return {
        "cold_host_qemu_fork_to_up": (marks["up"] - marks["qemu_forked"]) * 1000,
        "cold_kernel_to_init": init,
        "cold_init_modules": modules - init,
        "cold_init_to_command": at_command - init,
        "cold_guest_uptime_at_command": at_command,
    }


def bare_argv(root: Path, accel: str, idle: bool = False) -> list[str]:
    """The same kernel and initramfs hutch boots, with no devices, no modules and no hutch: the guest's
    init (hutch's agent) powers off as soon as it has read the kernel command line (``hutch.probe``, the
    path of hutch's KVM probe). ``idle``: the initramfs plus a busybox (a second archive the kernel
    unpacks over the first), which sleeps instead: a bare guest's memory at rest."""
    from hutch.vm import qemu

    cache = root / "cache" / "vm"
    vmlinux = next(cache.glob("vmlinux-*"))
    initrd = next(cache.glob("initramfs-*.cpio"))
    extra = "hutch.probe"
    if idle:
        from hutch.vm.initramfs import Cpio, compress

        archive = Cpio()
        archive.directory("bin")
        archive.file("bin/busybox", Path("/bin/busybox").read_bytes(), 0o755)
        with_busybox = root / "bare-idle.cpio"
        with_busybox.write_bytes(initrd.read_bytes() + compress(archive.finish()))
        initrd, extra = with_busybox, "rdinit=/bin/busybox -- sleep 600"
    return qemu.command(
        program=qemu.binary(accel),  # the build hutch runs with this accelerator
        kernel=str(vmlinux),
        initrd=str(initrd),
        disk=None,
        accel=accel,
        memory_mib=128,
        cpus=1,
        port_fds={},
        console_log="/dev/null",
        khz=qemu.tsc_khz(),
        extra_cmdline=extra,
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


def guest_ram_pss_kib(pid: int) -> int:
    """PSS of QEMU's guest RAM mapping (the template's RAM file, or the memfd of a bare guest)."""
    total, in_ram = 0, False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split(maxsplit=6)
            if "-" in head[0] and len(head) >= 5 and ":" in head[3]:  # a mapping's header line
                in_ram = len(head) > 5 and head[5].strip().endswith((".ram", ".ram (deleted)"))
            elif in_ram and line.startswith("Pss:"):
                total += int(line.split()[1])
    return total


def cpu_percent(pid: int, seconds: float = 5.0) -> float:
    """Host CPU an idle process burns (utime + stime over ``seconds``), in % of one core: an idle guest
    that still ticks at 250 Hz costs ~7% under TCG, a tickless one ~1% (the density of idle guests)."""
    before = cpu_ticks(pid)
    time.sleep(seconds)
    return round((cpu_ticks(pid) - before) / os.sysconf("SC_CLK_TCK") / seconds * 100, 1)


def detached(root: Path, accel: str) -> tuple[str, int, int]:
    """An idle detached guest from the template: its id, supervisor pid and QEMU pid. No network card,
    as the bare QEMU it is compared with has none (a card adds ~10 MiB: bench/vm_network.py)."""
    vm = ("--isolation", "vm", "--vm-accel", accel, "--network", "none")
    cid = hutch(root, "run", "-d", *vm, "busybox", "sleep", "600", capture_output=True, text=True)
    cid.check_returncode()
    record = json.loads(hutch(root, "inspect", cid.stdout.strip(), capture_output=True, text=True).stdout)
    supervisor = record[0]["State"]["Pid"]
    return cid.stdout.strip(), supervisor, children_named(supervisor, b"qemu-system")[0]


def idle_memory(root: Path, accel: str, clones: int) -> dict:
    """PSS of QEMU and the supervisor for one idle detached clone, the mean over ``clones`` idle clones at
    once (with and without the guest RAM mapping), and of a bare QEMU idling in busybox."""
    started = []
    try:
        started.append(detached(root, accel))
        time.sleep(3)
        _, supervisor, qemu_pid = started[0]
        result = {"hutch_qemu_pss_kib": pss_kib(qemu_pid), "hutch_supervisor_pss_kib": pss_kib(supervisor)}
        result["hutch_qemu_beyond_guest_ram_kib"] = result["hutch_qemu_pss_kib"] - guest_ram_pss_kib(qemu_pid)
        result["hutch_idle_qemu_cpu_percent"] = cpu_percent(qemu_pid)
        while len(started) < clones:
            started.append(detached(root, accel))
        time.sleep(3)
        pids = [qemu for _, _, qemu in started]
        result[f"clones{clones}_qemu_pss_mean_kib"] = round(statistics.mean(pss_kib(p) for p in pids))
        beyond = [pss_kib(p) - guest_ram_pss_kib(p) for p in pids]
        result[f"clones{clones}_qemu_beyond_guest_ram_mean_kib"] = round(statistics.mean(beyond))
    finally:
        for cid, _, _ in started:
            hutch(root, "rm", "-f", cid, capture_output=True).check_returncode()
    bare = subprocess.Popen(bare_argv(root, accel, idle=True), stdin=subprocess.DEVNULL)
    try:
        time.sleep(6)
        result["bare_qemu_pss_kib"] = pss_kib(bare.pid)
        result["bare_idle_qemu_cpu_percent"] = cpu_percent(bare.pid)
    finally:
        bare.kill()
        bare.wait()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--accel", default="tcg", choices=["tcg", "kvm", "auto"])
    parser.add_argument("--clones", type=int, default=4, help="idle clones at once for the mean PSS")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    load_at_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="hutch-bench-vm-") as tmp:
        root = Path(tmp) / "root"
        try:
            tar = Path(tmp) / "busybox.tar"
            busybox_rootfs.build_rootfs_tar(tar)
            hutch(root, "import", str(tar), "busybox", capture_output=True).check_returncode()
            # B5 compares with a bare QEMU, which has no network card: hutch's runs have none either
            # (--network none); one more row runs from the template on the default bridge, as users get it.
            vm = ("--isolation", "vm", "--vm-accel", args.accel, "--network", "none")
            # The first run builds and caches the vmlinux, the initramfs and the erofs disk: not timed.
            first = time.perf_counter()
            hutch(root, "run", "--rm", *vm, "busybox", "true", capture_output=True).check_returncode()
            first_ms = (time.perf_counter() - first) * 1000
            accel = args.accel if args.accel != "auto" else "tcg"
            names = ["hutch_vm_template", "hutch_vm_cold", "bare_qemu", "hutch_vm_template_bridge"]
            samples: dict[str, list[float]] = {name: [] for name in names}
            phases: dict[str, list[float]] = {}
            stamps = Path(tmp) / "stamps.json"
            for i in range(args.runs):
                order = names[i % len(names) :] + names[: i % len(names)]
                for name in order:
                    if name == "hutch_vm_template_bridge":
                        ms, _ = timed_run(root, (*vm[:-2], "busybox", "true"), stamps)
                    elif name.startswith("hutch_vm"):
                        mode = "off" if name == "hutch_vm_cold" else "on"
                        run = (*vm, "--vm-template", mode, "busybox", "true")
                        ms, run_phases = timed_run(root, run, stamps)
                        prefix = "cold" if mode == "off" else "template"
                        for phase, value in run_phases.items():
                            phases.setdefault(f"{prefix}_{phase}", []).append(value)
                    else:
                        argv = bare_argv(root, accel)
                        ms = timed(lambda argv=argv: subprocess.run(argv, capture_output=True, text=True))
                    samples[name].append(ms)
                for phase, value in guest_phases(root, vm, stamps).items():
                    phases.setdefault(phase, []).append(value)
            result = {
                "accel": accel,
                "loadavg_at_start": load_at_start,
                "runs": args.runs,
                "first_run_with_cache_build_ms": round(first_ms),
                **{f"{k}_median_ms": round(statistics.median(v)) for k, v in samples.items()},
                "phases_median_ms": {k: round(statistics.median(v)) for k, v in phases.items()},
                "initramfs_bytes": next((root / "cache" / "vm").glob("initramfs-*.cpio")).stat().st_size,
                **idle_memory(root, accel, args.clones),
                "loadavg_at_end": os.getloadavg(),
            }
            bare = result["bare_qemu_median_ms"]
            result["cold_vs_bare"] = round(result["hutch_vm_cold_median_ms"] / bare, 2)
            result["template_vs_bare"] = round(result["hutch_vm_template_median_ms"] / bare, 2)
        finally:
            teardown_networks(REPO / ".venv" / "bin" / "hutch", root)  # the bridge row's bridge and rules
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
