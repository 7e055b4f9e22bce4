"""The container engine: containers as records, started through a backend, cleaned up on every path.

One ``Engine`` per hutch invocation. It owns ``<root>/containers/<id>/`` (overlay upper/work/merged, the
generated /etc files, logs) and the container's record; the image store owns the layers it mounts.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from hutch.db import Database
from hutch.engine import etcfiles, events, networking, specgen
from hutch.engine.crashpoints import crash_point
from hutch.engine.devices import rules_from_spec
from hutch.engine.names import random_name
from hutch.engine.options import RunOptions
from hutch.engine.records import LIVE_STATES, ContainerRecords, Record
from hutch.errors import Conflict, HutchError, NotFound
from hutch.fsutil import file_lock
from hutch.runtime.spawn import ContainerProcess, spawn

TYPE_CHECKING = False
if TYPE_CHECKING:
    from hutch.runtime.rootfs import OverlayRoot


def exit_code_of(status: int) -> int:
    """waitpid status to the shell convention Docker uses: the code, or 128 + signal."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def process_start_time(pid: int) -> str:
    """Field 22 of /proc/PID/stat: with the pid it identifies a process even after pid reuse.

    A zombie counts as gone (empty string): it has exited, and on hosts whose pid 1 does not reap orphans
    (this one) an exited monitor would otherwise look alive forever.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return ""
    fields = data[data.rfind(b")") + 2 :].split()
    return "" if fields[0] in (b"Z", b"X") else fields[19].decode()


class Engine:
    """Create, start, wait for, list and remove containers."""

    def __init__(self, root: Path, db: Database, images=None) -> None:
        self.root = root
        self.db = db
        self._images = images
        self.records = ContainerRecords(db)

    def container_dir(self, cid: str) -> Path:
        return self.root / "containers" / cid

    # --- create -----------------------------------------------------------------------------------------

    def create(self, opts: RunOptions) -> Record:
        """Resolve the image, write the container's files and record; nothing runs yet."""
        from hutch.engine.security import check_rlimits

        check_rlimits(opts.ulimits)
        if opts.userns == "host" and not opts.userns_remap:
            return self._create(opts)
        # why the lock: an ``auto`` block is free only until the record that takes it is inserted.
        with file_lock(self.root / "locks" / "userns"):
            opts.userns_map = self._userns_map(opts)
            return self._create(opts)

    def _create(self, opts: RunOptions) -> Record:
        if opts.isolation == "vm" and opts.devices:
            from hutch.vm.devices import check  # a guest can have only the devices its kernel drives

            check(opts.devices)
        image = self._images.resolve(opts.image)
        layers = self._images.rootfs_layers(image)
        if opts.userns_map:
            layers = self._userns_layers(opts, layers)
        cid = os.urandom(32).hex()
        host_net = opts.network == "host"
        network = networking.check_create(self, opts, image.run_config)
        hostname = opts.hostname or (etcfiles.host_hostname() if host_net else cid[:12])
        cdir = self.container_dir(cid)
        try:
            # The container dir keeps others out; upper must be 0755 because the overlay root takes its mode
            # from the upper dir, and a 0700 root would lock non-root users out of "/".
            os.makedirs(cdir, mode=0o700)
            for sub, mode in (("upper", 0o755), ("work", 0o700), ("merged", 0o755)):
                os.mkdir(cdir / sub, mode)
                os.chmod(cdir / sub, mode)
            etc = etcfiles.write_etc_files(cdir, hostname, host_net, opts.add_hosts, opts.dns)
            etc.update(networking.shared_etc(self, opts, cdir, network) or {})
            self._prepare_volumes(opts)
            spec = specgen.build_spec(opts, image.run_config, hostname, etc)
            record = Record(
                cid,
                opts.name or "",
                str(image.id),
                opts.image,
                time.time(),
                config={
                    "spec": spec,
                    "layers": [str(p) for p in layers],
                    "options": _options_dict(opts),
                    "cgroup": _cgroup_paths(cid, opts.cgroup_parent),
                    "stop_signal": image.run_config.get("StopSignal"),
                    "network": network,
                },
            )
            self._insert_with_name(record, opts.name)
        except BaseException:
            _rmtree(cdir)
            raise
        events.emit(self.root, "create", record)
        crash_point("create:inserted")
        return record

    def _userns_map(self, opts: RunOptions) -> dict | None:
        """The container's id mappings; ``auto`` blocks never overlap another container's."""
        from hutch.engine.userns import mappings

        used = []
        for other in self.records.list():
            taken = other.config.get("options", {}).get("userns_map")
            if taken and other.config["options"].get("userns") != "host":
                used.append((taken["uid"][0]["hostID"], taken["uid"][0]["size"]))
        return mappings(opts.userns, opts.userns_remap, used)

    def _userns_layers(self, opts: RunOptions, layers: list[Path]) -> list[Path]:
        """The layers as the container's root must see them: shared and idmapped at mount time where the
        kernel can (nothing written), else chown-ed copies for this mapping (image.shifted)."""
        from hutch.engine.userns import layer_mode

        opts.userns_layers = layer_mode(layers[0].parent if layers else self.root)
        if opts.userns_layers == "idmap" or not layers:
            return layers
        from hutch.image.shifted import shifted_layers

        return shifted_layers(self.root, layers, opts.userns_map["uid"], opts.userns_map["gid"])

    def prune_shifted_layers(self) -> None:
        """Drop the shifted layer copies of mappings no container uses any more (after ``rm`` of one that
        had them, and in ``system prune``)."""
        from hutch.image.shifted import SUBDIR, mapping_key, prune

        if not (self.root / SUBDIR).is_dir():
            return
        with file_lock(self.root / "locks" / "userns"):
            keep = set()
            for other in self.records.list():
                options = other.config.get("options", {})
                if options.get("userns_layers") == "copy":
                    keep.add(mapping_key(options["userns_map"]["uid"], options["userns_map"]["gid"]))
            prune(self.root, keep)

    def sweep_vm_disks(self) -> int:
        """After images go: their cached microVM disks (``cache/vm/disks``) go too; returns bytes freed."""
        disks = self.root / "cache" / "vm" / "disks"
        if not disks.is_dir():
            return 0
        from hutch.vm.rootdisk import sweep

        return sweep(disks, self.root / "layers")

    def _insert_with_name(self, record: Record, wanted: str | None) -> None:
        if wanted:
            _check_name(wanted)
            self.records.insert(record)
            return
        for attempt in range(10):
            record.name = random_name() + (f"{attempt}" if attempt else "")
            try:
                self.records.insert(record)
                return
            except Conflict:
                continue
        raise HutchError("could not find a free container name")

    @staticmethod
    def _prepare_volumes(opts: RunOptions) -> None:
        """Docker creates a missing host directory for ``-v``; a missing file cannot be guessed."""
        for vol in opts.volumes:
            if not os.path.exists(vol.source):
                os.makedirs(vol.source, mode=0o755)

    # --- start / wait -----------------------------------------------------------------------------------

    def start(self, record: Record, stdio: tuple[int, int, int], die_with_parent: bool) -> ContainerProcess:
        """Create the cgroup and launch the init; the record says running once the command has exec'd.

        Under the container's lock, with its state read again inside it: two ``hutch start`` at once
        must not launch two inits (the lock is released once the record says running).
        """
        with self.locked(record.id):
            current = self.records.get(record.id)
            if current is None:
                raise NotFound(f"no such container: {record.name}")
            if current.state in ("running", "paused", "removing"):
                raise Conflict(f"container {record.name} is {current.state}")
            return self._start(record, stdio, die_with_parent)

    def locked(self, cid: str):
        """An exclusive lock on one container, held across check-then-act sequences (start, rm): never a
        global lock, so operations on other containers never wait."""
        return file_lock(self.root / "locks" / cid)

    def _start(self, record: Record, stdio: tuple[int, int, int], die_with_parent: bool) -> ContainerProcess:
        """The isolation backend is the record's: namespaces (``runtime``) or a microVM (``vm``, imported only
        when a container asks for it). Both return a process to wait for and signal."""
        cgroup = cgroup_of(record)
        if record.is_microvm:
            return self._mark_started(record, self._start_vm(record, cgroup, stdio, die_with_parent))
        spec, attachment = self._attach_network(record)

        def launch() -> ContainerProcess:
            # Before the init joins: it must never run without the device rules, nor without its limits
            # (--memory, --cpus, ...: whatever linux.resources holds beyond devices).
            resources = record.config["spec"]["linux"]["resources"]
            cgroup.set_devices(rules_from_spec(resources["devices"]))
            if len(resources) > 1:
                cgroup.set_resources(resources)
            return spawn(
                spec,
                str(self.container_dir(record.id) / "merged"),
                overlay=self.overlay(record),
                cgroup=cgroup,
                stdio=stdio,
                die_with_parent=die_with_parent,
                seccomp_program=self._seccomp_program(record.config["spec"]),
            )

        return self._mark_started(record, self._launch_in(record, cgroup, attachment, launch))

    def _launch_in(self, record: Record, cgroup, attachment, launch) -> ContainerProcess:
        """Create the container's cgroup and run ``launch`` (either backend's start); on any failure the
        cgroup and the network attachment are undone, on success this process keeps the port sockets."""
        try:
            cgroup.create()
        except BaseException:
            self._release_network(record, attachment, failed=True)
            raise
        try:
            proc = launch()
        except BaseException:
            cgroup.destroy()
            self._release_network(record, attachment, failed=True)
            raise
        self._release_network(record, attachment, failed=False)
        return proc

    def _mark_started(self, record: Record, proc: ContainerProcess) -> ContainerProcess:
        # This process reaps the init (a foreground hutch run or a monitor); recorded so that others wait for
        # it to write the exit code instead of declaring the container dead themselves.
        crash_point("start:spawned")
        me = os.getpid()
        self.records.mark_running(
            record.id, proc.pid, process_start_time(proc.pid), f"{me}:{process_start_time(me)}"
        )
        events.emit(self.root, "start", record)
        return proc

    def _start_vm(self, record: Record, cgroup, stdio, die_with_parent: bool) -> ContainerProcess:
        """The microVM backend: no device rules (QEMU needs /dev/kvm; the guest's devices are its own).
        A bridged one gets a TAP device on the bridge (made before the guest's config is written, so its
        /etc/hosts has the address), whose fd goes to QEMU; this process keeps the port sockets."""
        from hutch.vm import backend

        attachment = networking.attach(self, record)
        spec = record.config["spec"]
        return self._launch_in(
            record,
            cgroup,
            attachment,  # QEMU holds the TAP once started
            lambda: backend.start(
                spec,
                [Path(p) for p in record.config["layers"]],
                record.config["options"],
                cache=self.root / "cache" / "vm",
                scratch=self.root / "tmp",
                state_dir=self.container_dir(record.id),
                cgroup=cgroup,
                stdio=stdio,
                die_with_parent=die_with_parent,
                nic=attachment.guest_config() if attachment is not None else None,
                seccomp_program=self._seccomp_program(spec),
            ),
        )

    # --- networking (issue 6) ---

    def _attach_network(self, record: Record) -> tuple[dict, object]:
        """The spec to start with and what the network layer made for it (see engine.networking)."""
        attachment = networking.attach(self, record)
        spec = record.config["spec"]
        if attachment is None:
            return spec, None
        path = attachment if isinstance(attachment, str) else attachment.netns_path
        return networking.with_netns(spec, path), attachment

    def _release_network(self, record: Record, attachment, failed: bool) -> None:
        """After spawn: our namespace fd goes (the init holds the namespace now), the port sockets stay
        with this process, the container's reaper; if spawn failed, everything goes."""
        if attachment is None or isinstance(attachment, str):
            return
        attachment.release_namespace()
        if failed:
            for sock in attachment.sockets:
                sock.close()
            networking.detach(self, record)
        else:
            networking.hold(self, attachment)

    def _seccomp_program(self, spec: dict) -> bytes | None:
        """The container's filter compiled to BPF here, in the parent, and cached per root: compiling
        Docker's profile with libseccomp costs ~20 ms, loading a ready program ~1 ms."""
        oci_filter = spec.get("linux", {}).get("seccomp")
        if not oci_filter:
            return None
        from hutch.runtime import seccomp

        return seccomp.prepare(oci_filter, str(self.root / "cache" / "seccomp"))

    def overlay(self, record: Record) -> OverlayRoot:
        """The container's root as overlayfs mounts it: lower layers, upper and work dirs."""
        from hutch.runtime.rootfs import OverlayRoot  # (not at the top: a microVM start has no use for it)

        cdir = self.container_dir(record.id)
        layers = [Path(p) for p in record.config["layers"]]
        if not layers:
            empty = cdir / "empty"
            empty.mkdir(exist_ok=True)
            lower, layers_dir = [str(empty)], str(cdir)
        else:
            layers_dir = str(layers[0].parent)
            lower = [p.name if p.parent == layers[0].parent else str(p) for p in reversed(layers)]
        idmap = record.config["options"].get("userns_layers") != "copy"
        return OverlayRoot(layers_dir, lower, str(cdir / "upper"), str(cdir / "work"), idmap)

    def finish(self, record: Record, status: int) -> int:
        """After the init exited: remove the cgroup, record the exit code, and honour ``--rm``."""
        code = exit_code_of(status)
        crash_point("finish:exited")
        cgroup = cgroup_of(record)
        oom_killed = cgroup.oom_kills() > 0  # read before the cgroup and its counters go
        cgroup.destroy()
        networking.detach(self, record)
        events.emit(self.root, "die", record, exitCode=code)
        current = self.records.get(record.id)
        if current is None or current.state == "removing":
            return code
        self.records.mark_exited(record.id, code, oom_killed)
        if record.config.get("options", {}).get("remove"):
            self._delete(record.id)
        return code

    # --- list / remove ----------------------------------------------------------------------------------

    def reconcile(self, record: Record) -> Record:
        """A live record whose init and reaper are both gone (hutch or its monitor was killed) becomes
        exited, with the exit status the monitor wrote if it got that far. While the reaper lives it will
        record the real exit code itself, so the record is left alone."""
        if record.state not in LIVE_STATES:
            return record
        if record.pid and process_start_time(record.pid) == record.pid_start:
            return record
        reaper_pid, _, reaper_start = record.reaper.partition(":")
        if reaper_pid.isdigit() and process_start_time(int(reaper_pid)) == reaper_start:
            return record
        from hutch.engine.monitor import read_exit_status

        status = read_exit_status(self.container_dir(record.id))
        cgroup = cgroup_of(record)
        oom_killed = cgroup.oom_kills() > 0
        cgroup.destroy()
        networking.detach(self, record)
        if status is not None:
            code = exit_code_of(status)
        else:
            code = 137 if record.exit_code is None else record.exit_code
        self.records.mark_exited(record.id, code, oom_killed)
        events.emit(self.root, "die", record, exitCode=code)
        if record.config.get("options", {}).get("remove"):
            self._delete(record.id)
            record.state, record.exit_code, record.pid = "exited", code, 0
            return record
        return self.records.get(record.id) or record

    def list(self, include_stopped: bool) -> list[Record]:
        records = [self.reconcile(r) for r in self.records.list()]
        return [r for r in records if include_stopped or r.state in LIVE_STATES]

    def lookup(self, ref: str) -> Record:
        return self.reconcile(self.records.lookup(ref))

    def rename(self, ref: str, new_name: str) -> None:
        """``rename``: names are unique, checked by the database inside the update."""
        _check_name(new_name)
        record = self.lookup(ref)
        self.records.rename(record.id, new_name)
        networking.renamed(self, record, new_name)
        events.emit(self.root, "rename", record, oldName=record.name, name=new_name)

    def prune(self) -> list[str]:
        """``container prune``: every container that is not running, removed like ``rm``."""
        removed = []
        for record in self.list(include_stopped=True):
            if record.state in ("created", "exited"):
                self._delete(record.id)  # its cgroup too
                removed.append(record.id)
        return removed

    def remove(self, ref: str, force: bool = False) -> str:
        """``rm [-f]``: a running container is refused unless forced, then killed through its cgroup."""
        record = self.lookup(ref)
        with self.locked(record.id):
            record = self.lookup(record.id)
            if record.state in LIVE_STATES:
                if not force:
                    raise Conflict(
                        f"cannot remove container {record.name}: container is running: stop it"
                        " first or use --force"
                    )
                self.records.set_state(record.id, "removing")
                self._kill_and_wait(record)
                networking.detach(self, record)
            self._delete(record.id)
        try:
            os.unlink(self.root / "locks" / record.id)
        except FileNotFoundError:
            pass
        return record.name

    def _kill_and_wait(self, record: Record, timeout: float = 10.0) -> None:
        cgroup_of(record).destroy(timeout)
        deadline = time.monotonic() + timeout
        while process_start_time(record.pid) == record.pid_start and time.monotonic() < deadline:
            try:
                os.kill(record.pid, signal.SIGKILL)
            except ProcessLookupError:
                break
            time.sleep(0.01)
        # The monitor then runs its finisher; it finds the record "removing" and leaves. Waiting for it means
        # nothing of the container's outlives ``rm``.
        reaper_pid, _, reaper_start = record.reaper.partition(":")
        if reaper_pid.isdigit() and int(reaper_pid) != os.getpid():
            while process_start_time(int(reaper_pid)) == reaper_start and time.monotonic() < deadline:
                time.sleep(0.01)

    def _delete(self, cid: str) -> None:
        """Remove the container's cgroup and files, then its record: a crash in between leaves a record
        (and maybe the trash directory) for the next ``rm`` to finish."""
        record = self.records.get(cid)
        if record is not None:
            cgroup_of(record).destroy()  # a created container may hold one, after a crash mid-start
        cdir = self.container_dir(cid)
        trash = cdir.with_name(f".trash-{cid}")
        if cdir.exists():
            os.rename(cdir, trash)
            crash_point("remove:renamed")
        if trash.exists():
            _rmtree(trash)
        self.records.delete(cid)
        if record is not None:
            events.emit(self.root, "destroy", record)
            if record.config.get("options", {}).get("userns_layers") == "copy":
                self.prune_shifted_layers()


def _rmtree(path: Path) -> None:
    """Best effort: a container directory that cannot be fully removed is left for ``hutch rm`` to retry."""
    from hutch.fsutil import remove_tree

    try:
        remove_tree(path)
    except OSError:
        pass


def _cgroup_paths(cid: str, parent: str | None = None) -> dict[str, str]:
    """Where the container's cgroups will be, fixed at create time: the default parent depends on the cgroup
    of the hutch process that computes it, and a later ``hutch rm`` may run from somewhere else."""
    from hutch.cgroups import open_manager

    return {key: str(path) for key, path in open_manager(cid, parent).paths().items()}


def cgroup_of(record: Record):
    """The container's cgroup manager, from the paths fixed in its record at create time."""
    from hutch.cgroups import reopen

    return reopen({key: Path(path) for key, path in record.config["cgroup"].items()})


def _check_name(name: str) -> None:
    import re

    if not re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*", name):
        raise HutchError(f'invalid container name "{name}": only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed')


def _options_dict(opts: RunOptions) -> dict:
    return opts.to_dict()
