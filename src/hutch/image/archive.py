"""``hutch load`` and ``hutch save``: images in and out of docker-archive and OCI-layout tarballs.

Loading reads the tarball in one streaming pass (so it may come from a pipe, compressed or not) and never
extracts it: small metadata files (``manifest.json``, ``index.json``, configs) are kept in memory, every
other regular file is streamed into the blob store, verified against its name when the name is a digest
(``blobs/sha256/<hex>``). Links between entries (older Docker archives link duplicate layers) are followed
inside the archive only. Then the images are added all or nothing; blobs the archive brought but no image
uses are taken back, so a corrupt archive leaves the store as it was.

Saving writes the classic docker-archive (``manifest.json``, ``repositories``, ``<config hex>.json``,
``<diff id hex>/layer.tar`` uncompressed), which both ``docker load`` and ``podman load`` read, to a
temporary file renamed into place.
"""

from __future__ import annotations

import json
import os
import posixpath
import shutil
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO

from hutch.errors import CorruptContent, HutchError, InvalidArgument, NotFound
from hutch.fsutil import fsync_dir
from hutch.image.store import Image, ImageStore, Ingest, NewImage
from hutch.oci import image as oci
from hutch.oci import reference
from hutch.oci.digest import Digest, HashingReader

_SMALL_MAX = 16 << 20  # metadata files larger than this are not metadata
_METADATA = frozenset({"manifest.json", "index.json", "oci-layout", "repositories", "json", "VERSION"})
_LINK_HOPS = 16
_MEDIA_BY_COMPRESSION = {"none": oci.OCI_LAYER_TAR, "gzip": oci.OCI_LAYER_GZIP, "zstd": oci.OCI_LAYER_ZSTD}


@dataclass
class Loaded:
    """An image that ``load`` added, with the names (familiar form) the archive gave it."""

    image: Image
    names: list[str]


@dataclass
class _Archive:
    """What one pass over the tarball found, by normalised entry name."""

    store: ImageStore
    files: dict[str, bytes] = field(default_factory=dict)
    blobs: dict[str, tuple[Digest, int]] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)

    def _follow(self, name: str) -> str:
        for _ in range(_LINK_HOPS):
            if name not in self.links:
                return name
            name = self.links[name]
        raise CorruptContent(f"archive: too many links resolving {name!r}")

    def read(self, name: str) -> bytes:
        """A small file's bytes, whether it was kept in memory or stored as a (verified) blob."""
        real = self._follow(_clean(name) or "")
        if real in self.files:
            return self.files[real]
        return self.store.blobs.read(self.blob(real)[0])

    def blob(self, name: str) -> tuple[Digest, int]:
        real = self._follow(_clean(name) or "")
        try:
            return self.blobs[real]
        except KeyError:
            raise CorruptContent(f"archive: entry {name!r} is missing")

    def blob_by_digest(self, digest: Digest) -> bytes:
        return self.read(_blob_path(digest))


def _blob_path(digest: Digest) -> str:
    return f"blobs/{digest.algorithm}/{digest.hex}"


# ----- load ------------------------------------------------------------------------------------------


def load(store: ImageStore, source: Path | BinaryIO) -> list[Loaded]:
    """Load every image of a docker-archive or OCI-layout tarball (gzip/zstd/plain, file or stream)."""
    from hutch.image.compression import open_decompressed

    with store.ingest() as ing, _open_input(source) as raw:
        archive = _scan(open_decompressed(raw), store, ing)
        if "index.json" in archive.files:
            items = _oci_items(archive)
        elif "manifest.json" in archive.files:
            items = _docker_items(archive)
        else:
            raise CorruptContent(
                "archive: neither a docker-archive (manifest.json) nor an OCI layout (index.json)"
            )
        images = store.add_images(items)
    return [
        Loaded(img, [reference.parse(n).familiar() for n in item.names])
        for img, item in zip(images, items, strict=True)
    ]


