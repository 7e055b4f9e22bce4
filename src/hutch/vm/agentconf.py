"""What the guest agent (``native/vmagent/``) needs to start one process: the container's or an exec's.

The host resolves everything the agent would otherwise need a library for: the user (from the image's
/etc/passwd and /etc/group), the capability masks (Docker's rules: a non-root user keeps only the bounding
set), the rlimit numbers and the seccomp filter as compiled classic BPF (the engine's cached program; guest
and host are both x86_64, so the same program applies). The agent applies them in the order
``runtime/init.py`` does. The format is records ``{u32 tag, u32 length, bytes}`` behind a u32 total
length: trivial to parse in C, and binary-safe for the BPF.
"""

from __future__ import annotations

import resource
import struct

from hutch.errors import HutchError
from hutch.runtime.users import ExecUser

ARG, ENV, CWD, UID, GID, GROUP, RLIMIT, CAPS, NNP, SECCOMP, SECCOMP_FLAGS, TTY, ROOT = range(1, 14)
# The root's set-up steps, done by the agent in order in the container's mount namespace (vm/script.py).
MKDIR, MOUNT, WRITE, DEVICES, HOSTNAME, MODULES, MASK, READONLY, MKNOD = range(14, 23)
# The guest's network card, set over rtnetlink by the agent (no busybox `ip` fork and exec per step).
LINK, ADDRESS, ROUTE = range(23, 26)
# OCI seccomp flags -> seccomp(2) flag bits (linux/seccomp.h)
_SECCOMP_FLAGS = {
    "SECCOMP_FILTER_FLAG_TSYNC": 1,
    "SECCOMP_FILTER_FLAG_LOG": 2,
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW": 4,
}
_INFINITY = (1 << 64) - 1


def _record(tag: int, value: bytes) -> bytes:
    return struct.pack("<II", tag, len(value)) + value


def _text(tag: int, value: str) -> bytes:
    return _record(tag, value.encode() + b"\0")


def mkdir(path: str) -> bytes:
    """``mkdir -p``, mode 0755."""
    return _text(MKDIR, path)


def mount(fstype: str, source: str, target: str, flags: int = 0, data: str = "") -> bytes:
    """mount(2) as given; empty strings are NULL."""
    fields = b"".join(v.encode() + b"\0" for v in (fstype, source, target, data))
    return _record(MOUNT, struct.pack("<Q", flags) + fields)


def etc_file(root: str, path: str, content: str) -> bytes:
    """An engine-made file at ``path`` (relative) in ``root``, bind-mounted from the guest's tmpfs over the
    image's, as Docker does; skipped if its directory is not in the image (no /etc, no /etc files)."""
    return _record(WRITE, root.encode() + b"\0" + path.encode() + b"\0" + content.encode())


def devices(directory: str) -> bytes:
    """Docker's standard device nodes, symlinks and subdirectories in ``directory`` (a fresh tmpfs)."""
    return _text(DEVICES, directory)


def char_device(path: str, mode: int, major: int, minor: int, uid: int, gid: int) -> bytes:
    """A character device node at ``path`` (one already there is replaced), with its mode and owner."""
    return _record(MKNOD, struct.pack("<5I", mode, major, minor, uid, gid) + path.encode() + b"\0")


def hostname(name: str) -> bytes:
    return _text(HOSTNAME, name)


def modules(listing: str) -> bytes:
    """Load the kernel modules named in the initramfs file ``listing`` (from /lib/modules)."""
    return _text(MODULES, listing)


def mask(path: str) -> bytes:
    """Docker's masked path: an empty read-only tmpfs over a directory, the guest's /dev/null over a file;
    skipped when missing."""
    return _text(MASK, path)


def readonly(path: str) -> bytes:
    """A read-only (and nosuid, nodev, noexec) bind of ``path`` onto itself; skipped when missing."""
    return _text(READONLY, path)


def link_up(name: str, mtu: int = 0, mac: bytes = b"") -> bytes:
    """Set ``name``'s MTU and MAC (0 and empty: keep them) and bring it up."""
    if mac and len(mac) != 6:
        raise HutchError(f"invalid MAC address {mac.hex(':')!r} for {name}")
    return _record(LINK, struct.pack("<I6s2x", mtu, mac) + name.encode() + b"\0")


