"""Push and pull against real registries: open, htpasswd Basic auth, and token auth over TLS."""

from __future__ import annotations

import json

from registry_fixtures import PASSWORD, USER


def _push(hutch, registry, repo: str) -> str:
    name = f"{registry.host}/{repo}"
    hutch.ok("tag", "busybox", name)
    return name


def test_push_then_pull_into_an_empty_root_and_run(hutch, busybox, second, open_registry):
    name = _push(hutch, open_registry, "hutch/busybox:1")
    out = hutch.ok("push", name)
    digest = out.strip().splitlines()[-1].split("digest: ")[1].split()[0]
    out = second.ok("pull", name)
    assert out.strip().splitlines()[-1] == name
    assert f"Digest: {digest}" in out
    assert second.ok("run", "--rm", name, "echo", "pulled").strip() == "pulled"
    images = [json.loads(line) for line in second.ok("images", "--digests", "--format", "json").splitlines()]
    assert [(i["Tag"], i["Digest"]) for i in images] == [("1", digest)]
    # Pulling again skips every blob; pulling by digest finds the same image.
    again = second.ok("pull", name)
    assert "Image is up to date" in again and "Downloading" not in again
    assert second.ok("pull", "-q", f"{open_registry.host}/hutch/busybox@{digest}").strip().endswith(digest)
    # What hutch pulled, it pushes: to another repository the blobs are mounted, not uploaded.
    copy = f"{open_registry.host}/hutch/busybox-copy:1"
    second.ok("tag", name, copy)
    out = second.ok("push", copy)
    assert "Mounted from hutch/busybox" in out and "Pushing" not in out
    assert f"digest: {digest}" in out


def test_second_push_finds_blobs_and_mounts_across_repositories(hutch, busybox, open_registry):
    first = _push(hutch, open_registry, "hutch/mount-a:1")
    hutch.ok("push", first)
    assert "Layer already exists" in hutch.ok("push", first)
    second_name = _push(hutch, open_registry, "hutch/mount-b:1")
    out = hutch.ok("push", second_name)
    assert "Mounted from hutch/mount-a" in out or "Mounted from hutch/mount-b" in out


def test_chunked_upload(hutch, busybox, second, open_registry, monkeypatch):
    from hutch.cli.context import Context
    from hutch.image.registry.client import Registry
    from hutch.image.registry.progress import Progress
    from hutch.image.registry.push import Pusher

    name = _push(hutch, open_registry, "hutch/chunked:1")
    ctx = Context(hutch.root)
    registry = Registry(open_registry.host)
    Pusher(ctx.images, registry, Progress(mode="quiet"), chunk=256 * 1024).push(name)  # busybox is ~1 MB
    assert second.ok("run", "--rm", name, "true") == ""


def test_unknown_image_and_unreachable_registry(hutch, open_registry):
    result = hutch("pull", f"{open_registry.host}/hutch/nothing-here:1")
    assert result.code == 125
    assert result.err.strip() == (
        f"hutch: manifest for {open_registry.host}/hutch/nothing-here:1 not found: manifest unknown"
    )
    result = hutch("pull", "127.0.0.1:1/hutch/x")
    assert result.code == 125 and "127.0.0.1:1 is unreachable" in result.err
    result = hutch("run", "--rm", f"{open_registry.host}/hutch/nothing-here:2", "true")
    assert result.code == 125 and "not found locally, and pulling it failed" in result.err


def test_run_pulls_what_it_lacks(hutch, busybox, second, open_registry):
    name = _push(hutch, open_registry, "hutch/run-pull:1")
    hutch.ok("push", name)
    assert second("run", "--pull", "never", "--rm", name, "true").code == 125
    assert second.ok("run", "--rm", name, "echo", "ok").strip() == "ok"
    assert second.ok("run", "--pull", "always", "--rm", name, "echo", "ok").strip() == "ok"


def test_basic_auth_login_push_pull_logout(hutch, busybox, second, basic_registry, docker_config):
    name = _push(hutch, basic_registry, "hutch/basic:1")
    result = hutch("push", name)
    assert result.code == 125 and "unauthorized" in result.err
    result = hutch("login", "-u", USER, "-p", "wrong", basic_registry.host)
    assert result.code == 125 and "unauthorized" in result.err
    assert not (docker_config / "config.json").exists()
    out = hutch.ok("login", "-u", USER, "--password-stdin", basic_registry.host, input=PASSWORD + "\n")
    assert "Login Succeeded" in out
    assert (docker_config / "config.json").stat().st_mode & 0o077 == 0
    hutch.ok("push", name)
    assert second.ok("run", "--rm", name, "echo", "basic").strip() == "basic"
    hutch.ok("logout", basic_registry.host)
    result = second("pull", name)
    assert result.code == 125 and "unauthorized" in result.err


def test_token_auth_over_tls(hutch, busybox, second, token_registry, token_server, docker_config):
    name = _push(hutch, token_registry, "hutch/token:1")
    result = hutch("push", name)  # the CA is not trusted yet
    assert result.code == 125 and "certificate" in result.err
    token_registry.trust(hutch.root)
    token_registry.trust(second.root)
    result = hutch("login", "-u", USER, "-p", "wrong", token_registry.host)
    assert result.code == 125 and "incorrect username or password" in result.err
    hutch.ok("login", "-u", USER, "-p", PASSWORD, token_registry.host)
    hutch.ok("push", name)
    hutch.ok("logout", token_registry.host)
    # An anonymous pull: the token server grants pull to anyone; one token serves the whole pull.
    before = len(token_server.requests)
    second.ok("pull", name)
    assert len(token_server.requests) - before == 1
    assert token_server.requests[-1] == {"user": None, "scope": ["repository:hutch/token:pull"]}
    assert second.ok("run", "--rm", name, "echo", "tls").strip() == "tls"
    result = hutch("push", name)  # anonymous users may not push
    assert result.code == 125 and "unauthorized" in result.err


def test_client_certificate_from_certs_d(hutch, busybox, second, pki, tmp_path):
    """A registry that demands a client certificate signed by its CA (``http.tls.clientcas``)."""
    from registry_fixtures import Registry

    (tmp_path / "mtls").mkdir()
    registry = Registry(tmp_path / "mtls", "open", pki=pki, client_ca=True)
    registry.start()
    try:
        name = _push(hutch, registry, "hutch/mtls:1")
        registry.trust(hutch.root)
        result = hutch("push", name)
        assert result.code == 125 and registry.host in result.err  # a TLS failure naming the registry
        folder = hutch.root / "certs.d" / registry.host
        for part in ("client.cert", "client.key"):
            (folder / part).write_bytes(pki[part].read_bytes())
        hutch.ok("push", name)
        registry.trust(second.root)
        result = second("pull", name)
        assert result.code == 125
        (second.root / "certs.d" / registry.host / "client.cert").write_bytes(pki["client.cert"].read_bytes())
        result = second("pull", name)
        assert result.code == 125 and "client certificate without its key client.key" in result.err
        (second.root / "certs.d" / registry.host / "client.key").write_bytes(pki["client.key"].read_bytes())
        assert second.ok("run", "--rm", name, "echo", "mtls").strip() == "mtls"
    finally:
        registry.stop()
