"""Device access control: rules, Docker's defaults, ``--device`` parsing, and the cgroup v2 BPF filter.

A container may open only the devices its rules allow. cgroup v1 enforces the rules in the ``devices``
controller (``devices.deny``/``devices.allow``); cgroup v2 has no devices controller and instead runs a
``BPF_PROG_TYPE_CGROUP_DEVICE`` program attached to the container's cgroup on every open and mknod of a
device node. Both backends take the same rule list and apply it with the same meaning, that of runc:

* a list is read in order as writes to a v1 devices cgroup that starts out denying everything
  (``DeviceFilter``, a port of runc's ``devices.Emulator``): an ``a`` rule resets to deny-all or
  allow-all, other rules add or remove exceptions, and removing part of a wildcard exception (which v1
  would silently ignore) is an error;
* the result -- a default and a sorted set of exceptions -- is written to v1 as ``a`` followed by the
  exceptions, or compiled for v2 into the very instructions runc's ``devicefilter.go`` emits
  (``compile_filter``), so ``bpftool prog dump xlated`` of a hutch container reads like a runc one.

Only pure Python here (no ctypes): the syscalls that load and attach the program are in
``hutch.cgroups.bpf``, imported only by the v2 backend when it sets devices.
"""

from __future__ import annotations

import os
import stat
import struct

from hutch.errors import InvalidArgument

__all__ = [
    "DOCKER_DEFAULT_RULES",
    "DeviceFilter",
    "DeviceRule",
    "assemble",
    "compile_filter",
    "container_rules",
    "parse_device_option",
    "parse_rule",
]

_ACCESS_BITS = {"m": 1, "r": 2, "w": 4}  # BPF_DEVCG_ACC_MKNOD, _READ, _WRITE (linux/bpf.h)
_TYPE_BITS = {"b": 1, "c": 2}  # BPF_DEVCG_DEV_BLOCK, _CHAR
_ALL = 7  # rwm
_U32 = 0xFFFFFFFF


def _access_bits(access: str) -> int:
    bits = 0
    for ch in access:
        bits |= _ACCESS_BITS[ch]
    return bits


def _access_str(bits: int) -> str:
    return "".join(ch for ch in "rwm" if bits & _ACCESS_BITS[ch])


class DeviceRule:
    """One devices-cgroup rule: allow or deny ``access`` (a subset of ``rwm``) to matching devices.

    ``type`` is ``c`` (char), ``b`` (block) or ``a`` (all devices, any numbers: the rule resets the
    default instead of adding an exception). ``major``/``minor`` of ``None`` match any number (``*``).
    ``access`` is kept in canonical ``rwm`` order.
    """

    __slots__ = ("allow", "type", "major", "minor", "access")

    def __init__(
        self, allow: bool, type: str, major: int | None = None, minor: int | None = None, access: str = "rwm"
    ) -> None:
        if type not in ("a", "b", "c"):
            raise InvalidArgument(f"invalid device type {type!r}: expected 'a', 'b' or 'c'")
        if type == "a" and (major is not None or minor is not None):
            raise InvalidArgument("a device rule of type 'a' matches every device: it takes no major:minor")
        for what, n in (("major", major), ("minor", minor)):
            if n is not None and (not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= _U32):
                raise InvalidArgument(f"invalid device {what} number {n!r}")
        if not access or any(ch not in _ACCESS_BITS for ch in access) or len(set(access)) != len(access):
            raise InvalidArgument(f"invalid device access {access!r}: expected a combination of r, w and m")
        self.allow = bool(allow)
        self.type = type
        self.major = major
        self.minor = minor
        self.access = _access_str(_access_bits(access))

    def cgroup_string(self) -> str:
        """The rule as cgroup v1's devices.allow/devices.deny take it: ``c 1:3 rwm``, ``c 136:* rwm``."""
        major = "*" if self.major is None else self.major
        minor = "*" if self.minor is None else self.minor
        return f"{self.type} {major}:{minor} {self.access}"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DeviceRule) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"DeviceRule({self.allow!r}, {self.type!r}, {self.major!r}, {self.minor!r}, {self.access!r})"

    def _key(self) -> tuple[bool, str, int | None, int | None, str]:
        return (self.allow, self.type, self.major, self.minor, self.access)


