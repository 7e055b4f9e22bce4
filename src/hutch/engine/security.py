"""The container's privileges: capability sets and the pieces of Docker's profile that ``--privileged``,
``--cap-add`` and ``--cap-drop`` change.

Kept apart from ``specgen`` because each rule here is a security decision with a reason: defaults are
Docker's, and every weakening comes from an explicit flag.
"""

from __future__ import annotations

from hutch.errors import InvalidArgument
from hutch.runtime.capabilities import CAPABILITIES, DOCKER_DEFAULT, cap_number

ALL_CAPS = tuple(f"CAP_{name}" for name in CAPABILITIES)


def _normalise(names: list[str], flag: str) -> list[str]:
    result = []
    for name in names:
        if name.upper() == "ALL":
            result.append("ALL")
            continue
        try:
            number = cap_number(name)
        except InvalidArgument:
            raise InvalidArgument(f"invalid {flag} {name!r}: unknown capability")
        result.append(ALL_CAPS[number])
    return result


def capability_set(cap_add: list[str], cap_drop: list[str], privileged: bool) -> list[str]:
    """Docker's precedence (moby oci/caps TweakCapabilities): ``--privileged`` is every capability (that
    hutch holds);
    ``--cap-add ALL`` is every capability but the dropped ones; ``--cap-drop ALL`` leaves only the added
    ones; otherwise the defaults, less the dropped, plus the added."""
    if privileged:
        return own_capabilities()
    adds = _normalise(cap_add, "--cap-add")
    drops = _normalise(cap_drop, "--cap-drop")
    if "ALL" in adds:
        return [c for c in own_capabilities() if c not in drops]
    if "ALL" in drops:
        return list(dict.fromkeys(adds))
    caps = [c for c in DOCKER_DEFAULT if c not in drops]
    return list(dict.fromkeys(caps + adds))


_CAP_SYS_RESOURCE = 24


def _own_mask(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1], 16)
    return 0


def own_capabilities() -> list[str]:
    """ "Every capability" as a container can really get it: those hutch itself holds (permitted). A host
    can withhold some (here: root without CAP_SYS_RESOURCE), and no process can grant what it lacks."""
    mask = _own_mask("CapPrm")
    return [name for number, name in enumerate(ALL_CAPS) if mask & (1 << number)]


def _has_capability(number: int) -> bool:
    return bool(_own_mask("CapEff") & (1 << number))


def check_rlimits(rlimits: list[dict]) -> None:
    """Refuse, before anything is created, an ``--ulimit`` above our own hard limit when we cannot raise it
    (no CAP_SYS_RESOURCE, as on hosts that run hutch in a restricted root)."""
    import resource

    for limit in rlimits:
        number = getattr(resource, limit["type"])
        _, current_hard = resource.getrlimit(number)
        wanted = limit["hard"]
        if current_hard == resource.RLIM_INFINITY or wanted <= current_hard:
            continue
        if not _has_capability(_CAP_SYS_RESOURCE):
            name = limit["type"].removeprefix("RLIMIT_").lower()
            raise InvalidArgument(
                f"--ulimit {name}: hard limit {wanted} is above this process's hard limit {current_hard}"
                " and hutch lacks CAP_SYS_RESOURCE to raise it"
            )
