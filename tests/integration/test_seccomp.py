"""Seccomp filters really loaded into the kernel, each in a forked child that reports through its exit code.

The child is root with every capability, so whatever it is refused below is refused by the filter alone.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
import socket
import time

import pytest

from hutch.runtime import seccomp
from hutch.runtime.capabilities import DOCKER_DEFAULT

pytestmark = pytest.mark.root

libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNS = 0x00020000
SYS_CLONE3 = {"x86_64": 435, "aarch64": 435}.get(os.uname().machine, 435)
SYS_KEYCTL = seccomp._lib.seccomp_syscall_resolve_name(b"keyctl")
AF_VSOCK = 40
OK = 0


def _in_child(body) -> int:
    """Run ``body()`` in a forked child; its return value is the exit code, an exception is 200 + errno."""
    pid = os.fork()
    if pid == 0:
        code = 255
        try:
            code = body()
        except OSError as err:
            code = 200 + (err.errno or 0) % 50
        except BaseException as err:  # noqa: BLE001 - the child must exit, never return into pytest
            os.write(2, f"child: {err!r}\n".encode())
            code = 254
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def _errno_of(result: int) -> int:
    """0 for success, else the errno of a libc call that returned -1."""
    return 0 if result != -1 else ctypes.get_errno()


def _status_field(name: str) -> str:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return line.split()[1]
    return ""


def _docker_default(caps=DOCKER_DEFAULT) -> dict:
    return seccomp.compile_for(seccomp.default_profile(), list(caps))


@pytest.fixture(params=["libseccomp", "program"])
def loader(request, tmp_path):
    """Both ways the init can install a filter: built by libseccomp in the child, or a program from
    ``prepare`` (compiled and cached by the parent) installed with one syscall."""

    def make(oci: dict):
        if request.param == "libseccomp":
            return lambda: seccomp.load(oci)
        program = seccomp.prepare(oci, str(tmp_path / "cache"))
        return lambda: seccomp.load(oci, program)

    return make


def _check(*steps):
    """A child body that runs ``steps`` in order and exits with the 1-based number of the first that fails."""

    def body() -> int:
        for number, step in enumerate(steps, 1):
            if not step():
                return number
        return OK

    return body


def test_docker_default_refuses_namespaces_vsock_and_clone3(loader, tmp_path):
    load = loader(_docker_default())
    target = tmp_path / "written"

    def write_file() -> bool:
        with open(target, "w") as f:
            f.write("hi")
        return True

    def fork_works() -> bool:  # clone(2) without namespace flags is allowed
        pid = os.fork()
        if pid == 0:
            os._exit(7)
        return os.waitpid(pid, 0)[1] == 7 << 8

    def unix_socket() -> bool:
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).close()
        return True

    steps = (
        lambda: _status_field("Seccomp") == "0",
        lambda: load() is None,
        lambda: _status_field("Seccomp") == "2",
        lambda: _status_field("NoNewPrivs") == "0",  # the filter did not set no_new_privileges
        lambda: _errno_of(libc.unshare(CLONE_NEWNS)) == errno.EPERM,
        lambda: _errno_of(libc.syscall(SYS_CLONE3, None, 0)) == errno.ENOSYS,
        lambda: _errno_of(libc.socket(AF_VSOCK, socket.SOCK_STREAM, 0)) == errno.EPERM,
        lambda: _errno_of(libc.mount(b"none", b"/mnt", b"tmpfs", 0, None)) == errno.EPERM,
        lambda: _errno_of(libc.syscall(SYS_KEYCTL, 0, 0)) == errno.EPERM,  # not in the profile at all
        lambda: _errno_of(libc.personality(0x0040000)) == errno.EPERM,  # ADDR_NO_RANDOMIZE
        lambda: _errno_of(libc.personality(ctypes.c_ulong(0xFFFFFFFF))) == 0,  # querying is allowed
        lambda: os.getpid() > 0 and os.getcwd().startswith("/"),
        write_file,
        lambda: target.read_text() == "hi",
        fork_works,
        unix_socket,
    )
    assert _in_child(_check(*steps)) == OK


def test_sys_admin_allows_namespaces(loader):
    load = loader(_docker_default([*DOCKER_DEFAULT, "CAP_SYS_ADMIN"]))
    steps = (
        lambda: load() is None,
        lambda: _errno_of(libc.unshare(CLONE_NEWNS)) == 0,
        # clone3 reaches the kernel, which refuses a NULL argument
        lambda: _errno_of(libc.syscall(SYS_CLONE3, None, 0)) == errno.EINVAL,
    )
    assert _in_child(_check(*steps)) == OK


def test_unconfined_filters_nothing():
    assert seccomp.profile_from_option("unconfined") is None
    steps = (
        lambda: _status_field("Seccomp") == "0",
        lambda: _errno_of(libc.syscall(SYS_CLONE3, None, 0)) == errno.EINVAL,
        lambda: _errno_of(libc.unshare(CLONE_NEWNS)) == 0,
    )
    assert _in_child(_check(*steps)) == OK


def test_errno_ret_for_getcwd(loader):
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["getcwd"], "action": "SCMP_ACT_ERRNO", "errnoRet": 99}],
    }
    load = loader(seccomp.compile_for(profile, []))

    def getcwd_fails() -> bool:
        try:
            os.getcwd()
        except OSError as err:
            return err.errno == 99
        return False

    assert _in_child(_check(lambda: load() is None, getcwd_fails, lambda: os.getpid() > 0)) == OK


def test_two_conditions_on_one_argument_are_alternatives(loader):
    """runc's rule: libseccomp cannot AND two comparisons of one argument, so each becomes its own rule."""
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {
                "names": ["socket"],
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": 97,
                "args": [
                    {"index": 0, "value": AF_VSOCK, "op": "SCMP_CMP_EQ"},
                    {"index": 0, "value": socket.AF_PACKET, "op": "SCMP_CMP_EQ"},
                ],
            }
        ],
    }
    load = loader(seccomp.compile_for(profile, []))
    steps = (
        lambda: load() is None,
        lambda: _errno_of(libc.socket(AF_VSOCK, socket.SOCK_STREAM, 0)) == 97,
        lambda: _errno_of(libc.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)) == 97,
        lambda: socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).close() is None,
    )
    assert _in_child(_check(*steps)) == OK


