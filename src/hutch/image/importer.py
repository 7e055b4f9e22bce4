"""``hutch import``: a root filesystem tarball becomes a one-layer image, as ``docker import`` makes it.

The tarball may be gzip, zstd or plain; its layer is stored uncompressed (media type ``...layer.v1.tar``)
so the blob digest is the diff ID and ``hutch save`` can copy it without recompressing. ``--change``
accepts the Dockerfile instructions Docker allows there that only touch the run config.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from contextlib import nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from hutch.errors import InvalidArgument, NotFound
from hutch.image.store import Image, ImageStore
from hutch.oci import image as oci
from hutch.oci import reference
from hutch.oci.digest import Digest


def import_tarball(
    store: ImageStore,
    source: Path | BinaryIO,
    name: str | None = None,
    *,
    message: str = "",
    changes: Sequence[str] = (),
) -> Image:
    """Import ``source`` (a path, or an open binary stream such as stdin) as ``name`` (or untagged)."""
    from hutch.image.compression import open_decompressed

    names = [str(reference.parse_tag_target(name))] if name else []
    run_config = parse_changes(changes)
    label = "-" if not isinstance(source, Path) else str(source)
    with store.ingest() as ing, _open(source) as raw:
        layer, size = ing.put_stream(open_decompressed(raw))
        config = encode_config(layer, run_config, message or f"Imported from {label}")
        manifest = oci.build_manifest(
            oci.Descriptor(oci.OCI_CONFIG, Digest.of_bytes(config), len(config)),
            [oci.Descriptor(oci.OCI_LAYER_TAR, layer, size)],
        )
        return store.add_image(manifest, config, names, media_type=oci.OCI_MANIFEST)


def _open(source: Path | BinaryIO):
    if not isinstance(source, Path):
        return nullcontext(source)  # the caller owns the stream (stdin): read it, do not close it
    try:
        return open(source, "rb")
    except FileNotFoundError:
        raise NotFound(f"import: {source}: no such file")
    except IsADirectoryError:
        raise InvalidArgument(f"import: {source} is a directory, expected a tarball")


def encode_config(layer: Digest, run_config: dict[str, Any], comment: str) -> bytes:
    """The image config Docker writes for an import: host platform, one layer, a history entry."""
    created = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    platform = oci.host_platform()
    config: dict[str, Any] = {
        "architecture": platform.architecture,
        "os": platform.os,
        "created": created,
        "comment": comment,
        "config": run_config,
        "rootfs": {"type": "layers", "diff_ids": [str(layer)]},
        "history": [{"created": created, "comment": comment}],
    }
    if platform.variant:
        config["variant"] = platform.variant
    return oci.encode_json(config)


def parse_changes(changes: Sequence[str]) -> dict[str, Any]:
    """Apply ``--change`` instructions in order to an empty run config."""
    config: dict[str, Any] = {}
    for change in changes:
        keyword, _, rest = change.strip().partition(" ")
        handler = _HANDLERS.get(keyword.upper())
        if handler is None:
            allowed = ", ".join(sorted(_HANDLERS))
            raise InvalidArgument(f"--change: {keyword!r} is not supported (use one of {allowed})")
        rest = rest.strip()
        if not rest:
            raise InvalidArgument(f"--change: {keyword.upper()} needs an argument")
        handler(config, rest)
    return config


def _json_list(text: str) -> list[str] | None:
    """The JSON (exec) form ``["a", "b"]``, or None when ``text`` is not one."""
    try:
        value = json.loads(text) if text.startswith("[") else None
    except ValueError:
        return None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


def _command(text: str) -> list[str]:
    """Exec form as given; shell form wrapped in ``/bin/sh -c`` as Docker runs it."""
    return _json_list(text) or ["/bin/sh", "-c", text]


def _words(text: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError as err:
        raise InvalidArgument(f"--change: cannot parse {text!r}: {err}")


def _pairs(text: str, what: str) -> list[tuple[str, str]]:
    """``K=V K2="v 2"``, or the legacy ``K value with spaces`` form."""
    first = text.split(None, 1)[0]
    if "=" not in first:
        key, _, value = text.partition(" ")
        return [(key, value.strip())]
    out = []
    for word in _words(text):
        key, eq, value = word.partition("=")
        if not eq or not key:
            raise InvalidArgument(f"--change: {what} expects KEY=VALUE, got {word!r}")
        out.append((key, value))
    return out


def _env(config: dict[str, Any], text: str) -> None:
    env = config.setdefault("Env", [])
    for key, value in _pairs(text, "ENV"):
        env[:] = [e for e in env if e.partition("=")[0] != key] + [f"{key}={value}"]


def _label(config: dict[str, Any], text: str) -> None:
    config.setdefault("Labels", {}).update(_pairs(text, "LABEL"))


def _expose(config: dict[str, Any], text: str) -> None:
    ports = config.setdefault("ExposedPorts", {})
    for port in _words(text):
        ports[port if "/" in port else f"{port}/tcp"] = {}


def _volume(config: dict[str, Any], text: str) -> None:
    paths = _json_list(text) or _words(text)
    config.setdefault("Volumes", {}).update({p: {} for p in paths})


def _setter(key: str, parse=lambda text: text):
    def apply(config: dict[str, Any], text: str) -> None:
        config[key] = parse(text)

    return apply


_HANDLERS = {
    "CMD": _setter("Cmd", _command),
    "ENTRYPOINT": _setter("Entrypoint", _command),
    "ENV": _env,
    "EXPOSE": _expose,
    "LABEL": _label,
    "STOPSIGNAL": _setter("StopSignal"),
    "USER": _setter("User"),
    "VOLUME": _volume,
    "WORKDIR": _setter("WorkingDir"),
}
