"""Device rules as pure logic: ``--device`` parsing, the v1 rule syntax, the emulated rule set, and the
BPF device filter, instruction by instruction, against hand-written programs (runc's test programs among
them)."""

import os
import stat

import pytest

from hutch.cgroups.devices import (
    AND32_K,
    DOCKER_DEFAULT_RULES,
    EXIT,
    JNE_K,
    JNE_X,
    LDXW,
    MOV32_K,
    MOV32_X,
    PRIVILEGED_RULES,
    RSH32_K,
    DeviceFilter,
    DeviceRule,
    assemble,
    compile_filter,
    container_rules,
    parse_device_option,
    parse_rule,
)
from hutch.errors import HutchError, InvalidArgument

# --- rules and their v1 syntax ----------------------------------------------------------------------------


def test_cgroup_string_uses_star_for_wildcards():
    assert DeviceRule(True, "c", 1, 3, "rwm").cgroup_string() == "c 1:3 rwm"
    assert DeviceRule(True, "c", 136, None).cgroup_string() == "c 136:* rwm"
    assert DeviceRule(True, "b", None, None, "m").cgroup_string() == "b *:* m"
    assert DeviceRule(False, "a").cgroup_string() == "a *:* rwm"


def test_access_is_kept_in_canonical_order():
    assert DeviceRule(True, "c", 1, 3, "mwr").access == "rwm"
    assert DeviceRule(True, "c", 1, 3, "mr") == DeviceRule(True, "c", 1, 3, "rm")
    assert len({DeviceRule(True, "c", 1, 3, "mr"), DeviceRule(True, "c", 1, 3, "rm")}) == 1


@pytest.mark.parametrize(
    "args",
    [
        (True, "x", 1, 3, "rwm"),  # unknown type
        (True, "p", 1, 3, "rwm"),  # a FIFO has no cgroup rule
        (True, "a", 1, None, "rwm"),  # 'a' takes no numbers
        (True, "c", -1, 3, "rwm"),
        (True, "c", 1, 1 << 32, "rwm"),
        (True, "c", 1, 3, ""),
        (True, "c", 1, 3, "rx"),
        (True, "c", 1, 3, "rr"),
    ],
)
def test_invalid_rules_are_refused(args):
    with pytest.raises(InvalidArgument):
        DeviceRule(*args)


def test_parse_rule_reads_the_v1_syntax():
    assert parse_rule("c 1:3 rwm") == DeviceRule(True, "c", 1, 3, "rwm")
    assert parse_rule("c 42:* rm") == DeviceRule(True, "c", 42, None, "rm")
    assert parse_rule("b *:* m", allow=False) == DeviceRule(False, "b", None, None, "m")
    assert parse_rule("a") == DeviceRule(True, "a")
    assert parse_rule("a *:* rwm", allow=False) == DeviceRule(False, "a")


@pytest.mark.parametrize("text", ["", "c 1 rwm", "c 1:3", "c x:3 rwm", "c 1:3 rwx", "a 1:3 rwm", "q 1:3 r"])
def test_parse_rule_refuses_bad_text(text):
    with pytest.raises(InvalidArgument):
        parse_rule(text)


def test_docker_defaults_are_runc_allowed_devices_plus_mobys_console():
    lines = [r.cgroup_string() for r in DOCKER_DEFAULT_RULES]
    assert lines[0] == "a *:* rwm" and not DOCKER_DEFAULT_RULES[0].allow
    assert all(r.allow for r in DOCKER_DEFAULT_RULES[1:])
    assert set(lines[1:]) == {
        *("c *:* m", "b *:* m", "c 1:3 rwm", "c 1:5 rwm", "c 1:7 rwm", "c 1:8 rwm", "c 1:9 rwm"),
        *("c 5:0 rwm", "c 5:1 rwm", "c 5:2 rwm", "c 136:* rwm", "c 10:200 rwm"),
    }


def test_container_rules_append_extra_rules():
    extra = DeviceRule(True, "c", 10, 237)
    assert container_rules([extra]) == [*DOCKER_DEFAULT_RULES, extra]
    assert container_rules([extra], privileged=True) == [*PRIVILEGED_RULES, extra]


