"""The container's root and process, as the guest sets them up.

The guest has hutch's agent (``native/vmagent/``) as its init and nothing else; so the host, which has the
OCI spec, turns it into plain records for the agent (``vm/agentconf.py``): the root's set-up steps (the
container's /proc, /sys, /dev with devpts and /dev/shm, the engine's /etc files, ``--tmpfs``, volumes,
Docker's masked and read-only paths, the hostname, ``--read-only``), which the agent performs as pid 1 of
the container's fresh pid, mount, uts and ipc namespaces, then the process's (args, env, cwd, user and
groups resolved here against the image's own /etc files, rlimits, capabilities, seccomp). The steps were a
busybox script before; under TCG each applet is a fork and often an exec of the 2 MB binary, so the script
took ~0.3 s of a clone's start, and the same steps in C take milliseconds. The network card's set-up went
the same way (``ip`` commands -> rtnetlink requests from the agent).
"""

from __future__ import annotations

from pathlib import Path

from hutch.errors import HutchError
from hutch.runtime.users import ExecUser, resolve_user
from hutch.vm import agentconf
from hutch.vm import devices as guest_devices

# mount(2) flags (linux/mount.h); hutch.linux.syscalls has them too, but loads libc through ctypes
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_MOVE = 1, 2, 4, 8, 32, 8192

ROOT = "/newroot"
# The container's /proc, /sys and /dev, made by its pid 1 before the guest says "ready" (so a template holds
# them) and moved into ROOT once the image's root is mounted.
STAGE = "/stage"
STAGED = ("/proc", "/sys", "/dev")


def layer_file(layers: list[Path], rel: str) -> str:
    """A file as the container would see it: from the highest layer that has it (empty if none)."""
    for layer in reversed(layers):
        path = layer / rel
        if path.is_file() and not path.is_symlink():
            try:
                return path.read_text(errors="replace")
            except OSError:
                return ""
    return ""


def exec_user(spec: dict, layers: list[Path]) -> ExecUser:
    """``--user`` resolved against the image's /etc/passwd and /etc/group, as the namespace runtime does
    inside the container (here on the host: the guest's busybox cannot look names up in a chroot)."""
    from hutch.runtime.process import USER_ANNOTATION

    user_spec = spec.get("annotations", {}).get(USER_ANNOTATION) or "0"
    return resolve_user(user_spec, layer_file(layers, "etc/passwd"), layer_file(layers, "etc/group"))


def _flags_and_data(options: list[str]) -> tuple[int, str]:
    from hutch.runtime.mountopts import parse_mount_options

    parsed = parse_mount_options(options)
    return parsed.flags, parsed.data_string or ""


_DEVPTS = "newinstance,ptmxmode=0666,mode=0620"
_SHM = "mode=1777,size=67108864"


def _dev_records(d: str) -> list[bytes]:
    """Docker's /dev at ``d``: a tmpfs with the standard nodes, devpts (a new instance: the container's
    ptys are its own) and /dev/shm."""
    return [
        agentconf.mount("tmpfs", "dev", d, MS_NOSUID, "mode=755,size=65536k"),
        agentconf.devices(d),
        agentconf.mount(
            "devpts", "devpts", f"{d}/pts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620"
        ),
        agentconf.mount(
            "tmpfs", "shm", f"{d}/shm", MS_NOSUID | MS_NOEXEC | MS_NODEV, "mode=1777,size=67108864"
        ),
    ]


def _etc_records(spec: dict) -> list[bytes]:
    """The engine's generated /etc files (hosts, hostname, resolv.conf), bind-mounted as Docker's are."""
    records = []
    for m in spec.get("mounts", []):
        dest = m["destination"]
        if m.get("type") == "bind" and dest.startswith("/etc/"):
            try:
                content = Path(m["source"]).read_text()
            except OSError:
                continue
            records.append(agentconf.etc_file(ROOT, dest.lstrip("/"), content))
    return records


def _tmpfs_records(spec: dict) -> list[bytes]:
    records = []
    for m in spec.get("mounts", []):
        if m.get("type") == "tmpfs" and m["destination"] not in ("/dev", "/dev/shm"):
            target = ROOT + m["destination"]
            flags, data = _flags_and_data(m.get("options") or ["rw"])
            records += [agentconf.mkdir(target), agentconf.mount("tmpfs", "tmpfs", target, flags, data)]
    return records


def _volume_records(volumes: list[dict]) -> list[bytes]:
    """``-v`` volumes, each a virtiofs share tagged ``vol<N>`` (see vm/virtiofs.py)."""
    if not volumes:
        return []
    records = [agentconf.modules("/modules.volumes")]
    for n, vol in enumerate(volumes):
        target = ROOT + vol["destination"]
        flags = MS_RDONLY if vol.get("readonly") else 0
        records += [agentconf.mkdir(target), agentconf.mount("virtiofs", f"vol{n}", target, flags)]
    return records


def _environment(spec: dict, user: ExecUser) -> list[str]:
    env = list(spec["process"].get("env", []))
    if not any(item.startswith("HOME=") for item in env):
        env.append(f"HOME={user.home}")
    return env


