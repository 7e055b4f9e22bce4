"""What this host supports, for ``hutch info``: each fact probed, not assumed.

A user deciding between ``--isolation container`` and ``vm``, or wondering why a flag fails, needs to know
what the kernel offers; each probe is cheap and read-only.
"""

from __future__ import annotations

import ctypes.util
import os


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def seccomp() -> dict:
    """Kernel support (the Seccomp line of /proc/self/status exists) and the libseccomp library."""
    kernel = any(line.startswith("Seccomp:") for line in _read("/proc/self/status").splitlines())
    library = ctypes.util.find_library("seccomp")
    version = ""
    if library:
        try:
            lib = ctypes.CDLL(library)
            lib.seccomp_version.restype = ctypes.POINTER(ctypes.c_uint * 3)
            major, minor, micro = lib.seccomp_version().contents
            version = f"{major}.{minor}.{micro}"
        except (OSError, AttributeError):
            version = "unknown"
    return {"kernel": kernel, "libseccomp": version or None}


def user_namespaces() -> dict:
    """Whether unprivileged user namespaces are possible and whether /etc/subuid grants ranges."""
    max_ns = _read("/proc/sys/user/max_user_namespaces")
    return {
        "available": bool(max_ns) and max_ns != "0",
        "max": int(max_ns or 0),
        "subuid": os.path.exists("/etc/subuid"),
    }


def idmapped_mounts(path: str) -> bool:
    """Whether user-namespaced containers get idmapped layers here (else chown-ed copies)."""
    from hutch.runtime.userns import idmap_supported

    return idmap_supported(path)


def kvm() -> dict:
    """/dev/kvm exists and can be opened read-write (whether a given guest kernel runs is probed later)."""
    present = os.path.exists("/dev/kvm")
    usable = False
    if present:
        try:
            os.close(os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC))
            usable = True
        except OSError:
            pass
    return {"present": present, "usable": usable}


def cgroups() -> dict:
    """The cgroup version hutch will use and, on v1, whether a cgroup2 mount sits beside it (hybrid)."""
    from hutch.cgroups import detect

    version = detect()
    hybrid = version == "v1" and os.path.exists("/sys/fs/cgroup/unified/cgroup.controllers")
    return {"version": version, "hybrid": hybrid, "driver": "cgroupfs"}


def overlayfs() -> bool:
    return any(line.split()[-1] == "overlay" for line in _read("/proc/filesystems").splitlines() if line)


def _os_name() -> str:
    for line in _read("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip('"')
    return "unknown"


def _memory_bytes() -> int:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return 0


def host() -> dict:
    """Everything ``hutch info`` prints about the machine."""
    uname = os.uname()
    return {
        "KernelVersion": uname.release,
        "OperatingSystem": _os_name(),
        "Architecture": uname.machine,
        "NCPU": os.cpu_count() or 0,
        "MemTotal": _memory_bytes(),
        "Overlayfs": overlayfs(),
        "Cgroups": cgroups(),
        "Seccomp": seccomp(),
        "UserNamespaces": user_namespaces(),
        "KVM": kvm(),
    }
