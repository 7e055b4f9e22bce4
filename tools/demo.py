#!/usr/bin/env python3
"""hutch, shown: build a busybox image offline, import it, run containers with docker-style flags.

Run as root with the project's virtualenv (``make demo`` does both):

    .venv/bin/python tools/demo.py [--root DIR] [--keep] [--vm]

Every step prints its command, its output, its exit status and how long it took, and checks the output
for what it is meant to show. By default the demo works in a fresh temporary root under /var/tmp that is
removed at the end (``--keep`` keeps it, ``--root DIR`` uses and keeps DIR). Nothing is pulled from a
registry: the image is built from Debian's busybox-static by ``tools/busybox_rootfs.py``.

Standard library only; the ``hutch`` it runs is the one next to this interpreter (``.venv/bin/hutch``).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

import busybox_rootfs  # noqa: E402
from hutch_networks import teardown_networks  # noqa: E402

IMAGE = "busybox:demo"
Check = Callable[[str], str | None]  # output -> None when fine, else what was wrong


def contains(*needles: str) -> Check:
    def check(out: str) -> str | None:
        missing = [n for n in needles if n not in out]
        return f"expected {', '.join(map(repr, missing))} in the output" if missing else None

    return check


def first_line(expected: str) -> Check:
    def check(out: str) -> str | None:
        line = out.strip().splitlines()[0] if out.strip() else ""
        return None if line == expected else f"expected {expected!r}, got {line!r}"

    return check


def only_loopback(out: str) -> str | None:
    """/proc/net/dev lists interfaces as ``name: counters``; with --network none only ``lo`` may be there."""
    names, in_table = [], False
    for line in out.splitlines():
        if "face |" in line:  # the second header line of /proc/net/dev
            in_table = True
            continue
        head, sep, counters = line.partition(":")
        if in_table and sep and counters.replace(" ", "").isdigit():
            names.append(head.strip())
    if names == ["lo"]:
        return None
    return f"expected only 'lo' in /proc/net/dev, found {names or 'nothing'}"


@dataclass
class Step:
    """One hutch command (arguments after ``hutch --root DIR``) and what its output should show."""

    title: str
    args: list[str]
    check: Check | None = None
    expect_rc: int = 0
    essential: bool = False  # when it fails, the steps after it cannot work


# ----- the steps ----------------------------------------------------------------------------------
# "{tar}" is replaced by the path of the busybox rootfs tarball.
STEPS: list[Step] = [
    Step("import the rootfs tarball as an image", ["import", "{tar}", IMAGE], essential=True),
    Step("list images", ["images"], contains("busybox", "demo")),
    Step(
        "run one command in a container",
        ["run", "--rm", IMAGE, "echo", "hello from a container"],
        first_line("hello from a container"),
    ),
    Step(
        "own PID and UTS namespaces, root inside, the image's tree as /",
        ["run", "--rm", IMAGE, "sh", "-c", "echo pid=$$; hostname; id; ls /"],
        contains("pid=1\n", "uid=0(root) gid=0(root)", "bin", "etc", "home", "proc", "tmp", "usr"),
    ),
    Step(
        "environment variables (-e)",
        [
            "run",
            "--rm",
            "-e",
            "GREETING=hello",
            "-e",
            "WHO=hutch",
            IMAGE,
            "sh",
            "-c",
            "echo $GREETING from $WHO",
        ],
        first_line("hello from hutch"),
    ),
    Step(
        "working directory (-w)",
        ["run", "--rm", "-w", "/home/hutch", IMAGE, "pwd"],
        first_line("/home/hutch"),
    ),
    Step(
        "another user (-u 1000), groups from the image's /etc/group",
        ["run", "--rm", "-u", "1000", IMAGE, "id"],
        contains("uid=1000(hutch) gid=1000(hutch)", "10(wheel)", "29(audio)"),
    ),
    Step(
        "hostname (--hostname)",
        ["run", "--rm", "--hostname", "demo-box", IMAGE, "hostname"],
        first_line("demo-box"),
    ),
    Step(
        "no network (--network none): only the loopback interface",
        ["run", "--rm", "--network", "none", IMAGE, "sh", "-c", "ip addr; cat /proc/net/dev"],
        only_loopback,
    ),
    Step(
        "the container's exit status is hutch's",
        ["run", "--rm", IMAGE, "sh", "-c", "echo exiting with 3; exit 3"],
        first_line("exiting with 3"),
        expect_rc=3,
    ),
]

# ----- microVM steps: the same image behind a hypervisor (--isolation vm) -------------------------
# The first one builds and caches the guest's vmlinux, initramfs and the image's erofs disk. --vm-accel auto
# uses KVM where it runs the guest kernel and TCG (software emulation, a few seconds per boot) otherwise.


def other_kernel(out: str) -> str | None:
    lines = out.splitlines()
    if not lines or lines[0] == platform.release():
        return f"expected the guest's own kernel release, got {lines[:1]} (host: {platform.release()})"
    return None if "hello from a microVM" in out else "no greeting from the guest"


VM_STEPS: list[Step] = [
    Step(
        "the same image inside a QEMU microVM, with its own kernel",
        ["run", "--rm", "--isolation", "vm", IMAGE, "sh", "-c", "uname -r; echo hello from a microVM"],
        other_kernel,
    ),
    Step(
        "flags and the exit status cross the VM boundary",
        [
            "run",
            "--rm",
            "--isolation",
            "vm",
            "-e",
            "WHO=guest",
            "-w",
            "/tmp",
            "-u",
            "1000",
            IMAGE,
            "sh",
            "-c",
            "echo $WHO in $(pwd) as $(id -u); exit 3",
        ],
        first_line("guest in /tmp as 1000"),
        expect_rc=3,
    ),  # fmt: skip
]


# ----- running them -------------------------------------------------------------------------------


@dataclass
class Result:
    step: Step
    rc: int
    ms: float
    problem: str | None


def run_step(n: int, step: Step, hutch: str, root: Path, tar: Path) -> Result:
    args = [a.replace("{tar}", str(tar)) for a in step.args]
    shown = "hutch --root $ROOT " + shlex.join(args).replace(str(tar), "$TAR")
    print(f"\n[{n}] {step.title}\n$ {shown}", flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [hutch, "--root", str(root), *args], stdin=subprocess.DEVNULL, capture_output=True, text=True
    )
    ms = (time.perf_counter() - t0) * 1000.0
    out = proc.stdout + proc.stderr
    for line in out.rstrip("\n").splitlines():
        print(f"  {line}")
    problem = None
    if proc.returncode != step.expect_rc:
        problem = f"exit status {proc.returncode}, expected {step.expect_rc}"
    elif step.check:
        problem = step.check(proc.stdout)
    verdict = "ok" if problem is None else f"FAILED: {problem}"
    print(f"  -> exit {proc.returncode}, {ms:.0f} ms, {verdict}", flush=True)
    return Result(step, proc.returncode, ms, problem)


def unmount_under(top: Path) -> None:
    """Lazily unmount whatever is still mounted at or below ``top`` (deepest first)."""
    libc = ctypes.CDLL(None, use_errno=True)
    prefix = str(top).rstrip("/") + "/"
    for _ in range(5):
        with open("/proc/self/mountinfo") as f:
            points = [line.split()[4] for line in f]
        points = [p for p in points if p == str(top) or p.startswith(prefix)]
        if not points:
            return
        for point in sorted(points, key=lambda p: p.count("/"), reverse=True):
            libc.umount2(point.encode(), 2)  # MNT_DETACH


def vm_available() -> bool:
    import glob

    return shutil.which("qemu-system-x86_64") is not None and bool(glob.glob("/boot/vmlinuz-*cloud*"))


def find_hutch(explicit: str | None) -> str | None:
    candidates = [explicit] if explicit else [Path(sys.executable).parent / "hutch", REPO / ".venv/bin/hutch"]
    for c in candidates:
        if c and os.access(c, os.X_OK):
            return str(c)
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Show hutch running containers from a busybox image.")
    parser.add_argument("--root", type=Path, help="hutch root to use and keep (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary root afterwards")
    parser.add_argument("--vm", action="store_true", help="run the microVM steps even if QEMU looks missing")
    parser.add_argument("--no-vm", action="store_true", help="skip the microVM steps (--isolation vm)")
    parser.add_argument("--hutch", help="hutch executable (default: the one next to this python)")
    parser.add_argument("--busybox", type=Path, default=busybox_rootfs.DEFAULT_BUSYBOX, help="static busybox")
    args = parser.parse_args(argv)

    if os.geteuid() != 0:
        print("demo: hutch run needs root (namespaces, mounts, cgroups): run it as root", file=sys.stderr)
        return 1
    hutch = find_hutch(args.hutch)
    if hutch is None:
        print("demo: no hutch executable found; run `make deps` first", file=sys.stderr)
        return 1

    signal.signal(signal.SIGTERM, signal.default_int_handler)
    temporary = args.root is None
    root = Path(tempfile.mkdtemp(prefix="hutch-demo-", dir="/var/tmp")) if temporary else args.root.absolute()
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="hutch-demo-tar-"))
    tar = scratch / "busybox.tar"
    results: list[Result] = []
    try:
        print(f"ROOT={root}\nTAR={tar}")
        print("\n[0] build a busybox rootfs tarball offline\n$ python tools/busybox_rootfs.py $TAR")
        t0 = time.perf_counter()
        try:
            digest = busybox_rootfs.build_rootfs_tar(tar, args.busybox)
        except busybox_rootfs.RootfsError as err:
            print(f"  -> FAILED: {err}")
            return 1
        print(f"  {tar.stat().st_size // 1024} KiB, {digest}")
        print(f"  -> {(time.perf_counter() - t0) * 1000:.0f} ms, ok")

        with_vm = not args.no_vm and (args.vm or vm_available())
        steps = STEPS + (VM_STEPS if with_vm else [])
        if not with_vm:
            print("\n(microVM steps skipped: --no-vm, or no qemu-system-x86_64 / cloud kernel here)")
        for n, step in enumerate(steps, start=1):
            result = run_step(n, step, hutch, root, tar)
            results.append(result)
            if result.problem and step.essential:
                print("\ndemo: stopping here: the steps after this one depend on it")
                break
    except KeyboardInterrupt:
        print("\ndemo: interrupted")
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        shutil.rmtree(scratch, ignore_errors=True)
        if temporary and not args.keep:
            teardown_networks(hutch, root)
            unmount_under(root)
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"\nthe demo's hutch root is kept in {root}")
        signal.signal(signal.SIGINT, signal.default_int_handler)

    failed = [r for r in results if r.problem]
    runs = [r.ms for r in results if r.step.args[0] == "run" and "--isolation" not in r.step.args]
    vm_runs = [r.ms for r in results if "--isolation" in r.step.args]
    print(f"\n{len(results) - len(failed)} passed, {len(failed)} failed")
    if runs:
        print(f"hutch run: median {statistics.median(runs):.0f} ms over {len(runs)} containers")
    if vm_runs:
        times = ", ".join(f"{ms:.0f}" for ms in vm_runs)
        print(f"hutch run --isolation vm: {times} ms (the first builds the caches)")
    for r in failed:
        print(f"  failed: [{results.index(r) + 1}] {r.step.title}: {r.problem}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
