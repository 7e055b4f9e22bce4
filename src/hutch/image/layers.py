"""Layer directories under ``<root>/layers``: unpacked under locks, in and out of place only by rename.

The on-disk layout and why it is safe are described in ``hutch.image.store``; this module owns the
directories, the lock files and the ``layers.unpacked`` flag. It is imported only when a layer has to be
unpacked or removed, or the store lock taken: a ``hutch run`` whose layers are ready never loads it.
"""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from hutch.errors import CorruptContent
from hutch.oci import image as oci
from hutch.oci.digest import Digest, HashingReader

if TYPE_CHECKING:
    from hutch.db import Database
    from hutch.image.blobs import BlobStore


class Layer(NamedTuple):
    """One layer of an image: its chain ID (the directory's name), its diff ID and its stored blob."""

    chain_id: Digest
    diff_id: Digest
    blob: oci.Descriptor


class LayerDirs:
    """The unpacked layers of an image store, one directory per chain ID, and the locks that guard them."""

    def __init__(self, path: Path, db: Database, blobs: BlobStore) -> None:
        self.path = path
        self.db = db
        self.blobs = blobs

    @contextmanager
    def lock(self, name: str, op: int) -> Iterator[None]:
        """flock on ``layers/<name>``. The store lock ``.lock`` is taken shared by writers and unpackers
        (Linux grants a shared flock even with an exclusive one queued, so nesting it cannot deadlock) and
        exclusive by garbage collection; ``.locks/<chain hex>`` serialises the unpacking of one layer."""
        path = self.path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, op)
            yield
        finally:
            os.close(fd)

    def store_lock(self, exclusive: bool = False) -> AbstractContextManager[None]:
        """The store lock: shared while adding or unpacking, exclusive while collecting garbage."""
        return self.lock(".lock", fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)

    # ----- unpacking ---------------------------------------------------------------------------------

    def unpack_missing(self, image_id: str) -> None:
        """Unpack the image's layers not yet marked unpacked, bottom first, and mark each one done."""
        with self.store_lock():
            rows = self.db.conn.execute(
                "SELECT il.chain_id, l.diff_id, il.blob_digest, il.media_type, il.blob_size "
                "FROM image_layers il JOIN layers l ON l.chain_id = il.chain_id "
                "WHERE il.image_id = ? AND l.unpacked = 0 "
                "ORDER BY il.position",
                (image_id,),
            ).fetchall()
            for chain, diff_id, blob, media_type, size in rows:
                desc = oci.Descriptor(media_type, Digest.parse(blob), size)
                _, diff_size = self.unpack(Layer(Digest.parse(chain), Digest.parse(diff_id), desc))
                with self.db.transaction() as conn:
                    conn.execute(
                        "UPDATE layers SET unpacked = 1, diff_size = coalesce(diff_size, ?) "
                        "WHERE chain_id = ?",
                        (diff_size, chain),
                    )

    def has(self, chain_id: Digest) -> bool:
        """Whether the layer is unpacked: its directory exists under its real name only once complete."""
        return (self.path / chain_id.hex).is_dir()

    def unpack(self, layer: Layer) -> tuple[bool, int | None]:
        """Make ``layers/<chain hex>`` exist; returns (whether we made it, its uncompressed size)."""
        final = self.path / layer.chain_id.hex
        if final.is_dir():
            return False, None
        with self.lock(f".locks/{layer.chain_id.hex}", fcntl.LOCK_EX):
            if final.is_dir():  # another process finished it while we waited
                return False, None
            tmp = self.path / f".tmp-{layer.chain_id.hex}-{os.getpid()}-{os.urandom(4).hex()}"
            tmp.mkdir(mode=0o755)
            try:
                size = self._extract(layer, tmp)
                os.rename(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        return True, size

    def _extract(self, layer: Layer, dest: Path) -> int:
        """Decompress and unpack in one pass, hashing both the blob and the uncompressed stream."""
        from hutch.image.compression import open_decompressed
        from hutch.image.unpack import unpack_layer

        oci.layer_compression(layer.blob.media_type, f"layer {layer.blob.digest}")
        with self.blobs.open(layer.blob.digest, layer.blob.size) as f:
            packed = HashingReader(f, layer.blob.digest.algorithm)
            try:
                plain = HashingReader(open_decompressed(packed), layer.diff_id.algorithm)
                unpack_layer(plain, dest)
                plain.drain()
            except Exception:
                packed.drain()  # a corrupt blob explains a failed unpack better than the tar error does
                _check_digest(packed, layer.blob.digest, "layer blob")
                raise
            packed.drain()
        _check_digest(packed, layer.blob.digest, "layer blob")
        _check_digest(plain, layer.diff_id, f"layer {layer.blob.digest}: diff ID")
        return plain.size

    # ----- removal -----------------------------------------------------------------------------------

    def remove(self, chain: str) -> None:
        """Delete a layer's directory and its lock file (``chain`` is a chain ID, ``sha256:<hex>``)."""
        self._purge(self.path / chain.partition(":")[2])
        (self.path / ".locks" / chain.partition(":")[2]).unlink(missing_ok=True)

    def remove_orphans(self, chains: list[Digest]) -> None:
        """After a failed add: drop the layer dirs it unpacked that no recorded layer claims.

        Renamed inside a transaction: a concurrent add that found such a dir and is recording it as
        unpacked checks for it inside its own transaction, so one of the two sees the other's result.
        """
        with self.db.transaction() as conn:
            claimed = "SELECT 1 FROM layers WHERE chain_id = ? LIMIT 1"
            orphans = [c for c in chains if conn.execute(claimed, (str(c),)).fetchone() is None]
            trash = [_trash(self.path / c.hex) for c in orphans]
        for path in trash:
            if path is not None:
                shutil.rmtree(path, ignore_errors=True)

    def sweep(self, conn) -> None:
        """Within ``gc``'s transaction and exclusive store lock: remove temp and trash dirs, layer dirs and
        lock files no recorded layer claims, and clear ``unpacked`` where a layer's dir has gone."""
        known = {r[0].partition(":")[2] for r in conn.execute("SELECT chain_id FROM layers")}
        for entry in self.path.iterdir() if self.path.is_dir() else ():
            if entry.name.startswith((".tmp-", ".trash-")):
                shutil.rmtree(entry, ignore_errors=True)
            elif not entry.name.startswith(".") and entry.name not in known:
                self._purge(entry)
        for lock in (self.path / ".locks").glob("*"):
            if lock.name not in known:  # nobody holds a layer lock while we hold the store lock
                lock.unlink(missing_ok=True)
        for chain in conn.execute("SELECT chain_id FROM layers WHERE unpacked = 1").fetchall():
            if not (self.path / chain[0].partition(":")[2]).is_dir():
                conn.execute("UPDATE layers SET unpacked = 0 WHERE chain_id = ?", (chain[0],))

    @staticmethod
    def _purge(path: Path) -> None:
        """Rename a dir to a trash name, then delete it: no one ever sees half a layer."""
        trash = _trash(path)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)


def _trash(path: Path) -> Path | None:
    """Rename a layer dir off its real name, the one atomic step of deleting it; the caller rmtrees."""
    trash = path.with_name(f".trash-{path.name}-{os.urandom(4).hex()}")
    try:
        os.rename(path, trash)
    except FileNotFoundError:
        return None
    return trash


def _check_digest(reader: HashingReader, expected: Digest, what: str) -> None:
    actual = reader.digest()
    if actual != expected:
        raise CorruptContent(f"{what}: digest mismatch: expected {expected}, got {actual}")