def parse_rule(text: str, allow: bool = True) -> DeviceRule:
    """A rule from the v1 syntax ``TYPE MAJOR:MINOR ACCESS`` (Docker's ``--device-cgroup-rule``).

    ``a`` alone (or ``a *:* rwm``) is the every-device rule; ``*`` is a wildcard number.
    """
    fields = text.split()
    if fields == ["a"]:
        return DeviceRule(allow, "a")
    if len(fields) != 3 or ":" not in fields[1]:
        raise InvalidArgument(f"invalid device rule {text!r}: expected 'TYPE MAJOR:MINOR ACCESS' (c 1:3 rwm)")
    kind, numbers, access = fields
    major_text, _, minor_text = numbers.partition(":")
    try:
        major = None if major_text == "*" else int(major_text, 10)
        minor = None if minor_text == "*" else int(minor_text, 10)
    except ValueError:
        raise InvalidArgument(f"invalid device rule {text!r}: major and minor are numbers or '*'")
    if kind == "a":
        if major is not None or minor is not None:
            raise InvalidArgument(f"invalid device rule {text!r}: type 'a' takes '*:*'")
        return DeviceRule(allow, "a", access=access)
    return DeviceRule(allow, kind, major, minor, access)


def _allow(kind: str, major: int | None, minor: int | None, access: str = "rwm") -> DeviceRule:
    return DeviceRule(True, kind, major, minor, access)


#: What ``docker run`` gives a container that is not ``--privileged``: moby's default spec (deny all;
#: null, zero, full, random, urandom, tty and console; deny fuse, a no-op here) with runc's
#: ``specconv.AllowedDevices`` appended (mknod of any node, /dev/pts/*, ptmx, and /dev/net/tun, which
#: runc keeps for compatibility). Not allowed: kmsg (1:11), mem (1:1), ttyN (4:*), any block device...
DOCKER_DEFAULT_RULES: tuple[DeviceRule, ...] = (
    DeviceRule(False, "a"),
    _allow("c", None, None, "m"),  # mknod of any char device (opening it is another matter)
    _allow("b", None, None, "m"),  # and of any block device
    _allow("c", 1, 3),  # /dev/null
    _allow("c", 1, 5),  # /dev/zero
    _allow("c", 1, 7),  # /dev/full
    _allow("c", 1, 8),  # /dev/random
    _allow("c", 1, 9),  # /dev/urandom
    _allow("c", 5, 0),  # /dev/tty
    _allow("c", 5, 1),  # /dev/console
    _allow("c", 5, 2),  # /dev/ptmx
    _allow("c", 136, None),  # /dev/pts/*
    _allow("c", 10, 200),  # /dev/net/tun
)

#: ``--privileged``: every device.
PRIVILEGED_RULES: tuple[DeviceRule, ...] = (DeviceRule(True, "a"),)


def container_rules(
    extra: list[DeviceRule] | tuple[DeviceRule, ...] = (), privileged: bool = False
) -> list[DeviceRule]:
    """The rules for a container: Docker's defaults (or allow-all when privileged), then ``extra``.

    ``extra`` is what ``--device`` and ``--device-cgroup-rule`` add, in order.
    """
    return [*(PRIVILEGED_RULES if privileged else DOCKER_DEFAULT_RULES), *extra]


# --- --device HOST[:CONTAINER][:rwm] ----------------------------------------------------------------------


def _valid_mode(text: str) -> bool:
    return bool(text) and all(ch in _ACCESS_BITS for ch in text) and len(set(text)) == len(text)


