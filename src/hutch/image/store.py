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

import time
from collections import namedtuple
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path

from hutch.db import Database
from hutch.errors import Conflict, InvalidArgument, NotFound
from hutch.image.blobs import BlobStore
from hutch.oci import image as oci
from hutch.oci import reference
from hutch.oci.digest import Digest, chain_ids

TYPE_CHECKING = False  # typing costs ~5 ms of every hutch run; only type checkers need it
if TYPE_CHECKING:
    from typing import Any, BinaryIO

    from hutch.image.gc import Collector
    from hutch.image.layers import LayerDirs

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


class Image:
    """An image as the engine sees it; ``id`` is the config digest, ``names`` are familiar tags.

    A plain class: the dataclasses module costs ~15 ms of every ``hutch run`` to import.
    """

    __slots__ = (
        "id",
        "manifest_digest",
        "names",
        "config",
        "created",
        "size",
        "diff_ids",
        "digests",
        "manifest_media_type",
        "added",
    )

    def __init__(
        self,
        id: Digest,
        manifest_digest: Digest,
        names: list[str],
        config: dict[str, Any],
        created: str,
        size: int,
        diff_ids: list[Digest],
        digests: list[str] | None = None,
        manifest_media_type: str = oci.OCI_MANIFEST,
        added: float = 0.0,
    ) -> None:
        self.id = id
        self.manifest_digest = manifest_digest
        self.names = names
        self.config = config
        self.created = created
        self.size = size
        self.diff_ids = diff_ids
        self.digests = digests if digests is not None else []
        self.manifest_media_type = manifest_media_type
        self.added = added

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Image) and all(getattr(self, k) == getattr(other, k) for k in self.__slots__)

    __hash__ = None  # mutable, like the dataclass it replaces

    def __repr__(self) -> str:
        return f"Image(id={self.id!s}, names={self.names!r})"

    @property
    def run_config(self) -> dict[str, Any]:
        """The ``config`` section (Cmd, Env, WorkingDir...), empty when the image has none."""
        return self.config.get("config") or {}


class NewImage(namedtuple("NewImage", "manifest config names media_type", defaults=((), None))):
    """An image to add: its manifest and config bytes (layer blobs already in the blob store), the names
    to give it and the manifest media type when the caller knows it."""

    __slots__ = ()


class Ingest:
    """Blob writes for images about to be added; remembers what it wrote so unused blobs are taken back.

    Obtained from ``ImageStore.ingest()``, which holds the store lock shared, so a concurrent ``gc`` can
    never delete a blob between its write and the ``add_image`` that references it.
    """

    def __init__(self, blobs: BlobStore, layers: LayerDirs | None = None) -> None:
        self.blobs = blobs
        self.layers = layers
        self.touched: set[Digest] = set()
        self.unpacked: dict[str, int] = {}  # chain ID -> uncompressed size, for layers unpacked early
        self.created: list[Digest] = []  # layer dirs this ingest made (taken back if no image claims them)

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

    def unpack_layer(self, chain_id: Digest, diff_id: Digest, blob: oci.Descriptor) -> None:
        """Unpack a stored layer blob now, before its image is added (a pull overlaps this with the
        downloads of other layers); verified as ``add_images`` would, and taken back if never recorded."""
        from hutch.image.layers import Layer

        assert self.layers is not None, "ingest made without layer dirs"
        made, size = self.layers.unpack(Layer(chain_id, diff_id, blob))
        if made:
            self.created.append(chain_id)
        if size is not None:
            self.unpacked[str(chain_id)] = size


class ImageStore:
    """Images by reference or ID, with their layers unpacked on demand for the engine."""

    def __init__(self, root: Path, db: Database) -> None:
        self.root = root
        self.db = db
        self.blobs = BlobStore(root)
        self.layers_dir = root / "layers"
        db.ensure_schema("image", SCHEMA)

    # Unpacking, adding and collecting live in their own modules, imported on first use: a ``hutch run``
    # whose layers are unpacked needs none of them (``rootfs_layers`` is one query).

    @cached_property
    def _layers(self) -> LayerDirs:
        from hutch.image.layers import LayerDirs

        return LayerDirs(self.layers_dir, self.db, self.blobs)

    @cached_property
    def _gc(self) -> Collector:
        from hutch.image.gc import Collector

        return Collector(self.db, self.blobs, self._layers)

    # ----- adding ------------------------------------------------------------------------------------

    @contextmanager
    def ingest(self) -> Iterator[Ingest]:
        """``with store.ingest() as ing:`` write blobs, then ``add_image``; unused ones go at exit."""
        with self._layers.store_lock():
            ing = Ingest(self.blobs, self._layers)
            try:
                yield ing
            finally:
                self._gc.discard_unreferenced(ing.touched)
                if ing.created:
                    self._layers.remove_orphans(ing.created)

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

    def add_images(
        self, items: Sequence[NewImage], *, unpack: bool = True, ingest: Ingest | None = None
    ) -> list[Image]:
        """Add images all or nothing: verify and unpack every layer, then record them in one transaction.

        With ``unpack`` each layer's blob digest and diff ID are checked now (a corrupt layer fails here,
        leaving the store unchanged); without it they are checked by the first ``rootfs_layers``.
        """
        from hutch.image.adding import ImageAdder

        if ingest is not None:  # the caller's ingest (whose blobs and early-unpacked layers these use)
            image_ids = ImageAdder(self.db, self.blobs, self._layers).add(items, ingest, unpack)
        else:
            with self.ingest() as ing:
                image_ids = ImageAdder(self.db, self.blobs, self._layers).add(items, ing, unpack)
        return [self._load(image_id) for image_id in image_ids]

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
            self._layers.unpack_missing(str(image.id))
        return paths

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
        deleted, _ = self._gc.delete_images([image_id])
        return deleted

    def prune(self, all: bool = False, in_use: InUse = _never_in_use) -> dict[str, Any]:
        """``docker image prune``: untagged images (``all``: every image) that no container uses."""
        victims = [img for img in self.list_images() if (all or not img.names) and not in_use(str(img.id))]
        records: list[dict[str, str]] = []
        for img in victims:
            records += [{"Untagged": n} for n in img.names + img.digests]
        deleted, freed = self._gc.delete_images([str(img.id) for img in victims]) if victims else ([], 0)
        freed += self.gc()
        return {"ImagesDeleted": records + deleted, "SpaceReclaimed": freed}

    def gc(self) -> int:
        """Sweep what a crash may have leaked: unreferenced blobs, stray layer dirs, temp and trash dirs."""
        return self._gc.collect()


def _rfc3339(timestamp: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")
