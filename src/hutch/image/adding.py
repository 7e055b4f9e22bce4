"""Adding images to the store: cross-check manifest and config, unpack the layers, record it all at once.

Used by ``ImageStore.add_images`` (import, load, pull), never on the ``hutch run`` path. The blobs are
already in the blob store, written through an ``Ingest`` that holds the store lock shared; an add either
records every image in one transaction or leaves the store as it was.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from hutch.errors import CorruptContent
from hutch.image.layers import Layer
from hutch.oci import image as oci
from hutch.oci import reference
from hutch.oci.digest import Digest, chain_ids

if TYPE_CHECKING:
    from hutch.db import Database
    from hutch.image.blobs import BlobStore
    from hutch.image.layers import LayerDirs
    from hutch.image.store import Ingest, NewImage


class _Prepared(NamedTuple):
    manifest_digest: Digest
    manifest_size: int
    manifest: oci.Manifest
    config: dict[str, Any]
    layers: list[Layer]
    refs: list[reference.Reference]


class ImageAdder:
    """Verifies, unpacks and records new images for an ``ImageStore``."""

    def __init__(self, db: Database, blobs: BlobStore, layers: LayerDirs) -> None:
        self.db = db
        self.blobs = blobs
        self.layers = layers

    def add(self, items: Sequence[NewImage], ing: Ingest, unpack: bool) -> list[str]:
        """Add ``items`` all or nothing (see ``ImageStore.add_images``); returns their image IDs."""
        prepared = [self._prepare(item, ing) for item in items]
        created: list[Digest] = []
        try:
            sizes = self._unpack_all(prepared, created) if unpack else {}
            sizes.update(ing.unpacked)
            with self.db.transaction() as conn:
                for p in prepared:
                    self._insert(conn, p, sizes)
        except BaseException:
            self.layers.remove_orphans(created)
            raise
        return [str(p.manifest.config.digest) for p in prepared]

    def _prepare(self, item: NewImage, ing: Ingest) -> _Prepared:
        """Parse and cross-check manifest and config; store both blobs."""
        manifest = oci.parse_manifest(item.manifest, item.media_type)
        manifest.config.digest.verify_bytes(item.config, "image config")
        config = oci.parse_image_config(item.config)
        diff_ids = oci.config_diff_ids(config)
        if len(diff_ids) != len(manifest.layers) or manifest.config.size != len(item.config):
            raise CorruptContent(f"image {manifest.config.digest}: manifest and config do not agree")
        for blob in manifest.layers:
            self._check_blob(blob)
        layers = list(map(Layer, chain_ids(diff_ids), diff_ids, manifest.layers))
        refs = [reference.normalize(n) for n in item.names]
        manifest_digest = ing.put_bytes(item.manifest)
        ing.put_bytes(item.config, manifest.config.digest)
        return _Prepared(manifest_digest, len(item.manifest), manifest, config, layers, refs)

    def _check_blob(self, blob: oci.Descriptor) -> None:
        if not self.blobs.has(blob.digest) or self.blobs.size(blob.digest) != blob.size:
            raise CorruptContent(f"blob {blob.digest} is missing from the store or has the wrong size")

    def _unpack_all(self, prepared: list[_Prepared], created: list[Digest]) -> dict[str, int]:
        sizes: dict[str, int] = {}
        for p in prepared:
            for layer in p.layers:
                made, size = self.layers.unpack(layer)
                if made:
                    created.append(layer.chain_id)
                if size is not None:
                    sizes[str(layer.chain_id)] = size
        return sizes

    def _insert(self, conn, p: _Prepared, sizes: dict[str, int]) -> None:
        """Record one image; blobs are checked inside the transaction so a concurrent discard cannot win."""
        for blob in (p.manifest.config, *p.manifest.layers):
            self._check_blob(blob)
        image_id, now, created = (
            str(p.manifest.config.digest),
            time.time(),
            str(p.config.get("created") or ""),
        )
        row = (
            image_id,
            str(p.manifest_digest),
            p.manifest.media_type,
            p.manifest_size,
            p.manifest.config.size,
        )
        cur = conn.execute("INSERT OR IGNORE INTO images VALUES (?, ?, ?, ?, ?, ?, ?)", (*row, created, now))
        if cur.rowcount:
            parent = None
            for pos, layer in enumerate(p.layers):
                self._insert_layer(conn, image_id, pos, layer, parent, sizes)
                parent = str(layer.chain_id)
        for ref in p.refs:
            kind = "digest" if ref.digest is not None else "tag"
            name = f"{ref.name}@{ref.digest}" if ref.digest is not None else str(ref)
            conn.execute(
                "INSERT INTO image_refs VALUES (?, ?, ?, ?) ON CONFLICT(name) DO UPDATE "
                "SET image_id = excluded.image_id, added = excluded.added",
                (name, image_id, kind, now),
            )

    def _insert_layer(self, conn, image_id: str, pos: int, layer: Layer, parent: str | None, sizes) -> None:
        chain = str(layer.chain_id)
        unpacked = chain in sizes or self.layers.has(layer.chain_id)
        conn.execute(
            "INSERT INTO layers VALUES (?, ?, ?, ?, ?) ON CONFLICT(chain_id) DO UPDATE SET unpacked = "
            "max(unpacked, excluded.unpacked), diff_size = coalesce(diff_size, excluded.diff_size)",
            (chain, str(layer.diff_id), parent, sizes.get(chain), int(unpacked)),
        )
        conn.execute(
            "INSERT INTO image_layers VALUES (?, ?, ?, ?, ?, ?)",
            (image_id, pos, chain, str(layer.blob.digest), layer.blob.media_type, layer.blob.size),
        )
