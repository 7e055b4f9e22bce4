"""What a user asks for with ``hutch run``/``create``, parsed and validated before anything is made."""

from __future__ import annotations

import os

from hutch.errors import InvalidArgument

# The network a container gets without --network (networking, issue 6).
DEFAULT_NETWORK = "bridge"


class VolumeSpec:
    """A ``-v HOST:CTR[:ro]`` bind mount."""

    __slots__ = ("source", "destination", "readonly")

    def __init__(self, source: str, destination: str, readonly: bool = False) -> None:
        self.source = source
        self.destination = destination
        self.readonly = readonly

    def to_dict(self) -> dict:
        return {"source": self.source, "destination": self.destination, "readonly": self.readonly}


class TmpfsSpec:
    """A ``--tmpfs PATH[:OPTIONS]`` mount."""

    __slots__ = ("destination", "options")

    def __init__(self, destination: str, options: list[str] | None = None) -> None:
        self.destination = destination
        self.options = options or []

    def to_dict(self) -> dict:
        return {"destination": self.destination, "options": self.options}


class RunOptions:
    """The container's configuration as the user gave it; image defaults are merged in by ``specgen``.

    A plain class rather than a dataclass: the dataclasses module costs ~20 ms to import and build, and this
    is on the path of every ``hutch run``.
    """

    _DEFAULTS: dict = {
        "command": list,
        "name": None,
        "entrypoint": None,
        "env": list,
        "workdir": None,
        "user": None,
        "hostname": None,
        "volumes": list,
        "tmpfs": list,
        "read_only": False,
        "network": DEFAULT_NETWORK,
        "interactive": False,
        "tty": False,
        "remove": False,
        "detach": False,
        "cap_add": list,
        "cap_drop": list,
        "privileged": False,
        "no_new_privileges": False,
        "seccomp": "default",
        "ulimits": list,
        "devices": list,
        "restart": "no",
        "log_opts": None,
        "labels": None,
        "userns": "host",
        "userns_remap": None,
        "userns_map": None,
        "userns_layers": None,
        # --- networking (issue 6) ---
        "publish": list,
        "publish_all": False,
        "ip": None,
        "mac_address": None,
        "dns": list,
        "add_hosts": list,
        "network_aliases": list,
        # resource limits (issue 4): OCI linux.resources without devices, from hutch.engine.resources
        "resources": dict,
        "cgroup_parent": None,
        "isolation": "container",
        "vm_accel": "auto",
        "vm_kernel": None,
        "vm_memory_mib": None,
        "vm_cpus": None,
        "vm_template": "on",
    }
    __slots__ = ("image", *_DEFAULTS)

    def __init__(self, image: str, **values) -> None:
        unknown = set(values) - set(self._DEFAULTS)
        if unknown:
            raise TypeError(f"unknown run options: {sorted(unknown)}")
        self.image = image
        for key, default in self._DEFAULTS.items():
            value = values[key] if key in values else (default() if default in (list, dict) else default)
            setattr(self, key, value)

    def to_dict(self) -> dict:
        """JSON-ready form stored in the container's record."""
        result = {"image": self.image}
        for key in self._DEFAULTS:
            value = getattr(self, key)
            if key in ("volumes", "tmpfs"):
                value = [item.to_dict() for item in value]
            result[key] = value
        return result