# --- --device ---------------------------------------------------------------------------------------------


def test_device_option_host_path_only():
    assert parse_device_option("/dev/null") == ("/dev/null", "/dev/null", DeviceRule(True, "c", 1, 3, "rwm"))


def test_device_option_with_container_path_and_mode():
    assert parse_device_option("/dev/null:/dev/mynull") == (
        "/dev/null",
        "/dev/mynull",
        DeviceRule(True, "c", 1, 3, "rwm"),
    )
    assert parse_device_option("/dev/zero:/dev/z:r") == (
        "/dev/zero",
        "/dev/z",
        DeviceRule(True, "c", 1, 5, "r"),
    )


def test_device_option_second_field_that_is_a_mode_is_the_mode():
    # Docker's reading: /dev/null:rw is the mode rw, not a container path "rw".
    assert parse_device_option("/dev/null:rw") == (
        "/dev/null",
        "/dev/null",
        DeviceRule(True, "c", 1, 3, "rw"),
    )
    assert parse_device_option("/dev/null:m")[2].access == "m"


def test_device_option_cleans_the_container_path():
    assert parse_device_option("/dev/null:/dev//x/../n")[1] == "/dev/n"


def test_device_option_follows_symlinks(tmp_path):
    (tmp_path / "link").symlink_to("/dev/null")
    host, container, rule = parse_device_option(f"{tmp_path}/link:/dev/n")
    assert (host, container, rule) == (f"{tmp_path}/link", "/dev/n", DeviceRule(True, "c", 1, 3))


def test_device_option_block_device(monkeypatch):
    real_stat = os.stat

    def fake_stat(path, *args, **kwargs):
        if path == "/dev/fakeblk":
            return os.stat_result((stat.S_IFBLK | 0o660, 0, 0, 1, 0, 0, 0, 0, 0, 0))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", fake_stat)
    monkeypatch.setattr(os, "major", lambda dev: 8)
    monkeypatch.setattr(os, "minor", lambda dev: 16)
    assert parse_device_option("/dev/fakeblk:/dev/xvda:rw")[2] == DeviceRule(True, "b", 8, 16, "rw")


def test_device_option_missing_host_path_is_named(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(InvalidArgument, match=f"{missing}: No such file or directory"):
        parse_device_option(str(missing))


def test_device_option_regular_file_is_not_a_device(tmp_path):
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(InvalidArgument, match=f"{path} is not a device"):
        parse_device_option(str(path))


def test_device_option_directory_is_refused(tmp_path):
    with pytest.raises(InvalidArgument, match=f"{tmp_path} is not a device \\(a directory\\)"):
        parse_device_option(str(tmp_path))


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "expected HOST"),
        (":/dev/x", "expected HOST"),
        ("/dev/null:/dev/x:rw:extra", "expected HOST"),
        ("/dev/null:/dev/x:rwx", "bad mode"),
        ("/dev/null:/dev/x:", "bad mode"),
        ("/dev/null:/dev/x:rr", "bad mode"),
        ("/dev/null:dev/x", "dev/x is not an absolute path"),
        ("dev/null", "dev/null is not an absolute path"),
    ],
)
def test_device_option_bad_syntax(text, message):
    with pytest.raises(InvalidArgument, match=message):
        parse_device_option(text)


def test_device_option_errors_are_hutch_errors():
    assert issubclass(InvalidArgument, HutchError)


# --- the emulated rule set --------------------------------------------------------------------------------


def test_emulator_starts_denying_everything():
    assert DeviceFilter().rules() == [DeviceRule(False, "a")]


def test_emulator_sorts_by_major_minor_type_and_merges_access():
    state = DeviceFilter(
        [
            DeviceRule(True, "c", 5, 0, "r"),
            DeviceRule(True, "c", 1, 3, "rwm"),
            DeviceRule(True, "b", 1, 3, "r"),
            DeviceRule(True, "c", None, None, "m"),
            DeviceRule(True, "c", 5, 0, "w"),
        ]
    )
    assert [r.cgroup_string() for r in state.rules()] == [
        "a *:* rwm",
        "c *:* m",
        "b 1:3 r",
        "c 1:3 rwm",
        "c 5:0 rw",
    ]


