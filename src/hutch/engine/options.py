"""What a user asks for with ``hutch run``/``create``, parsed and validated before anything is made."""

from __future__ import annotations

import os

from hutch.errors import InvalidArgument


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
        "network": "none",
        "interactive": False,
        "tty": False,
        "remove": False,
        "detach": False,
    }
    __slots__ = ("image", *_DEFAULTS)

    def __init__(self, image: str, **values) -> None:
        unknown = set(values) - set(self._DEFAULTS)
        if unknown:
            raise TypeError(f"unknown run options: {sorted(unknown)}")
        self.image = image
        for key, default in self._DEFAULTS.items():
            value = values[key] if key in values else (default() if default is list else default)
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


def check_network(mode: str) -> str:
    """Only the modes this version has; bridge networking comes with ``hutch network``."""
    if mode in ("none", "host"):
        return mode
    if mode in ("bridge", "default"):
        raise InvalidArgument("--network bridge is not available yet: use --network none or host")
    raise InvalidArgument(f"network {mode!r} not found")
