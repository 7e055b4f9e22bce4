"""Docker's default seccomp profile and its compilation into the OCI form (no filter is loaded here)."""

from __future__ import annotations

import json
import os
import struct

import pytest

from hutch.errors import InvalidArgument
from hutch.runtime import seccomp
from hutch.runtime.capabilities import DOCKER_DEFAULT

NAMESPACE_MASK = 0x7E020000  # CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET


def _compile(caps=DOCKER_DEFAULT, machine="x86_64", kernel="6.1.0-18-amd64", profile=None) -> dict:
    return seccomp.compile_for(
        profile or seccomp.default_profile(), list(caps), machine=machine, kernel=kernel
    )


def _rules(oci: dict, name: str) -> list[dict]:
    return [rule for rule in oci["syscalls"] if name in rule["names"]]


def _allowed_plainly(oci: dict) -> set[str]:
    return {
        name
        for rule in oci["syscalls"]
        if rule["action"] == "SCMP_ACT_ALLOW" and not rule.get("args")
        for name in rule["names"]
    }


def test_default_profile_is_dockers_shape_and_cached():
    profile = seccomp.default_profile()
    assert profile is seccomp.default_profile()
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
    assert profile["defaultErrnoRet"] == 1
    first = profile["syscalls"][0]
    assert first["action"] == "SCMP_ACT_ALLOW" and len(first["names"]) > 300
    assert {"read", "write", "execve", "getpid", "close_range", "statx"} <= set(first["names"])
    # never in the unconditional list: these need a capability or are refused outright
    for name in ("mount", "unshare", "setns", "clone", "clone3", "ptrace", "keyctl", "bpf", "reboot"):
        assert name not in first["names"], name


def test_every_name_is_known_to_libseccomp():
    """A typo in the profile would be skipped silently at load time, so catch it here."""
    resolve = seccomp._lib.seccomp_syscall_resolve_name
    names = {n for rule in seccomp.default_profile()["syscalls"] for n in rule["names"]}
    assert [n for n in sorted(names) if resolve(n.encode()) == -1] == []
    assert resolve(b"no_such_syscall") == -1


