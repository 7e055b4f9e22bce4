"""User namespaces for containers (``--userns=auto``, ``--userns-remap``): container root is an
unprivileged host uid.

The namespace is made before the container's init, by a short-lived holder process, so that the init can
use it twice: first to idmap the image's layers (their files, owned by host root on disk, appear owned by
the container's root), then to join it once every mount is in place. The mount, pid, uts, ipc and net
namespaces stay owned by the host's user namespace: the container's root has no capability over them, so
it cannot mount, and /proc is mounted by the init while it is still host root.
"""

from __future__ import annotations

import os

from hutch.linux import syscalls as sc


def make_userns(uid_mappings: list[dict], gid_mappings: list[dict]) -> int:
    """A new user namespace with these mappings, as an O_CLOEXEC fd (it lives as long as the fd)."""
    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    release_r, release_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(ready_r)
            os.close(release_w)
            sc.unshare(sc.CLONE_NEWUSER)
            os.write(ready_w, b"1")
            os.read(release_r, 1)  # until the parent has the namespace
        except BaseException:  # noqa: BLE001 - the parent sees EOF and reports
            code = 1
        os._exit(code)
    os.close(ready_w)
    os.close(release_r)
    try:
        if os.read(ready_r, 1) != b"1":
            raise OSError("creating a user namespace failed (is user.max_user_namespaces 0?)")
        _write_map(f"/proc/{pid}/uid_map", uid_mappings)
        _write_map(f"/proc/{pid}/gid_map", gid_mappings)
        return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(ready_r)
        os.close(release_w)
        os.waitpid(pid, 0)


def _write_map(path: str, mappings: list[dict]) -> None:
    text = "".join(f"{m['containerID']} {m['hostID']} {m['size']}\n" for m in mappings)
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def idmapped_clone(path: str, userns_fd: int) -> int:
    """A detached, idmapped copy of the mount at ``path``: what was owned by host uid 0 appears owned by
    the namespace's root. Usable as an overlay layer through /proc/self/fd/N."""
    try:
        fd = sc.open_tree(path, sc.OPEN_TREE_CLONE | os.O_CLOEXEC)
    except OSError as err:
        raise OSError(
            err.errno, f"user namespaces need idmapped mounts (Linux 5.12 or later): {err}"
        ) from None
    try:
        sc.mount_setattr_idmap(fd, userns_fd)
    except OSError as err:
        os.close(fd)
        raise OSError(
            err.errno, f"the filesystem of {path} cannot be idmapped for a user namespace: {err}"
        ) from None
    return fd


def host_id(mappings: list[dict], container_id: int = 0) -> int:
    """The host id that ``container_id`` maps to (-1 when it is not mapped)."""
    for m in mappings:
        if m["containerID"] <= container_id < m["containerID"] + m["size"]:
            return m["hostID"] + container_id - m["containerID"]
    return -1


def idmap_supported(path: str) -> bool:
    """Whether the filesystem under ``path`` can be idmapped here: a real attempt with a throwaway
    namespace (the kernel version alone does not say, support is per filesystem)."""
    try:
        userns_fd = make_userns(
            [{"containerID": 0, "hostID": 1 << 30, "size": 1}],
            [{"containerID": 0, "hostID": 1 << 30, "size": 1}],
        )
    except OSError:
        return False
    try:
        os.close(idmapped_clone(path, userns_fd))
        return True
    except OSError:
        return False
    finally:
        os.close(userns_fd)