def parse_device_option(text: str) -> tuple[str, str, DeviceRule]:
    """``--device HOST[:CONTAINER][:PERMISSIONS]`` -> (host path, container path, the rule allowing it).

    Read as Docker reads it: a second field that is a valid mode (``r``, ``rw``, ``rwm``...) is the mode
    and the container path defaults to the host path; the mode defaults to ``rwm``. The host path is
    stat'ed (following symlinks, as Docker does) for the device's type and numbers. Unlike Docker, a
    directory (all devices below it) is refused.
    """
    parts = text.split(":")
    if len(parts) > 3 or not parts[0]:
        raise InvalidArgument(f"invalid --device {text!r}: expected HOST[:CONTAINER][:PERMISSIONS]")
    host, container, mode = parts[0], "", "rwm"
    if len(parts) == 3:
        container, mode = parts[1], parts[2]
        if not _valid_mode(mode):
            raise InvalidArgument(f"invalid --device {text!r}: bad mode {mode!r} (a combination of r, w, m)")
    elif len(parts) == 2:
        if _valid_mode(parts[1]):
            mode = parts[1]
        else:
            container = parts[1]
    container = container or host
    for path in (host, container):
        if not path.startswith("/"):
            raise InvalidArgument(f"invalid --device {text!r}: {path} is not an absolute path")
    container = os.path.normpath(container)
    try:
        st = os.stat(host)
    except OSError as e:
        raise InvalidArgument(f"invalid --device {text!r}: {host}: {e.strerror}") from e
    if stat.S_ISCHR(st.st_mode):
        kind = "c"
    elif stat.S_ISBLK(st.st_mode):
        kind = "b"
    else:
        what = "a directory" if stat.S_ISDIR(st.st_mode) else "not a character or block device"
        raise InvalidArgument(f"invalid --device {text!r}: {host} is not a device ({what})")
    rule = DeviceRule(True, kind, os.major(st.st_rdev), os.minor(st.st_rdev), mode)
    return host, container, rule


# --- the emulator: a rule list -> (default, exceptions) ---------------------------------------------------


class DeviceFilter:
    """The state of a v1 devices cgroup after a sequence of rule writes, starting from deny-all.

    A port of runc's ``devices.Emulator``: ``default_allow`` plus exceptions keyed by (type, major,
    minor) with their access bits. Allow-list mode (``default_allow`` False) is what containers use.
    """

    __slots__ = ("default_allow", "exceptions")

    def __init__(self, rules: list[DeviceRule] | tuple[DeviceRule, ...] = ()) -> None:
        self.default_allow = False
        self.exceptions: dict[tuple[str, int | None, int | None], int] = {}
        for rule in rules:
            self.apply(rule)

    def apply(self, rule: DeviceRule) -> None:
        """One write to devices.allow (``rule.allow``) or devices.deny."""
        if rule.type == "a":
            self.default_allow = rule.allow
            self.exceptions = {}
        elif rule.allow == self.default_allow:
            self._remove(rule)  # allowing in allow-all mode (or denying in deny-all) removes exceptions
        else:
            key = (rule.type, rule.major, rule.minor)
            self.exceptions[key] = self.exceptions.get(key, 0) | _access_bits(rule.access)

    def _remove(self, rule: DeviceRule) -> None:
        key = (rule.type, rule.major, rule.minor)
        bits = _access_bits(rule.access)
        # why: v1 removes only an exception with exactly these numbers. Taking 1:3 out of an exception
        # for 1:* is silently ignored by the kernel, so the rule would not do what it says: refuse it.
        kind = rule.type
        for partial in ((kind, None, rule.minor), (kind, rule.major, None), (kind, None, None)):
            if partial != key and self.exceptions.get(partial, 0) & bits:
                have = DeviceRule(not rule.allow, *partial, _access_str(self.exceptions[partial]))
                raise InvalidArgument(
                    f"device rule {rule.cgroup_string()!r} cannot take access out of the wider rule "
                    f"{have.cgroup_string()!r} (cgroup v1 would ignore it)"
                )
        left = self.exceptions.get(key, 0) & ~bits
        if left:
            self.exceptions[key] = left
        else:
            self.exceptions.pop(key, None)

    def rules(self) -> list[DeviceRule]:
        """The minimal equivalent list: the ``a`` rule, then the exceptions by (major, minor, type)."""
        keys = sorted(
            self.exceptions,
            key=lambda k: (-1 if k[1] is None else k[1], -1 if k[2] is None else k[2], k[0]),
        )
        verdict = not self.default_allow
        rules = [DeviceRule(self.default_allow, "a")]
        rules += (DeviceRule(verdict, *k, _access_str(self.exceptions[k])) for k in keys)
        return rules


# --- the eBPF program -------------------------------------------------------------------------------------

