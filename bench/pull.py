#!/usr/bin/env python3
"""Pull a ~120 MB, 4-layer image from a loopback registry into an empty store: hutch vs podman vs skopeo.

The image is made offline (``tools/oci_layout.py``: the busybox rootfs plus three 40 MB layers of
pseudo-random bytes, gzip, so ~120 MB on the wire), pushed with ``skopeo`` to Debian's ``docker-registry``
on 127.0.0.1 (plain HTTP), then each round pulls it, interleaved:

- ``hutch pull`` into an empty root (download, verify, unpack: ready to run);
- ``podman pull`` into an empty ``--root`` (download, verify, unpack);
- ``skopeo copy`` to an OCI directory (download and verify only: no unpacking).

Prints min / median / max wall time per tool. Usage: ``bench/pull.py [--rounds N]``.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tests"), str(REPO / "tools"), str(REPO / "src")]

from busybox_rootfs import build_rootfs_tar  # noqa: E402
from oci_layout import filler_tar, write_image, write_index  # noqa: E402

from registry_fixtures import Registry  # noqa: E402

FILLER = 40 << 20


CPU: dict[str, list[float]] = {}


def _run(argv: list[str]) -> float:
    """Wall time of one command; its CPU time (user + system, children included) goes to ``CPU``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(argv, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {proc.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    CPU.setdefault(Path(argv[0]).name, []).append(cpu)
    return elapsed


def hutch_pull(name: str, scratch: Path) -> float:
    root = scratch / "hutch-root"
    try:
        return _run([str(REPO / ".venv/bin/hutch"), "--root", str(root), "pull", "-q", name])
    finally:
        shutil.rmtree(root, ignore_errors=True)


def podman_pull(name: str, scratch: Path) -> float:
    root = scratch / "podman-root"
    runroot = tempfile.mkdtemp(prefix="bp-")
    store = ["podman", "--root", str(root), "--runroot", runroot]
    try:
        return _run([*store, "pull", "-q", "--tls-verify=false", name])
    finally:
        subprocess.run([*store, "rmi", "-af"], capture_output=True)
        subprocess.run(["umount", "-R", str(root)], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(runroot, ignore_errors=True)


def skopeo_copy(name: str, scratch: Path) -> float:
    out = scratch / "skopeo-oci"
    try:
        return _run(["skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{name}", f"oci:{out}:1"])
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hutch-bench-pull-", dir="/var/tmp") as tmp:
        scratch = Path(tmp)
        build_rootfs_tar(scratch / "busybox.tar")
        layers = [(scratch / "busybox.tar").read_bytes()]
        layers += [filler_tar(f"data{i}.bin", FILLER, i) for i in range(3)]
        layout = scratch / "layout"
        write_index(layout, "big", [write_image(layout, layers)])
        wire = sum(p.stat().st_size for p in (layout / "blobs/sha256").iterdir())
        (scratch / "registry").mkdir()
        registry = Registry(scratch / "registry", "open")
        registry.start()
        try:
            name = f"{registry.host}/bench/big:1"
            subprocess.run(
                ["skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{layout}:big", f"docker://{name}"],
                check=True,
            )
            tools = {
                "hutch pull": hutch_pull,
                "podman pull": podman_pull,
                "skopeo copy (no unpack)": skopeo_copy,
            }
            times: dict[str, list[float]] = {t: [] for t in tools}
            for _ in range(args.rounds):
                for label, fn in tools.items():
                    times[label].append(fn(name, scratch))
        finally:
            registry.stop()
    print(f"image: 4 layers, {wire / 1e6:.1f} MB on the wire; {args.rounds} interleaved rounds")
    for (label, values), cpu in zip(times.items(), CPU.values(), strict=True):
        print(
            f"{label:26s} median {statistics.median(values):6.2f} s   "
            f"min {min(values):6.2f} s   max {max(values):6.2f} s   cpu {statistics.median(cpu):5.2f} s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