def _open_input(source: Path | BinaryIO):
    if not isinstance(source, Path):
        return nullcontext(source)  # stdin: the caller owns it
    try:
        return open(source, "rb")
    except FileNotFoundError:
        raise NotFound(f"load: {source}: no such file")


def _clean(name: str) -> str | None:
    """Normalised entry name, or None for names that leave the archive (they cannot name anything)."""
    name = posixpath.normpath(name.lstrip("/"))
    return None if name == "." or name.startswith("..") else name


def _scan(stream: IO[bytes], store: ImageStore, ing: Ingest) -> _Archive:
    archive = _Archive(store)
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                _take(archive, tar, member, ing)
    except tarfile.TarError as err:
        raise CorruptContent(f"archive: not a valid tar file: {err}")
    return archive


def _take(archive: _Archive, tar: tarfile.TarFile, member: tarfile.TarInfo, ing: Ingest) -> None:
    """Record one entry: links as links, small metadata in memory, anything else into the blob store."""
    name = _clean(member.name)
    if name is None:
        return
    if member.issym():
        archive.links[name] = _clean(posixpath.join(posixpath.dirname(name), member.linkname)) or ""
    elif member.islnk():
        archive.links[name] = _clean(member.linkname) or ""
    elif member.isfile():
        data = tar.extractfile(member)
        assert data is not None
        expected = _blob_name_digest(name)
        if expected is None and member.size <= _SMALL_MAX and _is_metadata(name):
            archive.files[name] = data.read()
            return
        try:
            archive.blobs[name] = ing.put_stream(data, expected, member.size)
        except CorruptContent as err:
            raise CorruptContent(f"archive entry {name}: {err}")


def _is_metadata(name: str) -> bool:
    base = posixpath.basename(name)
    return base in _METADATA or (base.endswith(".json") and "/" not in name)


def _blob_name_digest(name: str) -> Digest | None:
    """The digest an OCI layout entry ``blobs/<alg>/<hex>`` promises, which its content must match."""
    parts = name.split("/")
    if len(parts) != 3 or parts[0] != "blobs":
        return None
    try:
        return Digest.parse(f"{parts[1]}:{parts[2]}")
    except HutchError as err:
        raise CorruptContent(f"archive entry {name}: {err}")


def _json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as err:
        raise CorruptContent(f"{what}: invalid JSON: {err}")


def _names(tags: Any, what: str) -> list[str]:
    if tags is None:
        return []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise CorruptContent(f"{what}: RepoTags must be a list of strings")
    try:
        return [str(reference.parse_tag_target(t)) for t in tags]
    except InvalidArgument as err:
        raise CorruptContent(f"{what}: {err}")


def _docker_items(archive: _Archive) -> list[NewImage]:
    """Images of a docker-archive: the manifests are synthesised (OCI), layers typed by sniffing."""
    entries = _json(archive.files["manifest.json"], "manifest.json")
    if not isinstance(entries, list):
        raise CorruptContent("manifest.json: expected a list of images")
    items = []
    for i, entry in enumerate(entries):
        what = f"manifest.json entry {i}"
        if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str):
            raise CorruptContent(f"{what}: missing Config")
        if entry.get("LayerSources"):
            raise CorruptContent(f"{what}: foreign layers (LayerSources) are not supported")
        layers = entry.get("Layers")
        if not isinstance(layers, list) or not all(isinstance(p, str) for p in layers):
            raise CorruptContent(f"{what}: Layers must be a list of entry names")
        config = archive.read(entry["Config"])
        descriptors = [_sniffed(archive.store, *archive.blob(p)) for p in layers]
        manifest = oci.build_manifest(
            oci.Descriptor(oci.OCI_CONFIG, Digest.of_bytes(config), len(config)), descriptors
        )
        items.append(NewImage(manifest, config, _names(entry.get("RepoTags"), what), oci.OCI_MANIFEST))
    return items


