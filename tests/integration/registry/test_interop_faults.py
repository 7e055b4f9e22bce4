"""Interop with skopeo and podman both ways, and faults: broken connections, a registry killed and
restarted mid-download, a tampered blob."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
import time

import pytest
from oci_layout import filler_tar, write_image, write_index

from registry_fixtures import CuttingProxy

BIG = 8 << 20


def _skopeo(*args: str) -> str:
    proc = subprocess.run(["skopeo", *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"skopeo {' '.join(args)}: {proc.stderr}"
    return proc.stdout


def _skopeo_push(layout, tag: str, dest: str, *extra: str) -> None:
    _skopeo("copy", "--quiet", "--dest-tls-verify=false", *extra, f"oci:{layout}:{tag}", f"docker://{dest}")


def _store_is_empty(hutch) -> None:
    assert hutch.ok("images", "-q") == ""
    blobs = hutch.root / "blobs"
    assert not blobs.exists() or not any(p.is_file() for p in blobs.rglob("*"))
    tmp = hutch.root / "tmp"
    assert not tmp.exists() or not any(tmp.iterdir())


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="needs skopeo")
def test_skopeo_copies_what_hutch_pushed(hutch, busybox, open_registry, tmp_path):
    name = f"{open_registry.host}/interop/from-hutch:1"
    hutch.ok("tag", busybox, name)
    digest = hutch.ok("push", "-q", name).strip()
    _skopeo("copy", "--quiet", "--src-tls-verify=false", f"docker://{name}", f"oci:{tmp_path / 'out'}:1")
    image_id = hutch.ok("images", "-q", "--no-trunc").split()[0]
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    copied = tmp_path / "out" / "blobs" / "sha256" / index["manifests"][0]["digest"].split(":")[1]
    assert json.loads(copied.read_text())["config"]["digest"] == image_id
    raw = subprocess.run(
        ["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{name}"],
        capture_output=True,
        check=True,
    ).stdout
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == digest  # the stored bytes are the pushed bytes


@pytest.mark.podman
@pytest.mark.skipif(shutil.which("podman") is None, reason="needs podman")
def test_podman_pulls_what_hutch_pushed(hutch, busybox, open_registry, tmp_path):
    name = f"{open_registry.host}/interop/for-podman:1"
    hutch.ok("tag", busybox, name)
    digest = hutch.ok("push", "-q", name).strip()
    runroot = tempfile.mkdtemp(prefix="hutch-podman-")  # podman wants a runroot under 50 characters
    store = ["podman", "--root", str(tmp_path / "podman"), "--runroot", runroot]
    try:
        proc = subprocess.run(
            [*store, "pull", "-q", "--tls-verify=false", name], capture_output=True, text=True
        )
        assert proc.returncode == 0, proc.stderr
        proc = subprocess.run([*store, "image", "inspect", name], capture_output=True, text=True)
        assert json.loads(proc.stdout)[0]["Digest"] == digest
    finally:
        subprocess.run([*store, "rmi", "-af"], capture_output=True)
        subprocess.run(["umount", "-R", str(tmp_path / "podman")], capture_output=True)
        shutil.rmtree(runroot, ignore_errors=True)


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="needs skopeo")
def test_hutch_pulls_a_multi_platform_index_skopeo_pushed(
    hutch, second, open_registry, busybox_tar, tmp_path
):
    layout = tmp_path / "layout"
    base = busybox_tar.read_bytes()
    amd = write_image(layout, [base], "amd64", ["PATH=/bin", "MARK=amd64"])
    arm = write_image(layout, [base], "arm64", ["PATH=/bin", "MARK=arm64"])
    write_index(layout, "multi", [amd, arm])
    name = f"{open_registry.host}/interop/multi:1"
    _skopeo_push(layout, "multi", name, "--all")
    assert hutch.ok("run", "--rm", name, "sh", "-c", "echo $MARK").strip() == "amd64"
    second.ok("pull", "--platform", "linux/arm64", name)
    inspect = json.loads(second.ok("image", "inspect", name))[0]
    assert inspect["Architecture"] == "arm64"
    result = second("pull", "--platform", "linux/s390x", name)
    assert result.code == 125 and "no manifest for platform linux/s390x" in result.err


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="needs skopeo")
def test_hutch_pulls_docker_schema2_skopeo_pushed(hutch, open_registry, busybox_tar, tmp_path):
    layout = tmp_path / "layout"
    write_index(layout, "v2", [write_image(layout, [busybox_tar.read_bytes()])])
    name = f"{open_registry.host}/interop/schema2:1"
    _skopeo_push(layout, "v2", name, "--format", "v2s2")
    raw = _skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{name}")
    assert json.loads(raw)["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert hutch.ok("run", "--rm", name, "echo", "v2s2").strip() == "v2s2"


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="needs skopeo")
def test_hutch_pulls_zstd_and_uncompressed_layers(hutch, open_registry, busybox_tar, tmp_path):
    layout = tmp_path / "layout"
    for kind in ("zstd", "none"):
        layers = [busybox_tar.read_bytes(), filler_tar(f"{kind}.bin", 1000, 2)]
        write_index(layout, kind, [write_image(layout, layers, compression=kind)])
        name = f"{open_registry.host}/interop/layers-{kind}:1"
        _skopeo_push(layout, kind, name, "--preserve-digests")  # else skopeo recompresses to gzip
        raw = json.loads(_skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{name}"))
        suffix = {"zstd": "+zstd", "none": ".tar"}[kind]
        assert all(layer["mediaType"].endswith(suffix) for layer in raw["layers"]), raw
        assert hutch.ok("run", "--rm", name, "stat", "-c", "%s", f"/{kind}.bin").strip() == "1000"


@pytest.fixture
def big_image(own_registry, busybox_tar, tmp_path) -> str:
    """busybox plus an 8 MiB incompressible layer, pushed by skopeo to the test's own registry."""
    layout = tmp_path / "big-layout"
    write_index(
        layout, "big", [write_image(layout, [busybox_tar.read_bytes(), filler_tar("big.bin", BIG, 1)])]
    )
    _skopeo_push(layout, "big", f"{own_registry.host}/faults/big:1")
    return "faults/big:1"


