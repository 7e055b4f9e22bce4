"""The bpf(2) calls that put a device filter on a cgroup v2 directory, through ctypes.

Python has no binding for bpf(2), so ``union bpf_attr`` is declared here with ``ctypes`` -- only the
members of the commands used: PROG_LOAD, PROG_ATTACH/DETACH, PROG_QUERY and PROG_GET_FD_BY_ID -- and the
syscall is made through libc's ``syscall()``. The union is padded to 128 bytes and zeroed for every call:
the kernel requires unused fields to be zero, and PROG_QUERY writes results back past the fields it reads
(``revision`` at offset 56 on 6.x kernels), which must land inside our buffer.

Imported only by the v2 backend when it sets devices; ctypes is already loaded on the ``hutch run`` path.
"""

from __future__ import annotations

import ctypes
import os

# Commands, program and attach types, flags (linux/bpf.h).
BPF_PROG_LOAD = 5
BPF_PROG_ATTACH = 8
BPF_PROG_DETACH = 9
BPF_PROG_GET_FD_BY_ID = 13
BPF_PROG_QUERY = 16
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6
BPF_F_ALLOW_MULTI = 2

_COMMANDS = {
    BPF_PROG_LOAD: "BPF_PROG_LOAD",
    BPF_PROG_ATTACH: "BPF_PROG_ATTACH",
    BPF_PROG_DETACH: "BPF_PROG_DETACH",
    BPF_PROG_GET_FD_BY_ID: "BPF_PROG_GET_FD_BY_ID",
    BPF_PROG_QUERY: "BPF_PROG_QUERY",
}

#: The program's license: device filters call no GPL-only helper, so any string does; runc uses this.
LICENSE = b"Apache"
#: Shown by ``bpftool prog`` (at most 15 characters of [A-Za-z0-9_.]).
PROG_NAME = b"hutch_devices"
#: Verifier log buffer, used only to explain a failed load.
LOG_SIZE = 1 << 16

_NR_BPF = {"x86_64": 321, "aarch64": 280}.get(os.uname().machine)

_u32 = ctypes.c_uint32
_u64 = ctypes.c_uint64  # __aligned_u64: ctypes aligns c_uint64 to 8 on x86_64 and aarch64


class _ProgLoad(ctypes.Structure):
    _fields_ = [
        ("prog_type", _u32),
        ("insn_cnt", _u32),
        ("insns", _u64),
        ("license", _u64),
        ("log_level", _u32),
        ("log_size", _u32),
        ("log_buf", _u64),
        ("kern_version", _u32),
        ("prog_flags", _u32),
        ("prog_name", ctypes.c_char * 16),
        ("prog_ifindex", _u32),
        ("expected_attach_type", _u32),
    ]


class _Attach(ctypes.Structure):  # BPF_PROG_ATTACH and BPF_PROG_DETACH
    _fields_ = [
        ("target_fd", _u32),
        ("attach_bpf_fd", _u32),
        ("attach_type", _u32),
        ("attach_flags", _u32),
        ("replace_bpf_fd", _u32),
    ]


class _Query(ctypes.Structure):
    _fields_ = [
        ("target_fd", _u32),
        ("attach_type", _u32),
        ("query_flags", _u32),
        ("attach_flags", _u32),
        ("prog_ids", _u64),
        ("prog_cnt", _u32),
        ("_pad", _u32),
        ("prog_attach_flags", _u64),
        ("link_ids", _u64),
        ("link_attach_flags", _u64),
        ("revision", _u64),
    ]


class _GetFdById(ctypes.Structure):
    _fields_ = [("prog_id", _u32), ("next_id", _u32), ("open_flags", _u32)]


class BpfAttr(ctypes.Union):
    """``union bpf_attr``, for the commands above."""

    _fields_ = [
        ("prog_load", _ProgLoad),
        ("attach", _Attach),
        ("query", _Query),
        ("get_fd_by_id", _GetFdById),
        ("_size", ctypes.c_char * 128),
    ]


_syscall = None


