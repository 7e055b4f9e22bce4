"""Resolving a container path inside its root without ever leaving it.

A mount destination such as ``/etc/resolv.conf`` may be a symlink in the image (to ``../run/...`` or to
``/proc/self/...``). Following it on the host would let an image redirect a mount anywhere on the host
(CVE-2021-30465, CVE-2019-19921). We therefore walk the path one component at a time, reading symlinks and
re-rooting them at the container root, with ``..`` clamped at that root: exactly what the kernel would do
if the container's root were ``/``.
"""

from __future__ import annotations

import os

_MAX_SYMLINKS = 255


def secure_join(root: str, unsafe: str) -> str:
    """Host path of ``unsafe`` as seen inside ``root``; missing components are taken literally."""
    root = os.path.abspath(root)
    parts = [p for p in unsafe.split("/") if p and p != "."]
    resolved: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(root, *resolved, part)
        try:
            target = os.readlink(candidate)
        except OSError:  # not a symlink, or does not exist: take it as it is
            resolved.append(part)
            continue
        hops += 1
        if hops > _MAX_SYMLINKS:
            raise OSError(40, f"too many levels of symbolic links resolving {unsafe!r} in {root}")
        if target.startswith("/"):
            resolved = []
        parts = [p for p in target.split("/") if p and p != "."] + parts
    return os.path.join(root, *resolved)