def parse_volume(text: str) -> VolumeSpec:
    """``HOST:CTR[:ro|rw]``; both paths absolute (named volumes come with ``hutch volume``)."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or not all(parts[:2]):
        raise InvalidArgument(f"invalid volume specification {text!r}: expected HOST:CONTAINER[:ro]")
    source, destination = parts[0], parts[1]
    mode = parts[2] if len(parts) == 3 else "rw"
    if not source.startswith("/"):
        raise InvalidArgument(
            f"invalid volume specification {text!r}: named volumes are not supported yet,"
            " give an absolute host path"
        )
    if not destination.startswith("/"):
        raise InvalidArgument(f"invalid volume specification {text!r}: container path must be absolute")
    modes = set(mode.split(","))
    if not modes <= {"ro", "rw", "z", "Z"} or {"ro", "rw"} <= modes:
        raise InvalidArgument(f"invalid volume specification {text!r}: unknown mode {mode!r}")
    return VolumeSpec(os.path.abspath(source), os.path.normpath(destination), "ro" in modes)


def parse_tmpfs(text: str) -> TmpfsSpec:
    """``PATH[:opt,opt]``."""
    path, _, opts = text.partition(":")
    if not path.startswith("/"):
        raise InvalidArgument(f"invalid tmpfs {text!r}: path must be absolute")
    return TmpfsSpec(os.path.normpath(path), [o for o in opts.split(",") if o])


def parse_env_file(path: str) -> list[str]:
    """Docker's env-file format: ``K=V`` per line, ``#`` comments, a bare ``K`` takes the host's value."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as err:
        raise InvalidArgument(f"cannot read env file {path!r}: {err.strerror}")
    result = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key = line.split("=", 1)[0]
        if not key or any(c.isspace() for c in key):
            raise InvalidArgument(f"{path}:{number}: invalid variable name {key!r}")
        result.extend(_expand_env([line]))
    return result


def _expand_env(items: list[str]) -> list[str]:
    result = []
    for item in items:
        if "=" in item:
            result.append(item)
        elif item in os.environ:
            result.append(f"{item}={os.environ[item]}")
    return result


def parse_env(items: list[str]) -> list[str]:
    """``-e K=V`` or ``-e K`` (taken from hutch's own environment, dropped if unset, as Docker does)."""
    for item in items:
        if not item or item.startswith("="):
            raise InvalidArgument(f"invalid environment variable {item!r}")
    return _expand_env(items)


# --- networking (issue 6) -----------------------------------------------------------------------------


def check_network(mode: str) -> str:
    """``none``, ``host``, ``bridge`` (``default``), ``container:NAME`` or a user network's name; whether
    the network or container exists is checked by the engine at create time."""
    import re

    if mode == "default":
        return "bridge"
    if mode in ("none", "host", "bridge"):
        return mode
    kind, sep, target = mode.partition(":")
    if sep and kind == "container" and target:
        return mode
    if not re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*", mode):
        raise InvalidArgument(f"invalid --network {mode!r}")
    return mode


def _check_ipv4(text: str, what: str) -> str:
    parts = text.split(".")
    if len(parts) != 4 or not all(p.isdigit() and int(p) < 256 and str(int(p)) == p for p in parts):
        raise InvalidArgument(f"invalid {what} {text!r}: expected an IPv4 address")
    return text


def parse_ip(text: str | None) -> str | None:
    return None if text is None else _check_ipv4(text, "--ip")


def parse_dns(items: list[str]) -> list[str]:
    return [_check_ipv4(item, "--dns") for item in items]


def parse_mac(text: str | None) -> str | None:
    """``--mac-address``: six hex pairs, unicast (the multicast bit of the first byte clear)."""
    if text is None:
        return None
    import re

    if not re.fullmatch(r"([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}", text) or int(text[:2], 16) & 1:
        raise InvalidArgument(f"invalid --mac-address {text!r}: expected a unicast xx:xx:xx:xx:xx:xx")
    return text.lower()


def parse_add_host(text: str) -> str:
    """``--add-host NAME:IP`` (or ``NAME=IP``) as one /etc/hosts line."""
    sep = "=" if "=" in text else ":"
    name, _, address = text.partition(sep)
    if not name or not address:
        raise InvalidArgument(f"invalid --add-host {text!r}: expected NAME:IP")
    return f"{_check_ipv4(address, '--add-host address')}\t{name}"


