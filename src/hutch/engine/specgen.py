"""From an image config plus run options to an OCI runtime spec, with Docker's defaults.

The spec is the one contract between the engine and an isolation backend: the namespace runtime reads it
as runc would, and the microVM backend will read the same document.
"""

from __future__ import annotations

from hutch.engine.devices import device_spec
from hutch.engine.options import RunOptions
from hutch.engine.security import capability_set
from hutch.runtime.process import USER_ANNOTATION

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Docker's masked and read-only paths (moby oci/defaults.go).
MASKED_PATHS = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
]
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]

_BASE_MOUNTS = [
    {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
    {
        "destination": "/dev",
        "type": "tmpfs",
        "source": "tmpfs",
        "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
    },
    {
        "destination": "/dev/pts",
        "type": "devpts",
        "source": "devpts",
        "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
    },
    {
        "destination": "/sys",
        "type": "sysfs",
        "source": "sysfs",
        "options": ["nosuid", "noexec", "nodev", "ro"],
    },
    {
        "destination": "/dev/mqueue",
        "type": "mqueue",
        "source": "mqueue",
        "options": ["nosuid", "noexec", "nodev"],
    },
    {
        "destination": "/dev/shm",
        "type": "tmpfs",
        "source": "shm",
        "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=67108864"],
    },
]


def command_line(opts: RunOptions, image_config: dict) -> list[str]:
    """Entrypoint + Cmd as Docker combines them: ``--entrypoint`` also discards the image's Cmd."""
    if opts.entrypoint is not None:
        entrypoint = opts.entrypoint
        cmd = opts.command
    else:
        entrypoint = image_config.get("Entrypoint") or []
        cmd = opts.command or image_config.get("Cmd") or []
    return list(entrypoint) + list(cmd)


def environment(opts: RunOptions, image_config: dict, hostname: str) -> list[str]:
    """Image Env, then PATH/HOSTNAME/TERM defaults, then ``-e`` overrides, in Docker's order."""
    env: dict[str, str] = {}
    for item in image_config.get("Env") or []:
        key, _, value = item.partition("=")
        env[key] = value
    env.setdefault("PATH", DEFAULT_PATH)
    env["HOSTNAME"] = hostname
    if opts.tty:
        env.setdefault("TERM", "xterm")
    for item in opts.env:
        key, _, value = item.partition("=")
        env[key] = value
    return [f"{k}={v}" for k, v in env.items()]


def _mounts(opts: RunOptions, etc_files: dict[str, str]) -> list[dict]:
    mounts = [dict(m, options=list(m["options"])) for m in _BASE_MOUNTS]
    if opts.privileged:
        for m in mounts:
            if m["destination"] == "/sys":
                m["options"].remove("ro")
    for dest, source in etc_files.items():
        mounts.append(
            {"destination": dest, "type": "bind", "source": source, "options": ["rbind", "rprivate"]}
        )
    for vol in opts.volumes:
        options = ["rbind", "rprivate"] + (["ro"] if vol.readonly else [])
        mounts.append(
            {"destination": vol.destination, "type": "bind", "source": vol.source, "options": options}
        )
    for tmp in opts.tmpfs:
        options = tmp.options or ["rw", "noexec", "nosuid", "nodev", "size=65536k"]
        mounts.append(
            {"destination": tmp.destination, "type": "tmpfs", "source": "tmpfs", "options": options}
        )
    return mounts


def _seccomp(opts: RunOptions, bounding_caps: list[str]) -> dict | None:
    """Docker's profile (or the user's), resolved against the container's capabilities as Docker does
    (``--cap-add SYS_ADMIN`` also enables the syscalls that need it); none with ``--privileged`` or
    ``seccomp=unconfined``. A bad profile file fails here, before anything is created."""
    from hutch.runtime import seccomp

    profile = seccomp.profile_from_option(opts.seccomp)
    if profile is None or opts.privileged:
        return None
    return seccomp.compile_for(profile, bounding_caps)


def build_spec(opts: RunOptions, image_config: dict, hostname: str, etc_files: dict[str, str]) -> dict:
    """The complete runtime spec for one container."""
    namespaces = [{"type": t} for t in ("pid", "mount", "uts", "ipc")]
    if opts.network != "host":
        namespaces.append({"type": "network"})
    id_maps = {}
    if opts.userns_map:
        namespaces.append({"type": "user"})
        id_maps = {"uidMappings": opts.userns_map["uid"], "gidMappings": opts.userns_map["gid"]}
    caps = capability_set(opts.cap_add, opts.cap_drop, opts.privileged)
    user = opts.user if opts.user is not None else (image_config.get("User") or "")
    # --privileged lifts Docker's masks and read-only kernel paths along with the capability limits.
    masked, readonly = ([], []) if opts.privileged else (list(MASKED_PATHS), list(READONLY_PATHS))
    device_nodes, device_rules = device_spec(opts.devices, opts.privileged)
    seccomp_filter = _seccomp(opts, caps)
    return {
        "ociVersion": "1.0.2",
        "process": {
            "terminal": opts.tty,
            "user": {"uid": 0, "gid": 0},
            "args": command_line(opts, image_config),
            "env": environment(opts, image_config, hostname),
            "cwd": opts.workdir or image_config.get("WorkingDir") or "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "noNewPrivileges": opts.no_new_privileges,
            "rlimits": list(opts.ulimits),
        },
        "root": {"path": "rootfs", "readonly": opts.read_only},
        "hostname": hostname,
        "mounts": _mounts(opts, etc_files),
        "annotations": {USER_ANNOTATION: user},
        "linux": {
            "namespaces": namespaces,
            "maskedPaths": masked,
            "readonlyPaths": readonly,
            "rootfsPropagation": "rprivate",
            "devices": device_nodes,
            "resources": {"devices": device_rules, **opts.resources},
            **id_maps,
            **({"seccomp": seccomp_filter} if seccomp_filter else {}),
        },
    }