def test_emulator_a_rule_resets():
    state = DeviceFilter([DeviceRule(True, "c", 1, 3), DeviceRule(True, "a"), DeviceRule(False, "b", 8, 0)])
    assert state.default_allow
    assert state.rules() == [DeviceRule(True, "a"), DeviceRule(False, "b", 8, 0, "rwm")]


def test_emulator_deny_removes_access_from_an_exception():
    state = DeviceFilter(
        [DeviceRule(False, "a"), DeviceRule(True, "c", 1, 3), DeviceRule(False, "c", 1, 3, "w")]
    )
    assert state.rules()[1:] == [DeviceRule(True, "c", 1, 3, "rm")]
    state.apply(DeviceRule(False, "c", 1, 3, "rm"))
    assert state.rules() == [DeviceRule(False, "a")]


def test_emulator_refuses_to_punch_a_hole_in_a_wildcard():
    with pytest.raises(InvalidArgument, match="'c 1:3 r'.*'c 1:\\* rwm'"):
        DeviceFilter([DeviceRule(True, "c", 1, None), DeviceRule(False, "c", 1, 3, "r")])
    # without overlapping access it is fine: there is nothing to take out
    DeviceFilter([DeviceRule(True, "c", None, None, "m"), DeviceRule(False, "c", 1, 3, "r")])


# --- the BPF program --------------------------------------------------------------------------------------

PROLOGUE = [
    (LDXW, 2, 1, 0, 0),
    (AND32_K, 2, 0, 0, 0xFFFF),
    (LDXW, 3, 1, 0, 0),
    (RSH32_K, 3, 0, 0, 16),
    (LDXW, 4, 1, 4, 0),
    (LDXW, 5, 1, 8, 0),
]
ALLOW = [(MOV32_K, 0, 0, 0, 1), (EXIT, 0, 0, 0, 0)]
DENY = [(MOV32_K, 0, 0, 0, 0), (EXIT, 0, 0, 0, 0)]


def char(major, minor):
    """The block for ``c major:minor rwm``, allowed: 5 instructions, so each jump skips the rest."""
    return [(JNE_K, 2, 0, 4, 2), (JNE_K, 4, 0, 3, major), (JNE_K, 5, 0, 2, minor), *ALLOW]


def test_no_rules_deny_everything():  # runc's TestDeviceFilter_Nil
    assert compile_filter([]) == [*PROLOGUE, *DENY]


def test_privileged_allows_everything():  # runc's TestDeviceFilter_Privileged
    assert compile_filter(PRIVILEGED_RULES) == [*PROLOGUE, *ALLOW]


def test_runc_builtin_allow_list():  # runc's TestDeviceFilter_BuiltInAllowList, offsets resolved
    runc_allowed = [
        DeviceRule(True, "c", None, None, "m"),
        DeviceRule(True, "b", None, None, "m"),
        *(DeviceRule(True, "c", 1, n) for n in (3, 8, 7)),
        DeviceRule(True, "c", 5, 0),
        *(DeviceRule(True, "c", 1, n) for n in (5, 9)),
        DeviceRule(True, "c", 136, None),
        DeviceRule(True, "c", 5, 2),
        DeviceRule(True, "c", 10, 200),
    ]
    expected = [
        *PROLOGUE,
        # block-0: (b, *, *, m): 6: if r2 != 1 goto block-1; if (r3 & m) != r3 goto block-1; accept
        (JNE_K, 2, 0, 5, 1),
        (MOV32_X, 1, 3, 0, 0),
        (AND32_K, 1, 0, 0, 1),
        (JNE_X, 1, 3, 2, 0),
        *ALLOW,
        # block-1: (c, *, *, m)
        (JNE_K, 2, 0, 5, 2),
        (MOV32_X, 1, 3, 0, 0),
        (AND32_K, 1, 0, 0, 1),
        (JNE_X, 1, 3, 2, 0),
        *ALLOW,
        # block-2 .. block-9: c 1:3, 1:5, 1:7, 1:8, 1:9, 5:0, 5:2, 10:200 (rwm: no access test)
        *char(1, 3),
        *char(1, 5),
        *char(1, 7),
        *char(1, 8),
        *char(1, 9),
        *char(5, 0),
        *char(5, 2),
        *char(10, 200),
        # block-10: (c, 136, *, rwm): no minor test
        (JNE_K, 2, 0, 3, 2),
        (JNE_K, 4, 0, 2, 136),
        *ALLOW,
        # block-11: default
        *DENY,
    ]
    program = compile_filter(runc_allowed)
    assert len(program) == 64  # runc's listing ends at instruction 63
    assert program == expected


