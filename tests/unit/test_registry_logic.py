"""Pure logic of the registry client: challenges, token reuse, credentials, Retry-After, progress."""

from __future__ import annotations

import io
import json

import pytest

from hutch.errors import InvalidArgument
from hutch.image.registry import credentials
from hutch.image.registry.auth import Authorizer, Unauthorized, parse_challenge
from hutch.image.registry.client import _retry_after, api_host
from hutch.image.registry.progress import Progress, human
from hutch.image.registry.pull import parse_platform
from hutch.image.registry.transport import is_loopback


def test_parse_bearer_and_basic_challenges():
    c = parse_challenge(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/busybox:pull"'
    )
    assert c.scheme == "bearer"
    assert c.params == {
        "realm": "https://auth.docker.io/token",
        "service": "registry.docker.io",
        "scope": "repository:library/busybox:pull",
    }
    assert parse_challenge('Basic realm="Registry Realm"').params == {"realm": "Registry Realm"}
    assert parse_challenge('Bearer realm="a\\"b", error=invalid_token').params == {
        "realm": 'a"b',
        "error": "invalid_token",
    }
    assert parse_challenge("") is None


class _TokenServer:
    """Stands in for the HTTP exchange with a token endpoint (the boundary Authorizer is given)."""

    def __init__(self, status=200, ttl=300):
        self.calls: list[tuple[str, dict]] = []
        self.status, self.ttl = status, ttl

    def __call__(self, url, headers):
        self.calls.append((url, headers))
        body = {"token": f"t{len(self.calls)}", "expires_in": self.ttl}
        return self.status, json.dumps(body if self.status == 200 else {"details": "nope"}).encode()


def test_tokens_are_reused_per_scope_and_refreshed_when_refused():
    server = _TokenServer()
    auth = Authorizer(("u", "p"), server)
    assert auth.header(("x",)) is None  # no challenge yet: no header
    auth.challenged(parse_challenge('Bearer realm="https://t/token",service="s"'), ("repository:a:pull",))
    scope = ("repository:a:pull",)
    assert auth.header(scope) == "Bearer t1"
    assert auth.header(scope) == "Bearer t1"
    assert len(server.calls) == 1
    url, headers = server.calls[0]
    assert url == "https://t/token?service=s&scope=repository%3Aa%3Apull&account=u"
    assert headers["Authorization"].startswith("Basic ")
    assert auth.header(("repository:b:pull",)) == "Bearer t2"
    auth.challenged(parse_challenge('Bearer realm="https://t/token",service="s"'), scope)  # refused: refresh
    assert auth.header(scope) == "Bearer t3"


def test_expired_tokens_are_fetched_again_and_refusals_carry_the_message():
    server = _TokenServer(ttl=0)
    auth = Authorizer(None, server)
    auth.challenged(parse_challenge('Bearer realm="https://t/token"'), ())
    auth.header(("s",))
    auth.header(("s",))
    assert len(server.calls) == 1  # a token lives at least a second
    bad = Authorizer(("u", "wrong"), _TokenServer(status=401))
    bad.challenged(parse_challenge('Bearer realm="https://t/token"'), ())
    with pytest.raises(Unauthorized, match="nope"):
        bad.header(("s",))


def test_basic_challenge_uses_saved_credentials():
    auth = Authorizer(("u", "p"), _TokenServer())
    auth.challenged(parse_challenge('Basic realm="r"'), ())
    assert auth.header(()) == "Basic dTpw"


def test_credentials_round_trip_keeps_other_keys(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "dc"))
    path = credentials.config_path()
    assert path == tmp_path / "dc" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"auths": {"other:5000": {"auth": "eDp5"}}, "psFormat": "x"}))
    credentials.save("docker.io", "me", "pa:ss")
    doc = json.loads(path.read_text())
    assert doc["psFormat"] == "x" and "https://index.docker.io/v1/" in doc["auths"]
    assert path.stat().st_mode & 0o777 == 0o600
    assert credentials.lookup("docker.io") == ("me", "pa:ss")
    assert credentials.lookup("other:5000") == ("x", "y")
    assert credentials.erase("docker.io") and not credentials.erase("docker.io")
    assert credentials.lookup("docker.io") is None
    path.write_text("{not json")
    with pytest.raises(InvalidArgument, match="invalid JSON"):
        credentials.lookup("x")


def test_retry_after_and_hosts():
    assert _retry_after("3", 1) == 3.0
    assert _retry_after("100000", 1) == 60.0
    assert _retry_after(None, 2) == 4.0
    assert _retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1) == 0.0  # a date in the past
    assert api_host("docker.io") == "registry-1.docker.io" and api_host("q.io:5000") == "q.io:5000"
    assert is_loopback("127.0.0.5:5000") and is_loopback("localhost") and is_loopback("[::1]:5000")
    assert not is_loopback("example.com:5000") and not is_loopback("10.0.0.1")


def test_platform_flag():
    assert str(parse_platform("linux/arm64/v8")) == "linux/arm64/v8"
    assert parse_platform(None) is None
    with pytest.raises(InvalidArgument, match="linux"):
        parse_platform("linux")


def test_plain_progress_prints_status_changes_only():
    out = io.StringIO()
    p = Progress(out, mode="plain")
    p.status("abc", "Downloading", 10)
    p.advance("abc", 5)
    p.status("abc", "Download complete")
    p.message("Digest: x")
    assert out.getvalue() == "abc: Downloading\nabc: Download complete\nDigest: x\n"
    quiet = io.StringIO()
    q = Progress(quiet, mode="quiet")
    q.status("abc", "Downloading")
    q.message("m")
    q.result("ref")
    assert quiet.getvalue() == "ref\n"
    assert human(1_500_000) == "1.5MB" and human(999) == "999B"


def test_tty_progress_draws_bars_in_place():
    out = io.StringIO()
    p = Progress(out, mode="tty")
    p.status("a", "Downloading", 100)
    p.advance("a", 50)
    p.status("a", "Download complete")
    text = out.getvalue()
    assert "\x1b[2Ka: Downloading [" in text and "total: [" in text and "\x1b[2F" in text
