"""Building the container's filesystem view inside its new mount namespace, then pivoting into it.

Everything here runs in the container's init process after ``unshare(CLONE_NEWNS)``, so every mount is
private to the container and disappears with its mount namespace: a crash can never leak a mount on the host.
"""

from __future__ import annotations

import os
import stat

from hutch.linux import syscalls as sc
from hutch.runtime.mountopts import parse_mount_options
from hutch.runtime.paths import secure_join
from hutch.runtime.userns import idmapped_clone


class OverlayRoot:
    """An overlayfs root: read-only layer dirs (names relative to ``layers_dir``, top first) and the writable
    per-container upper and work dirs. ``idmap``: in a user namespace, idmap the layers when mounting
    (False when they are already chown-ed copies, see hutch.image.shifted)."""

    __slots__ = ("layers_dir", "lower", "upper", "work", "idmap")

    def __init__(self, layers_dir: str, lower: list[str], upper: str, work: str, idmap: bool = True) -> None:
        self.layers_dir = layers_dir
        self.lower = lower
        self.upper = upper
        self.work = work
        self.idmap = idmap


# (name, type, major, minor): the devices every container gets (OCI runtime spec "Default Devices").
DEFAULT_DEVICES = (
    ("null", stat.S_IFCHR, 1, 3),
    ("zero", stat.S_IFCHR, 1, 5),
    ("full", stat.S_IFCHR, 1, 7),
    ("random", stat.S_IFCHR, 1, 8),
    ("urandom", stat.S_IFCHR, 1, 9),
    ("tty", stat.S_IFCHR, 5, 0),
)
_DEV_SYMLINKS = (
    ("/proc/self/fd", "fd"),
    ("/proc/self/fd/0", "stdin"),
    ("/proc/self/fd/1", "stdout"),
    ("/proc/self/fd/2", "stderr"),
    ("pts/ptmx", "ptmx"),
    ("/proc/kcore", "core"),
)


def mount_root(
    rootfs: str, overlay: OverlayRoot | None, propagation: int, userns_fd: int | None = None
) -> None:
    """Make the host's mounts private to us, then mount the overlay (or bind the bundle dir) at ``rootfs``.

    With ``userns_fd`` each lower layer is an idmapped clone (runtime.userns), named by its fd: the image's
    files appear owned by the container's root, and the layers on disk stay untouched and shared.
    """
    # why: without this, mounts made for the container would propagate back to the host's shared mounts.
    sc.mount(None, "/", None, propagation)
    if overlay is None:
        # pivot_root needs a mount point; a bind of the directory onto itself makes one.
        sc.mount(rootfs, rootfs, None, sc.MS_BIND | sc.MS_REC)
        return
    # why relative lower dirs: the overlay option string is limited to one page, and 64-hex chain IDs under
    # a long root would overflow it after a few dozen layers; chdir makes each entry 64 bytes.
    os.chdir(overlay.layers_dir)
    lower = overlay.lower
    clones: list[int] = []
    if userns_fd is not None and overlay.idmap:
        clones = [idmapped_clone(layer, userns_fd) for layer in lower]
        lower = [f"/proc/self/fd/{fd}" for fd in clones]
    try:
        data = f"lowerdir={':'.join(lower)},upperdir={overlay.upper},workdir={overlay.work}"
        sc.mount("overlay", rootfs, "overlay", 0, data)
    finally:
        for fd in clones:
            os.close(fd)
    os.chdir("/")


