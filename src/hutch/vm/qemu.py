"""The QEMU ``microvm`` command line: the facts measured on these hosts, in one place.

- ``pit=on`` and ``tsc_early_khz=<host TSC kHz>`` on the kernel command line, or the guest hangs
  calibrating its clocks under TCG; the RTC stays (``rtc=off`` cost 2.5 s) and so does ACPI (the kernel
  finds the virtio-mmio devices through it).
- A CPU with an always-running APIC timer (ARAT: ``-cpu host`` under KVM, ``qemu64,+arat`` under TCG,
  whose default CPU lacks it) and ``tsc=reliable``: without ARAT the kernel cannot stop the tick when idle
  and ticks at 250 Hz forever (an idle guest cost 7.5% of a host core under TCG; tickless, 1%), and
  without ``tsc=reliable`` every template clone redoes the clocksource watchdog's checks after its
  restore (about 2,000 translated blocks, a kthread, a stop_machine and live code patching).
- ``-nodefaults -no-user-config``: no VGA, NIC, floppy or config files to probe.
- The serial port goes to a console log (the kernel is ``quiet``: it only holds errors), shown when the
  guest fails to come up. stdio and control travel over virtio-serial ports, each a socket QEMU inherits.
"""

from __future__ import annotations

import os

QEMU = "qemu-system-x86_64"
# Debian's KVM-only build of QEMU for the microvm machine, in the same package: 10 shared libraries
# instead of 51 (no TCG, no capstone, no TLS), so less to load and relocate. Measured here under KVM,
# stopped before its first instruction (-S): its QMP greeting after 17 ms instead of 34, 17.7 MiB PSS
# instead of 23.0. It has no vhost-user-fs device: a guest with volumes runs the full build.
QEMU_MICROVM = "/usr/bin/qemu-system-x86_64-microvm"
# hutch.exec carries the frames of every `hutch exec` (vm/frames.py): ports are fixed at QEMU's start.
PORTS = ("hutch.ctl", "hutch.stdin", "hutch.stdout", "hutch.stderr", "hutch.exec")


def tsc_khz() -> int:
    """The host's TSC frequency in kHz: the guest's TSC runs at the host's, and the kernel must be told."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    return int(float(line.split(":")[1]) * 1000)
    except (OSError, ValueError):
        pass
    return 0


def kernel_cmdline(khz: int, extra: str = "") -> str:
    """``quiet`` matters under TCG: every byte on the emulated UART is a slow exit to QEMU."""
    parts = [
        "console=ttyS0",
        "quiet",
        "panic=-1",
        "reboot=t",
        "rdinit=/init",
        "tsc=reliable",
    ]
    if khz:
        parts.append(f"tsc_early_khz={khz}")
    if extra:
        parts.append(extra)
    return " ".join(parts)


def cpu_model(accel: str) -> str:
    """The guest's CPU: the host's own under KVM; under TCG QEMU's default model plus ARAT (see above)."""
    return "host" if accel == "kvm" else "qemu64,+arat"


def binary(accel: str, volumes: bool = False) -> str:
    """The QEMU to run: the slim microvm build under KVM when it is installed and no volume needs the
    full build's vhost-user-fs; the full build otherwise (the slim one has no TCG)."""
    if accel == "kvm" and not volumes and os.access(QEMU_MICROVM, os.X_OK):
        return QEMU_MICROVM
    return QEMU


def boot_identity(accel: str, khz: int) -> str:
    """What a template guest was booted with beyond its kernel and initramfs (a template has no volumes):
    it restores only in the same QEMU build, CPU model and kernel command line."""
    return f"{binary(accel)} {cpu_model(accel)} {kernel_cmdline(khz)}"


def command(
    *,
    kernel: str | None,
    initrd: str,
    disk: str | None,
    accel: str,
    memory_mib: int,
    cpus: int,
    port_fds: dict[str, int],
    console_log: str,
    khz: int,
    qmp_fd: int | None = None,
    extra_cmdline: str = "",
    extra_machine: str = "",
    extra_argv: list[str] | None = None,
    program: str = QEMU,
) -> list[str]:
    """argv for one guest; ``port_fds`` maps each port name to a connected socket fd QEMU inherits.

    ``kernel=None`` is for a template clone: its RAM already holds the booted kernel, and without
    ``-kernel``/``-initrd`` QEMU neither maps the 50 MB vmlinux nor reads the initramfs (2 MiB less PSS
    per clone; the boot firmware that would load them never runs again)."""
    argv = [
        program,
        "-M",
        "microvm,pit=on,rtc=on,pic=on,isa-serial=on" + extra_machine,
        "-accel",
        accel,
        "-cpu",
        cpu_model(accel),
        "-m",
        f"{memory_mib}M",
        "-smp",
        str(cpus),
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-no-reboot",
    ]
    if kernel is not None:
        argv += ["-kernel", kernel, "-initrd", initrd, "-append", kernel_cmdline(khz, extra_cmdline)]
    argv += [
        "-chardev",
        f"file,id=con,path={console_log}",
        "-serial",
        "chardev:con",
    ]
    if disk is not None:
        # A read-only raw file behind virtio-blk: the placeholder while a template boots, the image's
        # erofs disk in a clone of it and in a cold boot.
        argv += [
            "-blockdev",
            f"driver=file,node-name=disk,filename={disk},read-only=on",
            "-blockdev",
            "driver=raw,node-name=root,file=disk,read-only=on",
            "-device",
            "virtio-blk-device,drive=root",
        ]
    if port_fds:
        argv += ["-device", "virtio-serial-device,max_ports=8"]
    for nr, name in enumerate(PORTS if port_fds else (), start=1):
        argv += [
            "-chardev",
            f"socket,id=p{nr},fd={port_fds[name]}",
            "-device",
            f"virtserialport,chardev=p{nr},name={name},nr={nr}",
        ]
    argv += extra_argv or []
    if qmp_fd is not None:
        argv += ["-chardev", f"socket,id=qmp,fd={qmp_fd}", "-mon", "chardev=qmp,mode=control"]
    return argv


# --- networking: one virtio-net card on a TAP device hutch made (see hutch.network.tap) ---------------

NET_CMDLINE = "hutch.net"  # tells the guest's init to load the virtio-net driver before "ready"
TEMPLATE_MAC = "02:00:00:00:00:01"  # a template's card; each clone's guest sets its own MAC after restore


def nic_args(tap_fd: int, mac: str) -> list[str]:
    """The guest's card: ``virtio-net-device`` on the TAP fd QEMU inherits. The same arguments (and so
    the same device set) for a template and its clones; only the fd and MAC differ, and the MAC QEMU
    holds is replaced by the template's on restore, which is why the guest sets it again (see script)."""
    return ["-netdev", f"tap,id=net0,fd={tap_fd}", "-device", f"virtio-net-device,netdev=net0,mac={mac}"]
