"""The container's configuration as a shell script for the guest's init (stage 2).

The guest has busybox and nothing else, and parsing JSON in ash is no fun; so the host, which has the OCI
spec, writes the whole set-up as a plain script with every value single-quoted, and the guest runs it as
pid 1 of a fresh pid, mount, uts and ipc namespace. The script mounts the container's /proc, /dev and
/sys into the overlay root, writes the /etc files, sets the hostname, and finally execs the command via
busybox ``nsenter -r -w -S -G``: chroot, working directory and numeric user in one exec, so nothing of
the initramfs is visible to the command.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from hutch.runtime.users import ExecUser, resolve_user

ROOT = "/newroot"
B = "/bin/busybox"
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
    d = f"{ROOT}/dev"
    lines = [f"$B mount -t tmpfs -o nosuid,mode=755,size=65536k dev {d}"]
    for name, major, minor in _DEVICES:
        lines.append(f"$B mknod -m 666 {d}/{name} c {major} {minor}")
    lines += [
        f"$B mkdir -p {d}/pts {d}/shm {d}/mqueue",
        f"$B mount -t devpts -o nosuid,noexec,newinstance,ptmxmode=0666,mode=0620 devpts {d}/pts",
        f"$B ln -s pts/ptmx {d}/ptmx",
        f"$B mount -t tmpfs -o nosuid,noexec,nodev,mode=1777,size=67108864 shm {d}/shm",
        f"$B ln -s /proc/self/fd {d}/fd",
    ]
    for n, name in enumerate(("stdin", "stdout", "stderr")):
        lines.append(f"$B ln -s /proc/self/fd/{n} {d}/{name}")
    return lines


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
            lines += [f"$B mkdir -p {target}", f"$B mount -t tmpfs -o {q(opts)} tmpfs {target}"]
    return lines


def _environment(spec: dict, user: ExecUser) -> list[str]:
    env = list(spec["process"].get("env", []))
    if not any(item.startswith("HOME=") for item in env):
        env.append(f"HOME={user.home}")
    return env


def stage2(spec: dict, layers: list[Path]) -> str:
    """The whole script; values quoted, so a hostile image config or ``-e`` cannot inject commands."""
    proc = spec["process"]
    user = exec_user(spec, layers)
    cwd = proc.get("cwd") or "/"
    lines = [
        "set -e",
        f"B={B}",
        f"$B mkdir -p {ROOT}/proc {ROOT}/dev {ROOT}/sys {ROOT}/tmp {q(ROOT + cwd)}",
        f"$B mount -t proc -o nosuid,noexec,nodev proc {ROOT}/proc",
        f"$B mount -t sysfs -o ro,nosuid,noexec,nodev sys {ROOT}/sys",
        *_dev_lines(),
        *_etc_lines(spec),
        *_tmpfs_lines(spec),
        f"$B hostname {q(spec.get('hostname') or 'localhost')}",
    ]
    if spec.get("root", {}).get("readonly"):
        lines.append(f"$B mount -o remount,ro {ROOT}")
    ids = f"-S {user.uid} -G {user.gid} " if user.uid or user.gid else ""
    env = " ".join(q(item) for item in _environment(spec, user))
    args = " ".join(q(a) for a in proc["args"])
    lines.append(f"exec $B env -i {env} $B nsenter -r{ROOT} -w{q(ROOT + cwd)} {ids}-F -- {args}")
    return "\n".join(lines) + "\n"
