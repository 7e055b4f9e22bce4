"""Pre-booted templates: boot a guest once, save it, and start each container by restoring a clone.

Firecracker's snapshots and Kata's VM templating, with QEMU's own migration: a guest is booted once per
(kernel, initramfs, memory, vCPUs, accelerator, card, stage) until its agent says ``ready`` (modules
loaded, ports found, the container's pid 1 staged and waiting for its config; the disk not yet read),
then ``migrate``d, running, into a file. A container then starts QEMU with the same devices, the image's
erofs disk where the template had its placeholder, and ``-incoming defer``; loads that file; and the
guest, resumed, reads its config and mounts the disk as after a cold boot.
The template's RAM is a file the clones map privately (``x-ignore-shared``): the saved state is ~60 KB
instead of 65 MB, a restore does not copy the RAM, and clones share the pages they only read.

The template boots with a placeholder disk, a sparse 64 GiB file: the guest sizes /dev/vda then, and a
clone starts with the image's disk in its place (an image's disk is always smaller, so erofs never reads
past its end; the guest reads nothing from it before its config arrives). Volumes need other devices
and shared RAM, so a container with ``-v`` boots cold.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from hutch.errors import HutchError
from hutch.vm.cachekey import short_key

PLACEHOLDER_BYTES = 64 << 30
VERSION = "4"  # 3: saved while running, so that clones start by themselves; 4: an ARAT CPU


def placeholder(cache: Path) -> Path:
    path = cache / "placeholder.img"
    if not path.exists():
        tmp = cache / f".placeholder.img.tmp-{os.getpid()}"
        with open(tmp, "wb") as f:
            f.truncate(PLACEHOLDER_BYTES)
        os.rename(tmp, path)
    return path


def template_path(
    cache: Path,
    vmlinux: str,
    initrd: str,
    memory_mib: int,
    cpus: int,
    accel: str,
    nic: bool = False,
    stage: bytes = b"",
    boot: str = "",
) -> Path:
    """``<what it boots>-<shape>.mig``: a new kernel, initramfs or ``boot`` (the QEMU build, CPU model and
    kernel command line, ``qemu.boot_identity``) replaces every older template, while
    templates of other shapes (memory, vCPUs, a network card or none, the staged mounts of a security
    profile) of the same build live side by side, so containers that alternate between them do not
    rebuild one another's."""
    build = short_key(f"{VERSION}:{vmlinux}:{initrd}:{boot}")
    shape_key = f"{memory_mib}:{cpus}:{accel}:{'net' if nic else ''}:".encode() + stage
    shape = short_key(shape_key, 8)
    return cache / "templates" / f"{build}-{shape}.mig"


def ram_path(path: Path) -> Path:
    """The template guest's RAM, saved as a file next to its device state."""
    return path.with_suffix(".ram")


def ram_args(ram: Path, memory_mib: int, share: bool) -> tuple[str, list[str]]:
    """Guest RAM backed by ``ram``: shared while the template is built (so the file receives the RAM),
    private in a clone (copy-on-write: the template file is never written, clones share its pages)."""
    backend = f"memory-backend-file,id=mem,size={memory_mib}M,mem-path={ram},share={'on' if share else 'off'}"
    return ",memory-backend=mem", ["-object", backend]


_IGNORE_SHARED = {"capabilities": [{"capability": "x-ignore-shared", "state": True}]}


def build(path: Path, argv: list[str], theirs: dict[str, socket.socket], ours: dict[str, socket.socket],
          timeout: float, ram_tmp: Path, stage: bytes, extra_fds: tuple[int, ...] = ()) -> None:  # fmt: skip
    """Boot ``argv`` (cold, placeholder disk, RAM in ``ram_tmp``), hand the guest ``stage`` (the
    container's mounts its pid 1 makes before "ready"), wait until it is ready, then save its device state
    into ``path`` (RAM stays in the file: ``x-ignore-shared``)."""
    import subprocess

    from hutch.vm.qmp import Qmp

    os.makedirs(path.parent, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    proc = subprocess.Popen(
        argv,
        pass_fds=[s.fileno() for s in theirs.values()] + list(extra_fds),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    for s in theirs.values():
        s.close()
    try:
        ours["hutch.ctl"].sendall(stage)
        _await_ready(ours["hutch.ctl"], timeout)
        session = Qmp(ours["qmp"], timeout=30)
        session.execute("migrate-set-capabilities", _IGNORE_SHARED)
        # why no "stop" first: the state saved says whether the guest ran, and a clone of a stopped guest
        # stays paused after its load, waiting for a "cont" (one more round trip). A running guest is
        # stopped by the migration itself when it completes; the RAM is not copied (x-ignore-shared), and
        # the guest, blocked reading its config, does not change it meanwhile.
        session.execute("migrate", {"uri": f"exec:cat > {tmp}"})
        session.await_migration(timeout)
        session.execute("quit")
        proc.wait(timeout=10)
        os.rename(ram_tmp, ram_path(path))  # the RAM first: the .mig file's presence means complete
        os.rename(tmp, path)
        build_key = path.stem.split("-")[0]
        for old in path.parent.iterdir():
            if old.stem.split("-")[0] != build_key and old.suffix in (".mig", ".ram"):
                old.unlink(missing_ok=True)
    except BaseException as exc:
        exited = proc.poll()
        proc.kill()
        err = proc.communicate()[1].decode(errors="replace").strip().splitlines()[-1:]
        if exited is not None:
            err.append(f"QEMU exit status {exited}")
        if isinstance(exc, HutchError | OSError):
            raise HutchError(f"building the microVM template: {exc}; {'; '.join(err)}")
        raise
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        tmp.unlink(missing_ok=True)
        ram_tmp.unlink(missing_ok=True)


def _await_ready(ctl: socket.socket, timeout: float) -> None:
    ctl.settimeout(timeout)
    buf = b""
    while b"ready\n" not in buf:
        try:
            chunk = ctl.recv(4096)
        except TimeoutError:
            raise HutchError(f"the template guest did not come up within {timeout:g} s")
        if not chunk:
            raise HutchError("QEMU exited before the template guest came up")
        buf += chunk
        if buf.startswith(b"fail "):  # the guest's init or agent says why it cannot go on
            why = buf[5:].split(b"\n")[0].decode(errors="replace")
            raise HutchError(f"the template guest: {why}")


def restore_requests(fd: int) -> bytes:
    """The QMP requests that load a template from ``fd`` (the ``.mig`` file, inherited by a QEMU started
    with ``-incoming defer``, the image's disk already in place of the placeholder): sent in one write,
    with no reply awaited. QEMU runs them in order and, the load done, starts the guest by itself (no
    ``-S``); the agent is blocked reading its config, so the config can be sent at once behind them.

    Why fire and forget: each reply awaited was a round trip on the critical path of every start, and the
    load used to go through ``exec:cat`` (a shell and a cat forked by QEMU). A load that fails makes QEMU
    exit ("load of migration failed"), which the supervisor sees as the guest never coming up."""
    capabilities = {"capabilities": _IGNORE_SHARED["capabilities"]}
    requests = [
        {"execute": "qmp_capabilities"},
        {"execute": "migrate-set-capabilities", "arguments": capabilities},
        {"execute": "migrate-incoming", "arguments": {"uri": f"fd:{fd}"}},
    ]
    return b"".join(json.dumps(r).encode() + b"\n" for r in requests)