def test_kill_process(loader):
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_KILL_PROCESS"}],
    }
    load = loader(seccomp.compile_for(profile, []))
    assert _in_child(_check(lambda: load() is None, lambda: os.getppid() and False)) == -signal.SIGSYS


def test_unknown_names_are_skipped_and_default_action_rules_dropped(loader):
    profile = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [
            {"names": ["no_such_syscall_hutch"], "action": "SCMP_ACT_KILL"},
            {"names": ["getcwd"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},  # same as the default
        ],
    }
    # everything refused but the syscalls needed to leave
    profile["syscalls"].append({"names": ["exit", "exit_group"], "action": "SCMP_ACT_ALLOW"})
    load = loader(seccomp.compile_for(profile, []))
    assert _in_child(lambda: 0 if load() is None else 1) == OK


def test_failures_name_the_cause():
    bad_arch = {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_VAX"], "syscalls": []}
    with pytest.raises(OSError, match="SCMP_ARCH_VAX"):
        seccomp.load(bad_arch)

    # without CAP_SYS_ADMIN and without no_new_privileges the kernel refuses any filter
    oci = _docker_default()
    program = seccomp.compile_program(oci)

    def unprivileged(use_program: bool):
        def body() -> int:
            os.setresuid(65534, 65534, 65534)
            try:
                seccomp.load(oci, program if use_program else None)
            except OSError as err:
                return 0 if err.errno == errno.EACCES and "seccomp" in str(err) else 2
            return 1

        return body

    assert _in_child(unprivileged(False)) == OK
    assert _in_child(unprivileged(True)) == OK

    def with_nnp() -> int:  # ... and accepts it once no_new_privileges is set
        os.setresuid(65534, 65534, 65534)
        libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVILEGES
        seccomp.load(oci, program)
        return OK if _status_field("Seccomp") == "2" else 1

    assert _in_child(with_nnp) == OK


def test_load_cost_of_the_default_profile(tmp_path, capsys):
    """Not a pass/fail budget: prints what installing Docker's profile costs on each container start."""
    oci = _docker_default()
    started = time.perf_counter()
    program = seccomp.prepare(oci, str(tmp_path))
    miss = time.perf_counter() - started
    started = time.perf_counter()
    seccomp.prepare(oci, str(tmp_path))
    hit = time.perf_counter() - started
    read, write = os.pipe()

    def timed(use_program: bool):
        def body() -> int:
            begin = time.perf_counter()
            seccomp.load(oci, program if use_program else None)
            os.write(write, f"{time.perf_counter() - begin:.6f}\n".encode())
            return OK

        return body

    results = {}
    for name, use_program in (("libseccomp", False), ("program", True)):
        runs = []
        for _ in range(5):
            assert _in_child(timed(use_program)) == OK
            runs.append(float(os.read(read, 64)))
        results[name] = sorted(runs)[len(runs) // 2]
    os.close(read)
    os.close(write)
    with capsys.disabled():
        print(
            f"\nseccomp default profile ({len(program) // 8} BPF instructions):"
            f" prepare miss {miss * 1e3:.1f} ms, hit {hit * 1e3:.2f} ms;"
            f" load via libseccomp {results['libseccomp'] * 1e3:.1f} ms,"
            f" load compiled program {results['program'] * 1e3:.2f} ms (medians)"
        )
    assert results["program"] < results["libseccomp"]
