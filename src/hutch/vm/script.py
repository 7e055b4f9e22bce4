"""The container's configuration as a shell script for the guest's init (stage 2).

The guest has busybox and nothing else, and parsing JSON in ash is no fun; so the host, which has the OCI
spec, writes the whole set-up as a plain script with every value single-quoted, and the guest runs it as pid
1 of a fresh pid, mount, uts and ipc namespace. The script mounts the container's /proc, /dev and /sys into
the overlay root, writes the /etc files and sets the hostname; then the guest agent (``native/vmagent.c``,
configured by ``agent_config``) moves the root over the initramfs and does what busybox cannot: groups,
rlimits, capabilities, no_new_privs, seccomp, and the exec. Applets are called by name, never as
``/bin/busybox X``: Debian's busybox sh runs them in-process or fork-only (FEATURE_SH_STANDALONE), where
under TCG each exec of the 2 MB binary costs tens of milliseconds.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from hutch.runtime.users import ExecUser, resolve_user

ROOT = "/newroot"
_DEVICES = (
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
)


def q(value: str) -> str:
    return shlex.quote(value)


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


def _dev_lines() -> list[str]:
    """Docker's /dev: a tmpfs filled from the initramfs's template (one ``cp``, not a dozen mknods)."""
    d = f"{ROOT}/dev"
    return [
        f"mount -t tmpfs -o nosuid,mode=755,size=65536k dev {d}",
        f"cp -a /devtmpl/. {d}/",
        f"mount -t devpts -o nosuid,noexec,newinstance,ptmxmode=0666,mode=0620 devpts {d}/pts",
        f"mount -t tmpfs -o nosuid,noexec,nodev,mode=1777,size=67108864 shm {d}/shm",
    ]


def _etc_lines(spec: dict) -> list[str]:
    """The engine's generated /etc files (hosts, hostname, resolv.conf), copied into the overlay."""
    lines = []
    for m in spec.get("mounts", []):
        dest = m["destination"]
        if m.get("type") == "bind" and dest.startswith("/etc/"):
            try:
                content = Path(m["source"]).read_text()
            except OSError:
                continue
            lines.append(f"[ -d {ROOT}/etc ] && printf %s {q(content)} > {q(ROOT + dest)}")
    return lines


def _tmpfs_lines(spec: dict) -> list[str]:
    lines = []
    for m in spec.get("mounts", []):
        if m.get("type") == "tmpfs" and m["destination"] not in ("/dev", "/dev/shm"):
            target = q(ROOT + m["destination"])
            opts = ",".join(m.get("options") or ["rw"])
            lines += [f"mkdir -p {target}", f"mount -t tmpfs -o {q(opts)} tmpfs {target}"]
    return lines


def _volume_lines(volumes: list[dict]) -> list[str]:
    """``-v`` volumes, each a virtiofs share tagged ``vol<N>`` (see vm/virtiofs.py)."""
    if not volumes:
        return []
    lines = ["for m in $(cat /modules.volumes); do insmod /lib/modules/$m; done"]
    for n, vol in enumerate(volumes):
        target = q(ROOT + vol["destination"])
        ro = " -o ro" if vol.get("readonly") else ""
        lines += [f"mkdir -p {target}", f"mount -t virtiofs{ro} vol{n} {target}"]
    return lines


def _environment(spec: dict, user: ExecUser) -> list[str]:
    env = list(spec["process"].get("env", []))
    if not any(item.startswith("HOME=") for item in env):
        env.append(f"HOME={user.home}")
    return env


def stage2(spec: dict, layers: list[Path], volumes: list[dict] | None = None) -> str:
    """The whole script; values quoted, so a hostile image config or ``-e`` cannot inject commands."""
    exec_user(spec, layers)  # a bad --user fails here, before anything is started
    cwd = spec["process"].get("cwd") or "/"
    lines = [
        "set -e",
        f"mkdir -p {ROOT}/proc {ROOT}/dev {ROOT}/sys {ROOT}/tmp {q(ROOT + cwd)}",
        f"mount -t proc -o nosuid,noexec,nodev proc {ROOT}/proc",
        f"mount -t sysfs -o ro,nosuid,noexec,nodev sys {ROOT}/sys",
        *_dev_lines(),
        *_etc_lines(spec),
        *_tmpfs_lines(spec),
        *_volume_lines(volumes or []),
        f"hostname {q(spec.get('hostname') or 'localhost')}",
    ]
    if spec.get("root", {}).get("readonly"):
        lines.append(f"mount -o remount,ro {ROOT}")
    return "\n".join(lines) + "\n"


def agent_config(spec: dict, layers: list[Path], program: bytes | None, root: str | None = ROOT) -> bytes:
    """The guest agent's config for ``spec``'s process (``root=None``: an exec into the running
    container)."""
    from hutch.vm import agentconf

    user = exec_user(spec, layers)
    return agentconf.encode(spec, user, _environment(spec, user), program, root)
