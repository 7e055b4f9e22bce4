"""OCI and Docker schema2 image documents: media types and strict parsing.

Everything read from a registry or an archive passes through here before the store trusts it, so a wrong
media type, a missing field or bad JSON becomes one clear CorruptContent line instead of a KeyError deep in
the engine. Parsed manifests are immutable named tuples (cheap to define: this module is imported on the
``hutch run`` path); an image config stays the whole dict it was, because its digest is the image ID and we
never re-encode a stored blob.
"""

from __future__ import annotations

import json
import os
from collections import namedtuple
from collections.abc import Mapping
from types import MappingProxyType

from hutch.errors import CorruptContent, HutchError, NotFound
from hutch.oci.digest import Digest

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# Manifests and indexes.
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})

# Image configs.
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
CONFIG_TYPES = frozenset({OCI_CONFIG, DOCKER_CONFIG})

# Layers, mapped to the compression their blob uses.
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"  # not in Docker's spec; skopeo writes it
LAYER_COMPRESSION = {
    DOCKER_LAYER_TAR: "none",
    OCI_LAYER_TAR: "none",
    OCI_LAYER_GZIP: "gzip",
    OCI_LAYER_ZSTD: "zstd",
    DOCKER_LAYER_GZIP: "gzip",
}
FOREIGN_LAYER_TYPES = frozenset(
    {
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
    }
)

# Annotations naming an image inside an OCI layout.
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"
CONTAINERD_NAME_ANNOTATION = "io.containerd.image.name"

_ARCH_ALIASES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386", "ppc64le": "ppc64le"}


_EMPTY: Mapping[str, str] = MappingProxyType({})


# collections.namedtuple, not typing.NamedTuple: importing typing costs ~5 ms of every hutch run.
class Platform(namedtuple("Platform", "os architecture variant", defaults=("",))):
    """``os/architecture[/variant]`` of an image or of this host (all str)."""

    __slots__ = ()

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


class Descriptor(
    namedtuple("Descriptor", "media_type digest size annotations platform urls", defaults=(_EMPTY, None, ()))
):
    """A pointer to a blob: media_type (str), digest (Digest), size (int), annotations (Mapping),
    platform (Platform | None), urls (tuple of str)."""

    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        """The JSON form, as written into manifests we create."""
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": str(self.digest), "size": self.size}
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out


class Manifest(namedtuple("Manifest", "media_type config layers annotations", defaults=(_EMPTY,))):
    """An image manifest (OCI or Docker schema2): media_type, one config Descriptor, the layer Descriptors
    bottom first, annotations."""

    __slots__ = ()


class Index(namedtuple("Index", "media_type manifests annotations", defaults=(_EMPTY,))):
    """An image index / manifest list: media_type, one manifest Descriptor per platform, annotations."""

    __slots__ = ()


def host_platform() -> Platform:
    """The platform images are selected and imported for (Linux on this machine's architecture)."""
    machine = os.uname().machine
    return Platform("linux", _ARCH_ALIASES.get(machine, machine))


def layer_compression(media_type: str, what: str = "layer") -> str:
    """``none``/``gzip``/``zstd`` for a supported layer type; foreign or unknown layers are refused."""
    if media_type in FOREIGN_LAYER_TYPES:
        raise CorruptContent(f"{what}: foreign (non-distributable) layer type {media_type} is not supported")
    try:
        return LAYER_COMPRESSION[media_type]
    except KeyError:
        raise CorruptContent(f"{what}: unsupported layer media type {media_type!r}")


def _load_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as err:
        raise CorruptContent(f"{what}: invalid JSON: {err}")
    if not isinstance(doc, dict):
        raise CorruptContent(f"{what}: expected a JSON object, got {type(doc).__name__}")
    return doc