def parse_aliases(items: list[str]) -> list[str]:
    import re

    for item in items:
        if not re.fullmatch(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*", item):
            raise InvalidArgument(f"invalid --network-alias {item!r}")
    return list(items)


RLIMITS = {
    "as": "RLIMIT_AS",
    "core": "RLIMIT_CORE",
    "cpu": "RLIMIT_CPU",
    "data": "RLIMIT_DATA",
    "fsize": "RLIMIT_FSIZE",
    "locks": "RLIMIT_LOCKS",
    "memlock": "RLIMIT_MEMLOCK",
    "msgqueue": "RLIMIT_MSGQUEUE",
    "nice": "RLIMIT_NICE",
    "nofile": "RLIMIT_NOFILE",
    "nproc": "RLIMIT_NPROC",
    "rss": "RLIMIT_RSS",
    "rtprio": "RLIMIT_RTPRIO",
    "rttime": "RLIMIT_RTTIME",
    "sigpending": "RLIMIT_SIGPENDING",
    "stack": "RLIMIT_STACK",
}
UNLIMITED = 2**64 - 1  # RLIM_INFINITY as the OCI spec writes it


def _rlimit_value(text: str, option: str) -> int:
    if text in ("-1", "unlimited"):
        return UNLIMITED
    if not text.isdigit():
        raise InvalidArgument(f"invalid --ulimit {option!r}: {text!r} is not a number")
    return int(text)


def parse_ulimit(text: str) -> dict:
    """``NAME=SOFT[:HARD]`` as Docker takes it, into the OCI spec's rlimit form."""
    name, sep, values = text.partition("=")
    if not sep or not values:
        raise InvalidArgument(f"invalid --ulimit {text!r}: expected NAME=SOFT[:HARD]")
    if name not in RLIMITS:
        raise InvalidArgument(f"invalid --ulimit {text!r}: unknown limit {name!r}")
    soft_text, _, hard_text = values.partition(":")
    soft = _rlimit_value(soft_text, text)
    hard = _rlimit_value(hard_text, text) if hard_text else soft
    if soft > hard:
        raise InvalidArgument(f"invalid --ulimit {text!r}: soft limit {soft} is above hard limit {hard}")
    return {"type": RLIMITS[name], "soft": soft, "hard": hard}


def parse_security_opts(items: list[str]) -> dict:
    """``--security-opt``: ``no-new-privileges[=true|false]``, ``seccomp=unconfined|PROFILE.json``.

    Docker also accepts ``key:value``; both spellings are taken.
    """
    result: dict = {}
    for item in items:
        key, sep, value = item.partition("=") if "=" in item else item.partition(":")
        if key == "no-new-privileges":
            if value not in ("", "true", "false"):
                raise InvalidArgument(f"invalid --security-opt {item!r}: expected true or false")
            result["no_new_privileges"] = value != "false"
        elif key == "seccomp" and sep and value:
            result["seccomp"] = value
        elif key in ("label", "apparmor") and sep:
            raise InvalidArgument(f"--security-opt {key}: hutch does not support {key} yet")
        else:
            raise InvalidArgument(f"invalid --security-opt {item!r}")
    return result


def check_isolation(value: str) -> str:
    """``--isolation``/``--runtime``: ``container`` (namespaces, the default) or ``vm`` (a microVM)."""
    if value in ("container", "default", "runc", "hutch"):
        return "container"
    if value in ("vm", "microvm"):
        return "vm"
    raise InvalidArgument(f"invalid --isolation {value!r}: expected container or vm")


def check_vm_accel(value: str) -> str:
    """``--vm-accel``: ``auto`` (KVM when it runs the guest kernel, else TCG), ``kvm`` or ``tcg``."""
    if value not in ("auto", "kvm", "tcg"):
        raise InvalidArgument(f"invalid --vm-accel {value!r}: expected auto, kvm or tcg")
    return value


def parse_memory_mib(text: str, minimum: int = 80, flag: str = "vm-memory") -> int:
    """``128m``, ``1g``, ``268435456`` (bytes) -> MiB; at least ``minimum`` (smaller guests hang at boot)."""
    from hutch.engine.resources import parse_bytes

    mib = parse_bytes(flag, text) // (1 << 20)
    if mib < minimum:
        raise InvalidArgument(f"memory size {text!r} is too small for a microVM: at least {minimum}m")
    return mib