def test_docker_defaults_add_console_to_runc_list():
    program = compile_filter(DOCKER_DEFAULT_RULES)
    assert len(program) == 69
    # 5:1 (console) sorts between 5:0 (tty) and 5:2 (ptmx)
    assert program[43:58] == [*char(5, 0), *char(5, 1), *char(5, 2)]


def test_allow_all_except_one_block_device():  # runc's TestDeviceFilter_PrivilegedExceptSingleDevice
    rules = [DeviceRule(True, "a"), DeviceRule(False, "b", 8, 0)]
    assert compile_filter(rules) == [
        *PROLOGUE,
        (JNE_K, 2, 0, 4, 1),
        (JNE_K, 4, 0, 3, 8),
        (JNE_K, 5, 0, 2, 0),
        *DENY,
        *ALLOW,
    ]


def test_rules_before_an_a_rule_are_forgotten():  # runc's TestDeviceFilter_Weird
    rules = [DeviceRule(False, "b", 8, 1), DeviceRule(True, "a"), DeviceRule(False, "b", 8, 2)]
    assert compile_filter(rules) == [
        *PROLOGUE,
        (JNE_K, 2, 0, 4, 1),
        (JNE_K, 4, 0, 3, 8),
        (JNE_K, 5, 0, 2, 2),
        *DENY,
        *ALLOW,
    ]


def test_partial_access_and_wildcard_major():
    # --device /dev/sdb:/dev/xvdb:r and a --device-cgroup-rule 'c *:4 rw'
    rules = [DeviceRule(False, "a"), DeviceRule(True, "b", 8, 16, "r"), DeviceRule(True, "c", None, 4, "rw")]
    assert compile_filter(rules) == [
        *PROLOGUE,
        # c *:4 rw sorts first (a wildcard major counts as -1): access test, no major test
        (JNE_K, 2, 0, 6, 2),
        (MOV32_X, 1, 3, 0, 0),
        (AND32_K, 1, 0, 0, 6),  # BPF_DEVCG_ACC_READ | BPF_DEVCG_ACC_WRITE
        (JNE_X, 1, 3, 3, 0),
        (JNE_K, 5, 0, 2, 4),
        *ALLOW,
        # b 8:16 r
        (JNE_K, 2, 0, 7, 1),
        (MOV32_X, 1, 3, 0, 0),
        (AND32_K, 1, 0, 0, 2),  # BPF_DEVCG_ACC_READ
        (JNE_X, 1, 3, 4, 0),
        (JNE_K, 4, 0, 3, 8),
        (JNE_K, 5, 0, 2, 16),
        *ALLOW,
        *DENY,
    ]


def test_large_numbers_become_signed_immediates():
    program = compile_filter([DeviceRule(True, "c", 1, 0xFFFFFFFF)])
    assert program[8] == (JNE_K, 5, 0, 2, -1)  # runc's int32(rule.Minor)


def test_assemble_packs_struct_bpf_insn():
    code = assemble(
        [
            (LDXW, 4, 1, 4, 0),
            (JNE_K, 2, 0, 5, 1),
            (JNE_X, 1, 3, 2, 0),
            (JNE_K, 5, 0, 2, -1),
            (EXIT, 0, 0, 0, 0),
        ]
    )
    assert code == bytes.fromhex(
        "6114040000000000"  # ldxw r4, [r1+4]: dst in the low nibble, src in the high one
        "5502050001000000"  # jne r2, 1, +5
        "5d31020000000000"  # jne r1, r3, +2
        "55050200ffffffff"  # jne r5, -1, +2
        "9500000000000000"  # exit
    )
    assert len(assemble(compile_filter(DOCKER_DEFAULT_RULES))) == 69 * 8
