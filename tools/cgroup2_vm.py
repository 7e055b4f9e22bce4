#!/usr/bin/env python3
"""Run a command as root in a QEMU guest that boots this host's own userspace on a pure cgroup v2 kernel.

Why: this host is cgroup-hybrid (v1 controllers, an empty cgroup2 mount), so the v2 backend cannot be
tested for real here; modern hosts are pure v2. The guest runs Debian's cloud kernel (no cgroup v1 at all:
``cgroup_no_v1=all``, cgroup2 mounted at /sys/fs/cgroup) with the host's root shared read-only over
virtiofs (``/usr/lib/qemu/virtiofsd``), so the same checkout, virtualenv and Python run the same tests.
KVM is unusable on these machines, so QEMU runs under TCG.

The guest: a tiny initramfs (host busybox-static + the virtio/virtiofs/overlay modules) mounts the shared
root read-only, puts tmpfs on /tmp, /run and /var/tmp, mounts proc, sysfs, devtmpfs and cgroup2,
``switch_root``s into it and runs the command with the host's environment basics; its exit status comes
back as a marker line on the serial console, which is copied to our stdout.

Usage: tools/cgroup2_vm.py [--cwd DIR] [--memory MiB] [--smp N] [--timeout S] -- COMMAND [ARG...]
Needs root, qemu-system-x86 (qemu-system-common has virtiofsd), linux-image-cloud-amd64, busybox-static.
Exit status: the command's, or 124 on timeout, 125 if the guest could not run it.
"""

from __future__ import annotations

import argparse
import glob
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VIRTIOFSD = "/usr/lib/qemu/virtiofsd"
MODULES = {
    "microvm": ("virtio_ring", "virtio", "virtio_mmio", "fuse", "virtiofs", "overlay"),
    "q35": ("virtio_ring", "virtio", "virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio_pci")
    + ("fuse", "virtiofs", "overlay"),
}
MACHINES = {
    # microvm: no firmware, no PCI; the fastest boot, but under TCG on a loaded host the kernel's timer
    # calibration can hang ("tsc: Unable to calibrate against PIT"), hence the PIT and RTC.
    "microvm": ("microvm,accel=tcg,memory-backend=mem,pit=on,pic=on,rtc=on", "vhost-user-fs-device"),
    # q35: SeaBIOS and PCI cost a second or two more, but HPET and the ACPI PM timer make calibration sure.
    "q35": ("q35,accel=tcg,memory-backend=mem", "vhost-user-fs-pci"),
}
MARKER = "HUTCH-GUEST-EXIT="
TAG = "hostroot"

INIT = """#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /newroot /usr/bin /sbin /usr/sbin
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
ip link set lo up
for m in {modules}; do insmod /modules/$m.ko || echo "guest: insmod $m failed"; done
mount -t virtiofs -o ro {tag} /newroot || {{ echo "{marker}125"; reboot -f; }}
keep={keep}
if [ -n "$keep" ]; then mkdir -p /keep && mount --bind "/newroot$keep" /keep; fi
for d in tmp run var/tmp; do mount -t tmpfs -o mode=1777 tmpfs /newroot/$d; done
# A checkout under /tmp (a CI clone) stays visible through the guest's own tmpfs.
if [ -n "$keep" ]; then mkdir -p "/newroot$keep" && mount --move /keep "/newroot$keep"; fi
mount --move /dev /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts /newroot/dev/pts
mount -t tmpfs tmpfs /newroot/dev/shm
mount -t proc proc /newroot/proc
mount -t sysfs sysfs /newroot/sys
mount -t cgroup2 -o nsdelegate cgroup2 /newroot/sys/fs/cgroup
cp /command.sh /newroot/run/command.sh
umount /proc /sys
exec switch_root /newroot /bin/busybox sh /run/command.sh
"""

COMMAND = """export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/tmp LANG=C.UTF-8
export PYTHONDONTWRITEBYTECODE=1 {env}
echo "guest: kernel $(uname -r), $(nproc) CPUs, cgroup mounts:" $(grep cgroup /proc/mounts | cut -d" " -f2,3)
cd {cwd} && {command}
echo "{marker}$?"
/bin/busybox reboot -f
"""


def _kernel() -> tuple[Path, str]:
    """The newest cloud kernel image in /boot and its release."""
    images = sorted(glob.glob("/boot/vmlinuz-*-cloud-amd64"))
    if not images:
        raise SystemExit(
            "cgroup2_vm: no /boot/vmlinuz-*-cloud-amd64 (apt-get install linux-image-cloud-amd64)"
        )
    image = Path(images[-1])
    return image, image.name.removeprefix("vmlinuz-")