def _require(doc: dict[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = doc.get(key)
    if value is None:
        raise CorruptContent(f"{what}: missing field {key!r}")
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise CorruptContent(f"{what}: field {key!r} has the wrong type ({type(value).__name__})")
    return value


def _string_map(doc: dict[str, Any], key: str, what: str) -> Mapping[str, str]:
    value = doc.get(key) or {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise CorruptContent(f"{what}: field {key!r} must map strings to strings")
    return MappingProxyType(dict(value)) if value else _EMPTY


def _parse_platform(doc: Any, what: str) -> Platform | None:
    if doc is None:
        return None
    if not isinstance(doc, dict):
        raise CorruptContent(f"{what}: platform must be an object")
    os_ = _require(doc, "os", str, f"{what} platform")
    arch = _require(doc, "architecture", str, f"{what} platform")
    return Platform(os_, arch, doc.get("variant") or "")


def parse_descriptor(doc: Any, what: str) -> Descriptor:
    """A descriptor object; the digest must be one we can verify and the size non-negative."""
    if not isinstance(doc, dict):
        raise CorruptContent(f"{what}: descriptor must be an object")
    media_type = _require(doc, "mediaType", str, what)
    try:
        digest = Digest.parse(_require(doc, "digest", str, what))
    except HutchError as err:
        raise CorruptContent(f"{what}: {err}")
    size = _require(doc, "size", int, what)
    if size < 0:
        raise CorruptContent(f"{what}: negative size {size}")
    urls = doc.get("urls") or []
    return Descriptor(
        media_type,
        digest,
        size,
        _string_map(doc, "annotations", what),
        _parse_platform(doc.get("platform"), what),
        tuple(str(u) for u in urls) if isinstance(urls, list) else (),
    )


def _check_document_type(
    doc: dict[str, Any], media_type: str | None, allowed: frozenset[str], what: str
) -> str:
    """The media type from the document and from the transport must agree and be one we expect."""
    if doc.get("schemaVersion") != 2:
        if doc.get("schemaVersion") == 1 or media_type in (DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED):
            raise CorruptContent(f"{what}: Docker schema 1 manifests are not supported")
        raise CorruptContent(f"{what}: unsupported schemaVersion {doc.get('schemaVersion')!r}")
    declared = doc.get("mediaType")
    if declared is not None and media_type is not None and declared != media_type:
        raise CorruptContent(f"{what}: mediaType {declared!r} does not match {media_type!r}")
    actual = declared or media_type
    if actual is None:
        # An OCI document may omit mediaType; tell a manifest from an index by its fields.
        actual = OCI_INDEX if "manifests" in doc else OCI_MANIFEST
    if actual not in allowed:
        raise CorruptContent(f"{what}: unexpected media type {actual!r}")
    return actual


def parse_manifest(data: bytes, media_type: str | None = None, what: str = "manifest") -> Manifest:
    """Strictly parse an image manifest; every layer type must be one we can unpack."""
    doc = _load_object(data, what)
    actual = _check_document_type(doc, media_type, MANIFEST_TYPES, what)
    config = parse_descriptor(_require(doc, "config", dict, what), f"{what} config")
    if config.media_type not in CONFIG_TYPES:
        raise CorruptContent(f"{what}: unsupported config media type {config.media_type!r}")
    raw_layers = _require(doc, "layers", list, what)
    layers = tuple(parse_descriptor(d, f"{what} layer {i}") for i, d in enumerate(raw_layers))
    for i, layer in enumerate(layers):
        layer_compression(layer.media_type, f"{what} layer {i} ({layer.digest})")
    return Manifest(actual, config, layers, _string_map(doc, "annotations", what))


def parse_index(data: bytes, media_type: str | None = None, what: str = "index") -> Index:
    """Strictly parse an image index / Docker manifest list."""
    doc = _load_object(data, what)
    actual = _check_document_type(doc, media_type, INDEX_TYPES, what)
    raw = _require(doc, "manifests", list, what)
    manifests = tuple(parse_descriptor(d, f"{what} entry {i}") for i, d in enumerate(raw))
    return Index(actual, manifests, _string_map(doc, "annotations", what))


def document_media_type(data: bytes, media_type: str | None = None, what: str = "manifest") -> str:
    """Whether ``data`` is a manifest or an index (its media type), for callers that may get either."""
    doc = _load_object(data, what)
    return _check_document_type(doc, media_type, MANIFEST_TYPES | INDEX_TYPES, what)


def parse_image_config(data: bytes, what: str = "image config") -> dict[str, Any]:
    """Validate an image config and return the whole dict (unknown fields kept for inspect)."""
    doc = _load_object(data, what)
    _require(doc, "architecture", str, what)
    _require(doc, "os", str, what)
    rootfs = _require(doc, "rootfs", dict, what)
    if rootfs.get("type") != "layers":
        raise CorruptContent(f"{what}: rootfs type must be 'layers', got {rootfs.get('type')!r}")
    diff_ids = _require(rootfs, "diff_ids", list, f"{what} rootfs")
    try:
        for d in diff_ids:
            Digest.parse(d if isinstance(d, str) else repr(d))
    except HutchError as err:
        raise CorruptContent(f"{what}: bad diff_id: {err}")
    run_config = doc.get("config")
    if run_config is not None and not isinstance(run_config, dict):
        raise CorruptContent(f"{what}: field 'config' must be an object")
    return doc


def config_diff_ids(config: dict[str, Any]) -> list[Digest]:
    """The layer diff IDs of a config already checked by ``parse_image_config``."""
    return [Digest.parse(d) for d in config["rootfs"]["diff_ids"]]


def select_manifest(index: Index, want: Platform | None = None) -> Descriptor:
    """The entry of ``index`` for ``want`` (default: this host); NotFound when it has none."""
    want = want or host_platform()
    candidates = [d for d in index.manifests if d.media_type in MANIFEST_TYPES and d.platform is not None]
    for d in candidates:
        p = d.platform
        if (
            p.os == want.os
            and p.architecture == want.architecture
            and (not want.variant or p.variant == want.variant)
        ):
            return d
    untyped = [d for d in index.manifests if d.media_type in MANIFEST_TYPES and d.platform is None]
    if len(untyped) == 1 and not candidates:
        return untyped[0]
    available = ", ".join(str(d.platform) for d in candidates) or "none"
    raise NotFound(f"no manifest for platform {want} in the index (available: {available})")


def encode_json(doc: dict[str, Any]) -> bytes:
    """Canonical bytes for documents hutch creates (sorted keys, no spaces), so their digests are stable."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def build_manifest(config: Descriptor, layers: list[Descriptor], media_type: str = OCI_MANIFEST) -> bytes:
    """Encode a manifest for an image hutch assembled itself (import, docker-archive load)."""
    doc: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": config.to_dict(),
        "layers": [layer.to_dict() for layer in layers],
    }
    return encode_json(doc)
