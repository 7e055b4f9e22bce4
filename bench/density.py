#!/usr/bin/env python3
"""Density: what each idle detached container costs the host, hutch against podman, in one run; and
hutch's microVMs beside its containers (B9: 100 idle containers and 20 idle microVMs on this machine).

For each engine, start ``--count`` containers running ``sleep 3600`` one after another (timing each
``run -d``; ``--vm-count`` for ``hutch-vm``, template clones under TCG), then measure what the engine left
behind beyond the workload itself:

- helper PSS: the proportional set size of every process the engine leaves running per container (hutch's
  monitor; podman's conmon), summed from /proc/PID/smaps_rollup, so shared libraries are split fairly;
- slab: the kernel's Slab delta from /proc/meminfo (namespaces, mounts, cgroups), which is noisy: other
  work on the machine moves it too;
- MemAvailable delta, workload included, for a sense of the whole;
- idle CPU: the host CPU those processes burn together over 5 s, in % of one core per container (a
  microVM's guest kernel runs inside its QEMU, so its timer ticks count here: 250 Hz ticks cost ~7% of a
  core per idle guest under TCG, a tickless guest ~1%).

For ``hutch-vm`` the processes left beside each guest are its supervisor (hutch, forked) and its QEMU,
which holds the guest (kernel and workload included): the cost of putting a container behind a VM
boundary.

Then everything is removed and the next engine runs. The order of engines alternates between rounds.

    .venv/bin/python bench/density.py [--count 50] [--vm-count 20] [--rounds 1] [--only hutch,podman,hutch-vm]
                                      [--json bench/results/density.json]

Standard library only; needs root. Everything lives in one temporary directory, cleaned up at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
sys.path.insert(0, str(REPO / "bench"))

import busybox_rootfs  # noqa: E402
from run_latency import ULIMITS, _kill_processes_mentioning, _unmount_under  # noqa: E402


def meminfo() -> dict[str, int]:
    values = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, rest = line.split(":", 1)
            values[key] = int(rest.split()[0])
    return values


def pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def processes_named(name: str, mentioning: str) -> list[int]:
    """Pids whose executable name contains ``name`` and whose command line mentions ``mentioning``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and name.encode() in os.path.basename(argv[0]) and mentioning.encode() in b" ".join(argv):
            found.append(int(entry))
    return found


