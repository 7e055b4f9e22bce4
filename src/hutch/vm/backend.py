"""The microVM isolation backend: the same OCI spec and image layers, run behind QEMU's microvm machine.

``start`` prepares what is cached (vmlinux, initramfs, the image's erofs disk, the accelerator verdict),
encodes the guest agent's config, then forks the supervisor (``vm.supervisor``) and waits for its word:
the guest is up, or why not. What it returns looks like the namespace backend's ContainerProcess: a pid
to wait for and signal, whose exit status is the command's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from hutch.errors import HutchError
from hutch.runtime.process import close_extra_fds
from hutch.runtime.spawn import ContainerProcess
from hutch.vm import (
    accel,
    agentconf,
    frames,
    initramfs,
    kernel,
    qemu,
    rootdisk,
    script,
    supervisor,
    template,
    virtiofs,
)

MIN_MEMORY_MIB = 80  # smaller guests deadlock at boot
DEFAULT_MEMORY_MIB = 128


class VmSettings:
    """The ``--vm-*`` options of one container, as stored in its record."""

    __slots__ = ("accel", "kernel", "memory_mib", "cpus", "boot_timeout", "template")

    def __init__(self, options: dict) -> None:
        self.accel = options.get("vm_accel") or "auto"
        self.kernel = options.get("vm_kernel")
        self.memory_mib = int(options.get("vm_memory_mib") or DEFAULT_MEMORY_MIB)
        self.cpus = int(options.get("vm_cpus") or 1)
        self.boot_timeout = float(os.environ.get("HUTCH_VM_BOOT_TIMEOUT", "0") or 0)
        self.template = options.get("vm_template", "on") != "off" and not options.get("volumes")


def prepare(settings: VmSettings, layers: list[Path], cache: Path, scratch: Path) -> dict:
    """The cached artefacts a guest boots from (builds what is missing), the accelerator, and the host's
    TSC frequency its kernel command line carries."""
    k = kernel.find_kernel(settings.kernel)
    vmlinux = kernel.vmlinux(k, cache)
    initrd = initramfs.cached(k.modules_dir, cache)
    disk = rootdisk.ensure(cache / "disks", layers, scratch)
    chosen = accel.choose(settings.accel, vmlinux, initrd, cache)
    paths = {"vmlinux": str(vmlinux), "initrd": str(initrd), "disk": str(disk)}
    return {**paths, "accel": chosen, "khz": qemu.tsc_khz()}


def start(
    spec: dict,
    layers: list[Path],
    options: dict,
    *,
    cache: Path,
    scratch: Path,
    state_dir: Path,
    cgroup: object | None,
    stdio: tuple[int, int, int],
    die_with_parent: bool,
    nic: dict | None = None,
    seccomp_program: bytes | None = None,
) -> ContainerProcess:
    """Boot the guest for one container and return once its command is about to run (or raise).

    ``nic``: the guest's network card, from the engine (``network.tap``): a TAP fd on the bridge, which
    QEMU inherits, and the address, MAC, gateway and MTU the guest sets on its eth0. The caller keeps and
    closes its own copy of the fd.

    With a terminal (``-t``) the guest agent makes a pty inside the guest; on the host the supervisor's
    stdio is the slave of a host pty whose master the caller relays, as a namespace container's."""
    settings = VmSettings(options)
    parts = prepare(settings, layers, cache, scratch)
    volumes = list(options.get("volumes") or [])
    config = script.agent_config(spec, layers, seccomp_program, volumes=volumes, nic=nic)  # checks --user
    if nic is not None:
        parts["nic"] = nic
    # why before the config copies /etc/hosts: a peer joining from now on is an event the supervisor sees
    hosts_watch = _watch_hosts(spec) if nic is not None else None
    master = slave = None
    ours: dict = {}
    theirs: dict = {}
    shares: list = []  # (so that the clean-up below holds whatever was made before a failure)
    try:
        stage = agentconf.block(script.stage_records(spec, seccomp_program))
        shares = virtiofs.shares(state_dir.name, volumes)
        ours, theirs = supervisor.port_pairs()
        if settings.template:
            _template_for(settings, parts, cache, state_dir, stage)
        tty = bool(spec["process"].get("terminal"))
        if tty:
            master, slave = supervisor.host_pty()
            stdio = (slave, slave, slave)
        launch = _launch(settings, parts, shares, theirs, state_dir, stdio, options)
        launch.config, launch.tty, launch.hosts_watch = config, tty, hosts_watch
        launch.stage = b"" if parts.get("template") else stage
        launch.exec_name = frames.socket_name(state_dir.name)
        proc = _fork_supervisor(launch, ours, theirs, cgroup, die_with_parent)
        proc.console, master = master, None
        return proc
    finally:
        for s in (*ours.values(), *theirs.values(), *(share.sock for share in shares)):
            s.close()  # a second close (after the fork) is a no-op
        for fd in (master, slave, hosts_watch and hosts_watch[0]):
            if fd is not None:
                os.close(fd)