def _staged(path: str) -> bool:
    return any(path == top or path.startswith(top + "/") for top in STAGED)


def stage_records(spec: dict, program: bytes | None) -> list[bytes]:
    """The container's /proc, /sys and /dev under STAGE, with Docker's masked and read-only paths there
    applied, and its seccomp filter: what its pid 1 has before "ready", the same for every container of
    one security profile (a template's key includes it; ``--privileged`` gets a template of its own)."""
    linux = spec.get("linux", {})
    return [
        *agentconf.seccomp_records(spec, program),
        *(agentconf.mkdir(STAGE + top) for top in STAGED),
        agentconf.mount("proc", "proc", f"{STAGE}/proc", MS_NOSUID | MS_NOEXEC | MS_NODEV),
        agentconf.mount("sysfs", "sys", f"{STAGE}/sys", _sysfs_flags(spec)),
        *_dev_records(f"{STAGE}/dev"),
        *(agentconf.mask(STAGE + path) for path in linux.get("maskedPaths", []) if _staged(path)),
        *(agentconf.readonly(STAGE + path) for path in linux.get("readonlyPaths", []) if _staged(path)),
    ]


def _sysfs_flags(spec: dict) -> int:
    """The spec's own /sys mount's flags (read-only as Docker mounts it; read-write when privileged)."""
    for m in spec.get("mounts", []):
        if m.get("destination") == "/sys":
            return _flags_and_data(m.get("options") or [])[0]
    return MS_RDONLY | MS_NOSUID | MS_NOEXEC | MS_NODEV


def setup_records(spec: dict, volumes: list[dict] | None = None, nic: dict | None = None) -> list[bytes]:
    """The container's root, built by the guest agent in the container's mount namespace: done in C
    rather than by busybox applets, each of which costs a fork (and often an exec) under TCG. Its /proc,
    /sys and /dev are the staged ones (``stage_records``), moved in."""
    linux = spec.get("linux", {})
    cwd = spec["process"].get("cwd") or "/"
    records = [agentconf.mkdir(ROOT + sub) for sub in ("/proc", "/dev", "/sys", "/tmp", cwd)]
    records += [
        *(agentconf.mount("", STAGE + top, ROOT + top, MS_MOVE) for top in STAGED),
        *guest_devices.records(spec.get("linux", {}).get("devices", []), ROOT),
        *_etc_records(spec),
        *_tmpfs_records(spec),
        *_volume_records(volumes or []),
        *(agentconf.mask(ROOT + path) for path in linux.get("maskedPaths", []) if not _staged(path)),
        *(agentconf.readonly(ROOT + path) for path in linux.get("readonlyPaths", []) if not _staged(path)),
        agentconf.hostname(spec.get("hostname") or "localhost"),
    ]
    if spec.get("root", {}).get("readonly"):
        records.append(agentconf.mount("", "", ROOT, MS_REMOUNT | MS_RDONLY))
    if nic is not None:
        records += network_records(nic)
    return records


def network_records(nic: dict) -> list[bytes]:
    """The guest's lo and eth0 as the host's IPAM gave them (``network.tap``), set by the agent over
    rtnetlink: no busybox ``ip`` (a fork and an exec each, ~25 ms under TCG).

    The MAC is set here rather than only on QEMU's command line: a template clone's card comes back from
    the saved state with the template's MAC, and the guest's driver read it at boot; setting it from the
    guest also updates QEMU's receive filter (virtio-net's control queue). No gateway: an internal
    network, no default route."""
    import ipaddress

    try:
        mac = bytes.fromhex(str(nic["mac"]).replace(":", ""))
        iface = ipaddress.IPv4Interface(f"{nic['address']}/{int(nic['prefixlen'])}")
        gateway = ipaddress.IPv4Address(nic["gateway"]) if nic.get("gateway") else None
        mtu = int(nic["mtu"])
    except ValueError as err:
        raise HutchError(f"the microVM's network card: {err}") from None
    records = [
        agentconf.link_up("lo"),
        agentconf.link_up("eth0", mtu, mac),
        agentconf.ipv4_address(
            "eth0", iface.ip.packed, iface.network.broadcast_address.packed, iface.network.prefixlen
        ),
    ]
    if gateway is not None:
        records.append(agentconf.default_route(gateway.packed))
    return records


def agent_config(
    spec: dict,
    layers: list[Path],
    program: bytes | None,
    root: str | None = ROOT,
    volumes: list[dict] | None = None,
    nic: dict | None = None,
) -> bytes:
    """The guest agent's config for ``spec``'s process: with ``root``, the container's own (the root's
    set-up included, and ``nic``'s settings on the guest's eth0); ``root=None``, an exec into the running
    container. A bad ``--user`` fails here, before anything is made."""
    user = exec_user(spec, layers)
    setup = setup_records(spec, volumes, nic) if root else []
    env = _environment(spec, user)
    # the container's own filter is in its stage (stage_records); an exec's comes with its config
    return agentconf.encode(spec, user, env, program, root, setup, seccomp=root is None)
