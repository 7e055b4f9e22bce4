"""The local image store: images, their names, and their layers unpacked for overlayfs.

On disk under ``<root>``::

    hutch.db                       images, image_refs, layers, image_layers (this module's tables)
    blobs/sha256/<hex>             manifests, configs and layer blobs (BlobStore)
    layers/<chain-id-hex>/         one unpacked layer, an overlayfs lower dir; keyed by chain ID so images
                                   sharing a base share its directories
    layers/.lock                   store lock: shared while adding or unpacking, exclusive while collecting
    layers/.locks/<chain-id-hex>   per-layer lock: whoever holds it unpacks that layer, others wait
    layers/.tmp-*, layers/.trash-* a layer being unpacked, a layer being deleted

Why it is safe: a layer directory appears under its real name only by ``rename`` after its blob and diff
ID were verified, and leaves it by ``rename`` to a trash name before it is removed, so no process ever
sees half a layer. Database changes are single transactions, and files are deleted only after the
transaction that stopped referencing them has committed (a crash leaks, never breaks; ``gc`` sweeps).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

from hutch.db import Database
from hutch.errors import Conflict, CorruptContent, InvalidArgument, NotFound
from hutch.image.blobs import BlobStore
from hutch.oci import image as oci
from hutch.oci import reference
from hutch.oci.digest import Digest, HashingReader, chain_ids

SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id TEXT PRIMARY KEY,                 -- config digest
    manifest_digest TEXT NOT NULL,
    manifest_media_type TEXT NOT NULL,
    manifest_size INTEGER NOT NULL,
    config_size INTEGER NOT NULL,
    created TEXT NOT NULL,               -- from the config
    added REAL NOT NULL                  -- when it entered this store (unix time)
);
CREATE TABLE IF NOT EXISTS image_refs (
    name TEXT PRIMARY KEY,               -- full form: docker.io/library/busybox:latest or repo@sha256:...
    image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    kind TEXT NOT NULL CHECK (kind IN ('tag', 'digest')),
    added REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS image_refs_by_image ON image_refs(image_id);
CREATE TABLE IF NOT EXISTS layers (
    chain_id TEXT PRIMARY KEY,
    diff_id TEXT NOT NULL,
    parent TEXT,                         -- chain ID of the layer below
    diff_size INTEGER,                   -- uncompressed size, once known
    unpacked INTEGER NOT NULL DEFAULT 0  -- layers/<chain hex> is complete
);
CREATE TABLE IF NOT EXISTS image_layers (
    image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    position INTEGER NOT NULL,           -- 0 = bottom
    chain_id TEXT NOT NULL REFERENCES layers(chain_id),
    blob_digest TEXT NOT NULL,
    media_type TEXT NOT NULL,
    blob_size INTEGER NOT NULL,
    PRIMARY KEY (image_id, position)
);
CREATE INDEX IF NOT EXISTS image_layers_by_chain ON image_layers(chain_id);
CREATE INDEX IF NOT EXISTS image_layers_by_blob ON image_layers(blob_digest);
"""

_HEX = frozenset("0123456789abcdef")
InUse = Callable[[str], list[str]]


def _never_in_use(_image_id: str) -> list[str]:
    return []


@dataclass
class Image:
    """An image as the engine sees it; ``id`` is the config digest, ``names`` are familiar tags."""

    id: Digest
    manifest_digest: Digest
    names: list[str]
    config: dict[str, Any]
    created: str
    size: int
    diff_ids: list[Digest]
    digests: list[str] = field(default_factory=list)
    manifest_media_type: str = oci.OCI_MANIFEST
    added: float = 0.0

    @property
    def run_config(self) -> dict[str, Any]:
        """The ``config`` section (Cmd, Env, WorkingDir...), empty when the image has none."""
        return self.config.get("config") or {}


class NewImage(NamedTuple):
    """An image to add: its manifest and config bytes (layer blobs already in the blob store)."""

    manifest: bytes
    config: bytes
    names: Sequence[str] = ()
    media_type: str | None = None


