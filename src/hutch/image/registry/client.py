"""The distribution spec's endpoints for one registry, with auth, retries and errors a user can act on.

Every request goes through ``Registry.request``: it adds the Authorization header for the scopes the
request needs, answers a 401 challenge once (a first token, a refreshed one, or Basic credentials),
waits out a 429 as its ``Retry-After`` says (a few times, at most a minute each), follows redirects (blob
storage elsewhere, without our credentials) and turns any other failure into a ``RegistryError`` that
carries the registry's own error code and message.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import time
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from hutch.errors import HutchError
from hutch.image.registry.auth import Authorizer, Unauthorized, _message, parse_challenge
from hutch.image.registry.transport import Transport, Unreachable, open_transport, transport_for_url

MANIFEST_ACCEPT = ", ".join(
    (
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    )
)
_REDIRECTS = (301, 302, 303, 307, 308)
_MAX_429_WAITS = 4
_MAX_RETRY_AFTER = 60.0
_MAX_MANIFEST = 4 << 20  # the spec lets registries refuse manifests over 4 MiB; so do we


class RegistryError(HutchError):
    """A registry answered with an error: HTTP status, the spec's error code, its message."""

    def __init__(self, message: str, status: int = 0, code: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def api_host(domain: str) -> str:
    """Where a registry's API lives: Docker Hub's is not at docker.io."""
    return "registry-1.docker.io" if domain in ("docker.io", "index.docker.io") else domain


def _error_code(body: bytes) -> str:
    try:
        errors = json.loads(body).get("errors")
        return str(errors[0].get("code") or "") if errors else ""
    except (ValueError, AttributeError, TypeError, IndexError, KeyError):
        return ""


class Registry:
    """One registry host: its transport (probed once), its authorizer, its endpoints."""

    def __init__(
        self,
        domain: str,
        *,
        credentials: tuple[str, str] | None = None,
        certs_dirs: list[Path] | None = None,
        insecure: bool = False,
        sleep=time.sleep,
    ) -> None:
        self.domain = domain
        self.netloc = api_host(domain)
        self.certs_dirs = certs_dirs or []
        self.insecure = insecure
        self.auth = Authorizer(credentials, self._fetch)
        self._transport: Transport | None = None
        self._lock = threading.Lock()
        self._sleep = sleep

    # ----- plumbing ----------------------------------------------------------------------------------

    @property
    def transport(self) -> Transport:
        with self._lock:
            if self._transport is None:
                try:
                    self._transport = open_transport(self.netloc, self.certs_dirs, self.insecure)
                except ssl.SSLError as err:
                    raise Unreachable(f"registry {self.netloc}: TLS failed: {err}")
            return self._transport

    def _fetch(self, url: str, headers: dict[str, str]) -> tuple[int, bytes]:
        """GET an absolute URL (a token realm); the body is read whole."""
        transport, target = self._transport_for(url)
        resp = self._send(transport, "GET", target, headers, None)
        return resp.status, resp.read()

    def _transport_for(self, url: str) -> tuple[Transport, str]:
        parts = urlsplit(url)
        if parts.netloc == self.transport.netloc and parts.scheme == self.transport.scheme:
            return self.transport, url[len(self.transport.base) :] or "/"
        return transport_for_url(url, self.certs_dirs, self.insecure)

    def _send(
        self, transport: Transport, method: str, target: str, headers, body
    ) -> http.client.HTTPResponse:
        try:
            return transport.request(method, target, headers, body)
        except ssl.SSLCertVerificationError as err:
            raise Unreachable(
                f"registry {transport.netloc}: TLS certificate not trusted ({err.verify_message})"
            )
        except ssl.SSLError as err:
            raise Unreachable(f"registry {transport.netloc}: TLS failed: {err}")

    def ping(self) -> None:
        """``GET /v2/``: learn how the registry wants us to authenticate."""
        resp = self._send(self.transport, "GET", "/v2/", {}, None)
        body = resp.read()
        if resp.status == 401:
            self.auth.challenged(parse_challenge(resp.getheader("WWW-Authenticate", "")), ())
        elif resp.status != 200:
            raise RegistryError(f"registry {self.netloc} answered /v2/ with {resp.status}: {_message(body)}")

    def request(
        self,
        method: str,
        target: str,
        *,
        scopes: tuple[str, ...],
        headers: dict[str, str] | None = None,
        body=None,
        ok: tuple[int, ...] = (200,),
        what: str = "",
    ) -> http.client.HTTPResponse:
        """Send a request (``target``: a path, or an absolute URL the registry gave us); the response's
        status is one of ``ok`` and the caller reads its body."""
        waits = 0
        challenged = False
        while True:
            transport, path = self._transport_for(urljoin(self.transport.base + "/", target))
            hdrs = dict(headers or {})
            if transport is self.transport:
                auth = self.auth.header(scopes)
                if auth:
                    hdrs["Authorization"] = auth
            resp = self._send(transport, method, path, hdrs, body)
            if resp.status in ok:
                return resp
            data = resp.read()
            if resp.status == 401 and not challenged and transport is self.transport:
                challenged = True
                self.auth.challenged(parse_challenge(resp.getheader("WWW-Authenticate", "")), scopes)
                if self.auth.header(scopes) != hdrs.get("Authorization"):  # new credentials to try
                    _rewind(body)
                    continue
            if resp.status == 429 and waits < _MAX_429_WAITS:
                waits += 1
                self._sleep(_retry_after(resp.getheader("Retry-After"), waits))
                _rewind(body)
                continue
            if resp.status in _REDIRECTS and method in ("GET", "HEAD") and resp.getheader("Location"):
                location = urljoin(self.transport.base + path, resp.getheader("Location"))
                extra = {k: v for k, v in (headers or {}).items() if k.lower() != "authorization"}
                return self._follow(method, location, ok, extra)
            raise self._error(resp.status, data, what or f"{method} {path}")

    def _follow(
        self, method: str, url: str, ok: tuple[int, ...], headers: dict[str, str]
    ) -> http.client.HTTPResponse:
        """Follow a redirect to blob storage: a fresh connection, the request's headers (a Range) but
        never the registry's credentials."""
        for _ in range(5):
            transport, target = transport_for_url(url, self.certs_dirs, self.insecure)
            resp = self._send(transport, method, target, headers, None)
            if resp.status in _REDIRECTS and resp.getheader("Location"):
                resp.read()
                url = urljoin(url, resp.getheader("Location"))
                continue
            if resp.status in ok:
                return resp
            raise self._error(resp.status, resp.read(), f"{method} {url}")
        raise RegistryError(f"too many redirects fetching {url}")

    def _error(self, status: int, body: bytes, what: str) -> HutchError:
        message, code = _message(body), _error_code(body)
        if status == 401:
            return Unauthorized(f"{what}: unauthorized: {message or 'authentication required'}")
        if status == 403:
            return Unauthorized(f"{what}: denied: {message or 'access forbidden'}")
        if status == 429:
            return RegistryError(f"{what}: rate limited by {self.netloc}: {message}", status, code)
        return RegistryError(f"{what}: {self.netloc} answered {status}: {message or code}", status, code)

    # ----- endpoints ---------------------------------------------------------------------------------

    def get_manifest(
        self, repo: str, reference: str, scopes: tuple[str, ...]
    ) -> tuple[bytes, str, str | None]:
        """(bytes, media type, Docker-Content-Digest) of a manifest or index by tag or digest."""
        resp = self.request(
            "GET",
            f"/v2/{repo}/manifests/{reference}",
            scopes=scopes,
            headers={"Accept": MANIFEST_ACCEPT},
            what=f"manifest {repo}:{reference}",
        )
        data = resp.read(_MAX_MANIFEST + 1)
        if len(data) > _MAX_MANIFEST:
            self.transport.discard()
            raise RegistryError(f"manifest {repo}:{reference} is larger than {_MAX_MANIFEST} bytes")
        media_type = (resp.getheader("Content-Type") or "").split(";")[0].strip()
        return data, media_type, resp.getheader("Docker-Content-Digest")

    def open_blob(
        self, repo: str, digest: str, scopes: tuple[str, ...], offset: int = 0
    ) -> http.client.HTTPResponse:
        """A blob's response, from ``offset`` on (206 when the registry honoured the Range, 200 if not)."""
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        return self.request(
            "GET",
            f"/v2/{repo}/blobs/{digest}",
            scopes=scopes,
            headers=headers,
            ok=(200, 206),
            what=f"blob {digest}",
        )

    def get_blob(self, repo: str, digest: str, scopes: tuple[str, ...], limit: int) -> bytes:
        """A small blob (a config) read whole."""
        resp = self.open_blob(repo, digest, scopes)
        data = resp.read(limit + 1)
        if len(data) > limit:
            self.transport.discard()
            raise RegistryError(f"blob {digest} is larger than expected ({limit} bytes)")
        return data

    def has_blob(self, repo: str, digest: str, scopes: tuple[str, ...]) -> bool:
        resp = self.request(
            "HEAD", f"/v2/{repo}/blobs/{digest}", scopes=scopes, ok=(200, 404), what=f"blob {digest}"
        )
        resp.read()
        return resp.status == 200

    def start_upload(
        self, repo: str, scopes: tuple[str, ...], mount: str = "", source: str = ""
    ) -> str | None:
        """Open an upload session (None when the blob was mounted from ``source`` instead)."""
        query = f"?mount={mount}&from={source}" if mount and source else ""
        resp = self.request(
            "POST",
            f"/v2/{repo}/blobs/uploads/{query}",
            scopes=scopes,
            headers={"Content-Length": "0"},
            ok=(201, 202),
            what=f"upload to {repo}",
        )
        resp.read()
        if resp.status == 201:
            return None
        location = resp.getheader("Location")
        if not location:
            raise RegistryError(f"registry {self.netloc} opened an upload without a Location")
        return urljoin(self.transport.base + "/", location)

    def put_manifest(
        self, repo: str, reference: str, data: bytes, media_type: str, scopes: tuple[str, ...]
    ) -> str:
        """PUT a manifest; returns the digest the registry computed."""
        resp = self.request(
            "PUT",
            f"/v2/{repo}/manifests/{reference}",
            scopes=scopes,
            headers={"Content-Type": media_type},
            body=data,
            ok=(201, 200),
            what=f"manifest {repo}:{reference}",
        )
        resp.read()
        return resp.getheader("Docker-Content-Digest") or ""


def _rewind(body) -> None:
    if body is not None and hasattr(body, "seek"):
        body.seek(0)


def _retry_after(value: str | None, attempt: int) -> float:
    """Seconds to wait after a 429: the header's value (seconds or an HTTP date), else backing off."""
    if value:
        try:
            return min(max(float(value), 0.0), _MAX_RETRY_AFTER)
        except ValueError:
            from email.utils import parsedate_to_datetime

            try:
                return min(max(parsedate_to_datetime(value).timestamp() - time.time(), 0.0), _MAX_RETRY_AFTER)
            except (TypeError, ValueError):
                pass
    return min(2.0**attempt, _MAX_RETRY_AFTER)