def _bpf(cmd: int, attr: BpfAttr, target: str) -> int:
    """bpf(cmd, &attr, sizeof attr); ``OSError`` naming the command and ``target`` on failure."""
    global _syscall
    if _syscall is None:
        if _NR_BPF is None:
            raise OSError(0, f"bpf(2) is not supported by hutch on {os.uname().machine}")
        fn = ctypes.CDLL(None, use_errno=True).syscall
        fn.restype = ctypes.c_long
        fn.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_ulong]
        _syscall = fn
    result = _syscall(_NR_BPF, cmd, ctypes.addressof(attr), ctypes.sizeof(attr))
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bpf({_COMMANDS.get(cmd, cmd)}) for {target}: {os.strerror(err)}")
    return result


def load_device_filter(program: bytes, target: str) -> int:
    """Load a BPF_PROG_TYPE_CGROUP_DEVICE program; returns its fd (close-on-exec).

    The first try passes no log buffer (the verifier is faster without one); if the load fails it is
    repeated with one, and the error carries the verifier's log.
    """
    insns = ctypes.create_string_buffer(program, len(program))
    license = ctypes.create_string_buffer(LICENSE)
    attr = BpfAttr()
    load = attr.prog_load
    load.prog_type = BPF_PROG_TYPE_CGROUP_DEVICE
    load.insn_cnt = len(program) // 8
    load.insns = ctypes.addressof(insns)
    load.license = ctypes.addressof(license)
    load.prog_name = PROG_NAME
    try:
        return _bpf(BPF_PROG_LOAD, attr, target)
    except OSError as first:
        log = ctypes.create_string_buffer(LOG_SIZE)
        load.log_level = 1
        load.log_size = LOG_SIZE
        load.log_buf = ctypes.addressof(log)
        try:
            return _bpf(BPF_PROG_LOAD, attr, target)
        except OSError as e:
            text = log.value.decode(errors="replace").strip()
            raise OSError(e.errno, f"{e.strerror}; verifier log:\n{text or '(empty)'}") from first


def attached_programs(dirfd: int, target: str) -> list[int]:
    """IDs of the device programs attached directly to the cgroup open at ``dirfd``."""
    attr = BpfAttr()
    attr.query.target_fd = dirfd
    attr.query.attach_type = BPF_CGROUP_DEVICE
    _bpf(BPF_PROG_QUERY, attr, target)  # with no buffer: only the count
    count = attr.query.prog_cnt
    if not count:
        return []
    ids = (_u32 * count)()
    attr = BpfAttr()
    attr.query.target_fd = dirfd
    attr.query.attach_type = BPF_CGROUP_DEVICE
    attr.query.prog_ids = ctypes.addressof(ids)
    attr.query.prog_cnt = count
    _bpf(BPF_PROG_QUERY, attr, target)
    return list(ids[: attr.query.prog_cnt])


def _attach(cmd: int, dirfd: int, progfd: int, flags: int, target: str) -> None:
    attr = BpfAttr()
    attr.attach.target_fd = dirfd
    attr.attach.attach_bpf_fd = progfd
    attr.attach.attach_type = BPF_CGROUP_DEVICE
    attr.attach.attach_flags = flags
    _bpf(cmd, attr, target)


def _detach_id(dirfd: int, prog_id: int, target: str) -> None:
    attr = BpfAttr()
    attr.get_fd_by_id.prog_id = prog_id
    try:
        progfd = _bpf(BPF_PROG_GET_FD_BY_ID, attr, target)
    except FileNotFoundError:
        return  # detached and freed meanwhile
    try:
        _attach(BPF_PROG_DETACH, dirfd, progfd, 0, target)
    except FileNotFoundError:
        pass  # detached meanwhile
    finally:
        os.close(progfd)


def set_device_filter(directory: str, program: bytes) -> None:
    """Make ``program`` (assembled instructions) the device filter of the cgroup v2 ``directory``.

    Attached with BPF_F_ALLOW_MULTI, as runc does: the filters of parent cgroups keep applying (an access
    needs every one to allow it), and a parent's own multi filter does not block ours. Filters this
    cgroup had before are detached after the new one is attached, so there is no moment with none. The
    attachment holds a reference to the program: every fd is closed before returning.
    """
    dirfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        old = attached_programs(dirfd, directory)
        progfd = load_device_filter(program, directory)
        try:
            _attach(BPF_PROG_ATTACH, dirfd, progfd, BPF_F_ALLOW_MULTI, directory)
        finally:
            os.close(progfd)
        for prog_id in old:
            _detach_id(dirfd, prog_id, directory)
    finally:
        os.close(dirfd)