class _Layer(NamedTuple):
    chain_id: Digest
    diff_id: Digest
    blob: oci.Descriptor


class _Prepared(NamedTuple):
    manifest_digest: Digest
    manifest_size: int
    manifest: oci.Manifest
    config: dict[str, Any]
    layers: list[_Layer]
    refs: list[reference.Reference]


class Ingest:
    """Blob writes for images about to be added; remembers what it wrote so unused blobs are taken back.

    Obtained from ``ImageStore.ingest()``, which holds the store lock shared, so a concurrent ``gc`` can
    never delete a blob between its write and the ``add_image`` that references it.
    """

    def __init__(self, blobs: BlobStore) -> None:
        self.blobs = blobs
        self.touched: set[Digest] = set()

    def has(self, digest: Digest) -> bool:
        return self.blobs.has(digest)

    def put_stream(
        self, stream: BinaryIO, expected: Digest | None = None, expected_size: int | None = None
    ) -> tuple[Digest, int]:
        """Store a blob (skipped when ``expected`` is already present with the right size)."""
        if expected is not None and self.blobs.has(expected):
            size = self.blobs.size(expected)
            if expected_size is None or size == expected_size:
                return expected, size
        digest, size = self.blobs.put_stream(stream, expected, expected_size)
        self.touched.add(digest)
        return digest, size

    def put_bytes(self, data: bytes, expected: Digest | None = None) -> Digest:
        digest = self.blobs.put_bytes(data, expected)
        self.touched.add(digest)
        return digest