def _sniffed(store: ImageStore, digest: Digest, size: int) -> oci.Descriptor:
    from hutch.image.compression import detect

    with store.blobs.open(digest, size) as f:
        head = f.read(4)
    return oci.Descriptor(_MEDIA_BY_COMPRESSION[detect(head)], digest, size)


def _oci_items(archive: _Archive) -> list[NewImage]:
    """Images of an OCI layout (also what Docker 25+ saves): the original manifests are kept."""
    index = oci.parse_index(archive.files["index.json"], what="index.json")
    tags_by_config = _docker_tags_by_config(archive)
    items = []
    for entry in index.manifests:
        desc = _platform_manifest(archive, entry)
        data = archive.blob_by_digest(desc.digest)
        manifest = oci.parse_manifest(data, desc.media_type, f"manifest {desc.digest}")
        config = archive.blob_by_digest(manifest.config.digest)
        names = _oci_names(entry.annotations) or tags_by_config.get(manifest.config.digest, [])
        items.append(NewImage(data, config, names, manifest.media_type))
    return items


def _platform_manifest(archive: _Archive, desc: oci.Descriptor) -> oci.Descriptor:
    """Follow nested indexes down to this host's manifest, among those the archive carries."""
    for _ in range(_LINK_HOPS):
        if desc.media_type in oci.MANIFEST_TYPES:
            return desc
        if desc.media_type not in oci.INDEX_TYPES:
            raise CorruptContent(f"index.json: entry {desc.digest} has unsupported type {desc.media_type!r}")
        nested = oci.parse_index(archive.blob_by_digest(desc.digest), desc.media_type, f"index {desc.digest}")
        present = tuple(d for d in nested.manifests if _blob_path(d.digest) in archive.blobs)
        desc = oci.select_manifest(oci.Index(nested.media_type, present))
    raise CorruptContent("index.json: indexes nested too deeply")


def _oci_names(annotations: dict[str, str]) -> list[str]:
    """containerd's full name annotation, else ``ref.name`` when it is a full reference (not a bare tag)."""
    for key in (oci.CONTAINERD_NAME_ANNOTATION, oci.REF_NAME_ANNOTATION):
        value = annotations.get(key, "")
        if value and ("/" in value or ":" in value or key == oci.CONTAINERD_NAME_ANNOTATION):
            try:
                return [str(reference.parse_tag_target(value))]
            except InvalidArgument as err:
                raise CorruptContent(f"index.json: annotation {key}: {err}")
    return []


def _docker_tags_by_config(archive: _Archive) -> dict[Digest, list[str]]:
    """RepoTags from a ``manifest.json`` next to ``index.json`` (Docker 25+ writes both)."""
    if "manifest.json" not in archive.files:
        return {}
    out: dict[Digest, list[str]] = {}
    for i, entry in enumerate(_json(archive.files["manifest.json"], "manifest.json") or []):
        if isinstance(entry, dict) and isinstance(entry.get("Config"), str):
            config = archive.read(entry["Config"])
            out[Digest.of_bytes(config)] = _names(entry.get("RepoTags"), f"manifest.json entry {i}")
    return out


# ----- save ------------------------------------------------------------------------------------------


def save(store: ImageStore, refs: Sequence[str], output: Path | BinaryIO) -> None:
    """Write the images ``refs`` name as one docker-archive; a file appears only when complete."""
    plan = _plan(store, refs)
    if not isinstance(output, Path):
        with tarfile.open(fileobj=output, mode="w|") as tar:
            _write(store, plan, tar)
        return
    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            with tarfile.open(fileobj=f, mode="w") as tar:
                _write(store, plan, tar)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, output)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(output.parent)


