"""Which host ids a container's user namespace maps to: ``--userns`` and ``--userns-remap``.

- ``host`` (default): no user namespace, as Docker without userns-remap.
- ``auto[:size=N]``: a block of N ids (default 65536) of its own, taken from the ranges /etc/subuid and
  /etc/subgid grant to the user ``containers`` (Podman's convention) or else ``root``, never overlapping
  another hutch container's block.
- ``--userns-remap USER`` (Docker's daemon option, here per container; ``default`` means ``root``): the
  first range USER has, shared by every container that asks for it, as Docker's remapping is.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

from hutch.errors import InvalidArgument

DEFAULT_SIZE = 65536


def parse_userns(text: str) -> tuple[str, int]:
    """``host`` | ``auto[:size=N]`` -> (mode, size)."""
    mode, _, extra = text.partition(":")
    if mode == "host" and not extra:
        return "host", 0
    if mode != "auto":
        raise InvalidArgument(f"invalid --userns {text!r}: expected host or auto[:size=N]")
    size = DEFAULT_SIZE
    for option in filter(None, extra.split(",")):
        key, _, value = option.partition("=")
        if key != "size" or not value.isdigit() or not 0 < int(value) <= 1 << 24:
            raise InvalidArgument(f"invalid --userns option {option!r}: expected size=N")
        size = int(value)
    return "auto", size


def read_subids(path: str, user: str) -> list[tuple[int, int]]:
    """(start, count) ranges of ``user`` (by name or uid) in a subuid/subgid file."""
    names = {user}
    try:
        names.add(str(pwd.getpwnam(user).pw_uid))
    except KeyError:
        pass
    ranges = []
    try:
        with open(path) as f:
            for line in f:
                fields = line.strip().split(":")
                if len(fields) == 3 and fields[0] in names and fields[1].isdigit() and fields[2].isdigit():
                    ranges.append((int(fields[1]), int(fields[2])))
    except FileNotFoundError:
        pass
    return ranges


def allocate(ranges: list[tuple[int, int]], size: int, used: list[tuple[int, int]]) -> int | None:
    """The lowest start of ``size`` free ids inside ``ranges``, avoiding ``used`` (start, count) blocks."""
    for start, count in sorted(ranges):
        candidate = start
        while candidate + size <= start + count:
            clash = next((u for u in used if candidate < u[0] + u[1] and u[0] < candidate + size), None)
            if clash is None:
                return candidate
            candidate = clash[0] + clash[1]
    return None


def mappings(
    userns: str,
    remap: str | None,
    used: list[tuple[int, int]],
    files: tuple[str, str] = ("/etc/subuid", "/etc/subgid"),
) -> dict | None:
    """{"uid": [...], "gid": [...]} OCI mappings for the container, or None for the host's namespace."""
    mode, size = parse_userns(userns)
    if remap:
        if mode != "host":
            raise InvalidArgument("--userns and --userns-remap cannot be combined")
        user = "root" if remap == "default" else remap.partition(":")[0]
        uid_ranges, gid_ranges = read_subids(files[0], user), read_subids(files[1], user)
        if not uid_ranges or not gid_ranges:
            raise InvalidArgument(
                f"--userns-remap {remap}: no subordinate ids for {user!r} in {' and '.join(files)}"
            )
        return {"uid": [_mapping(*uid_ranges[0])], "gid": [_mapping(*gid_ranges[0])]}
    if mode == "host":
        return None
    owner = "containers" if read_subids(files[0], "containers") else "root"
    uid_ranges, gid_ranges = read_subids(files[0], owner), read_subids(files[1], owner)
    if not uid_ranges or not gid_ranges:
        raise InvalidArgument(
            f"--userns=auto needs subordinate ids for root in {files[0]} and {files[1]}"
            " (for example the line root:100000:1000000 in each)"
        )
    uid_start = allocate(uid_ranges, size, used)
    gid_start = allocate(gid_ranges, size, used)
    if uid_start is None or gid_start is None:
        raise InvalidArgument(f"--userns=auto: no free block of {size} ids left in {files[0]}/{files[1]}")
    return {"uid": [_mapping(uid_start, size)], "gid": [_mapping(gid_start, size)]}


def _mapping(start: int, count: int) -> dict:
    return {"containerID": 0, "hostID": start, "size": min(count, 1 << 32)}


def layer_mode(layers_dir: Path) -> str:
    """``idmap`` or ``copy``: how a user-namespaced container's root sees the layers as its own.

    ``HUTCH_USERNS_LAYERS=idmap|copy`` chooses; unset (or ``auto``), idmapped mounts are used when a probe
    on the layers' filesystem succeeds. ``copy`` is what hosts without idmapped mounts get (and what the
    tests force, to exercise it on hosts that have them).
    """
    wanted = os.environ.get("HUTCH_USERNS_LAYERS", "auto")
    if wanted in ("idmap", "copy"):
        return wanted
    if wanted != "auto":
        raise InvalidArgument(f"invalid HUTCH_USERNS_LAYERS {wanted!r}: expected auto, idmap or copy")
    from hutch.runtime.userns import idmap_supported

    return "idmap" if idmap_supported(str(layers_dir)) else "copy"
