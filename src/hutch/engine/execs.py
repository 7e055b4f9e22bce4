"""``exec``: one more process in a running container, set up from the container's own spec.

The record already holds everything the new process must share with the container: the init's pid (whose
namespaces it joins), the cgroup paths, and the spec with capabilities, seccomp, rlimits, env and user. Only
``process`` changes: the command, env overrides, cwd, user and terminal of this exec. Nothing is recorded:
the process belongs to the container's cgroup, so stopping or removing the container ends it too.
"""

from __future__ import annotations

import copy

from hutch.engine.containers import cgroup_of, process_start_time
from hutch.errors import HutchError, InvalidArgument
from hutch.runtime.process import USER_ANNOTATION
from hutch.runtime.spawn import ContainerProcess


class ExecOptions:
    """The flags of ``hutch exec`` plus where the process's stdio goes."""

    __slots__ = ("env", "user", "workdir", "tty", "stdio", "detach")

    def __init__(
        self,
        env: list[str] | None = None,
        user: str | None = None,
        workdir: str | None = None,
        tty: bool = False,
        stdio: tuple[int, int, int] = (0, 1, 2),
        detach: bool = False,
    ) -> None:
        self.env = env or []
        self.user = user
        self.workdir = workdir
        self.tty = tty
        self.stdio = stdio
        self.detach = detach


def exec_in(engine, ref: str, argv: list[str], options: ExecOptions) -> ContainerProcess:
    """Start ``argv`` in the running container ``ref`` and return once it has exec'd (or raise why not)."""
    from hutch.runtime import seccomp
    from hutch.runtime.execproc import spawn_exec

    if not argv:
        raise InvalidArgument("exec needs a command")
    if options.workdir is not None and not options.workdir.startswith("/"):
        raise InvalidArgument(f"the working directory {options.workdir!r} is not an absolute path")
    record = engine.lookup(ref)
    if record.state == "paused":
        raise HutchError(f"container {ref} is paused, unpause the container before exec")
    # why both: reconcile keeps a record "running" while its reaper lives, even if the init just died.
    if record.state != "running" or process_start_time(record.pid) != record.pid_start:
        raise HutchError(f"container {ref} is not running")
    spec = exec_spec(record.config["spec"], argv, options)
    oci_filter = spec.get("linux", {}).get("seccomp")
    program = seccomp.prepare(oci_filter, str(engine.root / "cache" / "seccomp")) if oci_filter else None
    if record.is_microvm:
        # why not spawn_exec: the record's pid is the VM's supervisor, a host process; joining its
        # namespaces would run the command on the host. The guest agent runs it inside the VM instead.
        return _exec_in_vm(record, spec, options, program)
    return spawn_exec(
        spec,
        record.pid,
        cgroup=cgroup_of(record),
        stdio=options.stdio,
        # why: a foreground exec must not outlive the hutch waiting for it; a detached one is meant to.
        die_with_parent=not options.detach,
        seccomp_program=program,
    )


def _exec_in_vm(record, spec: dict, options: ExecOptions, program: bytes | None) -> ContainerProcess:
    from pathlib import Path

    from hutch.vm import execclient, script

    layers = [Path(p) for p in record.config["layers"]]
    config = script.agent_config(spec, layers, program, root=None)
    return execclient.spawn(
        record.id, record.name, config, options.stdio, options.tty, die_with_parent=not options.detach
    )


def exec_spec(container_spec: dict, argv: list[str], options: ExecOptions) -> dict:
    """The container's spec with ``process`` replaced by this exec's; the container's copy is untouched."""
    spec = copy.deepcopy(container_spec)
    process = spec["process"]
    process["args"] = list(argv)
    process["terminal"] = options.tty
    env = dict(item.partition("=")[::2] for item in process.get("env", []))
    if options.tty:
        env.setdefault("TERM", "xterm")
    for item in options.env:
        key, _, value = item.partition("=")
        env[key] = value
    process["env"] = [f"{k}={v}" for k, v in env.items()]
    if options.workdir:
        process["cwd"] = options.workdir
    if options.user is not None:
        spec.setdefault("annotations", {})[USER_ANNOTATION] = options.user
    return spec
