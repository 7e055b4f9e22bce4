"""Seccomp: Docker's default profile, compiled for a container's capabilities, loaded through libseccomp.

Two halves, used in two processes:

- the engine (spec generation) reads a Docker-format profile (``default_profile()`` or a user's file through
  ``profile_from_option``) and resolves it with ``compile_for`` into the OCI runtime-spec ``linux.seccomp``
  form: the syscalls for the container's capabilities and this machine's architectures, nothing left to
  decide. That form is what the spec carries, so the init never parses the profile.
- the container's init calls ``load`` with that form: it builds the filter with libseccomp (the compiler
  runc and crun use) through ctypes and installs it: ~25 ms for Docker's profile on x86_64. Faster: the
  parent calls ``prepare`` before fork (the compiled BPF program, cached on disk by the whole key, ~0.3 ms on
  a hit) and the init calls ``load(oci, program)``, which is one prctl(2): ~1 ms.

Syscalls the profile does not name get its ``defaultAction`` (Docker's: EPERM). Docker's profile itself makes
``clone3`` return ENOSYS so that glibc falls back to ``clone``, whose flags the filter can inspect. runc also
patches the compiled BPF so that syscalls newer than anything the profile names return ENOSYS; hutch does not
do that (see ``data/README.md``).

Every import is at the top and libseccomp is opened at import time: ``load`` runs after pivot_root, when the
host's libraries are out of reach.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os

from hutch.errors import InvalidArgument
from hutch.linux import syscalls as sc

DEFAULT_PROFILE_PATH = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "data", "seccomp-default.json"
)

try:
    _lib: ctypes.CDLL | None = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    _LIB_ERROR = ""
except OSError as _err:  # no libseccomp: hutch still works; only loading a filter fails, naming the cause
    _lib = None
    _LIB_ERROR = str(_err)


class _ArgCmp(ctypes.Structure):
    # struct scmp_arg_cmp { unsigned int arg; enum scmp_compare op; scmp_datum_t datum_a, datum_b; };
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


if _lib is not None:
    _lib.seccomp_init.argtypes = [ctypes.c_uint32]
    _lib.seccomp_init.restype = ctypes.c_void_p
    _lib.seccomp_release.argtypes = [ctypes.c_void_p]
    _lib.seccomp_release.restype = None
    _lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    _lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    _lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
    _lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
    _lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    _lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ArgCmp),
    ]
    _lib.seccomp_load.argtypes = [ctypes.c_void_p]
    _lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    _lib.seccomp_version.restype = ctypes.POINTER(ctypes.c_uint * 3)

# Actions (seccomp.h). ERRNO and TRACE carry a 16-bit value in the low bits.
_ACT_KILL_PROCESS = 0x80000000
_ACT_KILL_THREAD = 0x00000000
_ACT_TRAP = 0x00030000
_ACT_ERRNO = 0x00050000
_ACT_TRACE = 0x7FF00000
_ACT_LOG = 0x7FFC0000
_ACT_ALLOW = 0x7FFF0000
_ACTIONS = {
    "SCMP_ACT_KILL": _ACT_KILL_THREAD,
    "SCMP_ACT_KILL_THREAD": _ACT_KILL_THREAD,
    "SCMP_ACT_KILL_PROCESS": _ACT_KILL_PROCESS,
    "SCMP_ACT_TRAP": _ACT_TRAP,
    "SCMP_ACT_ERRNO": _ACT_ERRNO,
    "SCMP_ACT_TRACE": _ACT_TRACE,
    "SCMP_ACT_LOG": _ACT_LOG,
    "SCMP_ACT_ALLOW": _ACT_ALLOW,
}
# enum scmp_compare
_OPS = {
    "SCMP_CMP_NE": 1,
    "SCMP_CMP_LT": 2,
    "SCMP_CMP_LE": 3,
    "SCMP_CMP_EQ": 4,
    "SCMP_CMP_GE": 5,
    "SCMP_CMP_GT": 6,
    "SCMP_CMP_MASKED_EQ": 7,
}
# enum scmp_filter_attr
_FLTATR_CTL_NNP = 3
_FLTATR_CTL_TSYNC = 4
_FLTATR_CTL_LOG = 6
_FLTATR_CTL_SSB = 7
_FLTATR_CTL_OPTIMIZE = 8
_FLTATR_API_SYSRAWRC = 9
# OCI ``flags`` -> the libseccomp attribute that makes seccomp_load pass that flag to seccomp(2).
_FLAG_ATTRS = {
    "SECCOMP_FILTER_FLAG_TSYNC": _FLTATR_CTL_TSYNC,
    "SECCOMP_FILTER_FLAG_LOG": _FLTATR_CTL_LOG,
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW": _FLTATR_CTL_SSB,
}
_NR_SCMP_ERROR = -1
_MERSENNE_61 = (1 << 61) - 1
# seccomp(2) and prctl(2) for installing a compiled program (linux/seccomp.h, linux/prctl.h)
_FLAG_BITS = {
    "SECCOMP_FILTER_FLAG_TSYNC": 1,
    "SECCOMP_FILTER_FLAG_LOG": 2,
    "SECCOMP_FILTER_FLAG_SPEC_ALLOW": 4,
}
_MAX_ARGS = 6

# Machine -> (the native arch as Docker's profile names it in includes/excludes.arches, its SCMP_ARCH name).
_NATIVE = {
    "x86_64": ("amd64", "SCMP_ARCH_X86_64"),
    "i386": ("x86", "SCMP_ARCH_X86"),
    "i686": ("x86", "SCMP_ARCH_X86"),
    "aarch64": ("arm64", "SCMP_ARCH_AARCH64"),
    "armv7l": ("arm", "SCMP_ARCH_ARM"),
    "armv6l": ("arm", "SCMP_ARCH_ARM"),
    "ppc64le": ("ppc64le", "SCMP_ARCH_PPC64LE"),
    "ppc64": ("ppc64", "SCMP_ARCH_PPC64"),
    "s390x": ("s390x", "SCMP_ARCH_S390X"),
    "riscv64": ("riscv64", "SCMP_ARCH_RISCV64"),
    "mips64": ("mips64", "SCMP_ARCH_MIPS64"),
}

_default_profile: dict | None = None
# the native number of seccomp(2), needed only for a compiled program with flags


# ---------------------------------------------------------------------------------------------------------
# The engine's half: profiles and compiling them for one container.


def default_profile() -> dict:
    """Docker's default profile (moby ``profiles/seccomp/default.json``), parsed once per process.

    Callers must not modify it; ``compile_for`` builds a new dict.
    """
    global _default_profile
    if _default_profile is None:
        _default_profile = _read_profile(DEFAULT_PROFILE_PATH)
    return _default_profile


def profile_from_option(value: str) -> dict | None:
    """``--security-opt seccomp=VALUE``: ``unconfined`` is None (no filter), ``default`` Docker's profile,
    anything else the path of a Docker-format profile (JSON)."""
    if value == "unconfined":
        return None
    if value in ("default", "builtin", ""):
        return default_profile()
    return _read_profile(value)


def _read_profile(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read())
    except FileNotFoundError:
        raise InvalidArgument(f"seccomp profile {path!r}: no such file")
    except OSError as err:
        raise InvalidArgument(f"seccomp profile {path!r}: {err.strerror or err}")
    except ValueError as err:
        raise InvalidArgument(f"seccomp profile {path!r}: not valid JSON: {err}")
    if not isinstance(data, dict):
        raise InvalidArgument(f"seccomp profile {path!r}: expected a JSON object")
    try:
        _check_profile(data)
    except InvalidArgument as err:
        raise InvalidArgument(f"seccomp profile {path!r}: {err}")
    return data


def _check_profile(profile: dict) -> None:
    """The shape checks that make a bad profile an error at ``hutch run`` rather than a failed container."""
    if not isinstance(profile.get("defaultAction"), str):
        raise InvalidArgument("defaultAction is missing")
    _action_value(profile["defaultAction"], profile.get("defaultErrnoRet"))
    if profile.get("archMap") and profile.get("architectures"):
        raise InvalidArgument("use either 'architectures' or 'archMap', not both")
    syscalls = profile.get("syscalls") or []
    if not isinstance(syscalls, list):
        raise InvalidArgument("'syscalls' must be a list")
    for i, rule in enumerate(syscalls):
        if not isinstance(rule, dict):
            raise InvalidArgument(f"syscalls[{i}] must be an object")
        if rule.get("name") and rule.get("names"):
            raise InvalidArgument(f"syscalls[{i}] has both 'name' and 'names'")
        names = rule.get("names") or ([rule["name"]] if rule.get("name") else [])
        if not names or not all(isinstance(n, str) for n in names):
            raise InvalidArgument(f"syscalls[{i}] names no syscall")
        if not isinstance(rule.get("action"), str):
            raise InvalidArgument(f"syscalls[{i}] ({names[0]}) has no action")
        _action_value(rule["action"], _errno_of(rule), names[0])
        for arg in rule.get("args") or []:
            if not isinstance(arg, dict) or arg.get("op") not in _OPS:
                raise InvalidArgument(f"syscalls[{i}] ({names[0]}): bad argument condition {arg!r}")
            index = arg.get("index")
            if not isinstance(index, int) or not 0 <= index < _MAX_ARGS:
                raise InvalidArgument(f"syscalls[{i}] ({names[0]}): argument index {index!r} out of range")
            for key in ("value", "valueTwo"):
                value = arg.get(key, 0)
                if not isinstance(value, int) or not 0 <= value < 1 << 64:
                    raise InvalidArgument(
                        f"syscalls[{i}] ({names[0]}): {key} {value!r} is not a 64-bit number"
                    )


def compile_for(
    profile: dict, capabilities: list[str], *, machine: str | None = None, kernel: str | None = None
) -> dict:
    """The OCI ``linux.seccomp`` for one container, as moby's ``setupSeccomp`` makes it.

    ``capabilities`` is the container's capability set (Docker tests its bounding set; for root in a container
    that equals the effective set): a rule with ``includes.caps`` stays only if every listed capability is
    held, one with ``excludes.caps`` goes if any is held. Likewise ``includes/excludes.arches`` against this
    machine (Docker's names: amd64, arm64, x86, ...) and ``includes.minKernel`` against the running kernel.
    ``archMap`` becomes the native architecture plus its sub-architectures (32-bit x86 and x32 on amd64).
    """
    _check_profile(profile)
    machine = machine or os.uname().machine
    native, scmp_native = _NATIVE.get(machine, (machine, f"SCMP_ARCH_{machine.upper()}"))
    kernel_version = _version(kernel or os.uname().release)
    held = {_cap_name(c) for c in capabilities}

    if profile.get("archMap"):
        architectures = []
        for entry in profile["archMap"]:
            if entry.get("architecture") == scmp_native:
                architectures.append(entry["architecture"])
                architectures.extend(entry.get("subArchitectures") or [])
    else:
        architectures = list(profile.get("architectures") or [])

    syscalls = []
    for rule in profile.get("syscalls") or []:
        includes = rule.get("includes") or {}
        excludes = rule.get("excludes") or {}
        if excludes.get("arches") and native in excludes["arches"]:
            continue
        if includes.get("arches") and native not in includes["arches"]:
            continue
        if excludes.get("caps") and any(_cap_name(c) in held for c in excludes["caps"]):
            continue
        if includes.get("caps") and not all(_cap_name(c) in held for c in includes["caps"]):
            continue
        if includes.get("minKernel") and kernel_version < _version(includes["minKernel"]):
            continue
        names = list(rule.get("names") or [rule["name"]])
        out: dict = {"names": names, "action": rule["action"]}
        errno_ret = _errno_of(rule)
        if errno_ret is not None:
            out["errnoRet"] = errno_ret
        if rule.get("args"):
            out["args"] = [
                {
                    "index": arg["index"],
                    "value": arg.get("value", 0),
                    "valueTwo": arg.get("valueTwo", 0),
                    "op": arg["op"],
                }
                for arg in rule["args"]
            ]
        syscalls.append(out)

    result: dict = {"defaultAction": profile["defaultAction"]}
    if profile.get("defaultErrnoRet") is not None:
        result["defaultErrnoRet"] = profile["defaultErrnoRet"]
    result["architectures"] = architectures
    if profile.get("flags"):
        result["flags"] = list(profile["flags"])
    result["syscalls"] = syscalls
    return result


def _cap_name(name: str) -> str:
    name = name.upper()
    return name if name.startswith("CAP_") else "CAP_" + name


def _version(text: str) -> tuple[int, ...]:
    """Kernel release "6.1.0-18-amd64" -> (6, 1, 0); "4.8" -> (4, 8)."""
    parts = []
    for piece in text.split(".")[:3]:
        digits = ""
        for ch in piece:
            if not ch.isdigit():
                break
            digits += ch
        parts.append(int(digits or 0))
        if len(digits) < len(piece):
            break
    return tuple(parts)


def _errno_of(rule: dict) -> int | None:
    """``errnoRet`` (Docker, OCI); Podman's profiles may name it instead (``"errno": "EPERM"``)."""
    if rule.get("errnoRet") is not None:
        return rule["errnoRet"]
    name = rule.get("errno")
    if isinstance(name, str) and name:
        return getattr(errno, name, None)
    return None


def _action_value(action: str, errno_ret: int | None, where: str = "defaultAction") -> int:
    """The libseccomp action word; ERRNO and TRACE carry errnoRet (EPERM when absent, as runc does)."""
    if action not in _ACTIONS:
        raise InvalidArgument(f"{where}: unsupported seccomp action {action!r}")
    value = _ACTIONS[action]
    if value in (_ACT_ERRNO, _ACT_TRACE):
        number = errno.EPERM if errno_ret is None else errno_ret
        if not isinstance(number, int) or not 0 <= number <= 0xFFFF:
            raise InvalidArgument(f"{where}: errnoRet {number!r} out of range")
        value |= number
    return value


# ---------------------------------------------------------------------------------------------------------
# The init's half: build the filter from the OCI form and install it.


def load(oci_seccomp: dict, program: bytes | None = None) -> None:
    """Install the filter described by the spec's ``linux.seccomp`` on the calling thread.

    With ``program`` (from ``prepare``, made before fork) this is one prctl(2), ~1 ms; without, libseccomp
    builds the filter here, ~25 ms for Docker's profile on x86_64 with its three ABIs.

    The filter is loaded without no_new_privileges (libseccomp would set it by default): the caller either
    still holds CAP_SYS_ADMIN or has set no_new_privileges itself, as the kernel requires one or the other.
    Syscall names this libseccomp does not know are skipped (runc does the same: the kernel most likely does
    not know them either), and so are rules whose action is the default one. Any failure is an OSError
    naming the syscall or step.
    """
    if program is not None:
        load_program(program, oci_seccomp.get("flags") or [])
        return
    ctx = _new_filter(oci_seccomp)
    try:
        _rc(_lib.seccomp_load(ctx), "seccomp_load")
    finally:
        _lib.seccomp_release(ctx)


def compile_program(oci_seccomp: dict) -> bytes:
    """The BPF program libseccomp makes for ``oci_seccomp``: 8-byte ``struct sock_filter`` instructions."""
    ctx = _new_filter(oci_seccomp)
    try:
        fd = os.memfd_create("hutch-seccomp", os.MFD_CLOEXEC)
        try:
            _rc(_lib.seccomp_export_bpf(ctx, fd), "seccomp_export_bpf")
            size = os.lseek(fd, 0, os.SEEK_END)
            return os.pread(fd, size, 0)
        finally:
            os.close(fd)
    finally:
        _lib.seccomp_release(ctx)


def prepare(oci_seccomp: dict, cache_dir: str | None = None) -> bytes:
    """The compiled program for ``oci_seccomp``, for ``load(oci_seccomp, program)`` in the init.

    Compiling takes ~20 ms and its result depends only on the filter, the libseccomp version and the kernel
    (libseccomp probes which actions it supports), so with ``cache_dir`` the program is kept there in a file
    that also holds that whole key: a file whose key differs is a miss and is replaced. Call it in the
    parent, before fork: the init then needs no file and no compile after pivot_root.
    """
    if cache_dir is None:
        return compile_program(oci_seccomp)
    key = json.dumps(
        [_library_version(), os.uname().release, os.uname().machine, oci_seccomp],
        sort_keys=True,
        separators=(",", ":"),
    ).encode()
    # a cheap name (hashlib would cost ~9 ms to import); the key inside the file decides
    path = os.path.join(cache_dir, f"{int.from_bytes(key, 'little') % _MERSENNE_61:016x}.bpf")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        data = b""
    head, sep, program = data.partition(b"\n")
    if sep and head == key and program and len(program) % 8 == 0:
        return program
    program = compile_program(oci_seccomp)
    try:
        os.makedirs(cache_dir, mode=0o700, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(key + b"\n" + program)
        os.replace(tmp, path)
    except OSError:
        pass  # a cache that cannot be written only costs the compile next time
    return program


def load_program(program: bytes, flags: list[str] | tuple = ()) -> None:
    """Install a program from ``compile_program``/``prepare`` (the kernel call lives in ``hutch.linux``).

    Needs CAP_SYS_ADMIN or no_new_privileges, like ``load``."""
    if not program or len(program) % 8 or len(program) // 8 > 4096:
        raise OSError(errno.EINVAL, f"seccomp: not a BPF program ({len(program)} bytes)")
    bits = 0
    for flag in flags:
        if flag not in _FLAG_BITS:
            raise OSError(errno.EINVAL, f"seccomp: unsupported flag {flag!r}")
        bits |= _FLAG_BITS[flag]
    sc.seccomp_set_filter(program, bits)


def _library_version() -> str:
    if _lib is None:
        return ""
    version = _lib.seccomp_version().contents
    return f"{version[0]}.{version[1]}.{version[2]}"


def _new_filter(oci_seccomp: dict) -> int:
    """A libseccomp context with every rule of ``oci_seccomp`` added; the caller releases it."""
    if _lib is None:
        raise OSError(errno.ENOSYS, f"seccomp: cannot open libseccomp.so.2: {_LIB_ERROR}")
    try:
        default = _action_value(oci_seccomp["defaultAction"], oci_seccomp.get("defaultErrnoRet"))
    except (InvalidArgument, KeyError) as err:
        raise OSError(errno.EINVAL, f"seccomp: bad defaultAction: {err}")
    ctx = _lib.seccomp_init(default)
    if not ctx:
        raise OSError(errno.EINVAL, f"seccomp_init({oci_seccomp['defaultAction']}) failed")
    try:
        _build(ctx, oci_seccomp, default)
    except BaseException:
        _lib.seccomp_release(ctx)
        raise
    return ctx


def _build(ctx: int, oci: dict, default: int) -> None:
    lib = _lib
    assert lib is not None
    # seccomp_load must not set no_new_privileges: hutch sets it only when asked (--security-opt).
    _rc(lib.seccomp_attr_set(ctx, _FLTATR_CTL_NNP, 0), "seccomp_attr_set(CTL_NNP, 0)")
    # the kernel's own errno from seccomp_load rather than libseccomp's blanket ECANCELED
    _rc(lib.seccomp_attr_set(ctx, _FLTATR_API_SYSRAWRC, 1), "seccomp_attr_set(API_SYSRAWRC, 1)")
    # a binary tree of syscall numbers rather than a linear list: more instructions, but the kernel installs
    # it twice as fast (its per-syscall action cache emulates the filter for every number) and walks less
    # of it per syscall. libseccomp before 2.5 lacks the attribute: the linear filter is as correct.
    lib.seccomp_attr_set(ctx, _FLTATR_CTL_OPTIMIZE, 2)
    for flag in oci.get("flags") or []:
        if flag not in _FLAG_ATTRS:
            raise OSError(errno.EINVAL, f"seccomp: unsupported flag {flag!r}")
        _rc(lib.seccomp_attr_set(ctx, _FLAG_ATTRS[flag], 1), f"seccomp_attr_set({flag})")
    for arch in oci.get("architectures") or []:
        token = lib.seccomp_arch_resolve_name(arch.removeprefix("SCMP_ARCH_").lower().encode())
        if token == 0:
            raise OSError(errno.EINVAL, f"seccomp: unknown architecture {arch!r}")
        rc = lib.seccomp_arch_add(ctx, token)
        if rc != -errno.EEXIST:  # the native arch is already in
            _rc(rc, f"seccomp_arch_add({arch})")

    resolve = lib.seccomp_syscall_resolve_name
    add = lib.seccomp_rule_add_array
    no_args = ctypes.POINTER(_ArgCmp)()
    for rule in oci.get("syscalls") or []:
        name0 = rule["names"][0] if rule.get("names") else "?"
        try:
            action = _action_value(rule["action"], rule.get("errnoRet"), name0)
        except InvalidArgument as err:
            raise OSError(errno.EINVAL, f"seccomp: {err}")
        if action == default:
            continue  # libseccomp refuses a rule that repeats the default action (EACCES); it changes nothing
        conditions = _conditions(rule.get("args") or [], name0)
        for name in rule["names"]:
            nr = resolve(name.encode())
            if nr == _NR_SCMP_ERROR:
                continue
            if not conditions:
                _rc(add(ctx, action, nr, 0, no_args), f"seccomp rule {rule['action']} for {name}")
            else:
                for array, count in conditions:
                    _rc(
                        add(ctx, action, nr, count, array),
                        f"seccomp rule {rule['action']} for {name}{_fmt(rule)}",
                    )


def _conditions(args: list[dict], name: str) -> list[tuple[ctypes.Array, int]]:
    """The argument arrays to add for one rule: all conditions together (libseccomp ANDs them), or, when one
    argument is compared more than once, one rule per condition (runc's rule: libseccomp cannot AND two
    comparisons of the same argument)."""
    if not args:
        return []
    cmps = []
    for arg in args:
        op = _OPS.get(arg.get("op"))
        index = arg.get("index")
        values = (arg.get("value", 0), arg.get("valueTwo", 0))
        if (
            op is None
            or not isinstance(index, int)
            or not 0 <= index < _MAX_ARGS
            or not all(isinstance(v, int) and 0 <= v < 1 << 64 for v in values)
        ):
            raise OSError(errno.EINVAL, f"seccomp: bad argument condition for {name}: {arg!r}")
        cmps.append(_ArgCmp(index, op, *values))
    indexes = [c.arg for c in cmps]
    if len(set(indexes)) == len(indexes):
        return [((_ArgCmp * len(cmps))(*cmps), len(cmps))]
    return [((_ArgCmp * 1)(c), 1) for c in cmps]


def _fmt(rule: dict) -> str:
    return " if " + " and ".join(
        f"arg{a['index']} {a['op'].removeprefix('SCMP_CMP_')} {a.get('value', 0)}"
        for a in rule.get("args", [])
    )


def _rc(rc: int, what: str) -> None:
    if rc < 0:
        raise OSError(-rc, f"{what}: {os.strerror(-rc)}")
