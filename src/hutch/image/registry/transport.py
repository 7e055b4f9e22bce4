"""HTTP(S) to one registry host: keep-alive connections (one per thread), TLS trust, plain HTTP fallback.

Trust: the system CA store plus every ``*.crt`` in ``<dir>/<host[:port]>/`` for each certs.d directory
(``/etc/docker/certs.d``, ``/etc/containers/certs.d``, ``/etc/hutch/certs.d`` and ``<root>/certs.d``), the
layout Docker and Podman use, with a client certificate (``*.cert`` + ``*.key``) when one is there. Plain
HTTP is used only for a loopback registry (as Docker treats 127.0.0.0/8) or with ``--tls-verify=false``:
HTTPS is tried first (verified, unless ``--tls-verify=false``) and HTTP only when the TLS handshake fails
for a reason other than an untrusted certificate, which stays an error.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import threading
from pathlib import Path
from urllib.parse import urlsplit

from hutch.errors import HutchError

SYSTEM_CERTS_DIRS = (
    Path("/etc/docker/certs.d"),
    Path("/etc/containers/certs.d"),
    Path("/etc/hutch/certs.d"),
)
TIMEOUT = 30.0
# Errors meaning "the connection broke", worth one retry on a fresh connection or a Range resume.
CONNECTION_ERRORS = (http.client.HTTPException, ConnectionError, socket.timeout, TimeoutError, OSError)


class Unreachable(HutchError):
    """The registry (or its token server) cannot be reached at all."""


def is_loopback(netloc: str) -> bool:
    """``localhost`` or an address in 127.0.0.0/8 or ::1, with or without a port."""
    host = urlsplit(f"//{netloc}").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def tls_context(netloc: str, certs_dirs: list[Path], verify: bool = True) -> ssl.SSLContext:
    """The system trust store plus the registry's own CAs (``*.crt``) from each certs.d directory, and a
    client certificate when one is there (``<name>.cert`` with its ``<name>.key``, Docker's layout)."""
    if verify:
        ctx = ssl.create_default_context()
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    for base in certs_dirs:
        folder = base / netloc
        if not folder.is_dir():
            continue
        if verify:
            for cert in sorted(folder.glob("*.crt")):
                ctx.load_verify_locations(cafile=str(cert))
        for cert in sorted(folder.glob("*.cert")):
            key = cert.with_suffix(".key")
            if not key.is_file():
                raise HutchError(f"{cert}: client certificate without its key {key.name}")
            ctx.load_cert_chain(str(cert), str(key))
    return ctx


class Transport:
    """Requests to one ``scheme://netloc``; each thread keeps its own keep-alive connection."""

    def __init__(self, netloc: str, scheme: str, context: ssl.SSLContext | None) -> None:
        self.netloc = netloc
        self.scheme = scheme
        self.context = context
        self._local = threading.local()

    @property
    def base(self) -> str:
        return f"{self.scheme}://{self.netloc}"

    def _connection(self, fresh: bool = False) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is not None and not fresh:
            return conn
        if conn is not None:
            conn.close()
        if self.scheme == "https":
            conn = http.client.HTTPSConnection(self.netloc, timeout=TIMEOUT, context=self.context)
        else:
            conn = http.client.HTTPConnection(self.netloc, timeout=TIMEOUT)
        self._local.conn = conn
        return conn

    def request(
        self, method: str, target: str, headers: dict[str, str], body=None
    ) -> http.client.HTTPResponse:
        """Send one request (``target`` is a path with query); a stale keep-alive connection is retried
        once on a fresh one. The caller must read the response to the end (or close it)."""
        reused = getattr(self._local, "conn", None) is not None
        for attempt in (0, 1):
            conn = self._connection(fresh=attempt > 0)
            try:
                conn.request(method, target, body=body, headers=headers)
                return conn.getresponse()
            except ssl.SSLError:
                conn.close()
                self._local.conn = None
                raise
            except CONNECTION_ERRORS as err:
                conn.close()
                self._local.conn = None
                if attempt or not reused or not _rewind(body):
                    raise Unreachable(f"registry {self.netloc} is unreachable: {_describe(err)}")
        raise AssertionError("unreachable")

    def discard(self) -> None:
        """Drop this thread's connection (after a response that was not read to the end)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


def _rewind(body) -> bool:
    """Whether ``body`` can be sent again (bytes, nothing, or a seekable file)."""
    if body is None or isinstance(body, bytes | bytearray | memoryview):
        return True
    try:
        body.seek(0)
        return True
    except (AttributeError, OSError):
        return False


def _describe(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    if isinstance(err, ConnectionRefusedError):
        return "connection refused"
    return text


def open_transport(netloc: str, certs_dirs: list[Path], insecure: bool) -> Transport:
    """A transport to the registry, probed with ``GET /v2/``.

    HTTPS with verification by default. A loopback registry (as Docker treats 127.0.0.0/8) may answer
    plain HTTP: when the TLS handshake fails for any reason but the certificate, HTTP is used. With
    ``insecure`` (``--tls-verify=false``) the certificate is not checked either.
    """
    plain_ok = insecure or is_loopback(netloc)
    secure = Transport(netloc, "https", tls_context(netloc, certs_dirs, verify=not insecure))
    if not plain_ok:
        return secure
    try:
        secure.request("GET", "/v2/", {}).read()
        return secure
    except ssl.SSLCertVerificationError as err:
        raise Unreachable(f"registry {netloc}: TLS certificate not trusted ({err.verify_message})")
    except ssl.SSLError:
        secure.discard()
        return Transport(netloc, "http", None)


def transport_for_url(url: str, certs_dirs: list[Path], insecure: bool) -> tuple[Transport, str]:
    """A transport and request target for an absolute URL (token realms, redirects, upload locations)."""
    parts = urlsplit(url)
    verify = parts.scheme == "https" and not insecure
    context = tls_context(parts.netloc, certs_dirs, verify) if parts.scheme == "https" else None
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return Transport(parts.netloc, parts.scheme, context), target
