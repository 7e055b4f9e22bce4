"""``hutch save`` / ``hutch load``: round trips, the archive layouts other tools write, corrupt archives that
must leave the store unchanged, and interoperability with a real ``podman`` (offline: images come from
``podman import`` of a local tarball, never from a registry).
"""

from __future__ import annotations

import gzip
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from test_image_store import APP_A, APP_B, BASE, add_layered, image_docs, make_store, snapshot

from hutch.errors import CorruptContent, NotFound
from hutch.image.archive import load, save
from hutch.image.importer import import_tarball
from hutch.oci import image as oci
from hutch.oci.digest import Digest


@pytest.fixture
def store(hutch_root):
    return make_store(hutch_root)


@pytest.fixture
def other(tmp_path):
    return make_store(tmp_path / "other-root")


def tar_of(entries: dict[str, bytes | tuple[str, str]]) -> bytes:
    """A tarball of regular files (bytes) and links (``("sym"|"hard", target)``), in the given order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, content in entries.items():
            info = tarfile.TarInfo(name)
            if isinstance(content, tuple):
                info.type = tarfile.SYMTYPE if content[0] == "sym" else tarfile.LNKTYPE
                info.linkname = content[1]
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def docker_archive(layers: list[bytes], tags: list[str], linked: bool = False) -> bytes:
    """A docker-archive as ``docker save`` (before 25) writes it; ``linked`` shares layers by symlink."""
    _, config, _ = image_docs(layers)
    config_name = f"{Digest.of_bytes(config).hex}.json"
    entries: dict[str, bytes | tuple[str, str]] = {}
    names = []
    for i, layer in enumerate(layers):
        name = f"layer{i}/layer.tar"
        if linked and i > 0 and layer == layers[0]:
            entries[name] = ("sym", "../layer0/layer.tar")
        else:
            entries[name] = layer
        names.append(name)
    entries[config_name] = config
    entries["manifest.json"] = json.dumps(
        [{"Config": config_name, "RepoTags": tags, "Layers": names}]
    ).encode()
    return tar_of(entries)


def oci_layout(store_docs, annotations: dict[str, str], nested_platforms: list[str] | None = None) -> bytes:
    """An OCI layout tarball; with ``nested_platforms`` the top entry is an index of several platforms
    of which only this host's manifest (and its blobs) is present, as ``docker save`` of one platform."""
    manifest, config, blobs = store_docs
    entries: dict[str, bytes | tuple[str, str]] = {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}'}
    for blob in [manifest, config, *blobs]:
        entries[f"blobs/sha256/{Digest.of_bytes(blob).hex}"] = blob
    top = {"mediaType": oci.OCI_MANIFEST, "digest": str(Digest.of_bytes(manifest)), "size": len(manifest)}
    if nested_platforms:
        here = oci.host_platform()
        entries_list = [
            {**top, "platform": {"os": "linux", "architecture": arch}}
            if arch == here.architecture
            else {
                "mediaType": oci.OCI_MANIFEST,
                "digest": "sha256:" + "e" * 64,
                "size": 5,
                "platform": {"os": "linux", "architecture": arch},
            }
            for arch in nested_platforms
        ]
        nested = json.dumps(
            {"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": entries_list}
        ).encode()
        entries[f"blobs/sha256/{Digest.of_bytes(nested).hex}"] = nested
        top = {"mediaType": oci.OCI_INDEX, "digest": str(Digest.of_bytes(nested)), "size": len(nested)}
    index = {"schemaVersion": 2, "manifests": [{**top, "annotations": annotations}]}
    entries["index.json"] = json.dumps(index).encode()
    return tar_of(entries)


# ----- round trips and layouts ---------------------------------------------------------------------------


def test_save_then_load_round_trip(store, other, tmp_path):
    app = add_layered(store, [BASE, APP_A], ["app", "localhost:5000/app:v2"], compress=True)
    base = add_layered(store, [BASE], ["base"])
    out = tmp_path / "images.tar"
    save(store, ["app", "localhost:5000/app:v2", "base"], out)
    with tarfile.open(out) as tar:
        names = tar.getnames()
        manifest = json.load(tar.extractfile("manifest.json"))
        repositories = json.load(tar.extractfile("repositories"))
    assert f"{app.diff_ids[0].hex}/layer.tar" in names and f"{app.id.hex}.json" in names
    assert [m["RepoTags"] for m in manifest] == [["app:latest", "localhost:5000/app:v2"], ["base:latest"]]
    assert repositories["app"] == {"latest": app.diff_ids[1].hex}
    loaded = load(other, out)
    assert [(item.image.id, item.names) for item in loaded] == [
        (app.id, ["app:latest", "localhost:5000/app:v2"]),
        (base.id, ["base:latest"]),
    ]
    assert other.resolve("app").diff_ids == app.diff_ids
    layers = other.rootfs_layers(other.resolve("localhost:5000/app:v2"))
    assert (layers[1] / "app/a.txt").read_bytes() == b"a\n"
    assert not list(out.parent.glob(".images.tar.tmp-*"))