def test_a_broken_connection_is_resumed_with_range(hutch, own_registry, big_image):
    proxy = CuttingProxy(own_registry.port, cut_at=3 << 20)
    try:
        name = f"127.0.0.1:{proxy.port}/{big_image}"
        hutch.ok("pull", name)
        assert proxy.cuts == 1
        assert hutch.ok("run", "--rm", name, "stat", "-c", "%s", "/big.bin").strip() == str(BIG)
    finally:
        proxy.close()


def test_registry_killed_mid_download_then_restarted(hutch, own_registry, big_image):
    proxy = CuttingProxy(own_registry.port, cut_at=3 << 20, on_cut=own_registry.stop)
    name = f"127.0.0.1:{proxy.port}/{big_image}"
    pull = subprocess.Popen(
        hutch.argv("pull", name), env=hutch.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 30
        while proxy.cuts == 0 and pull.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proxy.cuts == 1
        time.sleep(1.0)  # the pull retries against a dead registry meanwhile
        own_registry.start()
        out, err = pull.communicate(timeout=60)
        assert pull.returncode == 0, err  # resumed from the byte it reached once the registry was back
        assert hutch.ok("run", "--rm", name, "stat", "-c", "%s", "/big.bin").strip() == str(BIG)
    finally:
        if pull.poll() is None:
            pull.kill()
            pull.wait()
        proxy.close()


def test_a_tampered_blob_is_caught_and_nothing_is_stored(hutch, own_registry, big_image):
    name = f"{own_registry.host}/{big_image}"
    manifest = json.loads(_skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{name}"))
    blob = own_registry.blob_path(manifest["layers"][1]["digest"])
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte changed
    blob.write_bytes(bytes(data))
    result = hutch("pull", name)
    assert result.code == 125
    assert "digest mismatch" in result.err and manifest["layers"][1]["digest"] in result.err
    _store_is_empty(hutch)


def test_registry_killed_for_good_fails_cleanly_then_a_second_pull_works(hutch, own_registry, big_image):
    proxy = CuttingProxy(own_registry.port, cut_at=3 << 20, on_cut=own_registry.stop)
    try:
        name = f"127.0.0.1:{proxy.port}/{big_image}"
        result = hutch("pull", name)
        assert result.code == 125
        assert "could not be resumed" in result.err and len(result.err.strip().splitlines()) == 1
        _store_is_empty(hutch)
        own_registry.start()
        hutch.ok("pull", name)
        assert hutch.ok("run", "--rm", name, "stat", "-c", "%s", "/big.bin").strip() == str(BIG)
    finally:
        proxy.close()