def ipv4_address(name: str, address: bytes, broadcast: bytes, prefixlen: int) -> bytes:
    """Add an IPv4 address (4 bytes each, network order) with its broadcast to ``name``."""
    return _record(ADDRESS, struct.pack("<4s4sB3x", address, broadcast, prefixlen) + name.encode() + b"\0")


def default_route(gateway: bytes) -> bytes:
    """The IPv4 default route via ``gateway`` (4 bytes, network order)."""
    return _record(ROUTE, gateway)


def block(records: list[bytes]) -> bytes:
    """Records behind their u32 total length: the stage (set-up steps only), or a process's config."""
    body = b"".join(records)
    return struct.pack("<I", len(body)) + body


def seccomp_records(spec: dict, program: bytes | None) -> list[bytes]:
    """The compiled filter and its flags, if the spec has one. The container's own travel in its stage
    (15 KB for Docker's profile: a template holds it, so a clone's config is that much shorter); an
    exec's in its config."""
    oci_filter = spec.get("linux", {}).get("seccomp")
    if not oci_filter:
        return []
    if not program:
        raise HutchError("seccomp: the container's filter was not compiled for the guest")
    records = [_record(SECCOMP, program)]
    bits = 0
    for flag in oci_filter.get("flags") or []:
        if flag not in _SECCOMP_FLAGS:
            raise HutchError(f"seccomp: unsupported flag {flag!r}")
        bits |= _SECCOMP_FLAGS[flag]
    if bits:
        records.append(_record(SECCOMP_FLAGS, struct.pack("<I", bits)))
    return records


def rlimit_records(rlimits: list[dict]) -> list[bytes]:
    """``--ulimit``s as (resource number, soft, hard); the numbers are the guest kernel's (both x86_64)."""
    records = []
    for limit in rlimits:
        number = getattr(resource, limit["type"], None)
        if number is None:
            raise HutchError(f"unknown rlimit {limit['type']}")
        soft, hard = (min(int(limit[k]), _INFINITY) for k in ("soft", "hard"))
        soft, hard = (_INFINITY if v >= 2**63 - 1 else v for v in (soft, hard))
        records.append(_record(RLIMIT, struct.pack("<IIQQ", number, 0, soft, hard)))
    return records


def cap_record(capabilities: dict, uid: int) -> bytes:
    """The five sets (bounding, effective, permitted, inheritable, ambient) as bit masks; a non-root user
    gets no effective or permitted capabilities, as with Docker (the bounding set stays)."""
    from hutch.runtime.capabilities import mask

    caps = dict(capabilities or {})
    if uid != 0:
        caps = {"bounding": caps.get("bounding", [])}
    sets = ("bounding", "effective", "permitted", "inheritable", "ambient")
    return _record(CAPS, struct.pack("<5Q", *(mask(caps.get(name, [])) for name in sets)))


def encode(
    spec: dict,
    user: ExecUser,
    env: list[str],
    program: bytes | None,
    root: str | None = None,
    setup: list[bytes] | None = None,
    seccomp: bool = True,
) -> bytes:
    """The config for the process in ``spec["process"]``, run as ``user`` with ``env``; ``root`` is the
    guest path of the container's root (the container's own process; an exec joins its namespaces) and
    ``setup`` the steps that build it. ``seccomp=False``: the filter travels in the stage instead (see
    ``seccomp_records``)."""
    process = spec["process"]
    records = list(setup or [])
    records += [_text(ARG, arg) for arg in process["args"]]
    records += [_text(ENV, item) for item in env]
    records.append(_text(CWD, process.get("cwd") or "/"))
    records += [_record(UID, struct.pack("<I", user.uid)), _record(GID, struct.pack("<I", user.gid))]
    records += [_record(GROUP, struct.pack("<I", gid)) for gid in user.groups]
    records += rlimit_records(process.get("rlimits") or [])
    records.append(cap_record(process.get("capabilities") or {}, user.uid))
    if process.get("noNewPrivileges"):
        records.append(_record(NNP, b""))
    if process.get("terminal"):
        records.append(_record(TTY, b""))
    if seccomp:
        records += seccomp_records(spec, program)
    if root:
        records.append(_text(ROOT, root))
    return block(records)
