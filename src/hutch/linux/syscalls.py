"""Thin ctypes wrappers of the Linux calls Python 3.11's ``os`` module lacks.

Each wrapper raises ``OSError`` carrying errno and a message that names the call and its arguments, so a
failed mount deep in container set-up reads as ``mount('overlay', '/x/merged', 'overlay', 0x0, ...):
No such file or directory`` rather than a bare errno.
"""

from __future__ import annotations

import ctypes
import os

_libc = ctypes.CDLL(None, use_errno=True)

# Namespace flags (linux/sched.h).
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# mount(2) flags (linux/mount.h).
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_SYNCHRONOUS = 0x10
MS_REMOUNT = 0x20
MS_MANDLOCK = 0x40
MS_DIRSYNC = 0x80
MS_NOSYMFOLLOW = 0x100
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_MOVE = 0x2000
MS_REC = 0x4000
MS_SILENT = 0x8000
MS_UNBINDABLE = 1 << 17
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MS_LAZYTIME = 1 << 25

MNT_FORCE = 1
MNT_DETACH = 2

# prctl(2) options (linux/prctl.h).
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_KEEPCAPS = 8
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVILEGES = 38
PR_SET_THP_DISABLE = 41
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

_SYSCALLS = {
    "x86_64": {
        "pivot_root": 155,
        "capget": 125,
        "capset": 126,
        "seccomp": 317,
        "open_tree": 428,
        "mount_setattr": 442,
    },
    "aarch64": {
        "pivot_root": 41,
        "capget": 90,
        "capset": 91,
        "seccomp": 277,
        "open_tree": 428,
        "mount_setattr": 442,
    },
}[os.uname().machine]  # not platform.machine(): the platform module costs ~5 ms


def _check(result: int, call: str) -> int:
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, f"{call}: {os.strerror(err)}")
    return result


def _b(value: str | os.PathLike | None) -> bytes | None:
    return None if value is None else os.fsencode(value)


def mount(
    source: str | None, target: str | os.PathLike, fstype: str | None, flags: int = 0, data: str | None = None
) -> None:
    """mount(2)."""
    result = _libc.mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data))
    _check(result, f"mount({source!r}, {os.fspath(target)!r}, {fstype!r}, {flags:#x}, {data!r})")


def umount2(target: str | os.PathLike, flags: int = 0) -> None:
    """umount2(2)."""
    _check(_libc.umount2(_b(target), flags), f"umount2({os.fspath(target)!r}, {flags:#x})")


def pivot_root(new_root: str | os.PathLike, put_old: str | os.PathLike) -> None:
    """pivot_root(2): glibc has no wrapper, so this goes through syscall(2)."""
    result = _libc.syscall(_SYSCALLS["pivot_root"], _b(new_root), _b(put_old))
    _check(result, f"pivot_root({os.fspath(new_root)!r}, {os.fspath(put_old)!r})")


def unshare(flags: int) -> None:
    """unshare(2): os.unshare only arrives in Python 3.12."""
    _check(_libc.unshare(flags), f"unshare({flags:#x})")


def setns(fd: int, nstype: int = 0) -> None:
    """setns(2)."""
    _check(_libc.setns(fd, nstype), f"setns({fd}, {nstype:#x})")


def sethostname(name: str) -> None:
    """sethostname(2) in the caller's UTS namespace."""
    raw = name.encode()
    _check(_libc.sethostname(raw, len(raw)), f"sethostname({name!r})")


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    """prctl(2) with integer arguments."""
    args = [ctypes.c_ulong(a) for a in (arg2, arg3, arg4, arg5)]
    return _check(_libc.prctl(option, *args), f"prctl({option}, {arg2}, {arg3})")


class _CapHeader(ctypes.Structure):
    # struct __user_cap_header_struct { __u32 version; int pid; };
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    # struct __user_cap_data_struct { __u32 effective, permitted, inheritable; };
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def capset(effective: int, permitted: int, inheritable: int) -> None:
    """capset(2) for the calling thread; each set is a 64-bit mask split into the kernel's two words."""
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in range(2):
        shift = 32 * i
        data[i].effective = (effective >> shift) & 0xFFFFFFFF
        data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    result = _libc.syscall(_SYSCALLS["capset"], ctypes.byref(header), data)
    _check(result, f"capset(eff={effective:#x}, prm={permitted:#x}, inh={inheritable:#x})")


PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_SET_MODE_FILTER = 1


class _SockFprog(ctypes.Structure):
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; };
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def seccomp_set_filter(program: bytes, flags: int = 0) -> None:
    """Install a classic-BPF seccomp program: prctl(PR_SET_SECCOMP) without flags, seccomp(2) with them."""
    buf = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.addressof(buf))
    if flags:
        result = _libc.syscall(
            _SYSCALLS["seccomp"],
            ctypes.c_ulong(SECCOMP_SET_MODE_FILTER),
            ctypes.c_ulong(flags),
            ctypes.byref(fprog),
        )
    else:
        result = _libc.prctl(
            PR_SET_SECCOMP,
            ctypes.c_ulong(SECCOMP_MODE_FILTER),
            ctypes.byref(fprog),
            ctypes.c_ulong(0),
            ctypes.c_ulong(0),
        )
    _check(result, f"seccomp(SET_MODE_FILTER, flags={flags:#x}, {len(program) // 8} instructions)")


AF_INET = 2
SOCK_DGRAM = 2
SOCK_CLOEXEC = 0o2000000


def socket(domain: int, kind: int, protocol: int = 0) -> int:
    """socket(2) returning a bare fd: enough for an ioctl, without importing the socket module."""
    return _check(_libc.socket(domain, kind, protocol), f"socket({domain}, {kind:#x}, {protocol})")


def last_cap() -> int:
    """Highest capability number the running kernel knows."""
    with open("/proc/sys/kernel/cap_last_cap") as f:
        return int(f.read())


# New mount API (linux/mount.h).
OPEN_TREE_CLONE = 1
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000
MOUNT_ATTR_IDMAP = 0x00100000


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def open_tree(path: str | os.PathLike, flags: int, dirfd: int = -100) -> int:
    """open_tree(2): with OPEN_TREE_CLONE, a detached copy of the mount at ``path`` as an fd."""
    result = _libc.syscall(_SYSCALLS["open_tree"], dirfd, _b(path), flags)
    return _check(result, f"open_tree({os.fspath(path)!r}, {flags:#x})")


def mount_setattr_idmap(fd: int, userns_fd: int) -> None:
    """mount_setattr(2) on a detached mount: make it idmapped through the user namespace ``userns_fd``."""
    attr = _MountAttr(MOUNT_ATTR_IDMAP, 0, 0, userns_fd)
    result = _libc.syscall(
        _SYSCALLS["mount_setattr"], fd, b"", AT_EMPTY_PATH, ctypes.byref(attr), ctypes.sizeof(attr)
    )
    _check(result, f"mount_setattr({fd}, MOUNT_ATTR_IDMAP)")


# inotify(7) (sys/inotify.h): IN_CLOSE_WRITE is the end of a write, e.g. an in-place rewrite's close.
IN_CLOSE_WRITE = 0x8


def inotify_watch(path: str | os.PathLike, mask: int) -> int:
    """A new non-blocking, close-on-exec inotify fd watching ``path`` for ``mask``."""
    fd = _check(_libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC), "inotify_init1")
    try:
        _check(_libc.inotify_add_watch(fd, _b(path), ctypes.c_uint32(mask)), f"inotify_add_watch({path!r})")
    except OSError:
        os.close(fd)
        raise
    return fd
