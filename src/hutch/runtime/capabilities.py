"""Capability names, Docker's default set, and applying the OCI capability sets to the init process."""

from __future__ import annotations

from hutch.errors import InvalidArgument
from hutch.linux import syscalls as sc

CAPABILITIES = (
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
)
_NUMBER = {f"CAP_{name}": i for i, name in enumerate(CAPABILITIES)}

# Docker's default set (moby oci/caps/defaults.go): CapEff 00000000a80425fb for root in a container.
DOCKER_DEFAULT = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)


def cap_number(name: str) -> int:
    """Number of ``CAP_X`` (or ``X``); unknown names are an InvalidArgument naming them."""
    key = name.upper() if name.upper().startswith("CAP_") else f"CAP_{name.upper()}"
    if key not in _NUMBER:
        raise InvalidArgument(f"unknown capability {name!r}")
    return _NUMBER[key]


def mask(names: list[str], last: int | None = None) -> int:
    """Bit mask of capability names, ignoring those the running kernel does not know."""
    bits = 0
    for name in names:
        number = cap_number(name)
        if last is None or number <= last:
            bits |= 1 << number
    return bits


def drop_bounding(caps: dict[str, list[str]], last: int) -> None:
    """Remove from the bounding set every capability the spec does not list; needs CAP_SETPCAP."""
    bounding = mask(caps.get("bounding", []), last)
    for number in range(last + 1):
        if not bounding & (1 << number):
            sc.prctl(sc.PR_CAPBSET_DROP, number)


def set_process_sets(caps: dict[str, list[str]], last: int) -> None:
    """Set effective/permitted/inheritable exactly as the spec says, and the ambient set.

    Called after the uid switch (made with keep-caps) so a non-root user ends with what the spec grants and
    nothing more.
    """
    sc.capset(
        mask(caps.get("effective", []), last),
        mask(caps.get("permitted", []), last),
        mask(caps.get("inheritable", []), last),
    )
    sc.prctl(sc.PR_CAP_AMBIENT, sc.PR_CAP_AMBIENT_CLEAR_ALL)
    for name in caps.get("ambient", []):
        number = cap_number(name)
        if number <= last:
            sc.prctl(sc.PR_CAP_AMBIENT, 2, number)  # PR_CAP_AMBIENT_RAISE
