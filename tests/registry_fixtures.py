"""Real registries for the registry tests: Debian's ``docker-registry`` (the distribution registry) on
127.0.0.1 in three set-ups, plus a token server and a fault-injecting TCP proxy.

- ``open``: plain HTTP, no auth.
- ``basic``: htpasswd (bcrypt, made with ``htpasswd -B``) Basic auth, plain HTTP.
- ``token``: distribution's ``auth: token`` over TLS with a CA made here; the token server (a small
  HTTPS server in this process) checks Basic credentials and signs RS256 JWTs with ``openssl`` using a key
  whose self-signed certificate is the registry's ``rootcertbundle``.

Every registry process is killed at teardown, pass or fail.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import json
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

REGISTRY_BIN = "/usr/bin/docker-registry"
USER, PASSWORD = "hutch", "s3cret-pass"
SERVICE, ISSUER = "hutch-test-registry", "hutch-test-issuer"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"registry exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port}")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 signed by it, and a self-signed token signing pair."""
    folder.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
             "-days", "2", "-subj", "/CN=hutch test CA", cwd=folder)  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=127.0.0.1", cwd=folder)  # fmt: skip
    (folder / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.crt", "-days", "2", "-extfile", "ext.cnf", cwd=folder)  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "client.key", "-out", "client.csr",
             "-subj", "/CN=hutch client", cwd=folder)  # fmt: skip
    _openssl("x509", "-req", "-in", "client.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "client.cert", "-days", "2", cwd=folder)  # fmt: skip
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "token.key", "-out", "token.crt",
             "-days", "2", "-subj", "/CN=hutch token signer", cwd=folder)  # fmt: skip
    return {
        n: folder / f"{n.replace('_', '.')}"
        for n in ("ca.crt", "server.crt", "server.key", "token.crt", "token.key", "client.cert", "client.key")
    }


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TokenServer:
    """An HTTPS token endpoint as distribution's token auth expects (docker/distribution docs/spec/auth)."""

    def __init__(self, pki: dict[str, Path], users: dict[str, str]) -> None:
        self.pki = pki
        self.users = users
        self.port = free_port()
        self.requests: list[dict] = []
        der = ssl.PEM_cert_to_DER_cert(pki["token.crt"].read_text())
        self._x5c = base64.b64encode(der).decode()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):  # noqa: N802 - http.server's naming
                server._serve(self)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pki["server.crt"], pki["server.key"])
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def realm(self) -> str:
        return f"https://127.0.0.1:{self.port}/token"

    def _serve(self, req) -> None:
        query = parse_qs(urlsplit(req.path).query)
        user = None
        header = req.headers.get("Authorization", "")
        if header.startswith("Basic "):
            name, _, password = base64.b64decode(header[6:]).decode().partition(":")
            if self.users.get(name) != password:
                self._reply(req, 401, {"details": "incorrect username or password"})
                return
            user = name
        self.requests.append({"user": user, "scope": query.get("scope", [])})
        access = []
        for scope in query.get("scope", []):
            kind, name, actions = scope.split(":")
            granted = actions.split(",") if user else [a for a in actions.split(",") if a == "pull"]
            access.append({"type": kind, "name": name, "actions": granted})
        self._reply(req, 200, {"token": self.sign(user or "", access), "expires_in": 300})

    def sign(self, subject: str, access: list[dict]) -> str:
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": [self._x5c]}
        claims = {"iss": ISSUER, "sub": subject, "aud": SERVICE, "exp": now + 300, "nbf": now - 10,
                  "iat": now, "jti": uuid.uuid4().hex, "access": access}  # fmt: skip
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        sig = subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", str(self.pki["token.key"])],
            input=signing_input.encode(),
            capture_output=True,
            check=True,
        ).stdout
        return f"{signing_input}.{_b64url(sig)}"

    @staticmethod
    def _reply(req, status: int, doc: dict) -> None:
        body = json.dumps(doc).encode()
        req.send_response(status)
        req.send_header("Content-Type", "application/json")
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        req.wfile.write(body)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class Registry:
    """One ``docker-registry`` process with its storage in ``folder``; ``restart`` keeps port and data."""

    def __init__(self, folder: Path, mode: str = "open", pki: dict[str, Path] | None = None,
                 token: TokenServer | None = None, client_ca: bool = False) -> None:  # fmt: skip
        self.folder = folder
        self.mode = mode
        self.port = free_port()
        self.storage = folder / "storage"
        self.pki = pki
        self.proc: subprocess.Popen | None = None
        config = [
            "version: 0.1",
            "log: {level: error, accesslog: {disabled: true}}",
            f"storage: {{filesystem: {{rootdirectory: {self.storage}}}, delete: {{enabled: true}}}}",
            f"http: {{addr: 127.0.0.1:{self.port}, secret: hutch-test-secret"
            + (f", tls: {{certificate: {pki['server.crt']}, key: {pki['server.key']}" if pki else "")
            + (f", clientcas: [{pki['ca.crt']}]" if pki and client_ca else "")
            + ("}" if pki else "")
            + "}",
        ]
        if mode == "basic":
            htpasswd = folder / "htpasswd"
            out = subprocess.run(["htpasswd", "-Bbn", USER, PASSWORD], capture_output=True, check=True)
            htpasswd.write_bytes(out.stdout)
            config.append(f"auth: {{htpasswd: {{realm: hutch-test, path: {htpasswd}}}}}")
        elif mode == "token":
            assert token is not None and pki is not None
            config.append(
                f"auth: {{token: {{realm: '{token.realm}', service: {SERVICE}, issuer: {ISSUER}, "
                f"rootcertbundle: {pki['token.crt']}}}}}"
            )
        self.config = folder / "config.yml"
        self.config.write_text("\n".join(config) + "\n")

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.log = open(self.folder / "registry.log", "ab")  # noqa: SIM115 - closed in stop
        self.proc = subprocess.Popen(
            [REGISTRY_BIN, "serve", str(self.config)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        )
        _wait_port(self.port, self.proc)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None
        with contextlib.suppress(AttributeError):
            self.log.close()

    def blob_path(self, digest: str) -> Path:
        """Where the filesystem driver keeps a blob's data (for tampering tests)."""
        algo, hexpart = digest.split(":")
        return self.storage / "docker/registry/v2/blobs" / algo / hexpart[:2] / hexpart / "data"

    def trust(self, root: Path) -> None:
        """Make a hutch root trust this registry's CA (``<root>/certs.d/<host>/ca.crt``)."""
        if self.pki is None:
            return
        for port in {self.port, *self._token_ports()}:
            folder = root / "certs.d" / f"127.0.0.1:{port}"
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "ca.crt").write_bytes(self.pki["ca.crt"].read_bytes())

    def _token_ports(self) -> list[int]:
        text = self.config.read_text()
        if "realm: 'https://127.0.0.1:" not in text:
            return []
        return [int(text.split("realm: 'https://127.0.0.1:")[1].split("/")[0])]


class CuttingProxy:
    """A TCP proxy in front of a registry that breaks the connection carrying byte ``cut_at`` of
    server-to-client data, once: a network failure mid-download, on a real connection."""

    def __init__(self, target_port: int, cut_at: int, on_cut=None) -> None:
        self.target_port = target_port
        self.cut_at = cut_at
        self.on_cut = on_cut  # called at the cut, before the connection closes (e.g. kill the registry)
        self.sent = 0
        self.cuts = 0
        self._lock = threading.Lock()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:  # the registry is down (killed by a test): the client sees a reset
                client.close()
                continue
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, downstream: bool) -> None:
        try:
            while data := src.recv(65536):
                if downstream:
                    with self._lock:
                        before, self.sent = self.sent, self.sent + len(data)
                        cut = self.cuts == 0 and before < self.cut_at <= self.sent
                        if cut:
                            self.cuts += 1
                    if cut:
                        dst.sendall(data[: self.cut_at - before])
                        if self.on_cut is not None:
                            self.on_cut()
                        break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self._stop = True
        self.sock.close()
