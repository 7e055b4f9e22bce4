"""Capability precedence, --ulimit and --security-opt parsing: Docker's rules as pure functions."""

import pytest

from hutch.engine.options import UNLIMITED, parse_security_opts, parse_ulimit
from hutch.engine.security import capability_set, own_capabilities
from hutch.errors import InvalidArgument
from hutch.runtime.capabilities import DOCKER_DEFAULT


def test_defaults_without_flags():
    assert capability_set([], [], False) == list(DOCKER_DEFAULT)


def test_drop_then_add():
    caps = capability_set(["sys_admin", "CAP_NET_ADMIN"], ["NET_RAW", "cap_mknod"], False)
    assert "CAP_NET_RAW" not in caps and "CAP_MKNOD" not in caps
    assert caps[-2:] == ["CAP_SYS_ADMIN", "CAP_NET_ADMIN"]


def test_drop_all_keeps_only_added():
    assert capability_set(["CHOWN"], ["ALL"], False) == ["CAP_CHOWN"]
    assert capability_set([], ["all"], False) == []


def test_add_all_is_everything_we_hold_minus_drops():
    caps = capability_set(["ALL"], ["SYS_ADMIN"], False)
    assert "CAP_SYS_ADMIN" not in caps
    assert set(caps) == set(own_capabilities()) - {"CAP_SYS_ADMIN"}


def test_privileged_is_everything_we_hold():
    assert capability_set([], ["ALL"], True) == own_capabilities()


def test_unknown_capability_names_the_flag():
    with pytest.raises(InvalidArgument, match="--cap-drop 'WINGS'"):
        capability_set([], ["WINGS"], False)


def test_ulimit_forms():
    assert parse_ulimit("nofile=1024:2048") == {"type": "RLIMIT_NOFILE", "soft": 1024, "hard": 2048}
    assert parse_ulimit("core=0") == {"type": "RLIMIT_CORE", "soft": 0, "hard": 0}
    assert parse_ulimit("memlock=-1:-1")["hard"] == UNLIMITED
    for bad, message in (
        ("nofile", "NAME=SOFT"),
        ("files=1", "unknown limit"),
        ("nofile=x", "not a number"),
        ("nofile=10:5", "above hard"),
    ):
        with pytest.raises(InvalidArgument, match=message):
            parse_ulimit(bad)


def test_security_opts():
    assert parse_security_opts(["no-new-privileges"]) == {"no_new_privileges": True}
    assert parse_security_opts(["no-new-privileges:false"]) == {"no_new_privileges": False}
    assert parse_security_opts(["seccomp=unconfined"]) == {"seccomp": "unconfined"}
    with pytest.raises(InvalidArgument, match="invalid --security-opt"):
        parse_security_opts(["nonsense"])
