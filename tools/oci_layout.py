#!/usr/bin/env python3
"""Write OCI image layouts offline, for registry tests and the pull benchmark (pushed with ``skopeo``).

``write_image`` stores gzip layers (the busybox rootfs, then filler layers of pseudo-random bytes), a
config and a manifest in ``<dir>/blobs/sha256``; ``write_index`` names manifests in ``index.json``, either
directly (one tag) or through a multi-platform image index. Standard library only (zstd layers
need ``zstandard``).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import tarfile
from pathlib import Path

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"


def _put(layout: Path, data: bytes) -> tuple[str, int]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    path = layout / "blobs" / "sha256" / digest[7:]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return digest, len(data)


def filler_tar(name: str, size: int, seed: int) -> bytes:
    """A tar holding one file of ``size`` pseudo-random (incompressible, reproducible) bytes."""
    data = random.Random(seed).randbytes(size)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = size, 0o644, 0
        tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def _compress(tar: bytes, compression: str) -> tuple[bytes, str]:
    if compression == "zstd":
        import zstandard  # hutch's own dependency; only this option needs it

        return zstandard.ZstdCompressor(level=1).compress(tar), OCI_LAYER_ZSTD
    if compression == "none":
        return tar, OCI_LAYER_TAR
    return gzip.compress(tar, compresslevel=1, mtime=0), OCI_LAYER_GZIP


def write_image(
    layout: Path,
    layer_tars: list[bytes],
    arch: str = "amd64",
    env: list[str] | None = None,
    compression: str = "gzip",
) -> dict:
    """Store an image's blobs in ``layout`` (layers gzip, zstd or none); returns its manifest descriptor
    (with platform)."""
    diff_ids, layers = [], []
    for tar in layer_tars:
        diff_ids.append("sha256:" + hashlib.sha256(tar).hexdigest())
        blob, media_type = _compress(tar, compression)
        digest, size = _put(layout, blob)
        layers.append({"mediaType": media_type, "digest": digest, "size": size})
    config = {
        "architecture": arch,
        "os": "linux",
        "created": "2026-01-01T00:00:00Z",
        "config": {"Cmd": ["/bin/sh"], "Env": env or ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    config_digest, config_size = _put(layout, json.dumps(config).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config_size},
        "layers": layers,
    }
    digest, size = _put(layout, json.dumps(manifest).encode())
    return {
        "mediaType": OCI_MANIFEST,
        "digest": digest,
        "size": size,
        "platform": {"os": "linux", "architecture": arch},
    }


def write_index(layout: Path, tag: str, manifests: list[dict]) -> dict:
    """``index.json`` naming ``tag``: the manifest itself, or an image index of several platforms."""
    if len(manifests) == 1:
        top = dict(manifests[0])
    else:
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
        digest, size = _put(layout, json.dumps(index).encode())
        top = {"mediaType": OCI_INDEX, "digest": digest, "size": size}
    top.pop("platform", None)
    top["annotations"] = {"org.opencontainers.image.ref.name": tag}
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [top]}))
    return top
