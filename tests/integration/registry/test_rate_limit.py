"""429 handling. docker-registry has no rate limiting, so a tiny HTTP server in the test answers 429
with ``Retry-After`` (as Docker Hub does) before serving; the client is the real one over real sockets."""

from __future__ import annotations

import http.server
import threading

import pytest

from hutch.image.registry.client import Registry, RegistryError


class _Limited(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    refusals = 2

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802
        server = self.server
        server.hits += 1
        if server.hits <= server.refusals:
            body = b'{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}'
            self.send_response(429)
            self.send_header("Retry-After", "7")
        else:
            body = b"{}"
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def limited():
    def make(refusals: int):
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Limited)
        httpd.hits, httpd.refusals = 0, refusals
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
        return httpd

    servers: list = []
    yield make
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


def test_429_waits_as_retry_after_says_then_succeeds(limited):
    httpd = limited(refusals=2)
    waits: list[float] = []
    reg = Registry(f"127.0.0.1:{httpd.server_port}", sleep=waits.append)
    resp = reg.request("GET", "/v2/x/manifests/1", scopes=())
    assert resp.status == 200 and resp.read() == b"{}"
    assert waits == [7.0, 7.0] and httpd.hits == 3


def test_429_that_persists_is_reported(limited):
    httpd = limited(refusals=100)
    reg = Registry(f"127.0.0.1:{httpd.server_port}", sleep=lambda _s: None)
    with pytest.raises(RegistryError, match="rate limited by 127.0.0.1:.*slow down"):
        reg.request("GET", "/v2/x/manifests/1", scopes=())