# Opcodes (linux/bpf_common.h, linux/bpf.h): class | op | source.
LDXW = 0x61  # BPF_LDX | BPF_MEM | BPF_W: dst = *(u32 *)(src + off)
AND32_K = 0x54  # BPF_ALU | BPF_AND | BPF_K: dst = (u32)dst & imm
RSH32_K = 0x74  # BPF_ALU | BPF_RSH | BPF_K: dst = (u32)dst >> imm
MOV32_X = 0xBC  # BPF_ALU | BPF_MOV | BPF_X: dst = (u32)src
MOV32_K = 0xB4  # BPF_ALU | BPF_MOV | BPF_K: dst = (u32)imm
JNE_K = 0x55  # BPF_JMP | BPF_JNE | BPF_K: if dst != imm goto pc + 1 + off
JNE_X = 0x5D  # BPF_JMP | BPF_JNE | BPF_X: if dst != src goto pc + 1 + off
EXIT = 0x95  # BPF_JMP | BPF_EXIT: return r0

#: An instruction: (opcode, dst register, src register, offset, immediate).
Insn = tuple[int, int, int, int, int]

#: Registers from struct bpf_cgroup_dev_ctx (r1): r2 = type, r3 = access, r4 = major, r5 = minor.
_PROLOGUE: tuple[Insn, ...] = (
    (LDXW, 2, 1, 0, 0),  # r2 = ctx->access_type
    (AND32_K, 2, 0, 0, 0xFFFF),  # r2 &= 0xffff: BPF_DEVCG_DEV_* (low half)
    (LDXW, 3, 1, 0, 0),  # r3 = ctx->access_type
    (RSH32_K, 3, 0, 0, 16),  # r3 >>= 16: BPF_DEVCG_ACC_* (high half)
    (LDXW, 4, 1, 4, 0),  # r4 = ctx->major
    (LDXW, 5, 1, 8, 0),  # r5 = ctx->minor
)


def _imm(n: int) -> int:
    """A u32 device number as the signed 32-bit immediate (runc's ``int32(rule.Major)``)."""
    return n - (1 << 32) if n >= 1 << 31 else n


def compile_filter(rules: list[DeviceRule] | tuple[DeviceRule, ...]) -> list[Insn]:
    """The BPF_PROG_TYPE_CGROUP_DEVICE program for ``rules``: returns 1 to allow an access, 0 to deny.

    Instruction for instruction what runc's ``devicefilter.DeviceFilter`` emits: a prologue loading the
    context, then one block per exception of the emulated rule set -- ``if type != T goto next; [if
    (access & A) != access goto next;] [if major != M goto next;] [if minor != N goto next;] return
    verdict`` (the access test is left out for ``rwm``, the number tests for ``*``) -- then ``return
    default``. With an empty list everything is denied.
    """
    state = DeviceFilter(rules)
    blocks: list[list[tuple[int, int, int, int | None, int]]] = []  # off None: jump to the next block
    for rule in state.rules()[1:]:
        block: list[tuple[int, int, int, int | None, int]] = [(JNE_K, 2, 0, None, _TYPE_BITS[rule.type])]
        access = _access_bits(rule.access)
        if access != _ALL:
            block += [(MOV32_X, 1, 3, 0, 0), (AND32_K, 1, 0, 0, access), (JNE_X, 1, 3, None, 0)]
        if rule.major is not None:
            block.append((JNE_K, 4, 0, None, _imm(rule.major)))
        if rule.minor is not None:
            block.append((JNE_K, 5, 0, None, _imm(rule.minor)))
        block += [(MOV32_K, 0, 0, 0, int(rule.allow)), (EXIT, 0, 0, 0, 0)]
        blocks.append(block)
    program: list[Insn] = list(_PROLOGUE)
    for block in blocks:
        end = len(program) + len(block)  # the next block starts here
        for code, dst, src, off, imm in block:
            program.append((code, dst, src, end - len(program) - 1 if off is None else off, imm))
    program += [(MOV32_K, 0, 0, 0, int(state.default_allow)), (EXIT, 0, 0, 0, 0)]
    return program


_INSN = struct.Struct("<BBhi")  # struct bpf_insn: code, dst_reg:4 | src_reg:4, off, imm


def assemble(program: list[Insn]) -> bytes:
    """The program as the kernel takes it: 8 bytes per ``struct bpf_insn`` (little-endian host)."""
    pack = _INSN.pack
    return b"".join(pack(code, dst | src << 4, off, imm) for code, dst, src, off, imm in program)
