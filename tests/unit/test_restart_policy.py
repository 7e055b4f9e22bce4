import pytest

from hutch.engine.restart import FIRST_DELAY, MAX_DELAY, delay_before, parse_restart, should_restart
from hutch.errors import InvalidArgument


@pytest.mark.parametrize(
    ("text", "policy"),
    [
        ("no", "no"),
        ("always", "always"),
        ("unless-stopped", "unless-stopped"),
        ("on-failure", "on-failure"),
        ("on-failure:3", "on-failure:3"),
        ("on-failure:0", "on-failure"),
    ],
)
def test_parse(text, policy):
    assert parse_restart(text) == policy


@pytest.mark.parametrize("text", ["sometimes", "always:3", "on-failure:x", "on-failure:-1", ""])
def test_parse_rejects_naming_the_value(text):
    with pytest.raises(InvalidArgument, match="--restart"):
        parse_restart(text)


def test_on_failure_counts_and_ignores_success():
    assert should_restart("on-failure:2", 1, 0, False)
    assert should_restart("on-failure:2", 1, 1, False)
    assert not should_restart("on-failure:2", 1, 2, False)
    assert not should_restart("on-failure:2", 0, 0, False)
    assert should_restart("on-failure", 3, 100, False)


def test_always_until_the_user_stops_it():
    assert should_restart("always", 0, 50, False)
    assert should_restart("unless-stopped", 0, 50, False)
    assert not should_restart("always", 1, 0, True)
    assert not should_restart("no", 1, 0, False)


def test_backoff_doubles_up_to_a_minute_and_resets_after_a_healthy_run():
    assert delay_before(0, 0.1) == FIRST_DELAY
    assert delay_before(3, 0.1) == FIRST_DELAY * 8
    assert delay_before(40, 0.1) == MAX_DELAY
    assert delay_before(40, 11.0) == FIRST_DELAY


def test_detach_keys():
    from hutch.cli.attach import _Detached, _scan, parse_detach_keys

    assert parse_detach_keys("ctrl-p,ctrl-q") == b"\x10\x11"
    assert parse_detach_keys("ctrl-a,x") == b"\x01x"
    with pytest.raises(InvalidArgument):
        parse_detach_keys("ctrl-pq")
    assert _scan(b"abc", b"\x10\x11") == (b"abc", 0)
    assert _scan(b"abc\x10", b"\x10\x11") == (b"abc", 1)  # held back until the next read decides
    with pytest.raises(_Detached):
        _scan(b"\x10\x11", b"\x10\x11")