def _cpio(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A newc cpio archive of (name, mode, data); directories have empty data."""
    out = bytearray()
    for ino, (name, mode, data) in enumerate([*entries, ("TRAILER!!!", 0, b"")], 1):
        encoded = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
        out += b"070701" + b"".join(b"%08X" % f for f in fields) + encoded
        out += b"\0" * (-len(out) % 4) + data
        out += b"\0" * (-len(out) % 4)
    return bytes(out)


def _module(release: str, name: str) -> bytes:
    base = Path("/lib/modules", release, "kernel")
    found = list(base.rglob(f"{name}.ko")) + list(base.rglob(f"{name}.ko.xz"))
    if not found:
        raise SystemExit(f"cgroup2_vm: module {name} not found for kernel {release}")
    data = found[0].read_bytes()
    if found[0].suffix == ".xz":
        import lzma

        data = lzma.decompress(data)
    return data


def build_initramfs(path: Path, release: str, command: str, machine: str, keep: str = "") -> None:
    """The guest's initramfs: busybox, the modules, /init and the command script."""
    modules = MODULES[machine]
    entries = [(d, 0o40755, b"") for d in ("bin", "modules", "proc", "sys", "dev", "newroot")]
    entries.append(("bin/busybox", 0o100755, Path("/bin/busybox").read_bytes()))
    entries += [(f"modules/{m}.ko", 0o100644, _module(release, m)) for m in modules]
    init = INIT.format(modules=" ".join(modules), tag=TAG, marker=MARKER, keep=shlex.quote(keep))
    entries += [("init", 0o100755, init.encode()), ("command.sh", 0o100644, command.encode())]
    path.write_bytes(_cpio(entries))


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("cgroup2_vm: virtiofsd did not start")
        time.sleep(0.05)


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run(
    command: list[str], cwd: str, memory: int, smp: int, timeout: float, env: dict[str, str], machine: str
) -> int:
    """Boot the guest, run ``command`` in ``cwd``, return its exit status (see the module docstring)."""
    image, release = _kernel()
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
    script = COMMAND.format(env=exports, cwd=shlex.quote(cwd), command=shlex.join(command), marker=MARKER)
    work = Path(tempfile.mkdtemp(prefix="hutch-cg2vm-"))
    virtiofsd = qemu = None
    try:
        hidden = ("/tmp/", "/run/", "/var/tmp/")
        keep = cwd if any(str(cwd).rstrip("/") + "/" != d and str(cwd).startswith(d) for d in hidden) else ""
        build_initramfs(work / "initramfs.cpio", release, script, machine, keep)
        machine_opts, fs_device = MACHINES[machine]
        sock = work / "fs.sock"
        virtiofsd = subprocess.Popen(
            [
                VIRTIOFSD,
                f"--socket-path={sock}",
                "-o",
                "source=/",
                "-o",
                "sandbox=chroot",
                "-o",
                "cache=always",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_for(sock, virtiofsd)
        quiet = "" if os.environ.get("CGROUP2_VM_VERBOSE") else "quiet "
        append = (
            f"console=ttyS0 rdinit=/init panic=-1 {quiet}cgroup_no_v1=all systemd.unified_cgroup_hierarchy=1"
        )
        qemu = subprocess.Popen(
            [
                *("qemu-system-x86_64", "-M", machine_opts, "-cpu", "max"),
                *("-smp", str(smp), "-m", f"{memory}M", "-no-reboot", "-nodefaults", "-no-user-config"),
                *("-display", "none", "-serial", "stdio", "-monitor", "none"),
                *("-object", f"memory-backend-memfd,id=mem,size={memory}M,share=on"),
                *("-global", "virtio-mmio.force-legacy=false"),
                *("-chardev", f"socket,id=fs,path={sock}", "-device", f"{fs_device},chardev=fs,tag={TAG}"),
                *("-kernel", str(image), "-initrd", str(work / "initramfs.cpio"), "-append", append),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
        )
        return _relay(qemu, timeout)
    finally:
        _stop(qemu)
        _stop(virtiofsd)
        shutil.rmtree(work, ignore_errors=True)


def _relay(qemu: subprocess.Popen, timeout: float) -> int:
    """Copy the guest console to stdout until the exit marker; 124 on timeout."""
    code = 125
    deadline = time.monotonic() + timeout

    def expired(*_):
        raise TimeoutError

    old = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, max(deadline - time.monotonic(), 0.1))
    try:
        for raw in qemu.stdout:
            line = raw.decode(errors="replace").replace("\r", "")
            if line.startswith(MARKER):
                code = int(line[len(MARKER) :].strip() or 125)
            else:
                sys.stdout.write(line)
                sys.stdout.flush()
        qemu.wait()
    except TimeoutError:
        print(f"cgroup2_vm: timed out after {timeout:.0f} s", file=sys.stderr)
        code = 124
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cwd", default=os.getcwd(), help="directory to run the command in")
    parser.add_argument("--memory", type=int, default=1024, help="guest RAM in MiB")
    parser.add_argument("--smp", type=int, default=2, help="guest CPUs")
    parser.add_argument("--machine", choices=sorted(MACHINES), default="q35", help="QEMU machine type")
    parser.add_argument("--timeout", type=float, default=900, help="seconds before the guest is killed")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="command to run in the guest")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give a command to run")
    if os.geteuid() != 0:
        parser.error("needs root (virtiofsd shares / as root)")
    env = {k: os.environ[k] for k in ("PYTEST_ADDOPTS",) if k in os.environ}
    return run(command, args.cwd, args.memory, args.smp, args.timeout, env, args.machine)


if __name__ == "__main__":
    sys.exit(main())
