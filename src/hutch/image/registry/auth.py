"""Registry authentication: ``WWW-Authenticate`` challenges, Bearer tokens per scope, Basic.

Bearer (Docker Hub, every major registry, distribution's ``auth: token``): a 401 names a token realm, a
service and the scope the request needs; the token server is asked with those (anonymously, or with Basic
credentials) and the token is reused for every request needing no more than that scope until it expires,
then fetched again. Basic: the saved credentials go on every request.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from urllib.parse import urlencode

from hutch.errors import HutchError

_PARAM_RE = re.compile(r'\s*([a-zA-Z_][\w-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?')
_DEFAULT_TTL = 60.0
_EARLY = 5.0  # refresh a token this many seconds before it expires


class Unauthorized(HutchError):
    """The registry refused our credentials (or wants some); carries the registry's own message."""


class Challenge:
    """One ``WWW-Authenticate`` challenge: the scheme (lower case) and its parameters."""

    __slots__ = ("scheme", "params")

    def __init__(self, scheme: str, params: dict[str, str]) -> None:
        self.scheme = scheme
        self.params = params

    def __repr__(self) -> str:
        return f"Challenge({self.scheme!r}, {self.params!r})"


def parse_challenge(header: str) -> Challenge | None:
    """Parse ``Bearer realm="...",service="...",scope="..."`` (or ``Basic realm="..."``)."""
    header = header.strip()
    if not header:
        return None
    scheme, _, rest = header.partition(" ")
    params: dict[str, str] = {}
    pos = 0
    while pos < len(rest):
        match = _PARAM_RE.match(rest, pos)
        if not match or match.end() == pos:
            break
        key, quoted, bare = match.groups()
        params[key.lower()] = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare
        pos = match.end()
    return Challenge(scheme.lower(), params)


def basic_header(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def scope_for(repository: str, actions: str) -> str:
    """``repository:<path>:pull`` or ``...:pull,push``."""
    return f"repository:{repository}:{actions}"


class Authorizer:
    """Produces the Authorization header for requests, fetching Bearer tokens as challenges demand."""

    def __init__(self, credentials: tuple[str, str] | None, fetch) -> None:
        """``fetch(url, headers) -> (status, body bytes)`` performs the token request."""
        self.credentials = credentials
        self._fetch = fetch
        self.challenge: Challenge | None = None
        self._tokens: dict[tuple[str, ...], tuple[str, float]] = {}
        self._lock = threading.Lock()

    def header(self, scopes: tuple[str, ...]) -> str | None:
        """The header for a request needing ``scopes`` (None when no challenge asked for auth yet)."""
        challenge = self.challenge
        if challenge is None:
            return None
        if challenge.scheme == "basic":
            return basic_header(*self.credentials) if self.credentials else None
        if challenge.scheme != "bearer":
            return None
        with self._lock:
            cached = self._tokens.get(scopes)
            if cached and cached[1] > time.monotonic():
                return "Bearer " + cached[0]
            token, ttl = self._token(challenge, scopes)
            self._tokens[scopes] = (token, time.monotonic() + max(ttl - _EARLY, 1.0))
            return "Bearer " + token

    def challenged(self, challenge: Challenge | None, scopes: tuple[str, ...]) -> None:
        """Take a 401's challenge: remember the scheme and drop the token that was refused (expired or
        short of scope), so the next ``header`` fetches a fresh one."""
        if challenge is None:
            return
        with self._lock:
            self.challenge = challenge
            self._tokens.pop(scopes, None)

    def _token(self, challenge: Challenge, scopes: tuple[str, ...]) -> tuple[str, float]:
        realm = challenge.params.get("realm")
        if not realm:
            raise Unauthorized("registry asked for a Bearer token but named no realm")
        query: list[tuple[str, str]] = []
        if challenge.params.get("service"):
            query.append(("service", challenge.params["service"]))
        query += [("scope", s) for s in scopes]
        headers = {}
        if self.credentials:
            query.append(("account", self.credentials[0]))
            headers["Authorization"] = basic_header(*self.credentials)
        url = realm + ("&" if "?" in realm else "?") + urlencode(query) if query else realm
        status, body = self._fetch(url, headers)
        if status in (401, 403):
            raise Unauthorized(f"token server refused the credentials: {_message(body) or status}")
        if status != 200:
            raise Unauthorized(f"token server answered {status}: {_message(body)}")
        try:
            doc = json.loads(body)
            token = doc.get("token") or doc.get("access_token")
            ttl = float(doc.get("expires_in") or _DEFAULT_TTL)
        except (ValueError, AttributeError, TypeError):
            token = None
        if not token:
            raise Unauthorized("token server sent no token")
        return token, ttl


def _message(body: bytes) -> str:
    """The human part of a registry or token server error body."""
    try:
        doc = json.loads(body)
    except ValueError:
        return body.decode(errors="replace").strip()[:200]
    if isinstance(doc, dict):
        errors = doc.get("errors")
        if isinstance(errors, list) and errors and isinstance(errors[0], dict):
            return str(errors[0].get("message") or errors[0].get("code") or "")
        return str(doc.get("details") or doc.get("message") or doc.get("error") or "")
    return ""
