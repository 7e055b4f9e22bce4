"""Registry credentials in Docker's client config: ``$DOCKER_CONFIG/config.json``, ``~/.docker/config.json``.

The ``auths`` map holds ``{"<registry>": {"auth": base64("user:password")}}``; Docker Hub's key is
``https://index.docker.io/v1/``. Other keys of the file (credential helpers, proxies...) are kept as they
are on every write, and writes are atomic with mode 0600, so a crash never leaves a torn file and the
password is never world-readable. Credential helpers (``credsStore``) are not supported yet.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

from hutch.errors import InvalidArgument
from hutch.fsutil import atomic_write

DOCKER_HUB_KEY = "https://index.docker.io/v1/"
_HUB_DOMAINS = ("docker.io", "index.docker.io", "registry-1.docker.io")


def config_path() -> Path:
    """Where Docker's client keeps its config (DOCKER_CONFIG names the directory)."""
    folder = os.environ.get("DOCKER_CONFIG")
    return Path(folder) / "config.json" if folder else Path.home() / ".docker" / "config.json"


def key_for(registry: str) -> str:
    """The ``auths`` key Docker uses for a registry domain."""
    return DOCKER_HUB_KEY if registry in _HUB_DOMAINS else registry


def _candidates(registry: str) -> list[str]:
    key = key_for(registry)
    return [key, f"https://{registry}", f"http://{registry}", f"https://{registry}/v1/", f"{registry}/v2/"]


def _read(path: Path) -> dict:
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except ValueError as err:
        raise InvalidArgument(f"{path}: invalid JSON: {err}")
    if not isinstance(doc, dict):
        raise InvalidArgument(f"{path}: expected a JSON object")
    return doc


def lookup(registry: str, path: Path | None = None) -> tuple[str, str] | None:
    """(user, password) saved for ``registry``, or None."""
    path = path or config_path()
    auths = _read(path).get("auths") or {}
    for key in _candidates(registry):
        entry = auths.get(key)
        if isinstance(entry, dict) and entry.get("auth"):
            try:
                user, sep, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                raise InvalidArgument(f"{path}: invalid auth entry for {key}")
            if sep:
                return user, password
    return None


def save(registry: str, user: str, password: str, path: Path | None = None) -> Path:
    """Record credentials for ``registry`` (other entries and keys kept); returns the file written."""
    path = path or config_path()
    doc = _read(path)
    auths = doc.setdefault("auths", {})
    auths[key_for(registry)] = {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}
    _write(path, doc)
    return path


def erase(registry: str, path: Path | None = None) -> bool:
    """Forget the credentials for ``registry``; False when there were none."""
    path = path or config_path()
    doc = _read(path)
    auths = doc.get("auths") or {}
    found = [k for k in _candidates(registry) if k in auths]
    for key in found:
        del auths[key]
    if found:
        _write(path, doc)
    return bool(found)


def _write(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write(path, json.dumps(doc, indent="\t").encode() + b"\n", mode=0o600)