def test_default_caps_on_x86_64():
    oci = _compile()
    assert oci["defaultAction"] == "SCMP_ACT_ERRNO" and oci["defaultErrnoRet"] == 1
    assert oci["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    allowed = _allowed_plainly(oci)
    assert {"arch_prctl", "modify_ldt", "ptrace", "process_vm_readv", "chroot"} <= allowed
    for name in ("mount", "unshare", "setns", "sethostname", "reboot", "init_module", "acct", "kcmp",
                 "iopl", "settimeofday", "vhangup", "mbind", "syslog", "bpf", "perf_event_open",
                 "open_by_handle_at", "set_tls", "s390_runtime_instr", "riscv_flush_icache"):  # fmt: skip
        assert name not in allowed, name
    json.dumps(oci)  # plain data, ready for config.json


def test_clone_is_allowed_only_without_namespace_flags():
    oci = _compile()
    (clone,) = _rules(oci, "clone")
    assert clone["action"] == "SCMP_ACT_ALLOW"
    assert clone["args"] == [{"index": 0, "value": NAMESPACE_MASK, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]
    (clone3,) = _rules(oci, "clone3")
    assert clone3 == {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}


def test_s390_compares_the_second_clone_argument():
    oci = _compile(machine="s390x")
    assert oci["architectures"] == ["SCMP_ARCH_S390X", "SCMP_ARCH_S390"]
    (clone,) = _rules(oci, "clone")
    assert clone["args"][0]["index"] == 1
    assert "s390_runtime_instr" in _allowed_plainly(oci)


def test_sys_admin_enables_what_docker_enables():
    oci = _compile(caps=[*DOCKER_DEFAULT, "CAP_SYS_ADMIN"])
    allowed = _allowed_plainly(oci)
    assert {
        "mount",
        "umount2",
        "unshare",
        "setns",
        "clone",
        "clone3",
        "sethostname",
        "bpf",
        "syslog",
    } <= allowed
    assert all(not rule.get("args") for rule in _rules(oci, "clone"))
    assert all(rule["action"] == "SCMP_ACT_ALLOW" for rule in _rules(oci, "clone3"))


@pytest.mark.parametrize(
    ("cap", "names"),
    [
        ("SYS_PTRACE", {"kcmp", "pidfd_getfd", "process_madvise"}),
        ("SYS_MODULE", {"init_module", "finit_module", "delete_module"}),
        ("SYS_RAWIO", {"iopl", "ioperm"}),
        ("SYS_TIME", {"settimeofday", "clock_settime"}),
        ("SYS_NICE", {"mbind", "set_mempolicy", "get_mempolicy"}),
        ("SYS_PACCT", {"acct"}),
        ("SYS_BOOT", {"reboot"}),
        ("SYS_TTY_CONFIG", {"vhangup"}),
        ("SYSLOG", {"syslog"}),
        ("DAC_READ_SEARCH", {"open_by_handle_at"}),
        ("BPF", {"bpf"}),
        ("PERFMON", {"perf_event_open"}),
    ],
)
def test_capability_gated_syscalls(cap, names):
    assert not names & _allowed_plainly(_compile())
    # either spelling of the capability, any case
    assert names <= _allowed_plainly(_compile(caps=[*DOCKER_DEFAULT, cap.lower()]))
    assert names <= _allowed_plainly(_compile(caps=[*DOCKER_DEFAULT, f"CAP_{cap}"]))


def test_dropping_chroot_removes_chroot():
    caps = [c for c in DOCKER_DEFAULT if c != "CAP_SYS_CHROOT"]
    assert "chroot" not in _allowed_plainly(_compile(caps=caps))


def test_includes_need_every_cap_and_excludes_any():
    profile = {
        "defaultAction": "SCMP_ACT_ERRNO",
        "syscalls": [
            {"names": ["a"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_X", "CAP_Y"]}},
            {"names": ["b"], "action": "SCMP_ACT_ALLOW", "excludes": {"caps": ["CAP_X", "CAP_Z"]}},
        ],
    }
    names = lambda caps: [r["names"][0] for r in _compile(caps=caps, profile=profile)["syscalls"]]  # noqa: E731
    assert names([]) == ["b"]
    assert names(["CAP_X"]) == []
    assert names(["CAP_X", "CAP_Y"]) == ["a"]
    assert names(["CAP_Y"]) == ["b"]
    assert names(["CAP_Z"]) == []


def test_min_kernel():
    assert "ptrace" in _allowed_plainly(_compile(kernel="4.8.0"))
    assert "ptrace" not in _allowed_plainly(_compile(kernel="4.4.0-210-generic"))
    assert "ptrace" in _allowed_plainly(_compile(caps=["SYS_PTRACE"], kernel="4.4.0"))


def test_arm64():
    oci = _compile(machine="aarch64")
    assert oci["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    allowed = _allowed_plainly(oci)
    assert {"set_tls", "cacheflush", "arm_fadvise64_64"} <= allowed
    assert "arch_prctl" not in allowed and "modify_ldt" not in allowed


def test_personality_values():
    oci = _compile()
    values = sorted(rule["args"][0]["value"] for rule in _rules(oci, "personality"))
    assert values == [0, 8, 0x20000, 0x20008, 0xFFFFFFFF]
    (sock,) = _rules(oci, "socket")
    assert sock["args"] == [{"index": 0, "value": 40, "valueTwo": 0, "op": "SCMP_CMP_NE"}]


def test_user_profile_forms():
    """Older Docker profiles: ``name`` instead of ``names``, ``architectures`` instead of ``archMap``;
    Podman's: ``errno`` by name."""
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "flags": ["SECCOMP_FILTER_FLAG_LOG"],
        "syscalls": [
            {"name": "getcwd", "action": "SCMP_ACT_ERRNO", "errnoRet": 99},
            {"names": ["chdir"], "action": "SCMP_ACT_ERRNO", "errno": "EACCES"},
        ],
    }
    oci = _compile(profile=profile)
    assert oci == {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "flags": ["SECCOMP_FILTER_FLAG_LOG"],
        "syscalls": [
            {"names": ["getcwd"], "action": "SCMP_ACT_ERRNO", "errnoRet": 99},
            {"names": ["chdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
        ],
    }


@pytest.mark.parametrize(
    ("profile", "message"),
    [
        ({"syscalls": []}, "defaultAction"),
        ({"defaultAction": "SCMP_ACT_NOPE"}, "SCMP_ACT_NOPE"),
        ({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"]}]}, "read"),
        (
            {
                "defaultAction": "SCMP_ACT_ERRNO",
                "syscalls": [
                    {"names": ["x"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 7, "op": "SCMP_CMP_EQ"}]}
                ],
            },
            "index",
        ),  # fmt: skip
        (
            {
                "defaultAction": "SCMP_ACT_ERRNO",
                "syscalls": [
                    {
                        "names": ["x"],
                        "action": "SCMP_ACT_ALLOW",
                        "args": [{"index": 0, "op": "SCMP_CMP_LIKE"}],
                    }
                ],
            },
            "SCMP_CMP_LIKE",
        ),  # fmt: skip
        ({"defaultAction": "SCMP_ACT_ERRNO", "archMap": [{}], "architectures": ["SCMP_ARCH_X86"]}, "archMap"),
        ({"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 70000}, "70000"),
    ],
)
def test_bad_profiles(profile, message):
    with pytest.raises(InvalidArgument, match=message):
        seccomp.compile_for(profile, [])


def test_profile_from_option(tmp_path):
    assert seccomp.profile_from_option("unconfined") is None
    assert seccomp.profile_from_option("default") is seccomp.default_profile()
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"defaultAction": "SCMP_ACT_LOG", "syscalls": []}))
    assert seccomp.profile_from_option(str(good))["defaultAction"] == "SCMP_ACT_LOG"

    missing = tmp_path / "missing.json"
    with pytest.raises(InvalidArgument, match="missing.json.*no such file"):
        seccomp.profile_from_option(str(missing))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InvalidArgument, match="bad.json.*not valid JSON"):
        seccomp.profile_from_option(str(bad))
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"]}]}))
    with pytest.raises(InvalidArgument, match="wrong.json.*read.*no action"):
        seccomp.profile_from_option(str(wrong))
    with pytest.raises(InvalidArgument, match="expected a JSON object"):
        (tmp_path / "list.json").write_text("[]")
        seccomp.profile_from_option(str(tmp_path / "list.json"))


def test_compile_program_is_bpf():
    program = seccomp.compile_program(_compile(machine=os.uname().machine))
    assert len(program) % 8 == 0 and 100 < len(program) // 8 <= 4096
    # first instruction: load the architecture word of struct seccomp_data (BPF_LD|BPF_W|BPF_ABS, k=4)
    code, _jt, _jf, k = struct.unpack("=HBBI", program[:8])
    assert (code, k) == (0x20, 4)


def test_prepare_caches_by_whole_key(tmp_path, monkeypatch):
    oci = _compile()
    first = seccomp.prepare(oci, str(tmp_path))
    (cached,) = tmp_path.iterdir()
    monkeypatch.setattr(seccomp, "compile_program", lambda _oci: pytest.fail("compiled again"))
    assert seccomp.prepare(oci, str(tmp_path)) == first
    monkeypatch.undo()

    other = dict(oci, defaultErrnoRet=13)
    assert seccomp.prepare(other, str(tmp_path)) != first
    assert len(list(tmp_path.iterdir())) == 2

    cached.write_bytes(cached.read_bytes()[:-3])  # torn or damaged: recompiled, not loaded
    assert seccomp.prepare(oci, str(tmp_path)) == first
    assert seccomp.prepare(oci, None) == first