class _Pinned:
    """The destination opened with O_PATH|O_NOFOLLOW; mounting on ``/proc/self/fd/N`` mounts on exactly
    that inode.

    why: between resolving a path and mounting on it, anything that can write into the tree (a volume
    shared with another container) could swap a component for a symlink and redirect the mount onto the
    host (CVE-2021-30465, CVE-2025-52565). An fd cannot be swapped.
    """

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
        self.path = f"/proc/self/fd/{self.fd}"

    def __enter__(self) -> str:
        return self.path

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def _prepare_destination(dest: str, source: str | None, is_bind: bool) -> None:
    """Create the mount point: a file for a bind of a file, a directory otherwise."""
    if os.path.lexists(dest):
        return
    if is_bind and source and not os.path.isdir(source):
        os.makedirs(os.path.dirname(dest), mode=0o755, exist_ok=True)
        os.close(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
    else:
        os.makedirs(dest, mode=0o755, exist_ok=True)


def mount_entry(rootfs: str, entry: dict) -> None:
    """One entry of the spec's ``mounts``; binds honour ``ro`` with a remount, as the kernel requires."""
    options = parse_mount_options(entry.get("options", []))
    dest = secure_join(rootfs, entry["destination"])
    source = entry.get("source")
    fstype = entry.get("type")
    if options.is_bind:
        if not os.path.exists(source):
            raise OSError(2, f"bind mount source {source!r} does not exist")
        fstype = None
    _prepare_destination(dest, source, options.is_bind)
    flags = options.flags
    with _Pinned(dest) as target:
        sc.mount(
            source, target, fstype, flags & ~sc.MS_RDONLY if options.is_bind else flags, options.data_string
        )
    # The new mount now sits on dest; pin it again for the follow-up calls, which act on the mount itself.
    if options.is_bind and flags & ~(sc.MS_BIND | sc.MS_REC):
        with _Pinned(dest) as target:
            sc.mount(None, target, None, flags | sc.MS_REMOUNT | sc.MS_BIND)
    for propagation in options.propagation:
        with _Pinned(dest) as target:
            sc.mount(None, target, None, propagation)


def create_default_devices(rootfs: str) -> None:
    """mknod the standard devices into the container's /dev tmpfs, plus the usual symlinks."""
    dev = secure_join(rootfs, "/dev")
    old_umask = os.umask(0)
    try:
        for name, kind, major, minor in DEFAULT_DEVICES:
            path = os.path.join(dev, name)
            if os.path.lexists(path):
                os.unlink(path)
            os.mknod(path, kind | 0o666, os.makedev(major, minor))
    finally:
        os.umask(old_umask)
    for target, name in _DEV_SYMLINKS:
        path = os.path.join(dev, name)
        if not os.path.lexists(path):
            os.symlink(target, path)


def create_spec_devices(rootfs: str, devices: list[dict]) -> None:
    """The spec's ``linux.devices`` (``--device``, or every host device with ``--privileged``): mknod each
    node inside the root with its mode and owner; the cgroup decides what may be opened."""
    old_umask = os.umask(0)
    try:
        for dev in devices:
            # The parent is resolved inside the root; the last component is replaced, never followed.
            parent, name = os.path.split(os.path.normpath(dev["path"]))
            path = os.path.join(secure_join(rootfs, parent), name)
            os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
            if os.path.lexists(path):
                os.unlink(path)
            kind = stat.S_IFCHR if dev["type"] == "c" else stat.S_IFBLK
            os.mknod(path, kind | dev.get("fileMode", 0o666), os.makedev(dev["major"], dev["minor"]))
            os.lchown(path, dev.get("uid", 0), dev.get("gid", 0))
    finally:
        os.umask(old_umask)


def mask_paths(rootfs: str, masked: list[str], readonly: list[str]) -> None:
    """Hide kernel interfaces a container must not reach, and make others read-only.

    why: a masked file gets the host-side /dev/null bind (opened before the container can tamper with its
    own /dev), a masked directory an empty read-only tmpfs; the runc advisories of 2025 (CVE-2025-31133,
    CVE-2025-52565) showed that masking through a path the container controls can be redirected.
    """
    null = os.stat("/dev/null")  # the host's, looked at before anything of the container's is reachable
    for path in masked:
        dest = secure_join(rootfs, path)
        if not os.path.lexists(dest):
            continue
        is_dir = os.path.isdir(dest)
        with _Pinned(dest) as target:
            if is_dir:
                sc.mount("tmpfs", target, "tmpfs", sc.MS_RDONLY, "mode=755")
            else:
                sc.mount("/dev/null", target, None, sc.MS_BIND)
        _verify_mask(dest, is_dir, null)
    for path in readonly:
        dest = secure_join(rootfs, path)
        if not os.path.lexists(dest):
            continue
        with _Pinned(dest) as target:
            sc.mount(target, target, None, sc.MS_BIND | sc.MS_REC)
        flags = sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC
        with _Pinned(dest) as target:
            sc.mount(None, target, None, flags)


def _verify_mask(dest: str, is_dir: bool, null: os.stat_result) -> None:
    """Check the mask took: the file is now the host's /dev/null, the directory an empty read-only fs."""
    st = os.lstat(dest)
    if is_dir:
        ok = stat.S_ISDIR(st.st_mode) and not os.listdir(dest) and os.statvfs(dest).f_flag & os.ST_RDONLY
    else:
        ok = stat.S_ISCHR(st.st_mode) and st.st_rdev == null.st_rdev
    if not ok:
        raise OSError(1, f"masking {dest} did not take effect")


def pivot_into(rootfs: str) -> None:
    """pivot_root into ``rootfs`` and detach the old root, so no host path stays reachable.

    why the ``pivot_root(".", ".")`` form: it needs no put_old directory inside the image (which an image
    could pre-create as a symlink); the old root ends up stacked under the new one and is detached at once.
    """
    old_root = os.open("/", os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
    new_root = os.open(rootfs, os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fchdir(new_root)
        sc.pivot_root(".", ".")
        os.fchdir(old_root)
        # why slave first: detaching a shared old root would propagate the unmount to the host.
        sc.mount(None, ".", None, sc.MS_SLAVE | sc.MS_REC)
        sc.umount2(".", sc.MNT_DETACH)
    finally:
        os.close(old_root)
        os.close(new_root)
    os.chdir("/")


def remount_root_readonly() -> None:
    """``--read-only``: after pivot, the root mount is made read-only (its sub-mounts keep their own mode)."""
    sc.mount(None, "/", None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY)