def _watch_hosts(spec: dict) -> tuple[int, str] | None:
    """An inotify fd on the container's host-side hosts file, which the network layer rewrites in place
    when peers join or leave its user networks, and the file's path: the supervisor sends each new
    version into the guest, whose copy of the file is its own (see vm/frames.py's HOSTS)."""
    from hutch.linux import syscalls as sc

    for m in spec.get("mounts", []):
        if m["destination"] == "/etc/hosts" and m.get("type") == "bind":
            try:
                return sc.inotify_watch(m["source"], sc.IN_CLOSE_WRITE), m["source"]
            except OSError as err:
                raise HutchError(f"cannot watch {m['source']} for the microVM: {err.strerror or err}")
    return None


def _timeout(settings: VmSettings, parts: dict) -> float:
    return settings.boot_timeout or (10.0 if parts["accel"] == "kvm" else 60.0)


def _argv(
    settings, parts, theirs, state_dir: Path, shares=(), ram: tuple[Path, bool] | None = None
) -> list[str]:
    """QEMU's argv; with a template (``ram``: its RAM file, shared while it is built), the disk is the
    placeholder while the template boots and the image's disk in a clone of it."""
    machine, share_argv = virtiofs.qemu_args(list(shares), settings.memory_mib)
    if ram is not None:
        machine, share_argv = template.ram_args(ram[0], settings.memory_mib, ram[1])
    nic = parts.get("nic")
    if nic is not None:
        share_argv = share_argv + qemu.nic_args(nic["fd"], nic["mac"])
    return qemu.command(
        program=qemu.binary(parts["accel"], volumes=bool(shares)),
        kernel=None if parts.get("template") else parts["vmlinux"],
        initrd=parts["initrd"],
        disk=parts["placeholder"] if settings.template and not parts.get("template") else parts["disk"],
        accel=parts["accel"],
        memory_mib=settings.memory_mib,
        cpus=settings.cpus,
        port_fds={name: theirs[name].fileno() for name in qemu.PORTS},
        qmp_fd=theirs["qmp"].fileno(),
        console_log=str(state_dir / "console.log"),
        khz=parts["khz"],
        extra_cmdline=qemu.NET_CMDLINE if nic is not None else "",
        extra_machine=machine,
        extra_argv=share_argv + (["-incoming", "defer"] if parts.get("template") else []),
    )


def _template_for(settings: VmSettings, parts: dict, cache: Path, state_dir: Path, stage: bytes) -> None:
    """Find or build the template this guest restores from (parts gains "placeholder" and "template"):
    one per guest shape and ``stage`` (the container's staged /proc, /sys and /dev, which it holds)."""
    parts["placeholder"] = str(template.placeholder(cache))
    nic = parts.get("nic")
    path = template.template_path(
        cache, parts["vmlinux"], parts["initrd"], settings.memory_mib, settings.cpus, parts["accel"],
        nic=nic is not None, stage=stage, boot=qemu.boot_identity(parts["accel"], parts["khz"]),
    )  # fmt: skip
    if not path.exists():
        ours, theirs = supervisor.port_pairs()
        spare = _spare_nic() if nic is not None else None
        try:
            ram_tmp = path.with_name(f".{path.stem}.ram.tmp-{os.getpid()}")
            argv = _argv(settings, dict(parts, nic=spare), theirs, state_dir, ram=(ram_tmp, True))
            extra = (spare["fd"],) if spare else ()
            template.build(path, argv, theirs, ours, _timeout(settings, parts), ram_tmp, stage, extra)
        finally:
            for s in (*ours.values(), *theirs.values()):
                s.close()
            if spare is not None:
                os.close(spare["fd"])
    parts["template"] = str(path)


