"""Choosing the accelerator: KVM when it really runs the guest kernel, TCG otherwise.

``/dev/kvm`` existing proves little here: on these hosts it is a paravirtual hypervisor that runs only
guest kernels built for it (PVM, the ``kvm_pvm`` module: a hypervisor for nested guests without hardware
nesting, whose guests are kernels built with ``CONFIG_PVM_GUEST``), and a stock kernel fails with an
emulation error or crawls. So ``auto`` boots
the guest kernel once under KVM with a short deadline (the init prints a marker and powers off at once),
and remembers the verdict until the host reboots (keyed by ``/proc/sys/kernel/random/boot_id``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from hutch.vm import qemu

PROBE_DEADLINE = 4.0
MARKER = b"hutch-probe-ok"


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return "unknown"


def choose(choice: str, vmlinux: Path, initrd: Path, cache: Path) -> str:
    """``kvm`` or ``tcg`` for this run; ``auto`` probes (once per host boot and kernel) and warns on TCG."""
    if choice != "auto":
        return choice
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        _warn("no usable /dev/kvm")
        return "tcg"
    verdict_file = cache / f"accel-{_boot_id()}-{vmlinux.name}.json"
    try:
        verdict = json.loads(verdict_file.read_text())
    except (OSError, ValueError):
        verdict = {"kvm": probe_kvm(vmlinux, initrd)}
        from hutch.fsutil import atomic_write

        atomic_write(verdict_file, json.dumps(verdict).encode(), durable=False)
    if verdict.get("kvm"):
        return "kvm"
    _warn(f"KVM cannot run the guest kernel on this host{_why_not()}")
    return "tcg"


def _why_not() -> str:
    """What the kernel's KVM is, when that explains a failed probe."""
    if os.path.isdir("/sys/module/kvm_pvm"):
        return " (its KVM is PVM, which runs only kernels built as PVM guests)"
    return ""


def _warn(reason: str) -> None:
    print(f"hutch: {reason}: using TCG (software emulation, slow)", file=sys.stderr)


def probe_kvm(vmlinux: Path, initrd: Path, deadline: float = PROBE_DEADLINE) -> bool:
    """Boot the kernel under KVM until the init's marker or the deadline; QEMU is always killed."""
    argv = qemu.command(
        program=qemu.binary("kvm"),
        kernel=str(vmlinux),
        initrd=str(initrd),
        disk=None,
        accel="kvm",
        memory_mib=128,
        cpus=1,
        port_fds={},
        console_log="/dev/stdout",
        khz=qemu.tsc_khz(),
        extra_cmdline="hutch.probe",
    )
    import subprocess

    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    seen = b""
    end = time.monotonic() + deadline
    try:
        import select

        while time.monotonic() < end:
            ready, _, _ = select.select([proc.stdout], [], [], max(0.0, end - time.monotonic()))
            if not ready:
                break
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            seen += chunk
            if MARKER in seen:
                return True
        return False
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
