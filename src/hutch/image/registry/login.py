"""``hutch login``: prove the credentials work before they are saved, as ``docker login`` does."""

from __future__ import annotations

from hutch.image.registry.client import Registry, RegistryError


def check_login(registry: Registry) -> None:
    """Probe ``/v2/``; with Bearer auth, get a token with no scope (the token server checks the password),
    with Basic auth, ``GET /v2/`` with the credentials. Unauthorized carries the registry's message."""
    registry.ping()
    challenge = registry.auth.challenge
    if challenge is None:
        return  # an open registry accepts anyone
    if challenge.scheme == "bearer":
        registry.auth.header(())
        return
    resp = registry.request("GET", "/v2/", scopes=(), what="login")
    resp.read()
    if resp.status != 200:
        raise RegistryError(f"login to {registry.netloc} failed with status {resp.status}")