def test_load_compressed_archive_from_a_stream(store, other, tmp_path):
    image = add_layered(store, [BASE], ["base"])
    out = tmp_path / "base.tar"
    save(store, ["base"], out)
    loaded = load(other, io.BytesIO(gzip.compress(out.read_bytes())))
    assert loaded[0].image.id == image.id and loaded[0].names == ["base:latest"]


def test_save_by_id_has_no_tags_and_bare_name_saves_every_tag(store, other, tmp_path):
    one = add_layered(store, [BASE], ["app:1"])
    two = add_layered(store, [BASE, APP_B], ["app:2"])
    save(store, ["app"], tmp_path / "all.tar")
    assert {(i.image.id, tuple(i.names)) for i in load(other, tmp_path / "all.tar")} == {
        (one.id, ("app:1",)),
        (two.id, ("app:2",)),
    }
    save(store, [one.id.short], tmp_path / "byid.tar")
    with tarfile.open(tmp_path / "byid.tar") as tar:
        assert json.load(tar.extractfile("manifest.json"))[0]["RepoTags"] is None
    with pytest.raises(NotFound):
        save(store, ["nothere"], tmp_path / "none.tar")
    assert not (tmp_path / "none.tar").exists()


def test_load_docker_archive_with_linked_layers(store):
    archive = docker_archive([BASE, APP_A, BASE], ["linked:1"], linked=True)
    [item] = load(store, io.BytesIO(archive))
    assert item.names == ["linked:1"]
    assert item.image.diff_ids == [Digest.of_bytes(x) for x in (BASE, APP_A, BASE)]
    assert len(store.rootfs_layers(item.image)) == 3


def test_load_oci_layout_with_names_and_platform_index(store):
    docs = image_docs([BASE, APP_A], compress=True)
    archive = oci_layout(docs, {oci.REF_NAME_ANNOTATION: "quay.io/team/app:3"}, ["arm64", "amd64", "s390x"])
    [item] = load(store, io.BytesIO(archive))
    assert item.names == ["quay.io/team/app:3"]
    assert item.image.manifest_digest == Digest.of_bytes(docs[0])  # the original manifest is kept
    assert store.layer_blobs(item.image)[0].media_type == oci.OCI_LAYER_GZIP


def test_load_oci_layout_bare_tag_annotation_uses_containerd_name(store):
    docs = image_docs([BASE])
    annotations = {oci.REF_NAME_ANNOTATION: "v1", oci.CONTAINERD_NAME_ANNOTATION: "docker.io/library/web:v1"}
    assert load(store, io.BytesIO(oci_layout(docs, annotations)))[0].names == ["web:v1"]
    untagged = image_docs([APP_B])
    assert load(store, io.BytesIO(oci_layout(untagged, {oci.REF_NAME_ANNOTATION: "v1"})))[0].names == []


# ----- corrupt archives ------------------------------------------------------------------------------------


