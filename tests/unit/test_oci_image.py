"""Strict parsing of manifests, indexes and image configs: every bad input is one clear CorruptContent."""

import json

import pytest

from hutch.errors import CorruptContent, NotFound
from hutch.oci import image as oci
from hutch.oci.digest import Digest

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


def manifest(media_type=oci.OCI_MANIFEST, layer_type=oci.OCI_LAYER_GZIP, **extra):
    doc = {
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": {"mediaType": oci.OCI_CONFIG, "digest": D1, "size": 10},
        "layers": [{"mediaType": layer_type, "digest": D2, "size": 20}],
    }
    doc.update(extra)
    return doc


def encode(doc) -> bytes:
    return json.dumps(doc).encode()


def test_parses_oci_and_docker_manifests():
    m = oci.parse_manifest(encode(manifest()))
    assert m.media_type == oci.OCI_MANIFEST
    assert m.config.digest == Digest.parse(D1) and m.config.size == 10
    assert [layer.digest for layer in m.layers] == [Digest.parse(D2)]
    docker = manifest(oci.DOCKER_MANIFEST, oci.DOCKER_LAYER_GZIP)
    docker["config"]["mediaType"] = oci.DOCKER_CONFIG
    assert oci.parse_manifest(encode(docker), oci.DOCKER_MANIFEST).media_type == oci.DOCKER_MANIFEST


def test_oci_manifest_may_omit_media_type():
    doc = manifest()
    del doc["mediaType"]
    assert oci.parse_manifest(encode(doc)).media_type == oci.OCI_MANIFEST
    assert oci.parse_manifest(encode(doc), oci.OCI_MANIFEST).media_type == oci.OCI_MANIFEST


@pytest.mark.parametrize(
    ("data", "media_type", "message"),
    [
        (b"{not json", None, "invalid JSON"),
        (b"[1, 2]", None, "expected a JSON object"),
        (encode(manifest()), oci.DOCKER_MANIFEST, "does not match"),
        (encode(manifest(oci.OCI_INDEX)), None, "unexpected media type"),
        (encode({**manifest(), "schemaVersion": 1}), None, "schema 1"),
        (encode({k: v for k, v in manifest().items() if k != "config"}), None, "missing field 'config'"),
        (encode(manifest(layers=[{"mediaType": oci.OCI_LAYER_TAR, "digest": D2}])), None, "'size'"),
        (
            encode(manifest(layers=[{"mediaType": oci.OCI_LAYER_TAR, "digest": "md5:x", "size": 1}])),
            None,
            "md5",
        ),
        (
            encode(manifest(layers=[{"mediaType": oci.OCI_LAYER_TAR, "digest": D2, "size": -1}])),
            None,
            "negative",
        ),
        (
            encode(manifest(layers=[{"mediaType": oci.OCI_LAYER_TAR, "digest": D2, "size": "1"}])),
            None,
            "type",
        ),
        (encode(manifest(layer_type="text/plain")), None, "unsupported layer media type"),
        (
            encode(manifest(layer_type="application/vnd.docker.image.rootfs.foreign.diff.tar.gzip")),
            None,
            "foreign",
        ),
        (encode(manifest(config={"mediaType": "x/y", "digest": D1, "size": 1})), None, "config media type"),
    ],
)
def test_bad_manifests_are_corrupt_content(data, media_type, message):
    with pytest.raises(CorruptContent, match=message) as err:
        oci.parse_manifest(data, media_type)
    assert "\n" not in str(err.value)


def index(*entries):
    return encode({"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": list(entries)})


def entry(digest, arch, os_="linux", variant=None):
    platform = {"os": os_, "architecture": arch}
    if variant:
        platform["variant"] = variant
    return {"mediaType": oci.OCI_MANIFEST, "digest": digest, "size": 5, "platform": platform}


def test_index_and_platform_selection():
    idx = oci.parse_index(index(entry(D1, "arm64", variant="v8"), entry(D2, "amd64")))
    assert idx.manifests[0].platform == oci.Platform("linux", "arm64", "v8")
    assert oci.select_manifest(idx, oci.Platform("linux", "amd64")).digest == Digest.parse(D2)
    assert oci.select_manifest(idx, oci.Platform("linux", "arm64")).digest == Digest.parse(D1)
    with pytest.raises(NotFound, match="linux/s390x"):
        oci.select_manifest(idx, oci.Platform("linux", "s390x"))
    with pytest.raises(CorruptContent, match="unexpected media type"):
        oci.parse_index(encode(manifest()))


def test_document_media_type_tells_manifest_from_index():
    assert oci.document_media_type(encode(manifest())) == oci.OCI_MANIFEST
    assert oci.document_media_type(index()) == oci.OCI_INDEX


def config(**extra):
    doc = {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": [D1]}}
    doc.update(extra)
    return doc


def test_image_config_keeps_every_field():
    doc = config(config={"Cmd": ["sh"]}, history=[{"created_by": "x"}], custom={"a": 1})
    parsed = oci.parse_image_config(encode(doc))
    assert parsed == doc
    assert oci.config_diff_ids(parsed) == [Digest.parse(D1)]


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({k: v for k, v in config().items() if k != "rootfs"}, "missing field 'rootfs'"),
        (config(rootfs={"type": "tarball", "diff_ids": []}), "rootfs type"),
        (config(rootfs={"type": "layers", "diff_ids": ["nope"]}), "bad diff_id"),
        (config(rootfs={"type": "layers"}), "diff_ids"),
        (config(config=["not", "a", "dict"]), "'config' must be an object"),
        ({k: v for k, v in config().items() if k != "os"}, "'os'"),
    ],
)
def test_bad_configs(doc, message):
    with pytest.raises(CorruptContent, match=message):
        oci.parse_image_config(encode(doc))


def test_layer_compression_and_foreign_layers():
    assert oci.layer_compression(oci.OCI_LAYER_TAR) == "none"
    assert oci.layer_compression(oci.DOCKER_LAYER_GZIP) == "gzip"
    assert oci.layer_compression(oci.OCI_LAYER_ZSTD) == "zstd"
    with pytest.raises(CorruptContent, match="foreign"):
        oci.layer_compression("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip")


def test_built_manifests_parse_and_are_stable():
    cfg = oci.Descriptor(oci.OCI_CONFIG, Digest.parse(D1), 10)
    layer = oci.Descriptor(oci.OCI_LAYER_TAR, Digest.parse(D2), 20)
    data = oci.build_manifest(cfg, [layer])
    assert data == oci.build_manifest(cfg, [layer])
    parsed = oci.parse_manifest(data, oci.OCI_MANIFEST)
    assert parsed.config == cfg and parsed.layers == (layer,)


def test_host_platform_uses_oci_names():
    assert oci.host_platform().os == "linux"
    assert oci.host_platform().architecture in {"amd64", "arm64", "arm", "386", "ppc64le", "s390x", "riscv64"}