def _plan(store: ImageStore, refs: Sequence[str]) -> list[tuple[Image, list[str]]]:
    """Images to save with the tags to record, as Docker chooses them.

    A bare repository name saves every tag of it; ``name:tag`` saves that tag; an ID or digest saves the
    image without tags.
    """
    plan: dict[Digest, tuple[Image, list[str]]] = {}
    for text in refs:
        for image, tags in _plan_one(store, text):
            entry = plan.setdefault(image.id, (image, []))
            entry[1].extend(t for t in tags if t not in entry[1])
    return list(plan.values())


def _plan_one(store: ImageStore, text: str) -> list[tuple[Image, list[str]]]:
    try:
        parsed = reference.parse(text)
    except InvalidArgument:
        parsed = None
    if parsed is not None and parsed.name_only:
        found = []
        for image in store.list_images():
            tags = [n for n in image.names if reference.parse(n).name == parsed.name]
            if tags:
                found.append((image, tags))
        if found:
            return found
    image = store.resolve(text)
    wanted = parsed.with_default_tag().familiar() if parsed is not None and parsed.digest is None else None
    return [(image, [wanted] if wanted in image.names else [])]


def _write(store: ImageStore, plan: list[tuple[Image, list[str]]], tar: tarfile.TarFile) -> None:
    manifest: list[dict[str, Any]] = []
    repositories: dict[str, dict[str, str]] = {}
    written: set[str] = set()
    for image, tags in plan:
        config_name = f"{image.id.hex}.json"
        _add_bytes(tar, config_name, store.blobs.read(image.id))
        layers = []
        for desc, diff_id in zip(store.layer_blobs(image), image.diff_ids, strict=True):
            if diff_id.hex not in written:
                _add_layer(tar, store, desc, diff_id)
                written.add(diff_id.hex)
            layers.append(f"{diff_id.hex}/layer.tar")
        manifest.append({"Config": config_name, "RepoTags": tags or None, "Layers": layers})
        for tag in tags:
            ref = reference.parse(tag)
            repositories.setdefault(ref.familiar_name, {})[ref.tag or "latest"] = layers[-1].split("/")[0]
    _add_bytes(tar, "manifest.json", json.dumps(manifest, separators=(",", ":")).encode())
    if repositories:
        _add_bytes(tar, "repositories", json.dumps(repositories, separators=(",", ":")).encode())


def _info(name: str, size: int, mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, mode, 0
    return info


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    import io

    tar.addfile(_info(name, len(data)), io.BytesIO(data))


def _add_layer(tar: tarfile.TarFile, store: ImageStore, desc: oci.Descriptor, diff_id: Digest) -> None:
    """``<diff id>/layer.tar``: the uncompressed layer, its diff ID checked while it is copied."""
    directory = _info(diff_id.hex, 0, 0o755)
    directory.type = tarfile.DIRTYPE
    tar.addfile(directory)
    _add_bytes(tar, f"{diff_id.hex}/VERSION", b"1.0")
    _add_bytes(tar, f"{diff_id.hex}/json", json.dumps({"id": diff_id.hex}).encode())
    with store.blobs.open(desc.digest, desc.size) as blob:
        stored_plain = desc.digest == diff_id  # stored uncompressed: copy straight from the blob
        with nullcontext(blob) if stored_plain else _expanded(store, blob) as source:
            size = desc.size if stored_plain else os.fstat(source.fileno()).st_size
            plain = HashingReader(source)
            tar.addfile(_info(f"{diff_id.hex}/layer.tar", size), plain)
    if plain.digest() != diff_id:
        raise CorruptContent(
            f"layer {desc.digest}: diff ID mismatch: expected {diff_id}, got {plain.digest()}"
        )


@contextmanager
def _expanded(store: ImageStore, blob: BinaryIO) -> Iterator[BinaryIO]:
    """A compressed layer expanded once into an unnamed temp file: the tar header needs its size."""
    from hutch.image.compression import open_decompressed

    tmpdir = store.root / "tmp"
    tmpdir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=tmpdir) as spool:
        shutil.copyfileobj(open_decompressed(blob), spool, 1 << 20)
        spool.seek(0)
        yield spool
