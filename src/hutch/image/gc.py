"""Garbage collection for the image store: deleting image records and the blobs and layers they leave
unreferenced, and sweeping what a crash leaked.

Files are deleted only after the transaction that stopped referencing them has committed, under the store
lock held exclusive so no add or unpack is between writing a file and recording it. Imported only by
``rmi``, ``image prune`` and the end of an ingest, never on the ``hutch run`` path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from hutch.oci.digest import Digest

if TYPE_CHECKING:
    from hutch.db import Database
    from hutch.image.blobs import BlobStore
    from hutch.image.layers import LayerDirs


class Collector:
    """Removes what no image references: records, layer dirs (through ``LayerDirs``) and blobs."""

    def __init__(self, db: Database, blobs: BlobStore, layers: LayerDirs) -> None:
        self.db = db
        self.blobs = blobs
        self.layers = layers

    def delete_images(self, image_ids: list[str]) -> tuple[list[dict[str, str]], int]:
        """Delete image records, then the layers and blobs nobody references any more."""
        with self.layers.store_lock(exclusive=True):
            with self.db.transaction() as conn:
                chains, blobs = _candidates(conn, image_ids)
                q = ",".join("?" * len(image_ids))
                conn.execute(f"DELETE FROM images WHERE id IN ({q})", image_ids)
                dead_chains = [c for c in chains if not _referenced(conn, "image_layers", "chain_id", c)]
                conn.executemany("DELETE FROM layers WHERE chain_id = ?", [(c,) for c in dead_chains])
                dead_blobs = [b for b in blobs if not _blob_referenced(conn, b)]
            freed = self._remove_files(dead_chains, dead_blobs)
        records = [{"Deleted": i} for i in image_ids] + [{"Deleted": c} for c in dead_chains]
        return records, freed

    def discard_unreferenced(self, digests: set[Digest]) -> None:
        """Delete blobs an ingest wrote that no image references (inside a transaction: see ``_insert``
        in ``hutch.image.adding``)."""
        if not digests:
            return
        with self.db.transaction() as conn:
            for digest in digests:
                if not _blob_referenced(conn, str(digest)):
                    self.blobs.delete(digest)

    def collect(self) -> int:
        """Sweep what a crash may have leaked: unreferenced blobs, stray layer dirs, temp and trash dirs."""
        with self.layers.store_lock(exclusive=True), self.db.transaction() as conn:
            stray = [b for b in self.blobs.list() if not _blob_referenced(conn, str(b))]
            freed = self._remove_files([], [str(b) for b in stray])
            self.layers.sweep(conn)
        return freed

    def _remove_files(self, chains: list[str], blobs: Sequence[str]) -> int:
        """Layer dirs leave by rename to a trash name first, so no one sees half a layer."""
        freed = 0
        for chain in chains:
            self.layers.remove(chain)
        for blob in blobs:
            digest = Digest.parse(blob)
            try:
                freed += self.blobs.path(digest).stat().st_size
            except FileNotFoundError:
                continue
            self.blobs.delete(digest)
        return freed


def _candidates(conn, image_ids: list[str]) -> tuple[list[str], set[str]]:
    q = ",".join("?" * len(image_ids))
    rows = conn.execute(
        f"SELECT chain_id, blob_digest FROM image_layers WHERE image_id IN ({q}) ORDER BY position DESC",
        image_ids,
    ).fetchall()
    chains = list(dict.fromkeys(r[0] for r in rows))
    blobs = {r[1] for r in rows}
    for image_id, manifest in conn.execute(
        f"SELECT id, manifest_digest FROM images WHERE id IN ({q})", image_ids
    ):
        blobs.update((image_id, manifest))
    return chains, blobs


def _blob_referenced(conn, blob: str) -> bool:
    return (
        _referenced(conn, "images", "id", blob)
        or _referenced(conn, "images", "manifest_digest", blob)
        or _referenced(conn, "image_layers", "blob_digest", blob)
    )


def _referenced(conn, table: str, column: str, value: str) -> bool:
    return conn.execute(f"SELECT 1 FROM {table} WHERE {column} = ? LIMIT 1", (value,)).fetchone() is not None