class ImageStore:
    """Images by reference or ID, with their layers unpacked on demand for the engine."""

    def __init__(self, root: Path, db: Database) -> None:
        self.root = root
        self.db = db
        self.blobs = BlobStore(root)
        self.layers_dir = root / "layers"
        db.ensure_schema("image", SCHEMA)

    @contextmanager
    def _lock(self, name: str, op: int) -> Iterator[None]:
        """flock on ``layers/<name>``. The store lock ``.lock`` is taken shared by writers and unpackers
        (Linux grants a shared flock even with an exclusive one queued, so nesting it cannot deadlock) and
        exclusive by garbage collection; ``.locks/<chain hex>`` serialises the unpacking of one layer."""
        path = self.layers_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, op)
            yield
        finally:
            os.close(fd)

    # ----- adding ------------------------------------------------------------------------------------

    @contextmanager
    def ingest(self) -> Iterator[Ingest]:
        """``with store.ingest() as ing:`` write blobs, then ``add_image``; unused ones go at exit."""
        with self._lock(".lock", fcntl.LOCK_SH):
            ing = Ingest(self.blobs)
            try:
                yield ing
            finally:
                self._discard_unreferenced(ing.touched)

    def add_image(
        self,
        manifest: bytes,
        config: bytes,
        names: Sequence[str] = (),
        *,
        media_type: str | None = None,
        unpack: bool = True,
    ) -> Image:
        """Add one image whose layer blobs are stored; ``names`` may be tags or ``repo@digest``."""
        return self.add_images([NewImage(manifest, config, names, media_type)], unpack=unpack)[0]

    def add_images(self, items: Sequence[NewImage], *, unpack: bool = True) -> list[Image]:
        """Add images all or nothing: verify and unpack every layer, then record them in one transaction.

        With ``unpack`` each layer's blob digest and diff ID are checked now (a corrupt layer fails here,
        leaving the store unchanged); without it they are checked by the first ``rootfs_layers``.
        """
        with self.ingest() as ing:
            prepared = [self._prepare(item, ing) for item in items]
            created: list[Digest] = []
            try:
                sizes = self._unpack_all(prepared, created) if unpack else {}
                with self.db.transaction() as conn:
                    for p in prepared:
                        self._insert(conn, p, sizes)
            except BaseException:
                self._remove_orphan_dirs(created)
                raise
        return [self._load(str(p.manifest.config.digest)) for p in prepared]

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
        layers = list(map(_Layer, chain_ids(diff_ids), diff_ids, manifest.layers))
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
                made, size = self._unpack_layer(layer)
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

    def _insert_layer(self, conn, image_id: str, pos: int, layer: _Layer, parent: str | None, sizes) -> None:
        chain = str(layer.chain_id)
        unpacked = chain in sizes or (self.layers_dir / layer.chain_id.hex).is_dir()
        conn.execute(
            "INSERT INTO layers VALUES (?, ?, ?, ?, ?) ON CONFLICT(chain_id) DO UPDATE SET unpacked = "
            "max(unpacked, excluded.unpacked), diff_size = coalesce(diff_size, excluded.diff_size)",
            (chain, str(layer.diff_id), parent, sizes.get(chain), int(unpacked)),
        )
        conn.execute(
            "INSERT INTO image_layers VALUES (?, ?, ?, ?, ?, ?)",
            (image_id, pos, chain, str(layer.blob.digest), layer.blob.media_type, layer.blob.size),
        )

    # ----- unpacking ---------------------------------------------------------------------------------

    def rootfs_layers(self, image: Image) -> list[Path]:
        """The image's unpacked layer directories, bottom first, unpacking any that are not yet.

        The hot path of ``hutch run``: when every layer is unpacked this is one indexed query.
        """
        rows = self.db.conn.execute(
            "SELECT il.chain_id, l.unpacked FROM image_layers il JOIN layers l ON l.chain_id = il.chain_id "
            "WHERE il.image_id = ? ORDER BY il.position",
            (str(image.id),),
        ).fetchall()
        if len(rows) != len(image.diff_ids):
            raise NotFound(f"image {image.id.short} was removed")
        paths = [self.layers_dir / chain.partition(":")[2] for chain, _ in rows]
        if not all(unpacked for _, unpacked in rows):
            self._unpack_missing(str(image.id))
        return paths

    def _unpack_missing(self, image_id: str) -> None:
        with self._lock(".lock", fcntl.LOCK_SH):
            rows = self.db.conn.execute(
                "SELECT il.chain_id, l.diff_id, il.blob_digest, il.media_type, il.blob_size "
                "FROM image_layers il JOIN layers l ON l.chain_id = il.chain_id "
                "WHERE il.image_id = ? AND l.unpacked = 0 "
                "ORDER BY il.position",
                (image_id,),
            ).fetchall()
            for chain, diff_id, blob, media_type, size in rows:
                desc = oci.Descriptor(media_type, Digest.parse(blob), size)
                _, diff_size = self._unpack_layer(_Layer(Digest.parse(chain), Digest.parse(diff_id), desc))
                with self.db.transaction() as conn:
                    conn.execute(
                        "UPDATE layers SET unpacked = 1, diff_size = coalesce(diff_size, ?) "
                        "WHERE chain_id = ?",
                        (diff_size, chain),
                    )

    def _unpack_layer(self, layer: _Layer) -> tuple[bool, int | None]:
        """Make ``layers/<chain hex>`` exist; returns (whether we made it, its uncompressed size)."""
        final = self.layers_dir / layer.chain_id.hex
        if final.is_dir():
            return False, None
        with self._lock(f".locks/{layer.chain_id.hex}", fcntl.LOCK_EX):
            if final.is_dir():  # another process finished it while we waited
                return False, None
            tmp = self.layers_dir / f".tmp-{layer.chain_id.hex}-{os.getpid()}-{os.urandom(4).hex()}"
            tmp.mkdir(mode=0o755)
            try:
                size = self._extract(layer, tmp)
                os.rename(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        return True, size

    def _extract(self, layer: _Layer, dest: Path) -> int:
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
                self._check_digest(packed, layer.blob.digest, "layer blob")
                raise
            packed.drain()
        self._check_digest(packed, layer.blob.digest, "layer blob")
        self._check_digest(plain, layer.diff_id, f"layer {layer.blob.digest}: diff ID")
        return plain.size

    @staticmethod
    def _check_digest(reader: HashingReader, expected: Digest, what: str) -> None:
        actual = reader.digest()
        if actual != expected:
            raise CorruptContent(f"{what}: digest mismatch: expected {expected}, got {actual}")

    def layer_blobs(self, image: Image) -> list[oci.Descriptor]:
        """The image's layer blobs, bottom first, as stored (for save and push)."""
        rows = self.db.conn.execute(
            "SELECT media_type, blob_digest, blob_size FROM image_layers WHERE image_id = ? "
            "ORDER BY position",
            (str(image.id),),
        ).fetchall()
        return [oci.Descriptor(media_type, Digest.parse(d), size) for media_type, d, size in rows]

    # ----- lookup ------------------------------------------------------------------------------------

    def resolve(self, ref: str) -> Image:
        """An image by name[:tag], name@digest, full ID, or a unique ID prefix of at least 4 hex digits."""
        return self._load(self._resolve_id(ref)[0])

    def _resolve_id(self, text: str) -> tuple[str, str | None]:
        """(image id, the image_refs name it was found by, or None when found by ID).

        As Docker does, a name is tried before an ID prefix: ``abcd`` may be a repository.
        """
        parsed: reference.Reference | None = None
        if not text.startswith("sha256:"):
            try:
                parsed = reference.parse(text)
            except InvalidArgument:
                if self._lookup_id(text) is None:
                    raise
        found = self._lookup_ref(parsed) if parsed is not None else None
        if found:
            return found
        image_id = self._lookup_id(text)
        if image_id:
            return image_id, None
        shown = parsed.with_default_tag().familiar() if parsed is not None else text
        raise NotFound(f'image "{shown}" not found')

    def _lookup_ref(self, ref: reference.Reference) -> tuple[str, str] | None:
        conn = self.db.conn
        if ref.digest is None:
            name = str(ref.with_default_tag())
            row = conn.execute("SELECT image_id FROM image_refs WHERE name = ?", (name,)).fetchone()
            return (row[0], name) if row else None
        name = f"{ref.name}@{ref.digest}"
        row = conn.execute("SELECT image_id FROM image_refs WHERE name = ?", (name,)).fetchone()
        if row:
            return row[0], name
        # A manifest digest we hold, asked for under a repository the image is known by.
        row = conn.execute(
            "SELECT i.id FROM images i JOIN image_refs r ON r.image_id = i.id WHERE i.manifest_digest = ? "
            "AND substr(r.name, 1, ?) IN (?, ?) LIMIT 1",
            (str(ref.digest), len(ref.name) + 1, f"{ref.name}:", f"{ref.name}@"),
        ).fetchone()
        return (row[0], None) if row else None

    def _lookup_id(self, text: str) -> str | None:
        """Full ``sha256:<hex>`` or a unique prefix of at least 4 hex digits (with or without ``sha256:``)."""
        prefix = text.removeprefix("sha256:")
        if len(prefix) < 4 or len(prefix) > 64 or not set(prefix) <= _HEX:
            return None
        rows = self.db.conn.execute(
            "SELECT id FROM images WHERE id >= ? AND id < ? LIMIT 2",
            (f"sha256:{prefix}", f"sha256:{prefix}g"),
        ).fetchall()
        if len(rows) > 1:
            raise InvalidArgument(f'image ID prefix "{text}" is ambiguous: it matches more than one image')
        return rows[0][0] if rows else None

    def _load(self, image_id: str) -> Image:
        images = self._images(image_id)
        if not images:
            raise NotFound(f'image "{image_id}" not found')
        return images[0]

    def list_images(self) -> list[Image]:
        """Every image, newest first (by the config's created time, as ``docker images`` sorts)."""
        return self._images()

    def _images(self, image_id: str | None = None) -> list[Image]:
        """One image or all, in three queries whatever their number."""
        cond, args = ("= ?", (image_id,)) if image_id else ("IS NOT NULL", ())
        conn = self.db.conn
        rows = conn.execute(f"SELECT * FROM images WHERE id {cond} ORDER BY created DESC, added DESC", args)
        refs: dict[str, list[tuple[str, str]]] = {}
        query = f"SELECT image_id, name, kind FROM image_refs WHERE image_id {cond} ORDER BY added, name"
        for owner, name, kind in conn.execute(query, args):
            refs.setdefault(owner, []).append((name, kind))
        sizes = dict(
            conn.execute(
                "SELECT il.image_id, sum(coalesce(l.diff_size, il.blob_size)) FROM image_layers il "
                f"JOIN layers l ON l.chain_id = il.chain_id WHERE il.image_id {cond} GROUP BY il.image_id",
                args,
            ).fetchall()
        )
        return [self._build(r, refs.get(r["id"], []), sizes.get(r["id"], 0)) for r in rows.fetchall()]

    def _build(self, row, refs, size: int) -> Image:
        image_id = Digest.parse(row["id"])
        # Not re-hashed: it was verified when stored, and ``hutch run`` must not pay for hashing. The size
        # check still catches a truncated or replaced file.
        with self.blobs.open(image_id, row["config_size"]) as f:
            config = oci.parse_image_config(f.read(), f"image config {image_id}")
        familiar = {name: reference.parse(name).familiar() for name, _ in refs}
        return Image(
            id=image_id,
            manifest_digest=Digest.parse(row["manifest_digest"]),
            names=[familiar[n] for n, kind in refs if kind == "tag"],
            config=config,
            created=row["created"],
            size=size,
            diff_ids=oci.config_diff_ids(config),
            digests=[familiar[n] for n, kind in refs if kind == "digest"],
            manifest_media_type=row["manifest_media_type"],
            added=row["added"],
        )

    def inspect(self, ref: str) -> dict[str, Any]:
        """The image as ``docker image inspect`` shows it."""
        image = self.resolve(ref)
        cfg = image.config
        chains = chain_ids(image.diff_ids)
        out: dict[str, Any] = {
            "Id": str(image.id),
            "RepoTags": image.names,
            "RepoDigests": image.digests,
            "Parent": "",
            "Comment": cfg.get("comment", ""),
            "Created": image.created,
            "DockerVersion": cfg.get("docker_version", ""),
            "Author": cfg.get("author", ""),
            "Config": image.run_config,
            "Architecture": cfg.get("architecture", ""),
            "Os": cfg.get("os", ""),
            "Size": image.size,
            "GraphDriver": {
                "Name": "overlay",
                "Data": {"LowerDir": ":".join(str(self.layers_dir / c.hex) for c in reversed(chains))},
            },
            "RootFS": {"Type": "layers", "Layers": [str(d) for d in image.diff_ids]},
            "Metadata": {"LastTagTime": _rfc3339(image.added)},
            "Descriptor": {"mediaType": image.manifest_media_type, "digest": str(image.manifest_digest)},
        }
        if cfg.get("variant"):
            out["Variant"] = cfg["variant"]
        return out

    # ----- naming ------------------------------------------------------------------------------------

    def tag(self, source_ref: str, target_ref: str) -> None:
        """Point ``target_ref`` at the image ``source_ref`` names (moving it off any other image)."""
        image_id = self._resolve_id(source_ref)[0]
        target = reference.parse_tag_target(target_ref)
        with self.db.transaction() as conn:
            if not conn.execute("SELECT 1 FROM images WHERE id = ?", (image_id,)).fetchone():
                raise NotFound(f'image "{source_ref}" not found')
            conn.execute(
                "INSERT INTO image_refs VALUES (?, ?, 'tag', ?) ON CONFLICT(name) DO UPDATE "
                "SET image_id = excluded.image_id, added = excluded.added",
                (str(target), image_id, time.time()),
            )

    # ----- removal -----------------------------------------------------------------------------------

    def remove(self, ref: str, force: bool = False, in_use: InUse = _never_in_use) -> list[dict[str, str]]:
        """``docker rmi``: untag, and delete the image once nothing names it; returns Docker's records.

        By name: only that reference goes, unless it was the last one. By ID: every reference goes, which
        needs ``force`` when the image is tagged in several repositories. An image used by containers is
        never deleted: without ``force`` that is a Conflict naming them, with it the image only loses its
        names (Docker does the same, so containers keep their root filesystem).
        """
        image_id, by_name = self._resolve_id(ref)
        short = Digest.parse(image_id).short
        names = [
            n for (n,) in self.db.conn.execute("SELECT name FROM image_refs WHERE image_id = ?", (image_id,))
        ]
        if by_name is not None:
            untag = self._names_going_with(by_name, names)
        else:
            repos = {reference.parse(n).name for n in names}
            if len(repos) > 1 and not force:
                raise Conflict(
                    f"unable to delete {short} (must be forced) - "
                    "image is referenced in multiple repositories"
                )
            untag = names
        deleting = set(untag) == set(names)
        users = in_use(image_id) if deleting else []
        if users and not force:
            what = f'remove repository reference "{ref}"' if by_name else f"delete {short}"
            raise Conflict(
                f"unable to {what} (must force) - image {short} is used by container(s) {', '.join(users)}"
            )
        records = [{"Untagged": reference.parse(n).familiar()} for n in untag]
        return records + self._delete(image_id, untag, keep_image=bool(users) or not deleting)

    @staticmethod
    def _names_going_with(name: str, names: list[str]) -> list[str]:
        """Untagging a repository's last tag also drops its digest references, as Docker does."""
        repo = reference.parse(name).name
        rest = [n for n in names if n != name]
        if any(reference.parse(n).name == repo and reference.parse(n).digest is None for n in rest):
            return [name]
        return [name] + [n for n in rest if reference.parse(n).name == repo]

    def _delete(self, image_id: str, untag: list[str], keep_image: bool) -> list[dict[str, str]]:
        if keep_image:
            with self.db.transaction() as conn:
                conn.executemany(
                    "DELETE FROM image_refs WHERE name = ? AND image_id = ?", [(n, image_id) for n in untag]
                )
            return []
        deleted, _ = self._delete_images([image_id])
        return deleted

    def _delete_images(self, image_ids: list[str]) -> tuple[list[dict[str, str]], int]:
        """Delete image records, then the layers and blobs nobody references any more."""
        with self._lock(".lock", fcntl.LOCK_EX):
            with self.db.transaction() as conn:
                chains, blobs = self._candidates(conn, image_ids)
                q = ",".join("?" * len(image_ids))
                conn.execute(f"DELETE FROM images WHERE id IN ({q})", image_ids)
                dead_chains = [c for c in chains if not _referenced(conn, "image_layers", "chain_id", c)]
                conn.executemany("DELETE FROM layers WHERE chain_id = ?", [(c,) for c in dead_chains])
                dead_blobs = [b for b in blobs if not self._blob_referenced(conn, b)]
            freed = self._remove_files(dead_chains, dead_blobs)
        records = [{"Deleted": i} for i in image_ids] + [{"Deleted": c} for c in dead_chains]
        return records, freed

    @staticmethod
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

    @staticmethod
    def _blob_referenced(conn, blob: str) -> bool:
        return (
            _referenced(conn, "images", "id", blob)
            or _referenced(conn, "images", "manifest_digest", blob)
            or _referenced(conn, "image_layers", "blob_digest", blob)
        )

    def _remove_files(self, chains: list[str], blobs: Sequence[str]) -> int:
        """Layer dirs leave by rename to a trash name first, so no one sees half a layer."""
        freed = 0
        for chain in chains:
            self._purge_dir(self.layers_dir / chain.partition(":")[2])
            (self.layers_dir / ".locks" / chain.partition(":")[2]).unlink(missing_ok=True)
        for blob in blobs:
            digest = Digest.parse(blob)
            try:
                freed += self.blobs.path(digest).stat().st_size
            except FileNotFoundError:
                continue
            self.blobs.delete(digest)
        return freed

    @staticmethod
    def _trash_dir(path: Path) -> Path | None:
        """Rename a layer dir off its real name, the one atomic step of deleting it; the caller rmtrees."""
        trash = path.with_name(f".trash-{path.name}-{os.urandom(4).hex()}")
        try:
            os.rename(path, trash)
        except FileNotFoundError:
            return None
        return trash

    def _purge_dir(self, path: Path) -> None:
        trash = self._trash_dir(path)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)

    def _remove_orphan_dirs(self, chains: list[Digest]) -> None:
        """After a failed add: drop the layer dirs it unpacked that no recorded layer claims.

        Renamed inside a transaction: a concurrent add that found such a dir and is recording it as
        unpacked checks for it inside its own transaction, so one of the two sees the other's result.
        """
        with self.db.transaction() as conn:
            orphans = [c for c in chains if not _referenced(conn, "layers", "chain_id", str(c))]
            trash = [self._trash_dir(self.layers_dir / c.hex) for c in orphans]
        for path in trash:
            if path is not None:
                shutil.rmtree(path, ignore_errors=True)

    def _discard_unreferenced(self, digests: set[Digest]) -> None:
        """Delete blobs an ingest wrote that no image references (inside a transaction: see ``_insert``)."""
        if not digests:
            return
        with self.db.transaction() as conn:
            for digest in digests:
                if not self._blob_referenced(conn, str(digest)):
                    self.blobs.delete(digest)

    def prune(self, all: bool = False, in_use: InUse = _never_in_use) -> dict[str, Any]:
        """``docker image prune``: untagged images (``all``: every image) that no container uses."""
        victims = [img for img in self.list_images() if (all or not img.names) and not in_use(str(img.id))]
        records: list[dict[str, str]] = []
        for img in victims:
            records += [{"Untagged": n} for n in img.names + img.digests]
        deleted, freed = self._delete_images([str(img.id) for img in victims]) if victims else ([], 0)
        freed += self.gc()
        return {"ImagesDeleted": records + deleted, "SpaceReclaimed": freed}

    def gc(self) -> int:
        """Sweep what a crash may have leaked: unreferenced blobs, stray layer dirs, temp and trash dirs."""
        with self._lock(".lock", fcntl.LOCK_EX), self.db.transaction() as conn:
            known = {r[0].partition(":")[2] for r in conn.execute("SELECT chain_id FROM layers")}
            stray = [b for b in self.blobs.list() if not self._blob_referenced(conn, str(b))]
            freed = self._remove_files([], [str(b) for b in stray])
            for entry in self.layers_dir.iterdir() if self.layers_dir.is_dir() else ():
                if entry.name.startswith((".tmp-", ".trash-")):
                    shutil.rmtree(entry, ignore_errors=True)
                elif not entry.name.startswith(".") and entry.name not in known:
                    self._purge_dir(entry)
            for lock in (self.layers_dir / ".locks").glob("*"):
                if lock.name not in known:  # nobody holds a layer lock while we hold the store lock
                    lock.unlink(missing_ok=True)
            for chain in conn.execute("SELECT chain_id FROM layers WHERE unpacked = 1").fetchall():
                if not (self.layers_dir / chain[0].partition(":")[2]).is_dir():
                    conn.execute("UPDATE layers SET unpacked = 0 WHERE chain_id = ?", (chain[0],))
        return freed


def _referenced(conn, table: str, column: str, value: str) -> bool:
    return conn.execute(f"SELECT 1 FROM {table} WHERE {column} = ? LIMIT 1", (value,)).fetchone() is not None


def _rfc3339(timestamp: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")