def _corrupt_archives() -> dict[str, tuple[bytes, str]]:
    docs = image_docs([BASE, APP_A])
    good_oci = oci_layout(docs, {})
    wrong_blob = good_oci.replace(b"a\n\0", b"A\n\0")  # content no longer matches its digest name
    good_docker = docker_archive([BASE, APP_A], ["x:1"])
    bad_diff = docker_archive([BASE, APP_A], ["x:1"]).replace(b"a\n\0", b"A\n\0")
    missing = tar_of({"manifest.json": json.dumps([{"Config": "c.json", "Layers": ["l.tar"]}]).encode()})
    return {
        "truncated": (good_docker[: len(good_docker) // 2], "archive"),
        "not a tar": (b"hello world" * 100, "archive"),
        "empty": (b"", "archive"),
        "no manifest": (tar_of({"hello.txt": b"hi"}), "neither"),
        "blob name mismatch": (wrong_blob, "digest mismatch"),
        "layer does not match diff id": (bad_diff, "diff ID"),
        "missing entry": (missing, "missing"),
        "bad manifest.json": (tar_of({"manifest.json": b"{oops"}), "invalid JSON"),
        "bad tag": (docker_archive([BASE], ["Bad:1"]), "invalid reference format"),
        "foreign layers": (
            tar_of(
                {
                    "manifest.json": json.dumps(
                        [{"Config": "c", "Layers": [], "LayerSources": {"a": {}}}]
                    ).encode()
                }
            ),
            "foreign",
        ),
    }


@pytest.mark.parametrize("case", sorted(_corrupt_archives()))
def test_corrupt_archive_is_one_line_and_store_unchanged(store, case):
    add_layered(store, [BASE], ["base"])
    before = snapshot(store)
    data, message = _corrupt_archives()[case]
    with pytest.raises(CorruptContent, match=message) as err:
        load(store, io.BytesIO(data))
    assert "\n" not in str(err.value)
    assert snapshot(store) == before


def test_cli_load_and_save(hutch, busybox_tar, tmp_path):
    hutch.ok("import", str(busybox_tar), "busybox")
    out = tmp_path / "bb.tar"
    hutch.ok("save", "-o", str(out), "busybox")
    hutch.ok("rmi", "busybox")
    assert hutch.ok("load", "-i", str(out)) == "Loaded image: busybox:latest\n"
    result = hutch("load", "-i", str(tmp_path / "missing.tar"))
    assert result.code == 125 and "no such file" in result.err


# ----- podman interoperability ----------------------------------------------------------------------------


class Podman:
    """podman against a private store in a temp dir, so the machine's images are never touched."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.argv = [
            "podman",
            "--root",
            str(base / "root"),
            "--runroot",
            str(base / "run"),
            "--storage-driver",
            "vfs",
            "--events-backend",
            "none",
            "--tmpdir",
            str(base / "tmp"),
        ]

    def __call__(self, *args: str) -> str:
        proc = subprocess.run(
            [*self.argv, *args],
            capture_output=True,
            text=True,
            timeout=120,
            env={
                "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                "TMPDIR": str(self.base / "tmp"),
                "HOME": str(self.base),
            },
        )
        assert proc.returncode == 0, f"podman {' '.join(args)}: {proc.stderr}"
        return proc.stdout

    def cleanup(self) -> None:
        subprocess.run([*self.argv, "system", "reset", "-f"], capture_output=True, timeout=120)
        with open("/proc/self/mountinfo") as f:
            mounts = [line.split()[4] for line in f if line.split()[4].startswith(str(self.base))]
        for point in sorted(mounts, reverse=True):
            subprocess.run(["umount", "-l", point], check=False)
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture
def podman(tmp_path_factory):
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed")
    base = tmp_path_factory.mktemp("podman")
    (base / "tmp").mkdir()
    tool = Podman(base)
    yield tool
    tool.cleanup()


@pytest.mark.podman
def test_hutch_save_loads_in_podman(store, podman, busybox_tar, tmp_path):
    image = import_tarball(store, busybox_tar, "localhost/hutchbox:v1", changes=['CMD ["sh"]'])
    out = tmp_path / "hutchbox.tar"
    save(store, ["localhost/hutchbox:v1"], out)
    assert "localhost/hutchbox:v1" in podman("load", "-i", str(out))
    assert "localhost/hutchbox:v1" in podman("images", "--format", "{{.Repository}}:{{.Tag}}").split()
    inspected = json.loads(podman("image", "inspect", "localhost/hutchbox:v1"))[0]
    assert inspected["Id"] == image.id.hex
    assert inspected["RootFS"]["Layers"] == [str(d) for d in image.diff_ids]
    assert inspected["Config"]["Cmd"] == ["sh"]


@pytest.mark.podman
@pytest.mark.parametrize("fmt", ["docker-archive", "oci-archive"])
def test_podman_save_loads_in_hutch(store, podman, busybox_tar, tmp_path, fmt):
    podman("import", str(busybox_tar), "localhost/podbox:v1")
    podman_layers = json.loads(podman("image", "inspect", "localhost/podbox:v1"))[0]["RootFS"]["Layers"]
    out = tmp_path / f"podbox-{fmt}.tar"
    podman("save", "--format", fmt, "-o", str(out), "localhost/podbox:v1")
    [item] = load(store, out)
    assert item.names == ["localhost/podbox:v1"]
    assert (
        [str(d) for d in item.image.diff_ids]
        == podman_layers
        == [str(Digest.of_bytes(busybox_tar.read_bytes()))]
    )
    assert (store.rootfs_layers(item.image)[0] / "bin/busybox").is_file()