def _spare_nic() -> dict:
    """A template guest's card needs a backend with the clones' features (a TAP with virtio-net headers,
    or the restore fails on offload bits the device no longer offers), but no network: a TAP on no
    bridge, never up, deleted by the kernel when QEMU exits and this fd is closed."""
    from hutch.linux import tun

    name = f"vhtpl{os.getpid() % 10**9}"
    try:
        return {"fd": tun.open_tap(name), "mac": qemu.TEMPLATE_MAC}
    except OSError as err:
        raise HutchError(f"cannot create TAP device {name} for the template guest: {err.strerror or err}")


def _launch(settings, parts, shares, theirs, state_dir: Path, stdio, options) -> supervisor.Launch:
    ram = (template.ram_path(Path(parts["template"])), False) if parts.get("template") else None
    argv = _argv(settings, parts, theirs, state_dir, shares, ram)
    timeout = _timeout(settings, parts)
    return supervisor.Launch(
        argv=argv,
        stdio=stdio,
        interactive=bool(options.get("interactive")),
        console_log=str(state_dir / "console.log"),
        qemu_log=str(state_dir / "qemu.log"),
        boot_timeout=timeout,
        accel=parts["accel"],
        daemons=[(share.daemon_argv(), share.sock.fileno()) for share in shares],
        daemon_log=str(state_dir / "virtiofsd.log"),
        restore=parts.get("template"),
        tap_fd=parts["nic"]["fd"] if parts.get("nic") else -1,
        hosts_watch=None,
        config=b"",
        tty=False,
        exec_name=b"",
        stage=b"",
    )


def _fork_supervisor(launch, ours, theirs, cgroup, die_with_parent: bool) -> ContainerProcess:
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        _supervisor_child(launch, ours, theirs, write_end, cgroup, die_with_parent)  # never returns
    os.close(write_end)
    # why now: while this process holds QEMU's ends of the sockets, QEMU dying early shows the supervisor
    # no EOF, and the start would wait for the full boot deadline.
    for s in (*ours.values(), *theirs.values()):
        s.close()
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read()
    if answer != b"ok":
        _, status = os.waitpid(pid, 0)
        if not answer and os.WIFSIGNALED(status):
            raise HutchError(f"microVM supervisor was killed by signal {os.WTERMSIG(status)} while starting")
        raise _error(answer)
    return ContainerProcess(pid)


def _supervisor_child(launch, ours, theirs, report: int, cgroup, die_with_parent: bool) -> None:
    try:
        _own_stdio(launch)
        keep = {report, *(s.fileno() for s in (*ours.values(), *theirs.values()))}
        keep.update(fd for _argv, fd in launch.daemons)
        if launch.tap_fd >= 0:
            keep.add(launch.tap_fd)
        if launch.hosts_watch is not None:
            keep.add(launch.hosts_watch[0])
        # why: the supervisor never execs, so an fd it inherits stays open for the container's lifetime;
        # a caller's pipe (the detached monitor's start-up report) would then never see EOF and hang run -d.
        close_extra_fds(*keep)
        if die_with_parent:
            from hutch.linux import syscalls as sc

            sc.prctl(sc.PR_SET_PDEATHSIG, 9)
        if cgroup is not None:
            cgroup.add_process(0)  # QEMU, forked next, is born inside the container's cgroup
    except BaseException as exc:  # noqa: BLE001 - reported to the engine
        os.write(report, json.dumps({"code": 125, "message": f"microVM: {exc}"}).encode())
        os._exit(125)
    supervisor.run(launch, ours, theirs, report)


def _own_stdio(launch) -> None:
    """The container's stdio becomes the supervisor's 0, 1 and 2, so that whatever the caller had there (a
    ``run -d`` caller's pipes) is not held open by a process that lives as long as the guest."""
    copies = [os.dup(fd) for fd in launch.stdio]
    for target, fd in enumerate(copies):
        os.dup2(fd, target)
        os.close(fd)
    launch.stdio = (0, 1, 2)


def _error(raw: bytes) -> HutchError:
    try:
        record = json.loads(raw)
        err = HutchError(str(record["message"]))
        err.exit_code = int(record["code"])
    except (ValueError, KeyError, TypeError):
        err = HutchError(f"microVM supervisor failed: {raw[:200]!r}")
    return err