def cpu_ticks(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime
    except OSError:
        return 0


def parent_of(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return 0


class Engine:
    """One engine under test: how to start a detached container, its helper's name, how to remove all."""

    def __init__(self, name: str, base: list[str], run: list[str], helper: str, top: Path, count: int):
        self.name, self.base, self.run, self.helper, self.top = name, base, run, helper, top
        self.count = count
        self.results: list[dict] = []

    def helpers(self) -> list[int]:
        """The processes the engine keeps beside each container; a microVM's: its QEMU and its parent,
        hutch's supervisor."""
        found = processes_named(self.helper, str(self.top))
        if self.helper == "qemu-system":
            found += [parent_of(pid) for pid in found]
        return found

    def remove_all(self) -> None:
        if self.name == "podman":
            subprocess.run([*self.base, "rm", "-f", "-t", "0", "-a"], capture_output=True, check=False)
            return
        ids = subprocess.run([*self.base, "ps", "-aq"], capture_output=True, text=True).stdout.split()
        if ids:
            subprocess.run([*self.base, "rm", "-f", *ids], capture_output=True, check=False)

    def round(self) -> dict:
        count = self.count
        self.remove_all()
        time.sleep(1.0)
        before = meminfo()
        starts = []
        try:
            for _ in range(count):
                t0 = time.perf_counter()
                proc = subprocess.run([*self.base, *self.run], capture_output=True, text=True, check=False)
                starts.append((time.perf_counter() - t0) * 1000)
                if proc.returncode != 0:
                    raise RuntimeError(f"{self.name} run -d failed: {proc.stderr.strip()[-300:]}")
            time.sleep(3.0)  # let helpers settle (podman's conmon double-forks; guests finish starting)
            after = meminfo()
            helpers = self.helpers()
            pss = sum(pss_kib(pid) for pid in helpers)
            ticks = sum(cpu_ticks(pid) for pid in helpers)
            time.sleep(5.0)
            ticks = sum(cpu_ticks(pid) for pid in helpers) - ticks
        finally:
            self.remove_all()
        result = {
            "containers": count,
            "helpers": len(helpers),
            "helper_pss_kib_per_container": pss / count,
            "slab_kib_per_container": (after["Slab"] - before["Slab"]) / count,
            "mem_available_kib_per_container": (before["MemAvailable"] - after["MemAvailable"]) / count,
            "idle_cpu_percent_per_container": ticks / os.sysconf("SC_CLK_TCK") / 5.0 * 100 / count,
            "start_ms_median": statistics.median(starts),
            "start_ms_p90": statistics.quantiles(starts, n=10)[-1] if len(starts) >= 2 else starts[0],
        }
        self.results.append(result)
        return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=50)
    parser.add_argument("--vm-count", type=int, default=20, help="microVMs for hutch-vm (B9: 20)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--hutch", default=str(REPO / ".venv" / "bin" / "hutch"))
    parser.add_argument("--only", default="hutch,podman")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    work = Path(tempfile.mkdtemp(prefix="hutch-density-"))
    engines: list[Engine] = []
    try:
        tar = work / "busybox.tar"
        busybox_rootfs.build_rootfs_tar(tar)
        wanted = args.only.split(",")
        if "hutch" in wanted:
            base = [args.hutch, "--root", str(work / "hutch")]
            subprocess.run([*base, "import", str(tar), "busybox"], check=True, capture_output=True)
            run = ["run", "-d", "--network", "none", "busybox", "sleep", "3600"]
            engines.append(Engine("hutch", base, run, "hutch-monitor", work / "hutch", args.count))
        if "hutch-vm" in wanted:
            base = [args.hutch, "--root", str(work / "hutch")]
            if not (work / "hutch" / "hutch.db").exists():
                subprocess.run([*base, "import", str(tar), "busybox"], check=True, capture_output=True)
            vm = ["--isolation", "vm", "--vm-accel", "tcg", "--network", "none"]
            # the first run builds the guest's kernel, initramfs, disk and template: not measured
            subprocess.run([*base, "run", "--rm", *vm, "busybox", "true"], check=True, capture_output=True)
            run = ["run", "-d", *vm, "busybox", "sleep", "3600"]
            engines.append(Engine("hutch-vm", base, run, "qemu-system", work / "hutch", args.vm_count))
        podman = shutil.which("podman")
        if "podman" in wanted and podman:
            pdir = work / "podman"
            base = [
                podman,
                "--root",
                str(pdir / "root"),
                "--runroot",
                str(pdir / "run"),
                "--tmpdir",
                str(pdir / "tmp"),
            ]
            subprocess.run([*base, "import", "-q", str(tar), "busybox"], check=True, capture_output=True)
            run = [
                "run",
                "-d",
                "--network",
                "none",
                "--runtime",
                "runc",
                *ULIMITS,
                "busybox",
                "sleep",
                "3600",
            ]
            engines.append(Engine("podman", base, run, "conmon", pdir, args.count))
        for r in range(args.rounds):
            for engine in engines if r % 2 == 0 else list(reversed(engines)):
                result = engine.round()
                print(f"round {r + 1} {engine.name}: " + json.dumps(result), flush=True)
        summary = {
            e.name: {key: statistics.median(res[key] for res in e.results) for key in e.results[0]}
            for e in engines
        }
        report(summary)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            counts = {e.name: e.count for e in engines}
            args.json.write_text(json.dumps({"counts": counts, "summary": summary}, indent=2) + "\n")
        return 0
    finally:
        for engine in engines:
            engine.remove_all()
        _kill_processes_mentioning(work)
        _unmount_under(work)
        shutil.rmtree(work, ignore_errors=True)


def report(summary: dict) -> None:
    head = f"{'helper PSS':>14} {'slab':>10} {'MemAvailable':>13} {'idle CPU':>9}"
    head += f" {'start p50':>10} {'p90':>8}"
    print(f"\n{'engine':9} {head}")
    for name, s in summary.items():
        print(
            f"{name:9} {s['helper_pss_kib_per_container']:>10.0f} KiB {s['slab_kib_per_container']:>6.0f} KiB"
            f" {s['mem_available_kib_per_container']:>9.0f} KiB {s['idle_cpu_percent_per_container']:>7.2f} %"
            f" {s['start_ms_median']:>7.0f} ms {s['start_ms_p90']:>5.0f} ms"
        )
    print("(per container; helper PSS is what the engine leaves running beside each container)")
    if "hutch" in summary and "podman" in summary:
        h, p = summary["hutch"], summary["podman"]
        pss = h["helper_pss_kib_per_container"] / p["helper_pss_kib_per_container"]
        print(
            f"hutch/podman: helper PSS {pss:.2f}x,"
            f" detached start {h['start_ms_median'] / p['start_ms_median']:.2f}x"
        )


def _raise_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
