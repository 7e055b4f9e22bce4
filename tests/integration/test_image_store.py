"""The image store on a real filesystem: import, resolve, tag, rmi with garbage collection, prune, and the
guarantees the engine relies on (layer dirs only ever complete, corruption caught, failures leave no trace).
"""

from __future__ import annotations

import gzip
import io
import json
import multiprocessing
import os
import sqlite3
import tarfile
import time
from pathlib import Path

import pytest

from hutch.db import Database
from hutch.errors import Conflict, CorruptContent, InvalidArgument, NotFound
from hutch.image.adding import ImageAdder
from hutch.image.importer import import_tarball, parse_changes
from hutch.image.layers import LayerDirs
from hutch.image.store import ImageStore
from hutch.oci import image as oci
from hutch.oci.digest import Digest, chain_ids

# ----- helpers shared with test_archive.py --------------------------------------------------------------


def make_store(root: Path) -> ImageStore:
    root.mkdir(parents=True, exist_ok=True)
    return ImageStore(root, Database(root / "hutch.db"))


def layer_tar(files: dict[str, bytes]) -> bytes:
    """A small layer tarball with the given regular files (and their parent directories)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = sorted({str(Path(name).parent) for name in files} - {"."})
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def image_docs(layers: list[bytes], compress: bool = False, cmd=None) -> tuple[bytes, bytes, list[bytes]]:
    """(manifest, config, layer blobs) for an image made of ``layers`` (gzip-compressed if asked)."""
    blobs = [gzip.compress(layer, mtime=0) if compress else layer for layer in layers]
    diff_ids = [str(Digest.of_bytes(layer)) for layer in layers]
    config = oci.encode_json(
        {
            "architecture": "amd64",
            "os": "linux",
            "created": "2024-01-02T03:04:05.123456789Z",
            "config": {"Cmd": cmd or ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        }
    )
    media = oci.OCI_LAYER_GZIP if compress else oci.OCI_LAYER_TAR
    manifest = oci.build_manifest(
        oci.Descriptor(oci.OCI_CONFIG, Digest.of_bytes(config), len(config)),
        [oci.Descriptor(media, Digest.of_bytes(b), len(b)) for b in blobs],
    )
    return manifest, config, blobs


def add_layered(store: ImageStore, layers: list[bytes], names=(), *, unpack=True, compress=False, cmd=None):
    manifest, config, blobs = image_docs(layers, compress, cmd)
    with store.ingest() as ing:
        for blob in blobs:
            ing.put_stream(io.BytesIO(blob))
        return store.add_image(manifest, config, list(names), unpack=unpack)


def snapshot(store: ImageStore) -> dict:
    """Everything the store holds: DB rows, blob names, layer dir entries (visible and hidden)."""
    conn = store.db.conn
    tables = ("images", "image_refs", "layers", "image_layers")
    rows = {t: sorted(tuple(r) for r in conn.execute(f"SELECT * FROM {t}")) for t in tables}
    entries = store.layers_dir.iterdir() if store.layers_dir.is_dir() else []
    layer_dirs = sorted(p.name for p in entries if not p.name.startswith(".lock"))  # lock files hold no data
    return {"rows": rows, "blobs": sorted(map(str, store.blobs.list())), "layers": layer_dirs}


BASE = layer_tar({"etc/os-release": b"ID=test\n", "bin/tool": b"#!/bin/sh\necho base\n"})
APP_A = layer_tar({"app/a.txt": b"a\n"})
APP_B = layer_tar({"app/b.txt": b"b\n"})


@pytest.fixture
def store(hutch_root) -> ImageStore:
    return make_store(hutch_root)


# ----- import, resolve, rootfs ---------------------------------------------------------------------------


def test_import_then_resolve_every_way(store, busybox_tar):
    image = import_tarball(store, busybox_tar, "busybox")
    assert image.names == ["busybox:latest"]
    assert image.diff_ids == [Digest.of_bytes(busybox_tar.read_bytes())]
    assert image.size == busybox_tar.stat().st_size
    assert image.run_config == {}  # Docker sets no Cmd for imports
    assert image.config["architecture"] == oci.host_platform().architecture
    for ref in (
        "busybox",
        "busybox:latest",
        "docker.io/library/busybox",
        str(image.id),
        image.id.hex,
        image.id.hex[:4],
        "sha256:" + image.id.hex[:8],
    ):
        assert store.resolve(ref).id == image.id, ref
    manifest = json.loads(store.blobs.read(image.manifest_digest))
    assert manifest["layers"][0]["mediaType"] == oci.OCI_LAYER_TAR
    assert manifest["layers"][0]["digest"] == str(image.diff_ids[0])  # stored uncompressed


def test_resolve_errors(store, busybox_tar):
    image = import_tarball(store, busybox_tar, "busybox")
    with pytest.raises(NotFound, match='image "nothere:latest" not found'):
        store.resolve("nothere")
    with pytest.raises(NotFound):
        store.resolve(image.id.hex[:3])  # too short to be an ID prefix
    with pytest.raises(InvalidArgument, match='invalid reference format: "Busybox"'):
        store.resolve("Busybox")


def test_rootfs_layers_exact_layout_and_content(store, busybox_tar):
    image = import_tarball(store, busybox_tar, "busybox")
    layers = store.rootfs_layers(image)
    assert layers == [store.root / "layers" / image.diff_ids[0].hex]  # chain ID of one layer = its diff ID
    assert (layers[0] / "bin" / "busybox").is_file()
    assert os.readlink(layers[0] / "bin" / "sh").endswith("busybox")


def test_rootfs_layers_is_one_query_when_unpacked(store, monkeypatch):
    image = add_layered(store, [BASE, APP_A], ["app"])
    expected = [store.layers_dir / c.hex for c in chain_ids(image.diff_ids)]
    assert store.rootfs_layers(image) == expected

    def no_unpacking(*_args):
        raise AssertionError("unpacked again")

    monkeypatch.setattr(LayerDirs, "unpack", no_unpacking)
    statements = []
    store.db.conn.set_trace_callback(statements.append)
    assert store.rootfs_layers(image) == expected
    store.db.conn.set_trace_callback(None)
    assert len(statements) == 1
    start = time.perf_counter()
    for _ in range(100):
        assert store.rootfs_layers(store.resolve("app")) == expected
    elapsed = (time.perf_counter() - start) / 100
    assert elapsed < 0.01, f"resolve + rootfs_layers took {elapsed * 1000:.2f} ms"


def test_lazy_unpack_on_first_rootfs_layers(store):
    image = add_layered(store, [BASE, APP_A], ["app"], unpack=False, compress=True)
    assert not any(p.is_dir() for p in (store.layers_dir / c.hex for c in chain_ids(image.diff_ids)))
    layers = store.rootfs_layers(image)
    assert (layers[0] / "etc/os-release").read_bytes() == b"ID=test\n"
    assert (layers[1] / "app/a.txt").read_bytes() == b"a\n"
    assert store.resolve("app").size == len(BASE) + len(APP_A)  # uncompressed size, once known


def _unpack_in_child(root: str, ref: str, log: str, barrier) -> None:
    store = make_store(Path(root))
    real_extract = LayerDirs._extract

    def logged_extract(self, layer, dest):
        with open(log, "a") as f:
            f.write(f"{os.getpid()} {layer.chain_id}\n")
        time.sleep(0.2)  # widen the window in which the other process could start the same layer
        return real_extract(self, layer, dest)

    LayerDirs._extract = logged_extract
    barrier.wait()
    paths = store.rootfs_layers(store.resolve(ref))
    with open(log, "a") as f:
        f.write(f"done {[str(p) for p in paths]}\n")


def test_concurrent_processes_unpack_each_layer_once(store, tmp_path):
    image = add_layered(store, [BASE, APP_A, APP_B], ["app"], unpack=False, compress=True)
    log = tmp_path / "unpack.log"
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(2)
    procs = [
        ctx.Process(target=_unpack_in_child, args=(str(store.root), "app", str(log), barrier))
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    lines = log.read_text().splitlines()
    unpacked = [line.split()[1] for line in lines if not line.startswith("done")]
    assert sorted(unpacked) == sorted(str(c) for c in chain_ids(image.diff_ids))  # each exactly once
    done = {line for line in lines if line.startswith("done")}
    assert len(done) == 1  # both processes got the same paths
    assert not [p for p in store.layers_dir.iterdir() if p.name.startswith((".tmp-", ".trash-"))]
    assert all(p.is_dir() for p in store.rootfs_layers(store.resolve("app")))


# ----- corruption and atomicity ---------------------------------------------------------------------------


def _flip_byte(path: Path, offset: int) -> None:
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_corrupt_layer_blob_is_detected_and_nothing_half_unpacked(store):
    image = add_layered(store, [BASE], ["app"], unpack=False)
    blob = store.layer_blobs(image)[0].digest
    _flip_byte(store.blobs.path(blob), 600)  # inside the first file's data: the tar still parses
    with pytest.raises(CorruptContent, match="digest mismatch"):
        store.rootfs_layers(image)
    assert [p.name for p in store.layers_dir.iterdir() if not p.name.startswith(".lock")] == []
    assert store.db.conn.execute("SELECT unpacked FROM layers").fetchone()[0] == 0


def test_corrupt_compressed_blob_fails_the_add_and_leaves_the_store_unchanged(store):
    add_layered(store, [BASE], ["base"])
    before = snapshot(store)
    manifest, config, blobs = image_docs([BASE, APP_A], compress=True)
    with store.ingest() as ing:
        for blob in blobs:
            ing.put_stream(io.BytesIO(blob))
        _flip_byte(store.blobs.path(Digest.of_bytes(blobs[1])), 30)
        with pytest.raises(CorruptContent):
            store.add_image(manifest, config, ["app"])
    assert snapshot(store) == before


def test_wrong_diff_id_fails_and_leaves_the_store_unchanged(store):
    before = snapshot(store)
    manifest, config, blobs = image_docs([APP_A])
    wrong = config.replace(str(Digest.of_bytes(APP_A)).encode(), str(Digest.of_bytes(APP_B)).encode())
    manifest = manifest.replace(str(Digest.of_bytes(config)).encode(), str(Digest.of_bytes(wrong)).encode())
    with store.ingest() as ing:
        ing.put_stream(io.BytesIO(blobs[0]))
        with pytest.raises(CorruptContent, match="diff ID"):
            store.add_image(manifest, wrong, ["app"])
    assert snapshot(store) == before


def test_bad_documents_are_refused_before_anything_is_stored(store):
    before = snapshot(store)
    manifest, config, _ = image_docs([APP_A])
    with pytest.raises(CorruptContent, match="missing"):  # layer blob never stored
        store.add_image(manifest, config, ["app"])
    with pytest.raises(CorruptContent, match="digest mismatch"):
        store.add_image(manifest, config + b" ", ["app"])
    with pytest.raises(CorruptContent, match="invalid JSON"):
        store.add_image(b"{", config)
    assert snapshot(store) == before


def test_failed_database_commit_leaves_store_unchanged(store, monkeypatch):
    add_layered(store, [BASE], ["base"])
    before = snapshot(store)
    real_insert = ImageAdder._insert_layer

    def failing(self, conn, image_id, pos, *args):
        if pos == 1:
            raise sqlite3.OperationalError("disk I/O error")
        return real_insert(self, conn, image_id, pos, *args)

    monkeypatch.setattr(ImageAdder, "_insert_layer", failing)
    with pytest.raises(sqlite3.OperationalError):
        add_layered(store, [BASE, APP_A], ["app"])
    assert snapshot(store) == before


# ----- names, removal, garbage collection ---------------------------------------------------------------


def test_tag_and_untag(store):
    image = add_layered(store, [BASE], ["base"])
    store.tag("base", "localhost:5000/team/base:v1")
    assert store.resolve("localhost:5000/team/base:v1").names == [
        "base:latest",
        "localhost:5000/team/base:v1",
    ]
    with pytest.raises(InvalidArgument, match="digest"):
        store.tag("base", f"x@{image.id}")
    with pytest.raises(NotFound):
        store.tag("nothere", "x")
    assert store.remove("base") == [{"Untagged": "base:latest"}]  # another name remains: only untag
    assert store.resolve(str(image.id)).names == ["localhost:5000/team/base:v1"]


def test_tag_moves_a_name_and_leaves_the_old_image_dangling(store):
    old = add_layered(store, [BASE], ["app"])
    new = add_layered(store, [BASE, APP_A], ["app"])
    assert store.resolve("app").id == new.id
    assert store.resolve(str(old.id)).names == []


def test_rmi_last_name_deletes_image_and_collects_unshared_layers(store):
    base = add_layered(store, [BASE], ["base"])
    app = add_layered(store, [BASE, APP_A], ["app"], compress=True)
    base_dir, app_dir = (store.layers_dir / c.hex for c in chain_ids(app.diff_ids))
    app_blobs = {d.digest for d in store.layer_blobs(app)} | {app.id, app.manifest_digest}
    records = store.remove("app")
    assert records[:2] == [{"Untagged": "app:latest"}, {"Deleted": str(app.id)}]
    assert {"Deleted": str(chain_ids(app.diff_ids)[1])} in records
    assert base_dir.is_dir() and not app_dir.exists()  # the base layer is still used by "base"
    assert not any(store.blobs.has(d) for d in app_blobs)
    assert store.rootfs_layers(store.resolve("base")) == [base_dir]
    store.remove(str(base.id))
    assert snapshot(store) == {
        "rows": {t: [] for t in ("images", "image_refs", "layers", "image_layers")},
        "blobs": [],
        "layers": [],
    }


def test_rmi_refuses_images_in_use_unless_forced(store):
    image = add_layered(store, [BASE], ["app"])
    in_use = {str(image.id): ["web"]}.get
    with pytest.raises(Conflict, match="web"):
        store.remove("app", in_use=lambda i: in_use(i, []))
    with pytest.raises(Conflict, match="web"):
        store.remove(image.id.short, in_use=lambda i: in_use(i, []))
    records = store.remove("app", force=True, in_use=lambda i: in_use(i, []))
    assert records == [{"Untagged": "app:latest"}]  # forced: names go, the image stays for its container
    assert store.rootfs_layers(store.resolve(str(image.id)))[0].is_dir()


def test_rmi_by_id_in_several_repositories_needs_force(store):
    image = add_layered(store, [BASE], ["one", "two"])
    with pytest.raises(Conflict, match="multiple repositories"):
        store.remove(image.id.short)
    records = store.remove(image.id.short, force=True)
    assert {"Untagged": "one:latest"} in records and {"Deleted": str(image.id)} in records


def test_rmi_by_id_with_tags_of_one_repository(store):
    image = add_layered(store, [BASE], ["one:a", "one:b"])
    assert store.remove(image.id.hex[:6])[-2:] == [
        {"Deleted": str(image.id)},
        {"Deleted": str(image.diff_ids[0])},
    ]


def test_prune_dangling_then_all_unused(store):
    dangling = add_layered(store, [APP_A])
    tagged = add_layered(store, [BASE], ["base"])
    used = add_layered(store, [APP_B], ["used"])
    in_use = lambda image_id: ["c1"] if image_id == str(used.id) else []  # noqa: E731
    report = store.prune(in_use=in_use)
    assert {"Deleted": str(dangling.id)} in report["ImagesDeleted"]
    assert report["SpaceReclaimed"] >= len(APP_A)
    assert [i.id for i in store.list_images()] == [tagged.id, used.id] or {
        i.id for i in store.list_images()
    } == {
        tagged.id,
        used.id,
    }
    report = store.prune(all=True, in_use=in_use)
    assert {"Untagged": "base:latest"} in report["ImagesDeleted"]
    assert [i.id for i in store.list_images()] == [used.id]


def test_gc_sweeps_what_a_crash_leaked(store):
    image = add_layered(store, [BASE], ["base"])
    stray_blob = store.blobs.put_bytes(b"leaked")
    (store.layers_dir / ("f" * 64)).mkdir()
    (store.layers_dir / ".tmp-abc-1-2").mkdir()
    (store.layers_dir / ".trash-abc").mkdir()
    store.gc()
    assert not store.blobs.has(stray_blob)
    assert sorted(p.name for p in store.layers_dir.iterdir() if not p.name.startswith(".lock")) == [
        image.diff_ids[0].hex
    ]


def test_inspect_shape(store, busybox_tar):
    image = import_tarball(store, busybox_tar, "busybox", message="hello", changes=['CMD ["/bin/sh"]'])
    out = store.inspect("busybox")
    assert out["Id"] == str(image.id)
    assert out["RepoTags"] == ["busybox:latest"] and out["RepoDigests"] == []
    assert out["Comment"] == "hello"
    assert out["Config"] == {"Cmd": ["/bin/sh"]}
    assert out["RootFS"] == {"Type": "layers", "Layers": [str(image.diff_ids[0])]}
    assert out["Os"] == "linux" and out["Architecture"] == oci.host_platform().architecture
    assert out["Size"] == image.size and out["Created"] == image.created
    assert set(out) >= {"Parent", "DockerVersion", "Author", "GraphDriver", "Metadata"}


def test_digest_references(store):
    image = add_layered(store, [BASE], [])
    by_digest = f"localhost:5000/base@{image.manifest_digest}"
    store.add_image(
        store.blobs.read(image.manifest_digest),
        store.blobs.read(image.id),
        [by_digest, "localhost:5000/base:v1"],
    )
    assert store.resolve(by_digest).digests == [by_digest]
    assert store.resolve(f"localhost:5000/base:v9@{image.manifest_digest}").id == image.id
    # Removing the repository's last tag also drops its digest reference, as Docker does.
    assert store.remove("localhost:5000/base:v1")[:2] == [
        {"Untagged": "localhost:5000/base:v1"},
        {"Untagged": by_digest},
    ]


# ----- import -------------------------------------------------------------------------------------------


def test_import_compressed_and_from_a_stream_gives_the_same_layer(store, busybox_tar):
    import zstandard

    raw = busybox_tar.read_bytes()
    plain = import_tarball(store, busybox_tar, "a")
    (store.root / "x.tar.gz").write_bytes(gzip.compress(raw))
    zipped = import_tarball(store, store.root / "x.tar.gz", "b")
    streamed = import_tarball(store, io.BytesIO(zstandard.ZstdCompressor().compress(raw)), "c")
    assert plain.diff_ids == zipped.diff_ids == streamed.diff_ids == [Digest.of_bytes(raw)]
    assert streamed.config["comment"] == "Imported from -"


def test_import_errors_leave_the_store_unchanged(store, tmp_path):
    before = snapshot(store)
    with pytest.raises(NotFound):
        import_tarball(store, tmp_path / "missing.tar", "x")
    with pytest.raises(InvalidArgument):
        import_tarball(store, io.BytesIO(b""), "Bad")
    with pytest.raises(CorruptContent):
        import_tarball(store, io.BytesIO(gzip.compress(b"x" * 1000)[:-8]), "x")  # truncated gzip
    assert snapshot(store) == before


def test_import_changes():
    config = parse_changes(
        [
            'CMD ["/bin/sh", "-c", "echo hi"]',
            "ENTRYPOINT /entry.sh --flag",
            "ENV A=1 B='two words'",
            "ENV LEGACY value with spaces",
            "ENV A=3",
            "WORKDIR /srv",
            "USER 1000:1000",
            "EXPOSE 80 53/udp",
            'LABEL org.x="y z"',
            "VOLUME /data /cache",
            "STOPSIGNAL SIGINT",
        ]
    )
    assert config == {
        "Cmd": ["/bin/sh", "-c", "echo hi"],
        "Entrypoint": ["/bin/sh", "-c", "/entry.sh --flag"],
        "Env": ["B=two words", "LEGACY=value with spaces", "A=3"],
        "WorkingDir": "/srv",
        "User": "1000:1000",
        "ExposedPorts": {"80/tcp": {}, "53/udp": {}},
        "Labels": {"org.x": "y z"},
        "Volumes": {"/data": {}, "/cache": {}},
        "StopSignal": "SIGINT",
    }
    with pytest.raises(InvalidArgument, match="RUN"):
        parse_changes(["RUN rm -rf /"])
    with pytest.raises(InvalidArgument, match="needs an argument"):
        parse_changes(["CMD"])


# ----- the CLI ------------------------------------------------------------------------------------------


def test_cli_images_tag_rmi_prune(hutch, busybox_tar):
    image_id = hutch.ok("import", "-c", "CMD sh", str(busybox_tar), "busybox").strip()
    assert image_id.startswith("sha256:")
    hutch.ok("tag", "busybox", "localhost:5000/bb:v1")
    lines = hutch.ok("images").splitlines()
    assert lines[0].split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    assert {tuple(line.split()[:3]) for line in lines[1:]} == {
        ("busybox", "latest", image_id[7:19]),
        ("localhost:5000/bb", "v1", image_id[7:19]),
    }
    assert hutch.ok("images", "-q") == image_id[7:19] + "\n"
    assert hutch.ok("image", "ls", "localhost:5000/bb", "--format", "json").count("\n") == 1
    inspected = json.loads(hutch.ok("image", "inspect", "busybox"))
    assert inspected[0]["Config"]["Cmd"] == ["/bin/sh", "-c", "sh"]
    assert hutch.ok("rmi", "busybox") == "Untagged: busybox:latest\n"
    result = hutch("rmi", "nothere", "localhost:5000/bb:v1")
    assert result.code == 1 and 'image "nothere:latest" not found' in result.err
    assert f"Deleted: {image_id}" in result.out
    assert hutch.ok("images", "-q") == ""
    hutch.ok("import", str(busybox_tar))
    assert "Total reclaimed space: 2.14MB" in hutch.ok("image", "prune", "-f")
