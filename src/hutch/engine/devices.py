"""The devices a container gets, in the OCI spec's two forms: nodes to create (``linux.devices``) and the
access rules the cgroup enforces (``linux.resources.devices``).

Docker's defaults come from ``hutch.cgroups.devices``; ``--device`` adds a node and an allow rule;
``--privileged`` allows every device and, as Docker does, creates every host device in the container.
"""

from __future__ import annotations

import os
import stat

from hutch.cgroups.devices import DeviceRule, container_rules, parse_device_option

# Below /dev, these hold no device nodes a container should get (or are the container's own).
_SKIP_DIRS = {"pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"}
# The runtime makes these itself (ptmx is a link to the container's own devpts instance).
_RUNTIME_OWN = {"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty", "/dev/ptmx"}


def parse_devices(options: list[str]) -> list[dict]:
    """``--device`` values, checked against the host now, as spec ``linux.devices`` entries plus access."""
    result = []
    for text in options:
        host, container, rule = parse_device_option(text)
        st = os.stat(host)
        result.append(
            {
                "path": container,
                "type": rule.type,
                "major": rule.major,
                "minor": rule.minor,
                "fileMode": stat.S_IMODE(st.st_mode),
                "uid": st.st_uid,
                "gid": st.st_gid,
                "access": rule.access,
            }
        )
    return result


def host_devices(root: str = "/dev") -> list[dict]:
    """Every char and block device under /dev (for ``--privileged``), as spec entries."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not (dirpath == root and d in _SKIP_DIRS)]
        for name in filenames:
            path = os.path.join(dirpath, name)
            if path in _RUNTIME_OWN:
                continue
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                found.append(
                    {
                        "path": path,
                        "type": "c" if stat.S_ISCHR(st.st_mode) else "b",
                        "major": os.major(st.st_rdev),
                        "minor": os.minor(st.st_rdev),
                        "fileMode": stat.S_IMODE(st.st_mode),
                        "uid": st.st_uid,
                        "gid": st.st_gid,
                    }
                )
    return found


def _oci_rule(rule: DeviceRule) -> dict:
    entry: dict = {"allow": rule.allow, "type": rule.type, "access": rule.access}
    if rule.major is not None:
        entry["major"] = rule.major
    if rule.minor is not None:
        entry["minor"] = rule.minor
    return entry


def device_spec(devices: list[dict], privileged: bool) -> tuple[list[dict], list[dict]]:
    """(``linux.devices``, ``linux.resources.devices``) for the spec."""
    extra = [DeviceRule(True, d["type"], d["major"], d["minor"], d["access"]) for d in devices]
    rules = [_oci_rule(r) for r in container_rules(extra, privileged)]
    nodes = [{k: v for k, v in d.items() if k != "access"} for d in devices]
    if privileged:
        wanted = {d["path"] for d in nodes}
        nodes += [d for d in host_devices() if d["path"] not in wanted]
    return nodes, rules


def rules_from_spec(resources: list[dict]) -> list[DeviceRule]:
    """The spec's ``linux.resources.devices`` back into rules for the cgroup manager."""
    return [
        DeviceRule(
            r.get("allow", False), r.get("type", "a"), r.get("major"), r.get("minor"), r.get("access", "rwm")
        )
        for r in resources
    ]
